"""The CLI as scripts and shells use it (issue 21 part 7): tab-separated output when piped,
BROKER_FORMAT and BROKER_CA_FILE, one-line usage errors, NO_COLOR, global options after
the subcommand, man pages for every command, and a start-up that imports little."""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from broker.cli import lazy, manpages
from broker.cli.root import app
from tests.helpers import BROKER, REPO, run_broker, write_config

BOX = set("─│┃━┏┓┗┛┡┩╭╮╯╰├┤┬┴┼═║")


def test_piped_table_is_tab_separated_with_a_header_line(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_broker("config", "check", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert not BOX.intersection(result.stdout) and "\x1b" not in result.stdout
    assert lines[0] == f"{config}: valid"
    assert lines[1] == "key\tvalue"
    rows = dict(line.split("\t") for line in lines[2:])
    assert rows["broker.state_dir"] == str(tmp_path / "state")


@pytest.mark.parametrize("where", ["before", "after"])
def test_no_headers_leaves_out_the_header_line(tmp_path: Path, where: str) -> None:
    config = write_config(tmp_path)
    args = ["config", "check", str(config), "--no-headers"]
    if where == "before":
        args = ["--no-headers", "config", "check", str(config)]
    result = run_broker(*args)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "key\tvalue" not in lines
    assert lines[1].split("\t") == ["broker.state_dir", str(tmp_path / "state")]


def test_broker_format_json_answers_as_json_does(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    by_env = run_broker("config", "check", str(config), env={"BROKER_FORMAT": "json"})
    by_flag = run_broker("config", "check", str(config), "--json")
    assert by_env.returncode == 0, by_env.stderr
    assert json.loads(by_env.stdout) == json.loads(by_flag.stdout)
    assert json.loads(by_env.stdout)["settings"]["derived"]["db_path"].endswith("broker.db")


def test_an_unknown_broker_format_is_one_usage_line(tmp_path: Path) -> None:
    result = run_broker(
        "config", "check", str(write_config(tmp_path)), env={"BROKER_FORMAT": "yaml"}
    )
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.startswith("broker: error: BROKER_FORMAT='yaml' is not a format;")
    assert len(result.stderr.splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["grants", "list", "--bogus"], "No such option: --bogus"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["audit", "tail", "--lines", "zero"], "Invalid value for '-n' / '--lines'"),
    ],
)
def test_usage_errors_are_one_line_exit_2_even_with_no_color(args: list[str], says: str) -> None:
    result = run_broker(*args, env={"NO_COLOR": "1"})
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("broker: usage: ") and says in line
    assert line.endswith(" --help") and not BOX.intersection(line)


def _on_a_terminal(args: list[str], env: dict[str, str]) -> bytes:
    """What `broker ARGS` writes to a real terminal (a pty), as a person would see it."""
    main, child = pty.openpty()
    full_env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "BROKER_CONFIG")}
    full_env.update({"TERM": "xterm-256color", "COLUMNS": "120", **env})
    full_env.pop("FORCE_COLOR", None)
    proc = subprocess.Popen(
        [BROKER, *args], stdin=child, stdout=child, stderr=child, env=full_env, close_fds=True
    )
    os.close(child)
    chunks = []
    while True:
        ready, _, _ = select.select([main], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(main)
    return b"".join(chunks)


def test_no_color_strips_every_escape_on_a_terminal(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    for args in (["config", "check", str(config)], ["grants", "--help"]):
        styled = _on_a_terminal(args, {})
        assert b"\x1b[" in styled, args  # rich styles tables and help on a terminal
        plain = _on_a_terminal(args, {"NO_COLOR": "1"})
        assert b"\x1b" not in plain, (args, plain[:200])
        assert b"broker.state_dir" in plain or b"list" in plain


def test_a_terminal_still_gets_a_table(tmp_path: Path) -> None:
    shown = _on_a_terminal(["config", "check", str(write_config(tmp_path))], {"NO_COLOR": "1"})
    assert BOX.intersection(shown.decode()) and b"\t" not in shown
    env = {"NO_COLOR": "1", "BROKER_FORMAT": "tsv"}
    forced = _on_a_terminal(["config", "check", str(write_config(tmp_path))], env)
    assert not BOX.intersection(forced.decode()) and b"key\tvalue" in forced


def test_global_options_after_the_subcommand(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    after = run_broker("grants", "list", "--config", str(missing))
    assert after.returncode == 2
    assert after.stderr.startswith(f"broker: error: no configuration file at {missing};")
    # after the subcommand wins over before it, as the nearer option
    both = run_broker("-c", "/etc/elsewhere.toml", "accounts", "list", "-c", str(missing))
    assert f"no configuration file at {missing};" in both.stderr


def test_global_options_reach_every_command() -> None:
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="broker")
    for command, sub_ctx in manpages.walk(root, ctx):
        opts = {opt for param in command.params for opt in param.opts}
        assert {"--config", "--broker", "--ca-file", "--no-headers"} <= opts, sub_ctx.command_path


def test_ca_file_from_the_environment_is_used_and_a_bad_one_named(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    for env in ({"BROKER_CA_FILE": str(bad)}, {"BROKER_CA_FILE": str(tmp_path / "none.pem")}):
        result = run_broker("--broker", "https://127.0.0.1:9", "whoami", env=env)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith(
            f"broker: error: cannot use the CA file {env['BROKER_CA_FILE']}:"
        )
        assert len(result.stderr.splitlines()) == 1


def test_every_command_has_a_current_man_page(tmp_path: Path) -> None:
    generated = manpages.pages()
    root = typer.main.get_command(app)
    paths = {
        c.command_path for _, c in manpages.walk(root, typer.Context(root, info_name="broker"))
    }
    assert {"broker", "broker grants list", "broker config check", "broker whoami"} <= paths
    committed = {p.name: p.read_text() for p in (REPO / "man").glob("broker*.1")}
    assert set(committed) == {p.replace(" ", "-") + ".1" for p in paths}
    assert committed == generated, "man/ is stale: run `python -m broker.cli.manpages man`"
    assert ".SH ENVIRONMENT" in committed["broker.1"] and "BROKER_FORMAT" in committed["broker.1"]


def test_first_word_completion_comes_from_the_table_and_matches_the_help() -> None:
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="broker")
    for name, entry in lazy.COMMANDS.items():
        command = root.get_command(ctx, name)
        assert command is not None and command.get_short_help_str(limit=300) == entry.summary
    env = {"_BROKER_COMPLETE": "complete_bash", "COMP_WORDS": "broker gr", "COMP_CWORD": "1"}
    assert run_broker(env=env).stdout.split() == ["grants"]
    env = {**env, "COMP_WORDS": "broker grants ", "COMP_CWORD": "2"}
    assert run_broker(env=env).stdout.split() == ["list", "show", "retry", "reap"]


HEAVY = ("broker.daemon", "broker.app", "ldap3", "gssapi", "cryptography", "paramiko", "jinja2")


def _imported(*args: str) -> set[str]:
    """Modules a CLI run imports (python -X importtime)."""
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "broker", *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "BROKER_CONFIG": "/nonexistent/broker.toml"},
    )
    return {
        line.split("|")[-1].strip() for line in result.stderr.splitlines() if "import time:" in line
    }


def test_start_up_imports_neither_the_daemon_nor_heavy_libraries() -> None:
    version = _imported("--version")
    assert not {m for m in version if m.split(".")[0] in ("typer", "pydantic", "rich")}
    whoami = _imported("whoami")  # no daemon: exit 3, but the client path is loaded
    assert "broker.client.client" in whoami
    assert not {m for m in whoami if m.startswith(HEAVY)}, sorted(whoami)


def test_a_daemon_command_with_options_after_it_piped_and_as_json(daemon: Path) -> None:
    piped = run_broker("whoami", "--config", str(daemon), "--no-headers")
    assert piped.returncode == 0, piped.stderr
    rows = dict(line.split("\t") for line in piped.stdout.splitlines())
    assert rows["uid"] == str(os.getuid()) and "" not in rows  # no header line ("\tcaller")
    as_json = run_broker("whoami", "-c", str(daemon), env={"BROKER_FORMAT": "json"})
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout)["uid"] == os.getuid()
