"""`broker policy` as an operator runs it: exit codes, file:line errors, JSON, apply/show/explain."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from broker.app import App
from broker.config.loader import load_settings
from broker.directory.records import GroupRecord, UserRecord
from broker.directory.snapshot import StoredUser, write_difference
from tests.helpers import REPO, run_broker, write_config
from tests.unit.policy_samples import LAB_GROUPS, LAB_POLICY, line_of

EXAMPLE = REPO / "deploy" / "examples" / "policy.toml"
UF_NORMAL, UF_DISABLED = 0x200, 0x202
PEOPLE = {  # name: (userAccountControl, groups, transitively)
    "alice": (UF_NORMAL, ("gpu-admins", "hpc-admins", "hpc-users")),
    "dave": (UF_NORMAL, ("storage-admins", "hpc-admins", "hpc-users")),
    "dora": (UF_DISABLED, ("gpu-admins", "hpc-admins", "hpc-users")),
    "bob": (UF_NORMAL, ("hpc-users",)),
}


def seed_directory(config: Path) -> None:
    """Write the lab's people into the store's directory snapshot, as a sync would."""
    groups = {
        name: GroupRecord(
            f"00000000-0000-0000-0000-{i:012d}",
            f"S-1-5-21-1-2-3-{2000 + i}",
            name,
            f"CN={name},OU=Groups,DC=hpc,DC=test",
            10000 + i,
            1,
            (),
        )
        for i, name in enumerate(LAB_GROUPS)
    }
    users: dict[str, StoredUser] = {}
    members: dict[str, dict[str, bool]] = {}
    for i, (name, (uac, in_groups)) in enumerate(PEOPLE.items()):
        guid = f"11111111-0000-0000-0000-{i:012d}"
        record = UserRecord(
            guid,
            f"S-1-5-21-1-2-3-{1100 + i}",
            name,
            f"{name}@HPC.TEST",
            f"CN={name},OU=People,DC=hpc,DC=test",
            10001 + i,
            10000,
            513,
            uac,
            0,
            0,
            0,
            None,
            None,
            1,
            (),
        )
        users[guid] = StoredUser(record, 10001 + i, 10000, None, "enabled")
        members[guid] = {groups[g].guid: True for g in in_groups}
    app = App(load_settings(config))
    with app.ready_store().transaction() as conn:
        write_difference(
            conn, {}, users, {}, {g.guid: (g, g.gid_number) for g in groups.values()}, {}, members
        )
    app.close()


@pytest.fixture
def lab_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(LAB_POLICY)
    return path


def write(tmp_path: Path, text: str, name: str = "candidate.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def policy_events(config: Path) -> list[dict[str, object]]:
    result = run_broker("audit", "tail", "--action", "policy.*", "--json", config=config)
    assert result.returncode == 0, result.stderr
    events: list[dict[str, object]] = json.loads(result.stdout)
    return events


# ---------------------------------------------------------------- check


def test_help_lists_every_policy_command() -> None:
    result = run_broker("policy", "--help")
    assert result.returncode == 0
    for name in ("check", "plan", "apply", "show", "explain"):
        assert name in result.stdout
        assert run_broker("policy", name, "--help").returncode == 0


@pytest.mark.usefixtures("daemon")
def test_check_a_clean_file_exits_0(broker_config: Path) -> None:
    result = run_broker("policy", "check", str(EXAMPLE), config=broker_config)
    assert result.returncode == 0, result.stdout
    lines = result.stdout.strip().splitlines()
    assert lines == [
        "note: group names not checked: the directory snapshot is empty (sync it first)",
        f"{EXAMPLE}: valid: 4 zones (527 nodes), 5 roles, 3 bindings, 2 service accounts; "
        "0 errors, 0 warnings, 0 notes",
    ]


@pytest.mark.usefixtures("daemon")
def test_check_reports_every_error_on_its_own_line_and_exits_1(
    broker_config: Path, tmp_path: Path
) -> None:
    text = LAB_POLICY.replace('max_duration = "4h"', 'max_duration = "90x"').replace(
        'zones = ["storage"]', 'zones = ["storge"]'
    )
    path = write(tmp_path, text)
    result = run_broker("policy", "check", str(path), config=broker_config)
    assert result.returncode == 1
    errors = [line for line in result.stdout.splitlines() if ": error" in line]
    assert errors == [
        f"{path}:{line_of(text, '90x')}: error: roles.gpu-root.max_duration = '90x': bad "
        "duration '90x'; write it as a number with units d, h, m, s in that order, e.g. 30m, "
        "2h, 1h30m",
        f"{path}:{line_of(text, 'storge')}: error: roles.storage-root.zones[0] = 'storge': "
        "unknown zone; did you mean storage?",
    ]
    assert result.stdout.strip().endswith("INVALID: 2 errors, 0 warnings, 0 notes")


@pytest.mark.usefixtures("daemon")
def test_check_lint_errors_and_warnings_carry_their_control(
    broker_config: Path, tmp_path: Path
) -> None:
    text = LAB_POLICY.replace('default_duration = "30m"', 'default_duration = "30m"\nmfa = false')
    text = text.replace('max_duration = "4h"\n', "")
    path = write(tmp_path, text)
    result = run_broker("policy", "check", str(path), "--json", config=broker_config)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False and report["errors"] == 1 and report["warnings"] == 1
    found = {f["rule"]: f for f in report["findings"]}
    assert found["root-without-mfa"]["control"] == "IA-2"
    assert found["root-without-mfa"]["line"] == line_of(text, "mfa = false")
    assert found["all-without-maximum"]["severity"] == "warning"
    warnings_only = write(tmp_path, LAB_POLICY.replace('max_duration = "4h"\n', ""), "w.toml")
    human = run_broker("policy", "check", str(warnings_only), config=broker_config)
    assert human.returncode == 0
    assert (
        f"{warnings_only}:" in human.stdout
        and ": warning AC-6: role gpu-root grants ALL" in human.stdout
    )


@pytest.mark.usefixtures("daemon")
def test_check_groups_against_the_synced_directory(broker_config: Path, tmp_path: Path) -> None:
    seed_directory(broker_config)
    text = LAB_POLICY.replace('group = "storage-admins"', 'group = "storage-admns"')
    path = write(tmp_path, text)
    result = run_broker("policy", "check", str(path), "--json", config=broker_config)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["groups_checked"] is True
    assert [(f["line"], f["key"]) for f in report["findings"]] == [
        (line_of(text, "storage-admns"), "bindings[1].group")
    ]


def test_check_without_file_reads_the_configured_path(tmp_path: Path, lab_file: Path) -> None:
    config = write_config(tmp_path, f'\n[policy]\npath = "{lab_file}"\n')
    result = run_broker("policy", "check", "--offline", config=config)  # no `broker init`
    assert result.returncode == 0
    assert f"{lab_file}: valid:" in result.stdout
    assert "group names not checked against the directory" in result.stdout


def test_check_offline_needs_no_daemon_and_no_configuration(tmp_path: Path, lab_file: Path) -> None:
    """A policy repository's CI: no /etc/broker, no daemon, no directory."""
    nowhere = {"BROKER_CONFIG": str(tmp_path / "absent.toml")}
    clean = run_broker("policy", "check", "--offline", str(EXAMPLE), env=nowhere)
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.strip().splitlines() == [
        "note: group names not checked against the directory (--offline)",
        f"{EXAMPLE}: valid: 4 zones (527 nodes), 5 roles, 3 bindings, 2 service accounts; "
        "0 errors, 0 warnings, 0 notes",
    ]
    text = LAB_POLICY.replace('kind = "access"', 'kind = "acess"')
    broken = write(tmp_path, text)
    result = run_broker("policy", "check", "--offline", str(broken), "--json", env=nowhere)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert set(report) == {
        "file",
        "valid",
        "sha256",
        "errors",
        "warnings",
        "notes",
        "findings",
        "groups_checked",
    }
    assert report["groups_checked"] is False and report["errors"] == 1
    assert report["findings"][0]["line"] == line_of(text, "acess")


