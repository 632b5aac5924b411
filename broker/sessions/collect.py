"""Collect the PAM hook's session open/close events from node spools, store them, then ack.

An event is deleted from a node only after the transaction that stored it
has committed (at-least-once delivery; `UNIQUE (node, event_id)` makes a
second delivery a no-op), so a broker crash between the two loses nothing.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.audit import writer
from broker.core.timeutil import to_text
from broker.fleet import nodeprog
from broker.fleet.pool import SshPool
from broker.fleet.ssh import NodeTarget
from broker.store.db import Store

_KINDS = ("open", "close")
_TEXT_MAX = 256


@dataclass(frozen=True)
class SessionEvent:
    node: str
    event_id: str
    kind: str
    grant_id: str | None
    user: str
    runas: str
    service: str
    tty: str
    pid: int
    at: str


def parse_event(node: str, raw: Mapping[str, Any]) -> SessionEvent | None:
    """A checked event, or None for anything malformed (a node is not trusted to be tidy)."""
    try:
        event_id, kind, user = str(raw["event_id"]), str(raw["kind"]), str(raw["user"])
        grant_id = raw.get("grant_id")
        pid = int(raw["pid"])
        at = str(raw["at"])
        texts = [event_id, user, str(raw["runas"]), str(raw["service"]), str(raw["tty"]), at]
    except (KeyError, TypeError, ValueError):
        return None
    if kind not in _KINDS or pid <= 0 or not all(_clean(t) for t in texts):
        return None
    if grant_id is not None and not (isinstance(grant_id, str) and _clean(grant_id)):
        return None
    return SessionEvent(node, event_id, kind, grant_id, user, texts[2], texts[3], texts[4], pid, at)


def _clean(text: str) -> bool:
    return 0 < len(text) <= _TEXT_MAX and text.isprintable()


def nodes_to_collect(conn: sqlite3.Connection, now: datetime) -> list[str]:
    """Nodes that held a grant in the last day: only they can have elevated sessions."""
    since = to_text(now - timedelta(days=1))
    rows = conn.execute(
        "SELECT DISTINCT n.node FROM grant_nodes n JOIN grants g ON g.id = n.grant_id"
        " WHERE g.not_after > ? OR n.state IN ('live', 'removing') ORDER BY n.node",
        (since,),
    ).fetchall()
    return [r[0] for r in rows]


def store_events(store: Store, events: Sequence[SessionEvent], now: datetime) -> int:
    """Insert new events with one audit event per session open/close; returns how many."""
    added = 0
    with store.transaction() as conn:
        for e in events:
            cur = conn.execute(
                "INSERT OR IGNORE INTO session_events (node, event_id, kind, grant_id, user,"
                " runas, service, tty, pid, at, received_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    e.node,
                    e.event_id,
                    e.kind,
                    e.grant_id,
                    e.user,
                    e.runas,
                    e.service,
                    e.tty,
                    e.pid,
                    e.at,
                    to_text(now),
                ),
            )
            if cur.rowcount:
                added += 1
                writer.record(
                    conn,
                    writer.EventInput(
                        f"node:{e.node}",
                        f"session.{e.kind}",
                        e.grant_id or "-",
                        details={
                            "user": e.user,
                            "runas": e.runas,
                            "tty": e.tty,
                            "pid": e.pid,
                            "at": e.at,
                            "service": e.service,
                        },
                    ),
                    now,
                )
    return added


def collect(
    store: Store, pool: SshPool, targets: Sequence[NodeTarget], now: datetime
) -> dict[str, int]:
    """node -> events newly stored; nodes that do not answer are tried next time."""
    stored: dict[str, int] = {}
    for target in targets:
        reply = nodeprog.call(pool, target, "collect", None)
        if not reply.ok or reply.data is None:
            continue
        raw = reply.data.get("events") or []
        events = [e for e in (parse_event(target.name, r) for r in raw if isinstance(r, dict)) if e]
        ids = [str(r.get("event_id")) for r in raw if isinstance(r, dict)]
        stored[target.name] = store_events(store, events, now) if events else 0
        if ids:
            nodeprog.call(pool, target, "ack", {"event_ids": ids})
    return stored


def sessions_of_grant(conn: sqlite3.Connection, grant_id: str) -> list[SessionEvent]:
    rows = conn.execute(
        "SELECT node, event_id, kind, grant_id, user, runas, service, tty, pid, at"
        " FROM session_events WHERE grant_id = ? ORDER BY at, id",
        (grant_id,),
    ).fetchall()
    return [SessionEvent(*r) for r in rows]
