"""Append events to the chain inside the caller's transaction, and seal the head after commit."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from broker.audit.chain import GENESIS_HASH, AuditEvent, make_event
from broker.audit.checkpoint import SigningKey, checkpoint_line, last_sealed_seq, send_syslog
from broker.core.timeutil import to_text, utcnow
from broker.store.files import append_line

log = logging.getLogger("broker.audit")


@dataclass(frozen=True)
class EventInput:
    """What a state change says about itself; seq, time and hashes are added on append."""

    actor: str
    action: str
    target: str
    outcome: str = "ok"
    details: Mapping[str, Any] = field(default_factory=dict)


def head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, GENESIS_HASH)


def record(conn: sqlite3.Connection, event: EventInput, now: datetime | None = None) -> AuditEvent:
    """Append one event; must run inside `Store.transaction()` so it commits with the change."""
    return record_many(conn, [event], now)[0]


def record_many(
    conn: sqlite3.Connection, events: Sequence[EventInput], now: datetime | None = None
) -> list[AuditEvent]:
    """Append several events in order, in the caller's transaction (one head read)."""
    if not conn.in_transaction:
        raise RuntimeError("audit events must be written inside Store.transaction()")
    seq, prev = head(conn)
    stamp = to_text(now or utcnow())
    made: list[AuditEvent] = []
    for item in events:
        seq += 1
        event = make_event(
            seq=seq,
            ts=stamp,
            actor=item.actor,
            action=item.action,
            target=item.target,
            outcome=item.outcome,
            details=item.details,
            prev_hash=prev,
        )
        made.append(event)
        prev = event.hash
    conn.executemany(
        "INSERT INTO audit_events (seq, ts, actor, action, target, outcome, details, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (e.seq, e.ts, e.actor, e.action, e.target, e.outcome, e.details, e.prev_hash, e.hash)
            for e in made
        ],
    )
    return made


class Sealer:
    """Writes a signed checkpoint of the committed head to every configured place."""

    def __init__(
        self,
        key: SigningKey,
        *,
        broker: str,
        log_path: Path,
        copy_path: Path | None,
        syslog_socket: Path | None,
        interval: timedelta,
        owner: tuple[int, int] | None,
    ) -> None:
        self._key = key
        self._broker = broker
        self._log_path = log_path
        self._copy_path = copy_path
        self._syslog = syslog_socket
        self._interval = interval
        self._owner = owner
        self._sealed = last_sealed_seq(log_path)
        self._sealed_at: datetime | None = None

    def seal(self, conn: sqlite3.Connection, *, force: bool = False) -> int | None:
        """Seal the current head if it moved (and the interval passed); return the sealed seq."""
        seq, digest = head(conn)
        if seq == 0 or seq <= self._sealed:
            return None
        now = utcnow()
        if not force and self._sealed_at is not None and now - self._sealed_at < self._interval:
            return None
        line = checkpoint_line(self._key, seq, digest, to_text(now), broker=self._broker)
        # The change is committed already: a failed copy is logged loudly, never undone,
        # and `broker audit verify` reports the events as unsealed until a later seal.
        for path in (self._log_path, self._copy_path):
            if path is not None:
                try:
                    append_line(path, line, self._owner)
                except OSError as exc:
                    log.error("audit checkpoint for seq %d not written to %s: %s", seq, path, exc)
        if self._syslog is not None:
            send_syslog(self._syslog, line)
        self._sealed, self._sealed_at = seq, now
        return seq