def test_check_a_missing_file_is_a_usage_error(broker_config: Path, tmp_path: Path) -> None:
    result = run_broker("policy", "check", str(tmp_path / "nope.toml"), config=broker_config)
    assert result.returncode == 2
    assert result.stderr.startswith(f"broker: error: no policy file at {tmp_path / 'nope.toml'};")


# ---------------------------------------------------------------- plan, apply, show


@pytest.mark.usefixtures("daemon")
def test_plan_without_a_directory_shows_group_level_rights(
    broker_config: Path, lab_file: Path
) -> None:
    result = run_broker("policy", "plan", str(lab_file), "--json", config=broker_config)
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert plan["old_sha256"] is None and plan["eligible_accounts"] == 0
    assert plan["user_gains"] == [] and plan["groups_gaining"] == 2
    assert {"holder": "gpu-admins", "role": "gpu-root", "nodes": "gpu[01-02]", "count": 2} in plan[
        "group_gains"
    ]
    human = run_broker("policy", "plan", str(lab_file), config=broker_config)
    assert "no user gains or loses anything yet" in human.stdout


@pytest.mark.usefixtures("daemon")
def test_apply_then_show_then_reapply_is_a_no_op(broker_config: Path, lab_file: Path) -> None:
    seed_directory(broker_config)
    sha = hashlib.sha256(lab_file.read_bytes()).hexdigest()
    applied = run_broker("policy", "apply", str(lab_file), config=broker_config)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.strip().endswith(
        f"applied policy {sha[:12]} from {lab_file} as version 1"
    )
    assert "gained by user" in applied.stdout and "alice" in applied.stdout
    assert "dora" not in applied.stdout  # disabled: no rights to gain

    show = json.loads(run_broker("policy", "show", "--json", config=broker_config).stdout)
    assert show["active"]["sha256"] == sha and show["active"]["version"] == 1
    assert show["active"]["actor"].startswith("unix:")
    assert show["zones"]["compute"] == {"kind": "compute", "nodes": "gpu[01-02]", "count": 2}
    assert show["roles"]["gpu-root"]["groups"] == ["gpu-admins"]
    text = run_broker("policy", "show", "--text", config=broker_config)
    assert text.stdout == LAB_POLICY

    events = policy_events(broker_config)
    assert len(events) == 1 and events[0]["action"] == "policy.apply"
    details = events[0]["details"]
    assert isinstance(details, dict)
    assert details["sha256"] == sha and details["previous_sha256"] is None
    assert details["plan"]["users_gaining"] == 2
    assert {"holder": "alice", "role": "gpu-root", "nodes": "gpu[01-02]", "count": 2} in details[
        "plan"
    ]["user_gains"]

    again = run_broker("policy", "apply", str(lab_file), "--json", config=broker_config)
    assert again.returncode == 0 and json.loads(again.stdout)["applied"] is False
    human = run_broker("policy", "apply", str(lab_file), config=broker_config)
    assert (
        f"policy {sha[:12]} is already active" in human.stdout and "nothing to do" in human.stdout
    )
    assert len(policy_events(broker_config)) == 1


