"""Which nodes are under quarantine: state kept beside the node inventory.

The orchestration (grants/quarantine.py) writes these rows; grant decisions,
detection and session collection only read them, so the state sits low in the
package graph where all of them can reach it without reaching each other.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from broker.core.timeutil import to_text


@dataclass(frozen=True)
class Quarantine:
    node: str
    state: str  # quarantined | releasing
    reason: str
    since: str
    by: str
    marker: str  # pending | placed
    error: str | None


def quarantines(conn: sqlite3.Connection) -> list[Quarantine]:
    return [
        Quarantine(*r)
        for r in conn.execute(
            "SELECT node, state, reason, since, by, marker, error FROM quarantines ORDER BY node"
        )
    ]


def held(conn: sqlite3.Connection, node: str) -> bool:
    """Whether `node` has a quarantine row (being released still counts)."""
    return conn.execute("SELECT 1 FROM quarantines WHERE node = ?", (node,)).fetchone() is not None


def in_force(conn: sqlite3.Connection) -> set[str]:
    """Nodes quarantined and not being released."""
    return {r[0] for r in conn.execute("SELECT node FROM quarantines WHERE state = 'quarantined'")}


def hold(conn: sqlite3.Connection, node: str, *, reason: str, actor: str, now: datetime) -> None:
    """Quarantine `node` (again): its marker is to be placed."""
    conn.execute(
        "INSERT INTO quarantines (node, state, reason, since, by, marker, updated_at)"
        " VALUES (?, 'quarantined', ?, ?, ?, 'pending', ?) ON CONFLICT (node) DO UPDATE"
        " SET state = 'quarantined', reason = excluded.reason, by = excluded.by,"
        " marker = 'pending', error = NULL, updated_at = excluded.updated_at",
        (node, reason, to_text(now), actor, to_text(now)),
    )


def start_release(conn: sqlite3.Connection, node: str, now: datetime) -> None:
    """The marker is to come off `node`; the row goes once it has."""
    conn.execute(
        "UPDATE quarantines SET state = 'releasing', marker = 'pending', error = NULL,"
        " updated_at = ? WHERE node = ?",
        (to_text(now), node),
    )


def released(conn: sqlite3.Connection, node: str) -> None:
    conn.execute("DELETE FROM quarantines WHERE node = ? AND state = 'releasing'", (node,))


def record_marker(
    conn: sqlite3.Connection,
    node: str,
    state: str,
    *,
    placed: bool,
    error: str | None,
    now: datetime,
) -> None:
    """How the last attempt to bring `node`'s marker to `state` went."""
    conn.execute(
        "UPDATE quarantines SET marker = ?, error = ?, updated_at = ? WHERE node = ? AND state = ?",
        ("placed" if placed else "pending", error, to_text(now), node, state),
    )
