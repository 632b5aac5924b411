"""A sudo that its log server refused after pam_broker.so allowed it: the watcher spools the
`deny` (reason `log_server`) the module could not, and the broker stores it as such."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.sessions.collect import parse_event
from tests.helpers import load_node_module
from tests.node_tree import NodeTree, bn, bn_now

unlogged = load_node_module("unlogged")
watch = load_node_module("watch")
escapes = load_node_module("escapes")

GRANT = "g0123456789abcdef"


@pytest.fixture
def node(tmp_path: Path) -> NodeTree:
    tree = NodeTree(tmp_path / "node")
    sessions = tree.root / "run/broker-sessions"
    sessions.mkdir(parents=True, mode=0o700)
    return tree


@contextlib.contextmanager
def log_server(*, answers: bool) -> Iterator[str]:
    """A listener on loopback: silent like sudo_logsrvd waiting for a hello (answers), or
    closing each connection at once like a node's stunnel whose far end is down."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                if answers:
                    held.append(conn)
                else:
                    conn.close()

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def refused_port() -> str:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


def drop_in(node: NodeTree, server: str, grant_id: str = GRANT) -> None:
    path = node.root / "etc/sudoers.d" / f"broker_{grant_id}"
    path.write_text(
        "# Managed by the broker; do not edit.\n"
        "Defaults:alice use_pty, log_input, log_output, !ignore_iolog_errors\n"
        f"Defaults:alice log_servers={server}, log_server_timeout=10, log_server_keepalive\n"
        "alice ALL = (root) NOPASSWD: LOG_INPUT: LOG_OUTPUT: ALL\n"
    )
    path.chmod(0o440)


def exited_pid() -> tuple[int, int]:
    """A pid whose process has exited, and the start ticks it had."""
    proc = subprocess.Popen(["sleep", "0.2"])
    ticks = int(Path(f"/proc/{proc.pid}/stat").read_text().rpartition(")")[2].split()[19])
    proc.wait()
    return proc.pid, ticks


def record(node: NodeTree, pid: int, ticks: int, *, runas: str = "alice", age: int = 0) -> Path:
    """sessions/<grant>/<pid> as pam_broker.so writes it at the account check (runas = the
    invoking user) or, runas="root", as session open rewrites it."""
    directory = node.root / "run/broker-sessions" / GRANT
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / str(pid)
    path.write_text(f"alice {runas} pts/4 {bn.format_utc(bn_now() - age)} {ticks} -\n")
    path.chmod(0o600)
    return path


def spooled(node: NodeTree) -> list[dict[str, Any]]:
    events = node.root / "var/spool/broker/events"
    return [json.loads(p.read_text()) for p in sorted(events.iterdir())]


def test_a_sudo_its_log_server_refused_becomes_a_log_server_deny(node: NodeTree) -> None:
    node.install(node.grant(id=GRANT))  # else the pass's reap removes the drop-in first
    pid, ticks = exited_pid()
    path = record(node, pid, ticks)
    with log_server(answers=False) as server:
        drop_in(node, server)
        done = watch.watch_pass(node.paths, bn_now(), escapes.Memory())
    assert done["log_server_denied"] == 1
    [event] = spooled(node)
    assert (event["kind"], event["reason"], event["grant_id"]) == ("deny", "log_server", GRANT)
    assert (event["user"], event["service"], event["tty"], event["pid"]) == (
        "alice", "sudo", "pts/4", pid,
    )  # fmt: skip
    assert not path.exists()  # judged once
    stored = parse_event("gpu01", event)
    assert stored is not None
    assert (stored.reason, stored.grant_id, stored.user) == ("log_server", GRANT, "alice")
    assert unlogged.unlogged_refusals(node.paths, bn_now()) == 0


def test_no_listener_at_all_is_a_log_server_deny_too(node: NodeTree) -> None:
    pid, ticks = exited_pid()
    record(node, pid, ticks)
    drop_in(node, refused_port())
    assert unlogged.unlogged_refusals(node.paths, bn_now()) == 1
    assert [e["reason"] for e in spooled(node)] == ["log_server"]


def test_a_dead_record_while_the_log_server_answers_is_no_refusal(node: NodeTree) -> None:
    """`sudo -l` runs the account check and opens no session: not a refusal."""
    pid, ticks = exited_pid()
    path = record(node, pid, ticks)
    with log_server(answers=True) as server:
        drop_in(node, server)
        assert unlogged.unlogged_refusals(node.paths, bn_now()) == 0
    assert spooled(node) == [] and not path.exists()


def test_opened_running_or_old_sessions_are_not_judged(node: NodeTree) -> None:
    drop_in(node, refused_port())
    pid, ticks = exited_pid()
    opened = record(node, pid, ticks, runas="root")  # killed mid-session: not a refusal
    sleeper = subprocess.Popen(["sleep", "30"])
    try:
        own = Path(f"/proc/{sleeper.pid}/stat").read_text().rpartition(")")[2].split()[19]
        running = record(node, sleeper.pid, int(own))  # sudo before its session opens
        assert unlogged.unlogged_refusals(node.paths, bn_now()) == 0
        assert opened.exists() and running.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
        running.unlink(missing_ok=True)
    old_pid, old_ticks = exited_pid()
    record(node, old_pid, old_ticks, age=unlogged.FRESH + 60)
    assert unlogged.unlogged_refusals(node.paths, bn_now()) == 0
    assert spooled(node) == []


def test_only_a_log_server_the_drop_in_names_is_probed(node: NodeTree) -> None:
    asked: list[str] = []
    pid, ticks = exited_pid()
    record(node, pid, ticks)
    # No drop-in (the grant was reaped meanwhile): nothing to probe, no event.
    assert unlogged.unlogged_refusals(node.paths, bn_now(), asked.append) == 0
    record(node, pid, ticks)
    drop_in(node, "127.0.0.1:30343; touch /tmp/x")
    assert unlogged.unlogged_refusals(node.paths, bn_now(), asked.append) == 0
    assert asked == [] and spooled(node) == []
