"""`broker serve`: bind the socket, run a fixed pool of workers, stop cleanly on SIGTERM.

Each worker thread owns its own App (and so its own SQLite connection): the
store sees the same concurrency as several CLI processes had before, and no
connection is ever shared between threads.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import socketserver
import stat
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from broker.app import App, close_shared
from broker.config.kerberos import use_krb5_conf
from broker.config.settings import Settings
from broker.core.errors import BrokerError, UnavailableError
from broker.core.timeutil import utcnow
from broker.daemon import api  # noqa: F401 (registers the routes)
from broker.daemon.admission import Admission, Deadlines
from broker.daemon.caller import Caller, unix_caller
from broker.daemon.health import liveness_problems
from broker.daemon.http import RequestHandler, Service
from broker.daemon.liveness import HEARTBEATS
from broker.daemon.peer import peer_credentials
from broker.daemon.pooled import PooledServer
from broker.daemon.routing import REGISTRY, Registry
from broker.daemon.scheduler import Scheduler
from broker.daemon.workers import Workers

if TYPE_CHECKING:
    from broker.daemon.metrics import MetricsServer

log = logging.getLogger("broker.daemon")


class UnixServer(PooledServer, socketserver.UnixStreamServer):
    def peer_key(self, request: Any, client_address: Any) -> Hashable:
        return ("uid", peer_credentials(request).uid)


def identify_unix(
    workers: Workers, operator_group: str | None
) -> Callable[[RequestHandler], Caller]:
    def identify(handler: RequestHandler) -> Caller:
        cred = peer_credentials(handler.connection)
        app = workers.app()
        now = utcnow()
        return unix_caller(cred.uid, app.directory().snapshot(now), operator_group, now)

    return identify


def _socket_in_use(path: Path) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(1.0)
        probe.connect(str(path))
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()
    return True


def prepare_socket_path(path: Path) -> None:
    """Refuse to start beside a running daemon; remove the socket a dead one left behind."""
    if not path.parent.exists():
        path.parent.mkdir(parents=True)
        path.parent.chmod(0o755)  # the umask is 077; callers must reach the socket
    try:
        info = path.lstat()
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise UnavailableError(
            f"{path} exists and is not a socket", fix="remove it or set daemon.socket elsewhere"
        )
    if _socket_in_use(path):
        raise UnavailableError(
            f"another broker daemon is already serving on {path}",
            fix="stop it first (systemctl stop broker)",
        )
    path.unlink()


def notify_systemd(message: str) -> None:
    """sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET, if there is one."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    address = "\0" + target[1:] if target.startswith("@") else target
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock, contextlib.suppress(OSError):
        sock.sendto(message.encode("ascii"), address)