@pytest.mark.usefixtures("daemon")
def test_a_second_apply_records_the_plan_of_gains_and_losses(
    broker_config: Path, lab_file: Path, tmp_path: Path
) -> None:
    seed_directory(broker_config)
    assert run_broker("policy", "apply", str(lab_file), config=broker_config).returncode == 0
    narrower = write(
        tmp_path,
        LAB_POLICY.replace('roles = ["storage-root", "node-diag"]', 'roles = ["storage-root"]'),
    )
    plan = json.loads(
        run_broker("policy", "plan", str(narrower), "--json", config=broker_config).stdout
    )
    assert plan["user_losses"] == [
        {"holder": "dave", "role": "node-diag", "nodes": "gpu[01-02],stor01", "count": 3}
    ]
    result = run_broker("policy", "apply", str(narrower), "--json", config=broker_config)
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["applied"] and report["version"] == 2
    assert report["plan"]["user_losses"] == plan["user_losses"]
    last = policy_events(broker_config)[-1]["details"]
    assert isinstance(last, dict)
    assert last["previous_sha256"] == hashlib.sha256(lab_file.read_bytes()).hexdigest()


@pytest.mark.usefixtures("daemon")
def test_apply_refuses_a_file_with_errors_and_changes_nothing(
    broker_config: Path, lab_file: Path, tmp_path: Path
) -> None:
    assert run_broker("policy", "apply", str(lab_file), config=broker_config).returncode == 0
    text = LAB_POLICY.replace('kind = "access"', 'kind = "acess"')
    broken = write(tmp_path, text)
    result = run_broker("policy", "apply", str(broken), config=broker_config)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"broker: error: {broken}:{line_of(text, 'acess')}: zones.access.kind = 'acess': "
        "unknown zone kind"
    )
    no_mfa = write(
        tmp_path,
        LAB_POLICY.replace('max_duration = "4h"', 'max_duration = "4h"\nmfa = false'),
        "m.toml",
    )
    refused = run_broker("policy", "apply", str(no_mfa), config=broker_config)
    assert (
        refused.returncode == 1 and "error IA-2: root without MFA on zone compute" in refused.stderr
    )
    show = json.loads(run_broker("policy", "show", "--json", config=broker_config).stdout)
    assert show["active"]["version"] == 1
    assert len(policy_events(broker_config)) == 1


