"""Node program replies: strict parsing, and `status` judged from the real node program's output."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from broker.fleet import nodeprog
from broker.fleet.ssh import CommandResult
from broker.fleet.status import grant_blocker, parse_status
from broker.provision.bootstrap import GRANT_KEY, NODE_CONF, insert_block, render_node_conf
from tests.helpers import REPO
from tests.node_tree import checker
from tests.unit.test_fleet_bootstrap import BLOCK, POLICY, key_line


def result(
    stdout: str, status: int | None = 0, stderr: str = "", error: str | None = None
) -> CommandResult:
    return CommandResult("gpu01", status, stdout, stderr, error, 7.0)


def test_argv_is_the_isolated_interpreter_and_an_allow_listed_command() -> None:
    assert nodeprog.argv_for("status") == [
        "/usr/bin/python3", "-I", "-S", "/usr/libexec/broker/broker-node", "status"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="unknown"):
        nodeprog.argv_for("status; reboot")


def test_a_json_object_is_a_reply() -> None:
    reply = nodeprog.parse_reply(result('{"revoked": ["g1"], "killed": []}\n'))
    assert reply.ok and reply.data == {"revoked": ["g1"], "killed": []} and reply.error is None


@pytest.mark.parametrize(
    ("stdout", "why"),
    [
        ("[1, 2]", "not a JSON object"),
        ('{"a": NaN}', "NaN is not JSON"),
        ('{"a": 1, "a": 2}', "duplicate key"),
        ("garbage", "unreadable reply"),
        ("", "unreadable reply"),
        ('{"a": "' + "x" * (5 << 20) + '"}', "larger than"),
    ],
)
def test_anything_else_is_an_error_naming_the_node(stdout: str, why: str) -> None:
    reply = nodeprog.parse_reply(result(stdout))
    assert not reply.ok and reply.error is not None
    assert reply.error.startswith("gpu01: ") and why in reply.error


def test_failures_say_what_to_do() -> None:
    usage = nodeprog.parse_reply(result('{"error": "unknown command \'x\'"}', 2))
    assert not usage.ok and usage.error == "gpu01: node program usage: unknown command 'x'"
    missing = "python3: can't open file '/usr/libexec/broker/broker-node': [Errno 2] No such file"
    for reply in (
        nodeprog.parse_reply(result("", 2, missing)),
        nodeprog.parse_reply(result("", 127, "sh: 1: /usr/bin/python3: not found")),
    ):
        assert reply.error is not None and "broker node bootstrap gpu01" in reply.error
    crashed = nodeprog.parse_reply(result("", 1, "Traceback\n\x1b[31mboom\x1b[0m"))
    assert crashed.error is not None and "\x1b" not in crashed.error and "exited 1" in crashed.error
    ssh = nodeprog.parse_reply(result("", None, error="gpu01 (10.0.0.1:22): timed out"))
    assert ssh.error == "gpu01 (10.0.0.1:22): timed out" and ssh.data is None


def test_payloads_are_json_and_bounded() -> None:
    assert nodeprog.encode_payload({"ids": ["g1"]}) == b'{"ids":["g1"]}'
    assert nodeprog.encode_payload(None) == b"{}"
    with pytest.raises(ValueError, match="over"):
        nodeprog.encode_payload({"x": "y" * nodeprog.MAX_PAYLOAD})
    with pytest.raises(ValueError):
        nodeprog.encode_payload({"x": float("nan")})


# ---------------------------------------------------------------- status, from the real program


def node_tree(tmp_path: Path, *, bootstrapped: bool) -> Path:
    """A node's files under tmp_path, as bootstrap would leave them (or an empty node)."""
    root = tmp_path / "node"
    for directory in ("etc/broker", "etc/pam.d", "var/lib/broker/grants"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    for path in [root, *root.rglob("*")]:
        path.chmod(0o700 if "var/lib" in str(path) else 0o755)
    if bootstrapped:
        (root / NODE_CONF.lstrip("/")).write_text(render_node_conf(POLICY, "gpu01", "slurm"))
        (root / GRANT_KEY.lstrip("/")).write_text(key_line())
        (root / "etc/pam.d/sudo").write_text(insert_block("@include common-auth\n", BLOCK))
        for path in (NODE_CONF, GRANT_KEY, "/etc/pam.d/sudo"):
            (root / path.lstrip("/")).chmod(0o644)
    return root


def run_status(root: Path) -> tuple[CommandResult, float, float]:
    """`broker-node status` of the repository's node program over a node tree."""
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import broker_node; "
        "sys.exit(broker_node.node_main(['status'], sys.stdin, sys.stdout, "
        "broker_node.Paths(sys.argv[2], sys.argv[3])))"
    )
    sent = time.time()
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", code, str(REPO / "pam"), str(root), checker()],
        input="{}", capture_output=True, text=True, check=False,
    )  # fmt: skip
    received = time.time()
    return (
        CommandResult("gpu01", done.returncode, done.stdout, done.stderr, None, 5.0),
        sent,
        received,
    )


