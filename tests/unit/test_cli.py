"""The `broker` executable as an operator uses it: exit codes, one-line errors, JSON, tampering."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from broker.app import App
from broker.audit import writer
from broker.config.loader import load_settings
from tests.helpers import INIT_EVENTS, REPO, run_broker, serving, write_config


def add_events(config: Path, n: int) -> None:
    app = App(load_settings(config))
    store = app.ready_store()
    for i in range(n):
        with store.transaction() as conn:
            writer.record(
                conn, writer.EventInput("unix:test", "test.append", f"target-{i}", details={"i": i})
            )
    app.close()


def tamper(config: Path, *statements: str) -> None:
    db = load_settings(config).db_path
    conn = sqlite3.connect(db)
    conn.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
    conn.execute("DROP TRIGGER IF EXISTS audit_events_no_delete")
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


def test_version_and_help() -> None:
    version = run_broker("--version")
    assert version.returncode == 0 and version.stdout.startswith("broker ")
    for args in (
        ["--help"],
        ["audit", "--help"],
        ["audit", "tail", "--help"],
        ["db", "--help"],
        ["config", "check", "--help"],
        ["directory", "ping", "--help"],
    ):
        result = run_broker(*args)
        assert result.returncode == 0 and "Usage" in result.stdout, args


def test_shell_completion_is_offered() -> None:
    # The shell named, not detected: detection walks the process tree, which a test run
    # under a scheduler or a service manager may not have a shell in.
    result = run_broker("--show-completion", "bash")
    assert result.returncode == 0 and "_BROKER_COMPLETE" in result.stdout


def test_usage_errors_exit_2() -> None:
    assert run_broker("no-such-command").returncode == 2
    assert run_broker("audit", "tail", "--lines", "zero").returncode == 2


def test_missing_config_is_a_usage_error_with_the_fix(tmp_path: Path) -> None:
    result = run_broker("db", "status", config=tmp_path / "nope.toml")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"broker: error: no configuration file at {tmp_path / 'nope.toml'}; copy "
        "deploy/examples/broker.toml there, or pass --config FILE or set BROKER_CONFIG"
    )


def test_config_from_environment_variable(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    result = run_broker("config", "check", "--json", env={"BROKER_CONFIG": str(config)})
    assert result.returncode == 0
    data = json.loads(result.stdout)
    assert data["settings"]["derived"]["db_path"] == str(tmp_path / "state" / "broker.db")


def test_bad_config_names_key_value_and_expectation(tmp_path: Path) -> None:
    config = tmp_path / "broker.toml"
    config.write_text('[audit]\ncheckpoint_interval = "90x"\n')
    result = run_broker("config", "check", str(config))
    assert result.returncode == 2
    assert f"{config}: audit.checkpoint_interval = '90x': bad duration" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_uninitialised_state_is_unavailable_with_the_fix(tmp_path: Path) -> None:
    result = run_broker("serve", config=write_config(tmp_path))
    assert result.returncode == 3
    assert "run `broker init`" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "verify"],
        ["audit", "tail"],
        ["audit", "export"],
        ["audit", "seal"],
        ["policy", "show"],
        ["policy", "explain", "alice", "gpu01"],
    ],
)
def test_daemon_backed_command_without_a_daemon_says_so_and_exits_3(
    broker_config: Path, args: list[str]
) -> None:
    socket = broker_config.parent / "run" / "broker.sock"
    assert not socket.exists()
    result = run_broker(*args, config=broker_config)
    assert result.returncode == 3
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"broker: error: the broker daemon is not running (nothing listens on {socket}); "
        "start it with `systemctl start broker` (or `broker serve` in a terminal)"
    ]


def test_policy_check_without_a_daemon_points_at_offline(broker_config: Path) -> None:
    policy = REPO / "deploy" / "examples" / "policy.toml"
    result = run_broker("policy", "check", str(policy), config=broker_config)
    assert result.returncode == 3
    assert len(result.stderr.splitlines()) == 1
    assert "the broker daemon is not running" in result.stderr
    assert "`broker policy check --offline`" in result.stderr


@pytest.mark.usefixtures("daemon")
def test_verify_ok_then_tail_and_export(broker_config: Path) -> None:
    add_events(broker_config, 5)
    n = INIT_EVENTS + 5
    ok = run_broker("audit", "verify", config=broker_config)
    assert ok.returncode == 0
    assert ok.stdout.startswith(f"audit chain OK: {n} events, head seq {n}, sealed up to seq {n}")
    tail = run_broker("audit", "tail", "-n", "3", "--json", config=broker_config)
    assert [e["seq"] for e in json.loads(tail.stdout)] == [n - 2, n - 1, n]
    filtered = run_broker("audit", "tail", "--action", "store.*", "--json", config=broker_config)
    migrated = [e["action"] for e in json.loads(filtered.stdout)]
    assert migrated == ["store.migrate"] * (INIT_EVENTS - 1)
    jsonl = run_broker("audit", "export", "--format", "jsonl", config=broker_config)
    lines = [json.loads(x) for x in jsonl.stdout.splitlines()]
    assert [x["seq"] for x in lines] == list(range(1, n + 1)) and lines[-1]["details"] == {"i": 4}
    cef = run_broker("audit", "export", "--format", "cef", "--since", "1h", config=broker_config)
    assert cef.stdout.count("CEF:0|HPC Access Broker|broker|") == n
    assert "cs1=target-4" in cef.stdout


@pytest.mark.usefixtures("daemon")
def test_export_to_a_file_is_private(broker_config: Path, tmp_path: Path) -> None:
    target = tmp_path / "out.jsonl"
    result = run_broker("audit", "export", "-o", str(target), config=broker_config)
    assert result.returncode == 0
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert len(target.read_text().splitlines()) == INIT_EVENTS


@pytest.mark.parametrize(
    ("statements", "kind", "seq"),
    [
        (["UPDATE audit_events SET details = '{\"i\":99}' WHERE seq = 4"], "edited", 4),
        (["DELETE FROM audit_events WHERE seq = 5"], "deleted", 5),
        (
            [
                "UPDATE audit_events SET seq = -1 WHERE seq = 4",
                "UPDATE audit_events SET seq = 4 WHERE seq = 5",
                "UPDATE audit_events SET seq = 5 WHERE seq = -1",
            ],
            "reordered",
            4,
        ),
        (["DELETE FROM audit_events WHERE seq >= 6"], "truncated", 6),
    ],
    ids=["edited", "deleted", "reordered", "newest-deleted"],
)
@pytest.mark.usefixtures("daemon")
def test_tampering_fails_verify_and_names_the_first_bad_seq(
    broker_config: Path, statements: list[str], kind: str, seq: int
) -> None:
    add_events(broker_config, 5)
    tamper(broker_config, *statements)
    result = run_broker("audit", "verify", config=broker_config)
    assert result.returncode == 1
    assert f"audit chain BAD at seq {seq} ({kind})" in result.stderr
    data = json.loads(run_broker("audit", "verify", "--json", config=broker_config).stdout)
    assert data["problem"]["seq"] == seq and data["problem"]["kind"] == kind and not data["ok"]


@pytest.mark.usefixtures("daemon")
def test_db_migrate_is_idempotent(broker_config: Path) -> None:
    result = run_broker("db", "migrate", config=broker_config)
    assert result.returncode == 0 and "up to date" in result.stdout
    status = json.loads(run_broker("db", "status", "--json", config=broker_config).stdout)
    assert (
        status["pending"] == []
        and status["journal_mode"] == "wal"
        and status["audit_events"] == INIT_EVENTS
    )


def test_directory_ping_without_a_reachable_dc_is_unavailable(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("")
    keytab = tmp_path / "k.keytab"
    config = write_config(tmp_path, "").parent / "broker.toml"
    config.write_text(
        config.read_text()
        + (
            f'\n[directory]\nuris = ["ldaps://127.0.0.1:1"]\nbase_dn = "DC=hpc,DC=test"\n'
            f'ca_file = "{ca}"\nprincipal = "svc-broker@HPC.TEST"\nkeytab = "{keytab}"\ntimeout = "2s"\n'
        )
    )
    assert run_broker("init", config=config).returncode == 0
    with serving(config):
        result = run_broker("directory", "ping", config=config)
    assert result.returncode == 3
    assert "ldaps://127.0.0.1:1" in result.stdout
