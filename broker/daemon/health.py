"""What `/v1/health` checks, and the subset the systemd watchdog trusts.

Health answers "can this broker do its job now": the store answers a read, every
background thread is alive and has finished a pass recently, the directory snapshot is
young enough for elevation (directory.max_snapshot_age), and the recording log server
(sudo_logsrvd and the stunnel in front of it) accepts connections. Any failed check makes
the answer HTTP 503 naming each failed check, so a load balancer or monitor needs nothing
but the status code.

Liveness (the watchdog) is narrower: only what a restart of the daemon can fix, the store
and the threads. A DC or log server that is down is reported, never a reason for systemd
to kill the daemon in a loop.
"""

from __future__ import annotations

import socket
import sqlite3
from datetime import datetime

from broker import __version__
from broker.app import App
from broker.config.settings import Settings, host_port
from broker.core.errors import BrokerError
from broker.daemon import leader
from broker.daemon.liveness import Heartbeats
from broker.wire.system import Health, HealthCheck

PROBE_TIMEOUT_S = 2.0


def check_store(app: App) -> HealthCheck:
    """A real read through this thread's connection (the audit head), not just an open file."""
    try:
        row = app.store().conn.execute("SELECT MAX(seq) FROM audit_events").fetchone()
    except (sqlite3.Error, BrokerError) as exc:
        text = exc.one_line() if isinstance(exc, BrokerError) else str(exc)
        return HealthCheck(name="store", ok=False, detail=f"the store cannot be read: {text}")
    return HealthCheck(name="store", ok=True, detail=f"audit head seq {row[0] or 0}")


def check_threads(beats: Heartbeats) -> list[HealthCheck]:
    """One check per background thread: alive, and a good pass within its limit."""
    states = beats.states()
    if not states:
        return [HealthCheck(name="threads", ok=False, detail="no background threads are running")]
    checks = []
    for state in states:
        problem = state.problem()
        detail = problem or f"last good pass {state.since_success_s:.0f}s ago"
        if problem is None and state.last_success is None:
            detail = f"started {state.since_success_s:.0f}s ago, no pass finished yet"
        checks.append(HealthCheck(name=state.name, ok=problem is None, detail=detail))
    return checks


def check_directory(app: App, now: datetime) -> HealthCheck:
    """The snapshot's age against directory.max_snapshot_age: the same rule that stops
    elevation, so health turns red exactly when elevations start being refused."""
    if app.settings.directory is None:
        return HealthCheck(name="directory", ok=True, skipped=True, detail="no [directory]")
    try:
        app.directory().require_fresh(now)
    except BrokerError as exc:
        return HealthCheck(name="directory", ok=False, detail=exc.message)
    except sqlite3.Error as exc:
        return HealthCheck(name="directory", ok=False, detail=f"cannot read the snapshot: {exc}")
    return HealthCheck(name="directory", ok=True, detail="snapshot within max_snapshot_age")


def reachable(address: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """None when a TCP connection to host:port opens, else why not (one line)."""
    host, port = host_port(address, "address")
    if host in ("0.0.0.0", ""):  # noqa: S104 (a listen address: probe it on loopback)
        host = "127.0.0.1"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return None
    except OSError as exc:
        return exc.strerror or type(exc).__name__


def check_logserver(settings: Settings) -> list[HealthCheck]:
    """sudo_logsrvd and its stunnel accept connections, once `broker sessions setup` has
    written their configuration (without it, recording is not set up on this host)."""
    sessions = settings.sessions
    if not (sessions.conf_dir / "sudo_logsrvd.conf").exists():
        detail = f"not set up ({sessions.conf_dir}/sudo_logsrvd.conf is absent)"
        return [HealthCheck(name="logserver", ok=True, skipped=True, detail=detail)]
    checks = []
    for name, what, address in (
        ("logserver", "sudo_logsrvd", sessions.logsrvd_listen),
        ("logserver-tunnel", "the log server's stunnel", sessions.tunnel_listen),
    ):
        problem = reachable(address)
        detail = f"{what} answers on {address}"
        if problem is not None:
            detail = f"{what} does not answer on {address} ({problem}): sudo sessions are refused"
        checks.append(HealthCheck(name=name, ok=problem is None, detail=detail))
    return checks


def check_scheduler() -> HealthCheck:
    """Which broker runs the scheduler's duties: this one or another. Fails only when the
    lease has gone unrenewed for two leases and this broker has not taken it over either
    (then nobody expires grants or rotates keytabs)."""
    leadership = leader.current()
    if leadership is None:
        return HealthCheck(name="scheduler", ok=True, skipped=True, detail="no scheduler here")
    ok, detail = leadership.describe()
    return HealthCheck(name="scheduler", ok=ok, detail=detail)


def evaluate(app: App, beats: Heartbeats, now: datetime) -> Health:
    checks = [check_store(app), *check_threads(beats), check_scheduler()]
    checks.append(check_directory(app, now))
    checks += check_logserver(app.settings)
    failed = [c.name for c in checks if not c.ok]
    return Health(ok=not failed, version=__version__, checks=checks, failed=failed)


def liveness_problems(app: App, beats: Heartbeats) -> list[str]:
    """What the watchdog refuses to ping for: the store unreadable or a thread stuck."""
    checks = [check_store(app), *check_threads(beats)]
    return [f"{c.name}: {c.detail}" for c in checks if not c.ok]