@pytest.mark.usefixtures("daemon")
def test_show_without_a_policy_and_a_tampered_policy(broker_config: Path, lab_file: Path) -> None:
    empty = run_broker("policy", "show", "--json", config=broker_config)
    assert empty.returncode == 0 and json.loads(empty.stdout) == {"active": None}
    assert run_broker("policy", "apply", str(lab_file), config=broker_config).returncode == 0
    conn = sqlite3.connect(load_settings(broker_config).db_path)
    conn.execute("UPDATE policy_versions SET text = replace(text, '\"4h\"', '\"30d\"')")
    conn.commit()
    conn.close()
    result = run_broker("policy", "show", config=broker_config)
    assert result.returncode == 1
    assert (
        "does not match its sha256" in result.stderr and "changed in the database" in result.stderr
    )
    explain = run_broker("policy", "explain", "alice", "gpu01", config=broker_config)
    assert explain.returncode == 1 and "does not match its sha256" in explain.stderr


# ---------------------------------------------------------------- explain


@pytest.mark.usefixtures("daemon")
def test_explain_allows_and_denies_with_every_rule(broker_config: Path, lab_file: Path) -> None:
    seed_directory(broker_config)
    assert run_broker("policy", "apply", str(lab_file), config=broker_config).returncode == 0
    allowed = run_broker("policy", "explain", "HPC\\Alice", "gpu01", config=broker_config)
    assert allowed.returncode == 0, allowed.stderr
    assert "verdict: ALLOW: alice may elevate on gpu01 as gpu-root for 1h" in allowed.stdout
    assert "1 approval from hpc-approvers, not counting alice" in allowed.stdout

    data = json.loads(
        run_broker(
            "policy",
            "explain",
            "alice",
            "stor01",
            "--role",
            "storage-root",
            "--json",
            config=broker_config,
        ).stdout
    )
    assert data["verdict"] == "deny" and data["role"] is None
    assert [c["rule"] for c in data["checks"]] == [
        "account",
        "node",
        "binding",
        "scope",
        "duration",
    ]
    assert data["checks"][2]["outcome"] == "fail"

    too_long = run_broker(
        "policy",
        "explain",
        "alice",
        "gpu01",
        "--duration",
        "5h",
        "--role",
        "gpu-root",
        config=broker_config,
    )
    assert too_long.returncode == 1 and "5h exceeds the maximum 4h of gpu-root" in too_long.stdout
    disabled = run_broker("policy", "explain", "dora", "gpu01", "--json", config=broker_config)
    assert disabled.returncode == 1
    assert (
        json.loads(disabled.stdout)["reason"]
        == "dora is disabled: only enabled accounts may elevate"
    )
    stranger = run_broker("policy", "explain", "mallory", "gpu01", config=broker_config)
    assert stranger.returncode == 1 and "not in the directory snapshot" in stranger.stdout


