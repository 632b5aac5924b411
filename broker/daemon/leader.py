"""One leader among brokers: the scheduler's duties (reaper, indexer, detector, responder,
notifier, forwarder, keytab schedule) run only on the broker holding the lease in the store.

Every broker's leadership thread tries, every third of `daemon.leader_lease`, to renew or
take the lease in one write transaction; the store lets one writer in at a time, so two
brokers can never both take it. A lease runs out `leader_lease` after it was written, and
another broker takes it only then, raising the term (a fencing number that never goes
back; each change of holder is a `scheduler.leader` audit event). A broker acts as leader
only until two thirds of the lease after it *started* its last good renewal, by its own
monotonic clock: it has stopped before anyone may take over, as long as the brokers'
clocks agree to within a third of the lease (run NTP). A leader that dies (kill -9, host
down, store unreachable) is replaced between one and one and a third leases later.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.audit import writer
from broker.core.errors import BrokerError
from broker.core.timeutil import from_text, to_text, utcnow
from broker.store.db import Store

log = logging.getLogger("broker.leader")


@dataclass(frozen=True)
class Lease:
    holder: str
    term: int
    expires_at: datetime


def next_lease(current: Lease | None, me: str, now: datetime, ttl: timedelta) -> Lease | None:
    """The lease after `me` asks at `now`: renewed, taken (a new term), or None while another
    broker's lease has not run out."""
    if current is None:
        return Lease(me, 1, now + ttl)
    if current.holder == me:
        return Lease(me, current.term, now + ttl)
    if current.expires_at <= now:
        return Lease(me, current.term + 1, now + ttl)
    return None


def holder_name() -> str:
    """This daemon process among all brokers: host, pid and a random token (a restarted
    daemon with the same pid is still another holder)."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in ".-")[:64] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


def read_lease(conn: sqlite3.Connection) -> Lease | None:
    row = conn.execute(
        "SELECT holder, term, expires_at FROM scheduler_lease WHERE id = 1"
    ).fetchone()
    return None if row is None else Lease(str(row[0]), int(row[1]), from_text(row[2]))


_CURRENT: list[Leadership] = []


def current() -> Leadership | None:
    """The running scheduler's leadership (None when no scheduler runs in this process)."""
    return _CURRENT[-1] if _CURRENT else None


class Leadership:
    """This broker's side of the lease: `is_leader()` is what the scheduler's threads ask
    before each pass."""

    def __init__(self, ttl: timedelta, me: str | None = None) -> None:
        self.ttl = ttl
        self.me = me or holder_name()
        self.term = 0
        self.holder: str | None = None
        # Whether this broker's lease was taken over from another holder (then duties run
        # at once; on a first start they keep their usual pace).
        self.took_over = False
        self._until = 0.0  # monotonic time at which this broker stops acting as leader
        self._lock = threading.Lock()

    def register(self) -> None:
        _CURRENT.append(self)

    def unregister(self) -> None:
        if self in _CURRENT:
            _CURRENT.remove(self)

    def describe(self) -> str:
        """One line for health: this broker's role and who leads."""
        with self._lock:
            term, holder = self.term, self.holder
        if self.is_leader():
            return f"this broker ({self.me}) runs the scheduler, term {term}"
        if holder is None or holder == self.me:
            return f"standby ({self.me}): no live lease seen yet"
        return f"standby ({self.me}): {holder} runs the scheduler, term {term}"

    def is_leader(self) -> bool:
        with self._lock:
            return time.monotonic() < self._until

    def attempt(self, store: Store, now: datetime | None = None) -> bool:
        """One try at renewing or taking the lease; whether this broker leads now."""
        started = time.monotonic()
        now = now or utcnow()
        with store.transaction() as conn:
            current = read_lease(conn)
            lease = next_lease(current, self.me, now, self.ttl)
            if lease is None:
                assert current is not None
                self._follow(current)
                return False
            conn.execute(
                "INSERT INTO scheduler_lease (id, holder, term, renewed_at, expires_at)"
                " VALUES (1, ?, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET holder = excluded.holder,"
                " term = excluded.term, renewed_at = excluded.renewed_at,"
                " expires_at = excluded.expires_at",
                (lease.holder, lease.term, to_text(now), to_text(lease.expires_at)),
            )
            # A change of holder is recorded (the first lease of a new store is not: there
            # was nobody before, and the chain of a fresh broker starts with its own events).
            if current is not None and current.term != lease.term:
                details = {"term": lease.term, "previous": current.holder}
                writer.record(
                    conn,
                    writer.EventInput("broker", "scheduler.leader", self.me, "ok", details),
                    now,
                )
        with self._lock:
            if self.term != lease.term:
                log.warning("this broker (%s) now runs the scheduler, term %d", self.me, lease.term)
                self.took_over = current is not None and current.holder != self.me
            self.term, self.holder = lease.term, self.me
            self._until = started + self.ttl.total_seconds() * 2 / 3
        return True

    def _follow(self, current: Lease) -> None:
        with self._lock:
            if self.holder == self.me:
                log.warning(
                    "broker %s took over the scheduler (term %d)", current.holder, current.term
                )
            self.term, self.holder, self._until = current.term, current.holder, 0.0

    def release(self, store: Store) -> None:
        """On a clean stop: stop acting as leader, then let the lease run out now, so another
        broker (or this one restarted) takes over without waiting for it."""
        with self._lock:
            self._until = 0.0
        try:
            with store.transaction() as conn:
                conn.execute(
                    "UPDATE scheduler_lease SET expires_at = ? WHERE id = 1 AND holder = ?",
                    (to_text(utcnow()), self.me),
                )
        except (BrokerError, sqlite3.Error) as exc:
            log.warning("scheduler lease not released (it runs out by itself): %s", exc)