def test_status_of_a_bootstrapped_node_from_the_real_program(tmp_path: Path) -> None:
    answer, sent, received = run_status(node_tree(tmp_path, bootstrapped=True))
    status = parse_status(answer, sent, received, max_skew=60)
    assert status.reachable and status.bootstrapped and status.hook_version == "2"
    assert status.skew_s is not None and abs(status.skew_s) < 5
    assert status.active_grants == 0
    expected_block = grant_blocker(status.sudo_flavour, status.io_logging)
    assert status.can_grant == (expected_block is None)
    # the tree has no pam_broker.so: a problem to fix, not a reason to refuse grants
    missing = "/usr/lib/broker/pam_broker.so: No such file or directory"
    assert status.module_problem == missing
    # nor is a watcher that is not running (the tree has no heartbeat): the node says so
    watcher = (
        "broker-node watch is not running: expiry is not enforced on the node while the broker"
        " is away, and sessions are not contained"
    )
    assert status.containment == "process-tree"
    assert status.problem == "; ".join(
        p for p in (expected_block, f"PAM module: {missing}", watcher) if p
    )


def test_status_of_an_empty_node_says_bootstrap(tmp_path: Path) -> None:
    answer, sent, received = run_status(node_tree(tmp_path, bootstrapped=False))
    status = parse_status(answer, sent, received, max_skew=60)
    assert status.reachable and status.bootstrapped is False and not status.can_grant
    assert status.problem is not None and "broker node bootstrap gpu01" in status.problem
    assert "node.conf" in status.problem


def reply(**changes: Any) -> CommandResult:
    data: dict[str, Any] = {
        "node": "gpu01",
        "hook_version": "2",
        "module": {"path": "/usr/lib/broker/pam_broker.so", "loads": True, "error": None},
        "time": 1000.5,
        "sudo": {"flavour": "sudo", "version": "1.9.15p5", "io_logging": True},
        "grants": [{"id": "g1", "valid": True}, {"id": "g2", "valid": False}],
        "bootstrapped": True,
    }
    data.update(changes)
    return result(json.dumps(data))


def test_skew_is_node_time_minus_the_round_trip_midpoint() -> None:
    status = parse_status(reply(), sent=1000.0, received=1000.2, max_skew=60)
    assert status.skew_s == pytest.approx(0.4) and status.can_grant and status.problem is None
    assert status.active_grants == 1
    late = parse_status(reply(time=1100.0), sent=1000.0, received=1000.2, max_skew=60)
    assert not late.can_grant and late.problem is not None
    assert "ahead of the broker's (limit 60 s)" in late.problem


@pytest.mark.parametrize(
    ("sudo", "reason"),
    [
        ({"flavour": "sudo-rs", "version": "0.2.3", "io_logging": False}, "sudo-rs has no I/O"),
        ({"flavour": "sudo", "version": "1.9.15", "io_logging": False}, "no I/O logging plugin"),
        ({"flavour": "unknown", "version": "", "io_logging": False}, "no sudo found"),
        ({"flavour": "doas", "version": "6", "io_logging": True}, "no sudo found"),
    ],
)
def test_nodes_that_cannot_record_get_no_grants(sudo: dict[str, Any], reason: str) -> None:
    status = parse_status(reply(sudo=sudo), 1000.0, 1000.2, max_skew=60)
    assert status.reachable and not status.can_grant
    assert status.problem is not None and status.problem.startswith("cannot record: no grants")
    assert reason in status.problem


def test_hostile_status_fields_are_not_believed() -> None:
    status = parse_status(
        reply(
            node="gpu02\x1b[2J",
            hook_version="1; rm -rf /",
            sudo={"flavour": "sudo", "version": "\n1.9", "io_logging": "yes"},
            time="soon",
            grants="many",
        ),
        1000.0,
        1000.2,
        max_skew=60,
    )
    assert status.hook_version is None and status.sudo_version is None
    assert status.io_logging is None and status.skew_s is None and status.active_grants is None
    assert not status.can_grant and status.problem is not None
    assert "no valid node.conf" in status.problem and "\x1b" not in status.problem
    unreachable = parse_status(result("", None, error="gpu01: timed out"), 0, 0, 60)
    assert not unreachable.reachable and unreachable.problem == "gpu01: timed out"
