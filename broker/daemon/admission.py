"""Who gets a worker, and for how long a client may take to send its request.

A per-read socket timeout does not stop a client that sends one byte just
before each timeout, and an unbounded queue lets one local user (or anyone
who reaches the TLS port) park thousands of connections. So: each peer (a
uid on the socket, an address on TLS) may have a few connections in flight,
the whole listener a bounded number, and the request (TLS handshake,
headers and body) must arrive within `request_timeout` in total; a watchdog
shuts the connection down when it does not. Root and the daemon's own user
are never held back by the per-peer cap, so an operator always gets through.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Hashable

log = logging.getLogger("broker.daemon")

BUSY = json.dumps(
    {
        "error": {
            "kind": "unavailable",
            "message": "the broker daemon is busy (too many connections from you or in all)",
            "fix": "retry in a few seconds",
        }
    }
).encode()
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: " + str(len(BUSY)).encode() + b"\r\n\r\n" + BUSY
)


class Admission:
    """Counts connections in flight per peer and in all; refuses beyond the caps."""

    def __init__(self, total: int, per_peer: int, exempt: frozenset[Hashable]) -> None:
        self.total = total
        self.per_peer = per_peer
        self.exempt = exempt
        self._lock = threading.Lock()
        self._by_peer: Counter[Hashable] = Counter()
        self._count = 0

    def enter(self, peer: Hashable) -> bool:
        with self._lock:
            if self._count >= self.total:
                return False
            if peer not in self.exempt and self._by_peer[peer] >= self.per_peer:
                return False
            self._count += 1
            self._by_peer[peer] += 1
            return True

    def leave(self, peer: Hashable) -> None:
        with self._lock:
            self._count -= 1
            self._by_peer[peer] -= 1
            if self._by_peer[peer] <= 0:
                del self._by_peer[peer]


def refuse_busy(sock: socket.socket) -> None:
    """Answer 503 without blocking the accept loop, then close."""
    with contextlib.suppress(OSError):
        sock.setblocking(False)
        sock.send(BUSY_RESPONSE)
    with contextlib.suppress(OSError):
        sock.close()


def _shutdown_fd(fd: int) -> None:
    """Shut a connection down by descriptor: any read blocked on it returns at once."""
    if fd < 0:
        return
    probe = socket.socket(fileno=fd)
    try:
        with contextlib.suppress(OSError):
            probe.shutdown(socket.SHUT_RDWR)
    finally:
        probe.detach()  # the descriptor still belongs to the worker, which closes it


class Deadlines:
    """A watchdog for requests still being received, keyed by worker thread."""

    def __init__(self, tick: float = 0.2) -> None:
        self._lock = threading.Lock()
        self._due: dict[int, tuple[int, float]] = {}
        self._stop = threading.Event()
        self._tick = tick
        self._thread = threading.Thread(target=self._run, name="broker-deadlines", daemon=True)
        self._thread.start()

    def track(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            self._due[threading.get_ident()] = (sock.fileno(), time.monotonic() + seconds)

    def release(self) -> None:
        """The request has arrived: the handler may take as long as its work needs."""
        with self._lock:
            self._due.pop(threading.get_ident(), None)

    def expire_all(self) -> None:
        with self._lock:
            for fd, _ in self._due.values():
                _shutdown_fd(fd)
            self._due.clear()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                late = [key for key, (_, due) in self._due.items() if due <= now]
                for key in late:
                    fd, _ = self._due.pop(key)
                    log.info("dropping a client that did not send its request in time")
                    _shutdown_fd(fd)
