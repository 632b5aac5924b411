"""Health, metrics and the systemd watchdog, against a real daemon on a real store."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from broker.app import App
from broker.config.loader import load_settings
from broker.config.settings import Settings
from broker.core.timeutil import to_text, utcnow
from broker.daemon import server
from broker.daemon.health import check_store, evaluate
from broker.daemon.liveness import HEARTBEATS, Heartbeats
from broker.daemon.scheduler import Scheduler
from broker.daemon.server import feed_watchdog, running, watchdog_every
from tests.helpers import run_broker, serving, write_config
from tests.unit.test_daemon import request


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="broker-health-test-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metrics_config(directory: Path, port: int) -> Path:
    """The minimal configuration with daemon.metrics_listen on loopback at `port`."""
    config = write_config(directory)
    text = config.read_text().replace(
        "[daemon]\n", f'[daemon]\nmetrics_listen = "127.0.0.1:{port}"\n'
    )
    config.write_text(text)
    return config


def make_settings(directory: Path, extra: str = "", config: Path | None = None) -> Settings:
    config = config or write_config(directory, extra)
    result = run_broker("init", config=config)
    assert result.returncode == 0, result.stderr
    return load_settings(config)


def test_health_is_ok_and_names_every_check(shared_dir: Path) -> None:
    settings = make_settings(shared_dir)
    with running(settings):
        status, body = request(settings.daemon.socket, "GET", "/v1/health")
    assert status == 200, body
    names = [c["name"] for c in body["checks"]]
    assert names[0] == "store"
    for thread in ("broker-scheduler", "broker-indexer", "broker-detector", "broker-notifier"):
        assert thread in names
    assert body["ok"] is True and body["failed"] == []


def test_a_dead_scheduler_thread_makes_health_503_naming_it(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(shared_dir)
    monkeypatch.setattr(Scheduler, "_detect", lambda self: None)  # the thread ends at once
    with running(settings):
        status, body = request(settings.daemon.socket, "GET", "/v1/health")
    assert status == 503, body
    assert body["failed"] == ["broker-detector"]
    detail = next(c["detail"] for c in body["checks"] if c["name"] == "broker-detector")
    assert detail == "thread broker-detector is not running"


def test_a_thread_without_a_good_pass_for_too_long_is_stale() -> None:
    beats = Heartbeats()
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, name="broker-stuck")
    thread.start()
    try:
        beats.register(thread, interval_s=0.0, floor_s=0.0)
        (state,) = beats.states()
        assert not state.ok
        assert "has not completed a pass since start" in (state.problem() or "")
        beats.register(thread, interval_s=60.0, floor_s=0.0)
        assert beats.states()[0].ok  # 5 intervals of a minute: not stale yet
    finally:
        stop.set()
        thread.join()


def test_an_unreadable_store_fails_the_store_check(shared_dir: Path) -> None:
    settings = make_settings(shared_dir)
    app = App(settings)
    assert check_store(app).ok
    app.close()
    # The database replaced by something that is not SQLite (a bad restore, a disk error).
    size = settings.db_path.stat().st_size
    settings.db_path.write_bytes(b"\x5a" * size)
    for suffix in ("-wal", "-shm"):
        Path(f"{settings.db_path}{suffix}").unlink(missing_ok=True)
    app = App(settings)
    try:
        check = check_store(app)
        assert not check.ok
        assert check.detail.startswith("the store cannot be read:"), check.detail
        health = evaluate(app, Heartbeats(), utcnow())
        assert health.failed[:2] == ["store", "threads"]
        assert not health.ok
    finally:
        app.close()


def test_broker_health_exits_3_naming_a_log_server_that_is_down(shared_dir: Path) -> None:
    conf = shared_dir / "sessions"
    conf.mkdir()
    (conf / "sudo_logsrvd.conf").write_text("# written by broker sessions setup\n")
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen()
    up = listening.getsockname()[1]
    extra = (
        f'[sessions]\nconf_dir = "{conf}"\nlogsrvd_listen = "127.0.0.1:{free_port()}"\n'
        f'tunnel_listen = "127.0.0.1:{up}"\n'
    )
    config = write_config(shared_dir, extra)
    assert run_broker("init", config=config).returncode == 0
    try:
        with serving(config):
            result = run_broker("health", config=config)
            as_json = run_broker("health", "--json", config=config)
    finally:
        listening.close()
    assert result.returncode == 3, result.stdout + result.stderr
    assert "the broker is degraded: logserver failed" in result.stderr
    assert "sudo_logsrvd does not answer" in result.stdout
    body = json.loads(as_json.stdout)
    assert body["failed"] == ["logserver"]
    tunnel = next(c for c in body["checks"] if c["name"] == "logserver-tunnel")
    assert tunnel["ok"] is True


def _seed(settings: Settings) -> None:
    """Two active grants (one failed on a node), a waiting request, a lock, a webhook
    delivery waiting, as the services would have left them."""
    now = utcnow()
    app = App(settings)
    try:
        conn = app.store().conn
        later = to_text(now.replace(year=now.year + 1))
        for grant in ("g1", "g2", "g3"):
            state = "expired" if grant == "g3" else "active"
            conn.execute(
                "INSERT INTO grants (id, user, sid, role, runas, commands, command_lines, nodes,"
                " not_before, not_after, reason, approvers, policy_sha256, login, workloads,"
                " max_sessions, created_at, created_by, state) VALUES (?, 'alice', 'S-1', 'r',"
                " 'root', '[]', '[]', '[]', ?, ?, 'x', '[]', 'h', 0, 0, 1, ?, 'alice', ?)",
                (grant, to_text(now), later, to_text(now), state),
            )
        for grant, node, state, attempts in (
            ("g1", "n1", "live", 1),
            ("g2", "n2", "failed", 1),
            ("g3", "n3", "removing", 2),
            ("g3", "n4", "removing", 0),
        ):
            conn.execute(
                "INSERT INTO grant_nodes (grant_id, node, state, attempts) VALUES (?, ?, ?, ?)",
                (grant, node, state, attempts),
            )
        conn.execute(
            "INSERT INTO elevation_requests (id, user, sid, nodes, role, runas, commands,"
            " duration_s, reason, policy_sha256, approvals_needed, approver_groups, state,"
            " created_at, expires_at) VALUES ('r1', 'bob', 'S-2', '[]', 'r', 'root', '[]', 60,"
            " 'x', 'h', 1, '[]', 'pending', ?, ?)",
            (to_text(now), later),
        )
        conn.execute("INSERT INTO mfa_locks (sid, until, failures) VALUES ('S-3', ?, 5)", (later,))
        conn.execute(
            "INSERT INTO alerts (id, created_at, rule, severity, message, source)"
            " VALUES (1, ?, 'r', 'high', 'm', 'detect')",
            (to_text(now),),
        )
        conn.execute(
            "INSERT INTO alert_deliveries (alert_id, channel, state, next_at)"
            " VALUES (1, 'webhook', 'pending', ?)",
            (to_text(now),),
        )
    finally:
        app.close()


def _scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found: dict[str, Any] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.values()))
            found[sample.name if not labels else f"{sample.name}{labels}"] = sample.value
    return found


def test_metrics_hold_the_seeded_figures(shared_dir: Path) -> None:
    port = free_port()
    settings = make_settings(shared_dir, config=metrics_config(shared_dir, port))
    _seed(settings)
    with running(settings):
        found = _scrape(port)
    assert found["broker_grants_active"] == 2
    assert found["broker_grant_pushes_failed"] == 1
    assert found["broker_grant_removals_pending"] == 2
    assert found["broker_nodes_unreachable"] == 2  # n2 (failed), n3 (removal retried)
    assert found["broker_requests_waiting"] == 1
    assert found["broker_mfa_locked_accounts"] == 1
    assert found["broker_webhook_backlog"] == 1
    assert found["broker_audit_head_seq"] >= 1
    assert found["broker_audit_seal_lag"] == (
        found["broker_audit_head_seq"] - found["broker_audit_sealed_seq"]
    )
    assert found["broker_directory_sync_age_seconds"] == float("inf")
    assert found["broker_healthy"] == 1
    assert found["broker_health_check_ok('store',)"] == 1
    assert found["broker_thread_alive('broker-indexer',)"] == 1
    assert "broker_mfa_failures_total" in found and "broker_push_failures_total" in found


def test_metrics_port_in_use_stops_the_start_in_one_line(shared_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = metrics_config(shared_dir, port)
        assert run_broker("init", config=config).returncode == 0
        result = run_broker("serve", config=config, timeout=60)
    assert result.returncode == 3
    assert f"cannot listen for metrics on 127.0.0.1:{port}" in result.stderr


def _notify_socket(directory: Path, monkeypatch: pytest.MonkeyPatch) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = directory / "notify.sock"
    sock.bind(str(path))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    return sock


def test_the_watchdog_is_fed_only_while_the_daemon_is_live(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(shared_dir)
    sock = _notify_socket(shared_dir, monkeypatch)
    app = App(settings)
    try:
        with running(settings):
            assert feed_watchdog(app)
            assert sock.recv(64) == b"WATCHDOG=1"
        # Stopped: no background thread runs, so no ping.
        assert not feed_watchdog(app)
        with pytest.raises(BlockingIOError):
            sock.recv(64)
    finally:
        app.close()
        sock.close()
    assert HEARTBEATS.states() == []


def test_watchdog_interval_is_half_of_systemds_and_only_for_our_pid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    assert watchdog_every() is None
    monkeypatch.setenv("WATCHDOG_USEC", "120000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_every() == 60.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_every() is None


def test_ready_is_sent_to_the_notify_socket(
    shared_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sock = _notify_socket(shared_dir, monkeypatch)
    try:
        server.notify_systemd("READY=1")
        assert sock.recv(64) == b"READY=1"
    finally:
        sock.close()
