"""Live forwarding of the audit chain to a SIEM: every event, in seq order, as RFC 5424
syslog with structured data (rfc5424.py), to a local Unix socket or over TCP or TLS.

Nothing is lost while the receiver is down: the last seq each target took is kept in the
store (`audit_forward`, migration 13) and moves only after a send succeeded, so every
pass sends what follows it, at most `audit.forward_batch` events, and a failed pass is
retried with doubling back-off. Delivery is at least once: a receiver that dies after
reading a batch but before the broker saw it close gets that batch again; the `seq`
parameter lets the SIEM drop the repeat.

What counts as taken: a Unix datagram accepted by the socket (the receiver's queue; a
datagram socket never drops silently), or, on a stream, the receiver closing the
connection after the broker's end of stream, which it does only once it has read every
byte before it. A connection refused, reset or timed out means not taken.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import sqlite3
import ssl
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

from broker.audit import query, rfc5424
from broker.audit.chain import AuditEvent
from broker.config.forwarding import ForwardFields, ForwardTarget
from broker.core import syslog
from broker.core.timeutil import to_text, utcnow
from broker.store.db import Store

log = logging.getLogger("broker.audit.forward")

MAX_BACKOFF_S: Final = 300.0
_MAX_ERROR = 300


class SendError(Exception):
    """A send that did not (wholly) succeed; `delivered` frames at the front were taken."""

    def __init__(self, reason: str, delivered: int = 0) -> None:
        super().__init__(reason)
        self.delivered = delivered


def backlog(conn: sqlite3.Connection, audit: ForwardFields) -> int | None:
    """Events the SIEM has not taken yet (what a metric or health check shows), or None
    when forwarding is off."""
    target = audit.forward_target
    if target is None:
        return None
    return max(0, query.head_seq(conn) - query.forward_cursor(conn, str(target)))


def describe(exc: BaseException) -> str:
    """A short, one-line, printable reason for a failed send (no payload, no secret)."""
    return syslog.failure(exc, _MAX_ERROR)


def send_frames(
    target: ForwardTarget, frames: Sequence[bytes], *, timeout: float, tls: ssl.SSLContext | None
) -> None:
    """Send every frame to `target`; raises SendError saying how many were taken first."""
    if target.kind == "unix":
        _send_unix(str(target.path), frames, timeout)
        return
    try:
        sock = socket.create_connection((target.host, target.port), timeout=timeout)
    except OSError as exc:
        raise SendError(describe(exc)) from exc
    try:
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname=target.host)
        _send_stream(sock, frames, timeout, tls=tls is not None)
    except (OSError, ValueError) as exc:
        raise SendError(describe(exc)) from exc
    finally:
        sock.close()


def _send_unix(path: str, frames: Sequence[bytes], timeout: float) -> None:
    """One datagram per frame (imuxsock, journald's /dev/log); a stream socket at that
    path (syslog-ng's unix-stream) gets the octet-counted stream instead."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        for done, frame in enumerate(frames):
            try:
                sock.sendto(frame, path)
            except OSError as exc:
                if exc.errno == errno.EPROTOTYPE and done == 0:
                    break
                raise SendError(f"{path}: {describe(exc)}", done) from exc
        else:
            return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stream:
        stream.settimeout(timeout)
        try:
            stream.connect(path)
            _send_stream(stream, frames, timeout, tls=False)
        except OSError as exc:
            raise SendError(f"{path}: {describe(exc)}") from exc


def _send_stream(
    sock: socket.socket, frames: Sequence[bytes], timeout: float, *, tls: bool
) -> None:
    """Octet-counted frames, then our end of stream, then wait (bounded) for the
    receiver's: its close after reading our last byte is the only acknowledgement plain
    syslog has."""
    sock.sendall(b"".join(rfc5424.octet_counted(frame) for frame in frames))
    if isinstance(sock, ssl.SSLSocket) and tls:
        try:
            sock = sock.unwrap()  # close_notify both ways
        except ssl.SSLEOFError:
            return  # the receiver closed the connection after our close_notify
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        if not sock.recv(4096):
            return
    raise TimeoutError("the receiver did not close the connection")


@dataclass(frozen=True)
class ForwardReport:
    """What one pass did: events sent, what is still to send, why it failed."""

    sent: int = 0
    backlog: int = 0
    error: str | None = None
    waiting: bool = False  # in back-off: nothing was tried


class Forwarder:
    """Sends the events after the cursor; one per daemon, `run_once` from one thread."""

    def __init__(
        self,
        store: Store,
        audit: ForwardFields,
        *,
        clock: Callable[[], float] = time.monotonic,
        hostname: str | None = None,
    ) -> None:
        target = audit.forward_target
        if target is None:
            raise ValueError("audit.forward is not set")
        self._store = store
        self._cfg = audit
        self._target = target
        self._key = str(target)
        self._clock = clock
        self._hostname = hostname or socket.gethostname()
        self._tls: ssl.SSLContext | None = None
        self._failures = 0
        self._next_try = 0.0

    def run_once(self) -> ForwardReport:
        """One batch after the cursor; the cursor moves past what the receiver took."""
        conn = self._store.conn
        if self._clock() < self._next_try:
            return ForwardReport(backlog=backlog(conn, self._cfg) or 0, waiting=True)
        cursor = query.forward_cursor(conn, self._key)
        filt = query.EventFilter(after_seq=cursor, limit=self._cfg.forward_batch)
        events = list(query.iter_events(conn, filt))
        if not events:
            return ForwardReport()
        delivered, error = self._send(events)
        if delivered:
            with self._store.transaction() as wconn:
                query.advance_forward_cursor(
                    wconn, self._key, events[delivered - 1].seq, to_text(utcnow())
                )
        if error is None:
            if self._failures:
                log.info("audit forwarding to %s works again", self._key)
            self._failures = 0
        else:
            self._failed(error)
        return ForwardReport(
            sent=delivered, backlog=backlog(self._store.conn, self._cfg) or 0, error=error
        )

    def _send(self, events: list[AuditEvent]) -> tuple[int, str | None]:
        cfg = self._cfg
        frames = [
            rfc5424.message(
                event,
                facility=cfg.forward_facility,
                app_name=cfg.forward_app_name,
                hostname=self._hostname,
                procid=os.getpid(),
                max_bytes=cfg.forward_max_bytes,
            )
            for event in events
        ]
        try:
            context = self._context() if self._target.kind == "tls" else None
        except (OSError, ValueError) as exc:
            return 0, f"cannot use forward_ca_file {cfg.forward_ca_file}: {describe(exc)}"
        try:
            send_frames(
                self._target, frames, timeout=cfg.forward_timeout.total_seconds(), tls=context
            )
        except SendError as exc:
            return exc.delivered, str(exc)
        return len(frames), None

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            if self._cfg.forward_ca_file is not None:
                context.load_verify_locations(cafile=str(self._cfg.forward_ca_file))
            self._tls = context
        return self._tls

    def _failed(self, error: str) -> None:
        """Back off: forward_backoff, doubling with each failure in a row, at most 5 min."""
        base = self._cfg.forward_backoff.total_seconds()
        wait = min(base * 2 ** min(self._failures, 20), MAX_BACKOFF_S)
        self._failures += 1
        self._next_try = self._clock() + wait
        log.warning(
            "audit forwarding to %s failed (%d in a row), retrying in %.0fs: %s",
            self._key,
            self._failures,
            wait,
            error,
        )
