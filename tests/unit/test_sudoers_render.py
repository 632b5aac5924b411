"""Grant drop-ins: checked by the real visudo and read back by sudo's own parser (cvtsudoers)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
import jinja2.meta
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from broker.core.errors import FailedError, RefusedError, UsageError
from broker.sudoers import SudoersGrant, check_with_visudo, drop_in_name, render_grant
from broker.sudoers.render import TEMPLATE, TEMPLATES_DIR

GRANT_ID = "g3f9a0c1d2e4b5a6c"
START = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
DIAG = ("node-diag", ("/usr/bin/nvidia-smi -q", "/usr/sbin/ipmitool sel list"))
GPU = ("gpu-reset", ("/usr/bin/nvidia-smi --gpu-reset -i 0",))
CVTSUDOERS = shutil.which("cvtsudoers", path="/usr/bin:/usr/sbin:/bin:/sbin")


def grant(**changes: Any) -> SudoersGrant:
    values: dict[str, Any] = {
        "grant_id": GRANT_ID,
        "user": "alice",
        "runas": "root",
        "not_before": START,
        "not_after": START + timedelta(minutes=30),
        "command_sets": (),
        "host": "gpu01",
    }
    values.update(changes)
    return SudoersGrant(**values)


def parsed(text: str, *, expand: bool = True) -> dict[str, Any]:
    """The drop-in as sudo's parser reads it (cvtsudoers, JSON), aliases expanded or not."""
    if CVTSUDOERS is None:
        pytest.skip("cvtsudoers (part of sudo) is not installed")
    with tempfile.TemporaryDirectory() as private:
        path = Path(private) / "drop-in"
        path.write_text(text, encoding="utf-8")
        path.chmod(0o440)
        done = subprocess.run(
            [CVTSUDOERS, "-f", "json", *(["-e"] if expand else []), str(path)],
            capture_output=True,
            text=True,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def rules(text: str) -> list[str]:
    """Lines sudo acts on: neither comments nor blank."""
    return [line for line in text.splitlines() if line.strip() and not line.startswith("#")]


def options(spec: dict[str, Any]) -> dict[str, Any]:
    return {key: value for option in spec["Options"] for key, value in option.items()}


def the_rule(text: str) -> dict[str, Any]:
    """The one user specification with its one command spec; fails on anything more."""
    tree = parsed(text)
    (user_spec,) = tree["User_Specs"]
    (cmnd_spec,) = user_spec["Cmnd_Specs"]
    assert user_spec["Host_List"] == [{"hostname": "gpu01"}]  # this node only
    return {
        "users": user_spec["User_List"],
        "runas": cmnd_spec["runasusers"],
        "options": options(cmnd_spec),
        "commands": [c.get("command") for c in cmnd_spec["Commands"]],
        "defaults": tree["Defaults"],
    }


# --- the two shapes, through the real visudo and sudo's parser -------------------------------


def test_all_grant_passes_visudo_and_sudo_reads_it_as_rendered() -> None:
    text = render_grant(grant())
    check_with_visudo(text)
    rule = the_rule(text)
    assert rule["users"] == [{"username": "alice"}]
    assert rule["runas"] == [{"username": "root"}]
    assert rule["commands"] == ["ALL"]
    assert rule["options"] == {
        "setenv": True,  # sudo implies SETENV for the command ALL; it adds nothing to ALL
        "command_timeout": 1800,
        "notbefore": "20261123100000Z",
        "notafter": "20261123103000Z",
        "authenticate": False,
        "log_input": True,
        "log_output": True,
    }
    recording, server = rule["defaults"]
    assert recording["Binding"] == server["Binding"] == [{"username": "alice"}]
    assert recording["Options"] == [
        {"use_pty": True},
        {"log_input": True},
        {"log_output": True},
        {"ignore_iolog_errors": False},  # no recording, no command
    ]
    assert server["Options"] == [
        {"operation": "list_assign", "log_servers": ["127.0.0.1:30343"]},
        {"log_server_timeout": "10"},
        {"log_server_keepalive": True},
    ]
    assert text.startswith("# Managed by the broker; do not edit.\n")
    assert GRANT_ID in text.splitlines()[1]
    assert "2026-11-23T10:30:00Z" in text.splitlines()[1]
    assert text.endswith("ALL\n")


def test_command_set_grant_lists_exactly_its_commands_under_unique_aliases() -> None:
    text = render_grant(grant(command_sets=(DIAG, GPU), log_server="gpu01.cluster.example:4711"))
    check_with_visudo(text)
    rule = the_rule(text)
    assert rule["commands"] == [*DIAG[1], *GPU[1]]
    assert rule["options"]["notafter"] == "20261123103000Z"  # inherited by every command
    assert rule["defaults"][1]["Options"][0] == {
        "operation": "list_assign",
        "log_servers": ["gpu01.cluster.example:4711"],
    }
    aliases = parsed(text, expand=False)["Command_Aliases"]
    assert aliases == {
        "BROKER_NODE_DIAG_G3F9A0C1D2E4B5A6C": [{"command": c} for c in DIAG[1]],
        "BROKER_GPU_RESET_G3F9A0C1D2E4B5A6C": [{"command": c} for c in GPU[1]],
    }
    lines = rules(text)
    assert lines[0].startswith("Cmnd_Alias BROKER_NODE_DIAG_G3F9A0C1D2E4B5A6C = ")
    assert lines[1].startswith("Cmnd_Alias BROKER_GPU_RESET_G3F9A0C1D2E4B5A6C = ")
    assert lines[-1].endswith(
        ": BROKER_NODE_DIAG_G3F9A0C1D2E4B5A6C, BROKER_GPU_RESET_G3F9A0C1D2E4B5A6C"
    )


def test_two_grants_with_the_same_set_can_live_side_by_side() -> None:
    """Aliases are global across /etc/sudoers.d: the grant id keeps them apart."""
    first = render_grant(grant(command_sets=(DIAG,)))
    second = render_grant(grant(grant_id="g0000000000000001", command_sets=(DIAG,)))
    check_with_visudo(first + second)
    with pytest.raises(RefusedError, match="already defined"):
        check_with_visudo(first + first)


def test_times_are_utc_with_z_whatever_the_process_time_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    try:
        assert time.localtime().tm_gmtoff == 14 * 3600  # the zone really is in effect
        text = render_grant(grant(not_after=START + timedelta(hours=14)))
    finally:
        monkeypatch.undo()
        time.tzset()
    assert "NOTBEFORE=20261123100000Z NOTAFTER=20261124000000Z " in text
    assert "from 2026-11-23T10:00:00Z until 2026-11-24T00:00:00Z" in text
    assert the_rule(text)["options"]["notafter"] == "20261124000000Z"


def test_a_utc_zone_other_than_datetime_utc_is_accepted() -> None:
    text = render_grant(grant(not_before=START.astimezone(ZoneInfo("UTC"))))
    assert "NOTBEFORE=20261123100000Z " in text


@pytest.mark.parametrize(
    "duration",
    [timedelta(seconds=1), timedelta(minutes=30), timedelta(hours=8, seconds=7), timedelta(days=7)],
)
def test_timeout_is_the_whole_duration_in_seconds(duration: timedelta) -> None:
    text = render_grant(grant(not_after=START + duration))
    seconds = int(duration.total_seconds())
    assert f" TIMEOUT={seconds} " in text
    assert the_rule(text)["options"]["command_timeout"] == seconds


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"not_before": START.replace(tzinfo=None)}, "not_before"),
        ({"not_after": (START + timedelta(hours=1)).replace(tzinfo=None)}, "not_after"),
        ({"not_before": START.astimezone(timezone(timedelta(hours=2)))}, "not_before"),
        ({"not_before": START.astimezone(ZoneInfo("Pacific/Kiritimati"))}, "not_before"),
        ({"not_after": START + timedelta(minutes=30, microseconds=1)}, "not_after"),
        ({"not_after": START}, "not_after"),
        ({"not_after": START - timedelta(seconds=1)}, "not_after"),
        ({"not_after": START + timedelta(seconds=2**31)}, "not_after"),
        ({"not_before": "2026-11-23T10:00:00Z"}, "not_before"),
    ],
)
def test_times_that_are_not_whole_utc_seconds_in_order_are_refused(
    changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(UsageError, match=f"bad {field} "):
        render_grant(grant(**changes))


def test_longest_timeout_sudo_takes_is_accepted() -> None:
    text = render_grant(grant(not_after=START + timedelta(seconds=2**31 - 1)))
    check_with_visudo(text)


# --- refusals: explicit injection attempts -------------------------------------------------

BAD_NAMES = [
    "alice\nbob ALL=(ALL) NOPASSWD: ALL",
    "alice\r",
    'ali"ce',
    "ali'ce",
    "%admins",
    "al,ice",
    "ALL",
    "all",
    "!alice",
    "ali\\ce",
    "al:ice",
    "al=ice",
    "\u0430lice",  # Cyrillic a
    "alic\u0435",  # Cyrillic e
    "ａlice",  # fullwidth a
    "#0",
    "#alice",
    "+netgroup",
    "Alice",
    "alice bob",
    "alice\tbob",
    "",
    "a" * 33,
]


@pytest.mark.parametrize("field", ["user", "runas"])
@pytest.mark.parametrize("value", BAD_NAMES)
def test_bad_user_or_runas_is_refused_naming_field_and_value(field: str, value: str) -> None:
    with pytest.raises(UsageError) as info:
        render_grant(grant(**{field: value}))
    line = info.value.one_line()
    assert f"bad {field} " in line
    assert repr(value)[:60] in line
    assert "\n" not in line
    assert info.value.fix


@pytest.mark.parametrize(
    "host",
    ["ALL", "all ", "GPU01", "+nodes", "10.0.0.0/8", "gpu*", "gpu01,gpu02", "!gpu01", "-gpu", "",
     "gpu01\nalice ALL=(ALL) ALL", "g" * 254],
)  # fmt: skip
def test_a_host_that_is_not_one_node_name_is_refused(host: str) -> None:
    with pytest.raises(UsageError) as info:
        render_grant(grant(host=host))
    assert "bad host " in info.value.one_line()


def test_each_node_gets_a_rule_for_itself_only() -> None:
    one, other = render_grant(grant(host="gpu01")), render_grant(grant(host="stor01.hpc.test"))
    check_with_visudo(other)
    assert "alice gpu01 = (root) " in one and "alice stor01.hpc.test = (root) " in other
    assert parsed(other)["User_Specs"][0]["Host_List"] == [{"hostname": "stor01.hpc.test"}]


BAD_COMMANDS = [
    "/usr/bin/id\nalice ALL=(ALL) NOPASSWD: ALL",
    '/usr/bin/echo "x"',
    "/usr/bin/echo 'x'",
    "/usr/bin/date +%s",
    "/usr/bin/id, /bin/sh",
    "/usr/bin/id,/bin/sh",
    "ALL",
    "/usr/bin/systemctl restart ALL",
    "!/bin/sh",
    "/usr/bin/echo a\\",
    "/usr/bin/echo a:b",
    "/usr/bin/env A=b",
    "/usr/bin/\uff49d",  # fullwidth i
    "/usr/bin/id\u2028",
    "/usr/bin/ls *",
    "/usr/bin/ls #1",
    "/usr/bin/ls (x)",
    "/usr/bin/ls  -l",
    "/usr/bin/ls -l ",
    "/usr/bin/systemctl ",  # sudo would read the bare program: any arguments
    " /usr/bin/id",
    "/tmp/tool",
    "/home/alice/bin/tool",
    "/usr/bin/",
    "/usr/bin/../../bin/sh",
    "/usr/bin/sudoedit /etc/shadow",
    "/usr/bin/sudo",
    "usr/bin/id",
    "/usr/bin/id\x00",
    "",
]


@pytest.mark.parametrize("command", BAD_COMMANDS)
def test_bad_command_is_refused(command: str) -> None:
    with pytest.raises(UsageError) as info:
        render_grant(grant(command_sets=(("diag", ("/usr/bin/id", command)),)))
    assert "command in set diag" in info.value.one_line()


@pytest.mark.parametrize(
    "name", ["GPU", "gpu_reset", "gpu,ALL", "gpu\n", "%gpu", "gpu--reset", "-gpu", "ALL", "g" * 49]
)
def test_bad_set_name_is_refused(name: str) -> None:
    with pytest.raises(UsageError, match="bad command set name"):
        render_grant(grant(command_sets=((name, ("/usr/bin/id",)),)))


@pytest.mark.parametrize(
    "command_sets",
    [
        (("diag", ()),),
        (("diag", "/usr/bin/id"),),
        (("diag", ("/usr/bin/id",)), ("diag", ("/usr/bin/uptime",))),
        (("diag",),),
        [("diag", ("/usr/bin/id",))],
    ],
)
def test_malformed_command_sets_are_refused(command_sets: Any) -> None:
    with pytest.raises(UsageError, match="command"):
        render_grant(grant(command_sets=command_sets))


@pytest.mark.parametrize(
    "grant_id",
    ["G3F9A0C1D2E4B5A6C", "g3f9a0c1d2e4b5a6", "g3f9a0c1d2e4b5a6c0", "g3f9a0c1d2e4b5a6z",
     "g3f9a0c1d2e4b5a6c\n", "../etc/passwd", "g3f9a0c1d2e4b5a6c.bak", ""],
)  # fmt: skip
def test_bad_grant_id_is_refused_by_render_and_drop_in_name(grant_id: str) -> None:
    with pytest.raises(UsageError, match="bad grant_id"):
        render_grant(grant(grant_id=grant_id))
    with pytest.raises(UsageError, match="bad grant_id"):
        drop_in_name(grant_id)


@pytest.mark.parametrize(
    "log_server",
    ["a b:1", "host", "h:0", "h:99999", "h:65536", "h:1,x", "h:1 ", ":1", "h:", "h:01",
     "-h:1", "h-:1", "h..i:1", "h:1\nalice ALL=(ALL) ALL", "[::1]:1", "h:1:2", "",
     "h\u0430:1", "/var/log/broker-io"],
)  # fmt: skip
def test_bad_log_server_is_refused(log_server: str) -> None:
    with pytest.raises(UsageError, match="bad log_server"):
        render_grant(grant(log_server=log_server))


@pytest.mark.parametrize("log_server", ["127.0.0.1:30343", "h:1", "h:65535", "logs-1.example:443"])
def test_good_log_server_is_written_as_given(log_server: str) -> None:
    text = render_grant(grant(log_server=log_server))
    assert f"log_servers={log_server}, " in text


def test_drop_in_name_has_no_dot_sudo_would_skip() -> None:
    assert drop_in_name(GRANT_ID) == "broker_g3f9a0c1d2e4b5a6c"


# --- the reason never reaches sudoers --------------------------------------------------------


def test_there_is_no_reason_input_at_all() -> None:
    assert "reason" not in {f.name for f in dataclasses.fields(SudoersGrant)}
    with pytest.raises(TypeError):
        SudoersGrant(  # type: ignore[call-arg]
            GRANT_ID,
            "alice",
            "root",
            START,
            START + timedelta(hours=1),
            (),
            "gpu01",
            reason="INC-1",
        )
    source = (TEMPLATES_DIR / TEMPLATE).read_text(encoding="utf-8")
    used = jinja2.meta.find_undeclared_variables(jinja2.Environment().parse(source))
    assert "reason" not in used
    assert used == {
        "grant_id", "user", "host", "runas", "valid_from", "expires", "not_before", "not_after",
        "timeout", "log_server", "aliases", "commands",
    }  # fmt: skip


# --- fuzzing: refused, or exactly one rule with exactly the given values ---------------------

_NASTY = (
    "abcz_-09 /.+@%,:=!\\\"'#()*?[]^$\n\r\t\x00\x7f\u0430\u0435\u01c3\u2215\u2028\u00a0\uff41ALL"
)
_fuzz = st.one_of(
    st.text(alphabet=_NASTY, min_size=1, max_size=16),
    st.builds(
        lambda prefix, rest: prefix + rest,
        st.sampled_from(["/usr/bin/", "/opt/", "/tmp/", "%", "#", ""]),
        st.text(alphabet=_NASTY, min_size=1, max_size=24),
    ),
    st.text(max_size=16),
)
# Mostly valid text with at most one special piece spliced in: most values render, so
# the visudo and parser checks below run often, and each refusal is about one thing.
_SPLICES = [
    "", "", "a", "-b", "_c", "9", "x-y", "@", ".", "/", "..", "-", "_", "+",
    " ", "\n", "\r", "\t", "\x00", ",", ":", "=", "!", "\\", "%", "#", "'", '"', "(", ")", "*",
    "ALL", " ALL", ", ALL", "\nbob ALL=(ALL) NOPASSWD: ALL", "\u0430", "\uff41", "\u2028",
]  # fmt: skip
_spliced = st.builds(
    lambda head, piece, tail: head + piece + tail,
    st.sampled_from(["a", "b", "z", "ab", "alice", "n0de"]),
    st.sampled_from(_SPLICES),
    st.text(alphabet="abz09_-", max_size=8),
)


def mostly(*likely: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Each of `likely` three times as often as arbitrary text."""
    pick = st.sampled_from([*range(len(likely))] * 3 + [-1])
    return pick.flatmap(lambda i: likely[i] if i >= 0 else _fuzz)


_names = mostly(st.sampled_from(["alice", "root", "_svc", "a-b_c", "x" * 32]), _spliced)
_set_names = mostly(st.sampled_from(["diag", "gpu-reset", "a1-b2"]), _spliced)
_commands = mostly(
    st.sampled_from(["/usr/bin/id", "/usr/sbin/ipmitool sel list", "/opt/x+y@z/bin/t -v1.2"]),
    st.builds(lambda word: "/usr/sbin/" + word, _spliced),
    st.builds(lambda word: "/usr/bin/ls -l " + word, _spliced),
)
_sets = st.lists(
    st.tuples(_set_names, st.lists(_commands, min_size=1, max_size=3).map(tuple)),
    max_size=3,
).map(tuple)
_FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def refused_or_one_rule(
    user: str, runas: str, command_sets: tuple[tuple[str, tuple[str, ...]], ...]
) -> None:
    """Either render refuses, or visudo accepts and sudo reads exactly the given values."""
    try:
        text = render_grant(grant(user=user, runas=runas, command_sets=command_sets))
    except UsageError:
        event("refused")
        return
    event("rendered")
    check_with_visudo(text)
    lines = rules(text)
    assert len(lines) == len(command_sets) + 3  # aliases, two Defaults lines, the rule
    assert sum(line.startswith(f"{user} ") for line in lines) == 1
    rule = the_rule(text)
    assert rule["users"] == [{"username": user}]
    assert rule["runas"] == [{"username": runas}]
    expected = [c for _, commands in command_sets for c in commands] or ["ALL"]
    assert rule["commands"] == expected
    assert rule["options"]["authenticate"] is False
    assert rule["options"]["notbefore"] == "20261123100000Z"
    assert rule["options"]["notafter"] == "20261123103000Z"
    assert rule["options"]["command_timeout"] == 1800


@_FUZZ
@given(field=st.sampled_from(["user", "runas", "set", "command"]), value=mostly(_spliced))
def test_one_arbitrary_value_is_refused_or_gives_exactly_one_rule(field: str, value: str) -> None:
    user = value if field == "user" else "alice"
    runas = value if field == "runas" else "root"
    name = value if field == "set" else "diag"
    command = ("/usr/bin/" + value) if field == "command" else "/usr/bin/id"
    refused_or_one_rule(user, runas, ((name, ("/usr/bin/uptime", command)),))


@_FUZZ
@given(user=_names, runas=_names, command_sets=_sets)
def test_arbitrary_values_everywhere_are_refused_or_give_exactly_one_rule(
    user: str, runas: str, command_sets: tuple[tuple[str, tuple[str, ...]], ...]
) -> None:
    refused_or_one_rule(user, runas, command_sets)


# --- visudo and the template directory ------------------------------------------------------


def test_visudo_refusal_carries_its_message_on_one_line() -> None:
    broken = render_grant(grant()).replace("TIMEOUT=1800", "TIMEOUT=99999999999")
    with pytest.raises(RefusedError) as info:
        check_with_visudo(broken)
    line = info.value.one_line()
    assert "timeout value too large" in line
    assert "\n" not in line
    assert "/tmp" not in line  # the private temp path is not shown


@pytest.mark.parametrize(
    "text", ["@include /etc/shadow\n", "#includedir /etc/sudoers.d\n", "  @includedir /x\n"]
)
def test_visudo_check_refuses_include_directives(text: str) -> None:
    with pytest.raises(RefusedError, match="include"):
        check_with_visudo(text)


def test_explicit_templates_dir_is_used(tmp_path: Path) -> None:
    (tmp_path / TEMPLATE).write_text("{{ user }} ALL = ({{ runas }}) {{ commands }}\n")
    assert render_grant(grant(), templates_dir=tmp_path) == "alice ALL = (root) ALL\n"


def test_template_with_an_unknown_variable_fails_instead_of_rendering_empty(
    tmp_path: Path,
) -> None:
    (tmp_path / TEMPLATE).write_text("{{ user }} ALL = {{ reason }}\n")
    with pytest.raises(jinja2.UndefinedError):
        render_grant(grant(), templates_dir=tmp_path)


def test_missing_template_is_a_failure_naming_the_directory(tmp_path: Path) -> None:
    with pytest.raises(FailedError, match=str(tmp_path)):
        render_grant(grant(), templates_dir=tmp_path)


def test_check_hosts_names_the_first_node_that_cannot_be_a_host_field() -> None:
    from broker.sudoers.render import check_hosts

    check_hosts(["gpu01", "gpu02.hpc.test"])
    with pytest.raises(UsageError, match="bad host 'GPU03'"):
        check_hosts(["gpu01", "GPU03", "ALL"])
