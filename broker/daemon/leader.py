"""One leader among brokers: the scheduler's duties (reaper, indexer, detector, responder,
notifier, forwarder, keytab schedule) run only on the broker holding the lease in the store.

Every broker's leadership thread tries, every third of `daemon.leader_lease`, to renew or
take the lease in one write transaction; the store lets one writer in at a time, so two
brokers can never both take it. No wall clock decides anything:

- the holder acts as leader only until two thirds of the lease after it *started* its last
  good renewal, by its own monotonic clock;
- another broker takes the lease over only once it has seen the same lease (holder, term,
  renewal) unchanged for a whole lease, by its own monotonic clock, or the holder released
  it on a clean stop.

So the old holder has stopped before anyone may take over, whatever the wall clocks say
(a clock stepped forward or a lease written by a broker whose clock was wrong changes
nothing). Each takeover raises the term, a number that never goes back, and is a
`scheduler.leader` audit event. A leader that dies (kill -9, host down, store
unreachable) is replaced between one and one and a third leases later.
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
    renewed_at: datetime
    expires_at: datetime  # for people; equal to renewed_at once released

    @property
    def released(self) -> bool:
        return self.expires_at <= self.renewed_at


def next_lease(
    current: Lease | None, me: str, now: datetime, ttl: timedelta, unchanged_s: float
) -> Lease | None:
    """The lease after `me` asks: renewed, taken (a new term), or None while another
    broker's lease may still be live. `unchanged_s`: how long (monotonic seconds) `me` has
    seen `current` exactly as it is now."""
    if current is None:
        return Lease(me, 1, now, now + ttl)
    if current.holder == me:
        return Lease(me, current.term, now, now + ttl)
    if current.released or unchanged_s >= ttl.total_seconds():
        return Lease(me, current.term + 1, now, now + ttl)
    return None


def holder_name() -> str:
    """This daemon process among all brokers: host, pid and a random token (a restarted
    daemon with the same pid is still another holder)."""
    host = "".join(c for c in socket.gethostname() if c.isalnum() or c in ".-")[:64] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(4)}"


def read_lease(conn: sqlite3.Connection) -> Lease | None:
    row = conn.execute(
        "SELECT holder, term, renewed_at, expires_at FROM scheduler_lease WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    return Lease(str(row[0]), int(row[1]), from_text(row[2]), from_text(row[3]))


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
        self._seen: tuple[Lease, float] | None = None  # another's lease, since when (monotonic)
        self._lock = threading.Lock()

    def register(self) -> None:
        _CURRENT.append(self)

    def unregister(self) -> None:
        if self in _CURRENT:
            _CURRENT.remove(self)

    def describe(self) -> tuple[bool, str]:
        """For health: whether the lease looks kept by someone, and one line saying who."""
        with self._lock:
            term, holder, seen = self.term, self.holder, self._seen
        if self.is_leader():
            return True, f"this broker ({self.me}) runs the scheduler, term {term}"
        if holder is None or holder == self.me or seen is None:
            return True, f"standby ({self.me}): no lease seen yet"
        stale = time.monotonic() - seen[1]
        if stale > 2 * self.ttl.total_seconds():
            return False, (
                f"standby ({self.me}): the lease of {holder} (term {term}) has not been renewed"
                f" for {stale:.0f}s and this broker cannot take it over: nobody runs the scheduler"
            )
        return True, f"standby ({self.me}): {holder} runs the scheduler, term {term}"

    def is_leader(self) -> bool:
        with self._lock:
            return time.monotonic() < self._until

    def _unchanged_s(self, current: Lease | None, now_mono: float) -> float:
        """How long this broker has seen `current` exactly as it is (0 when it just changed)."""
        with self._lock:
            if current is None or current.holder == self.me:
                self._seen = None
                return 0.0
            if self._seen is None or self._seen[0] != current:
                self._seen = (current, now_mono)
            return now_mono - self._seen[1]

    def attempt(self, store: Store, now: datetime | None = None) -> bool:
        """One try at renewing or taking the lease; whether this broker leads now."""
        started = time.monotonic()
        now = now or utcnow()
        with store.transaction() as conn:
            current = read_lease(conn)
            unchanged = self._unchanged_s(current, time.monotonic())
            lease = next_lease(current, self.me, now, self.ttl, unchanged)
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
            self.term, self.holder, self._seen = lease.term, self.me, None
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
        """On a clean stop, once this broker's duties have finished: stop acting as leader,
        then mark the lease released, so another broker (or this one restarted) takes over
        without waiting a whole lease."""
        with self._lock:
            self._until = 0.0
        try:
            with store.transaction() as conn:
                conn.execute(
                    "UPDATE scheduler_lease SET expires_at = renewed_at WHERE id = 1 AND holder = ?",
                    (self.me,),
                )
        except (BrokerError, sqlite3.Error) as exc:
            log.warning("scheduler lease not released (it runs out by itself): %s", exc)