def unix_server(
    settings: Settings,
    registry: Registry,
    workers: Workers,
    pool: ThreadPoolExecutor,
    deadlines: Deadlines,
) -> UnixServer:
    """The Unix-socket listener, not yet bound: any local user may connect, the admission
    caps exempt root and the daemon's own user."""
    daemon = settings.daemon
    unix = UnixServer(str(daemon.socket), RequestHandler, bind_and_activate=False)
    unix.pool = pool
    unix.deadlines = deadlines
    unix.admission = Admission(
        total=daemon.workers * 8,
        per_peer=max(1, daemon.workers // 4),
        exempt=frozenset({("uid", 0), ("uid", os.getuid())}),
    )
    unix.service = Service(
        registry,
        max_body=daemon.max_body,
        request_timeout=daemon.request_timeout.total_seconds(),
        identify=identify_unix(workers, daemon.operator_group),
        app_for_thread=workers.app,
    )
    return unix


def _check_store(settings: Settings) -> None:
    """Kerberos configured and the store ready (migrated, sealed) before anything listens."""
    use_krb5_conf(settings.kerberos)  # before any thread binds to AD or accepts SPNEGO
    boot = App(settings)
    try:
        boot.setup().ready_for_daemon(actor="daemon")
    finally:
        boot.close()


@contextlib.contextmanager
def running(
    settings: Settings,
    ready: Callable[[], None] | None = None,
    registry: Registry = REGISTRY,
) -> Iterator[UnixServer]:
    """Start the daemon's listeners in background threads; stop them when the block ends."""
    _check_store(settings)
    daemon = settings.daemon
    workers = Workers(settings)
    pool = ThreadPoolExecutor(max_workers=daemon.workers, thread_name_prefix="broker-worker")
    deadlines = Deadlines()
    prepare_socket_path(daemon.socket)
    unix = unix_server(settings, registry, workers, pool, deadlines)
    servers: list[socketserver.BaseServer] = [unix]
    threads: list[threading.Thread] = []
    scheduler = Scheduler(settings)
    metrics: MetricsServer | None = None
    try:
        unix.server_bind()
        # Any local user may connect; what they may do is decided per request from SO_PEERCRED.
        os.chmod(daemon.socket, 0o666)  # noqa: S103 (a socket; access is per request)
        unix.server_activate()
        if daemon.listen is not None:
            # Imported here so gssapi and x509 load only when the TLS listener is configured.
            from broker.daemon.tls import tls_server

            servers.append(tls_server(settings, workers, deadlines))
        for server in servers:
            thread = threading.Thread(target=server.serve_forever, name="broker-listener")
            thread.start()
            threads.append(thread)
        scheduler.start()
        metrics = start_metrics(settings)
        log.info("broker daemon serving on %s", daemon.socket)
        if ready is not None:
            ready()
        yield unix
    finally:
        if metrics is not None:
            metrics.close()
        if threads:
            scheduler.stop()
        _stop_listeners(servers, threads, pool, deadlines)
        if threads:
            _flush_refusals(workers)
        workers.close()
        close_shared()
        with contextlib.suppress(FileNotFoundError):
            daemon.socket.unlink()


def _stop_listeners(
    servers: list[socketserver.BaseServer],
    threads: list[threading.Thread],
    pool: ThreadPoolExecutor,
    deadlines: Deadlines,
) -> None:
    for server in servers:
        if threads:
            server.shutdown()
        server.server_close()
    for thread in threads:
        thread.join()
    deadlines.expire_all()  # clients still sending their request are let go now
    for server in servers:
        if isinstance(server, PooledServer) and server.pool is not pool:
            server.pool.shutdown(wait=True, cancel_futures=True)
    pool.shutdown(wait=True, cancel_futures=True)
    deadlines.close()


def start_metrics(settings: Settings) -> MetricsServer | None:
    """The Prometheus listener when daemon.metrics_listen is set; a port that cannot be
    bound stops the start with one line rather than running unmonitored."""
    address = settings.daemon.metrics_listen
    if address is None:
        return None
    # Imported here so prometheus_client loads only when metrics are configured.
    from broker.daemon.metrics import MetricsServer

    try:
        return MetricsServer(settings, HEARTBEATS)
    except OSError as exc:
        raise UnavailableError(
            f"cannot listen for metrics on {address}: {exc.strerror or exc}",
            fix="free the port or change daemon.metrics_listen",
        ) from None


def _flush_refusals(workers: Workers) -> None:
    """At shutdown, the refusals counted but not yet summed up go into the chain."""
    try:
        workers.app().refusals().flush(utcnow(), everything=True)
    except BrokerError as exc:
        log.error("rate-limited refusals not summed up at shutdown: %s", exc)


def watchdog_every() -> float | None:
    """Half of systemd's WatchdogSec (from $WATCHDOG_USEC), when the watchdog is ours."""
    usec, pid = os.environ.get("WATCHDOG_USEC", ""), os.environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0 or (pid is not None and pid != str(os.getpid())):
        return None
    return int(usec) / 2_000_000


def feed_watchdog(app: App) -> bool:
    """WATCHDOG=1 only when the store answers a read and every background thread is alive
    and recent; otherwise say why in the log and let systemd restart a stuck daemon."""
    problems = liveness_problems(app, HEARTBEATS)
    if problems:
        log.error("not feeding the systemd watchdog: %s", "; ".join(problems))
        return False
    notify_systemd("WATCHDOG=1")
    return True


def serve(settings: Settings) -> None:
    """Run until SIGTERM or SIGINT, feeding systemd's watchdog when it is set."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        del frame
        log.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    every = watchdog_every()
    with running(settings, ready=lambda: notify_systemd("READY=1")):
        app = App(settings)  # the main thread's own connection, for the liveness check
        try:
            next_feed = 0.0
            while not stop.wait(min(1.0, every or 1.0)):
                if every is not None and time.monotonic() >= next_feed:
                    next_feed = time.monotonic() + every
                    feed_watchdog(app)
        finally:
            app.close()
        notify_systemd("STOPPING=1")