@pytest.mark.usefixtures("daemon")
def test_explain_without_an_active_policy_denies(broker_config: Path, lab_file: Path) -> None:
    seed_directory(broker_config)
    result = run_broker("policy", "explain", "alice", "gpu01", config=broker_config)
    assert result.returncode == 1 and "verdict: DENY: no policy is active" in result.stdout
    trial = run_broker(
        "policy", "explain", "alice", "gpu01", "--policy", str(lab_file), config=broker_config
    )
    assert trial.returncode == 0 and "verdict: ALLOW" in trial.stdout


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (['al"ice', "gpu01"], "bad user name"),
        (["al\nice", "gpu01"], "bad user name"),
        (["аlice", "gpu01"], "bad user name"),  # Cyrillic 'а'
        (["alice", "gpu01;reboot"], "bad node"),
        (["alice", "gpü01"], "bad node list"),
        (["alice", "gpu[01-02]"], "names 2 nodes"),
        (["alice", "gpu01", "--role", "gpu-root\nALL"], "bad role name"),
        (["alice", "gpu01", "--duration", "90x"], "bad duration '90x'"),
    ],
)
def test_explain_refuses_hostile_arguments(broker_config: Path, args: list[str], says: str) -> None:
    result = run_broker("policy", "explain", *args, config=broker_config)
    assert result.returncode == 2
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.usefixtures("daemon")
def test_json_output_keeps_its_keys(broker_config: Path, lab_file: Path) -> None:
    """--json prints what it printed before the CLI became a client of the daemon."""
    seed_directory(broker_config)

    def keys(*args: str) -> set[str]:
        result = run_broker("policy", *args, "--json", config=broker_config)
        data: dict[str, object] = json.loads(result.stdout)
        return set(data)

    plan_keys = {
        "old_sha256",
        "new_sha256",
        "eligible_accounts",
        "users_gaining",
        "users_losing",
        "groups_gaining",
        "groups_losing",
        "changes",
        "user_gains",
        "user_losses",
        "group_gains",
        "group_losses",
        "truncated",
    }
    assert keys("check", str(lab_file)) == {
        "file",
        "valid",
        "sha256",
        "errors",
        "warnings",
        "notes",
        "findings",
        "groups_checked",
    }
    assert keys("plan", str(lab_file)) == plan_keys | {"warnings"}
    applied = json.loads(
        run_broker("policy", "apply", str(lab_file), "--json", config=broker_config).stdout
    )
    assert set(applied) == {
        "applied",
        "sha256",
        "version",
        "previous_sha256",
        "plan",
        "warnings",
        "revoked",
    }
    assert set(applied["plan"]) == plan_keys
    show = json.loads(run_broker("policy", "show", "--json", config=broker_config).stdout)
    assert set(show) == {
        "active",
        "zones",
        "roles",
        "bindings",
        "service_accounts",
        "break_glass_group",
        "incident_response_group",
    }
    assert show["active"]["actor"] == "unix:root"  # from the daemon's SO_PEERCRED
    assert set(show["roles"]["gpu-root"]) == {
        "zones",
        "runas",
        "commands",
        "default_duration",
        "max_duration",
        "mfa",
        "record_sessions",
        "approvals",
        "groups",
    }
    assert keys("explain", "alice", "gpu01") == {
        "user",
        "node",
        "verdict",
        "role",
        "allowed_by",
        "duration",
        "reason",
        "policy_sha256",
        "checks",
    }
    human = run_broker("policy", "show", config=broker_config)
    assert human.returncode == 0
    assert "4 zones (5 nodes), 3 roles, 2 bindings, 2 service accounts" in human.stdout
    assert "1 of hpc-approvers" in human.stdout and "zone compute" in human.stdout
