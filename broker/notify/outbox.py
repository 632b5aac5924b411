"""The request-notice outbox (migration 14): one row per message and channel, written in
the transaction that changes the request, sent later by `deliver.NoticeDeliverer`.

Every update below applies only to the try it answers (same attempts, still pending), so
two deliverers never both record an outcome for one try.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime

from broker.core.timeutil import to_text

KINDS = ("requested", "approved", "denied", "expired")
CHANNELS = ("webhook", "email")


@dataclass(frozen=True)
class Notice:
    """One queued message: the rendered text and the JSON event, with where it goes."""

    id: int
    request_id: str
    kind: str
    channel: str
    recipient: str  # an email address, or "" for the webhook
    subject: str
    text: str
    event: str  # the Standard Webhooks JSON body (canonical), rendered at queue time
    attempts: int


def insert(
    conn: sqlite3.Connection,
    *,
    request_id: str,
    kind: str,
    channel: str,
    recipient: str,
    subject: str,
    text: str,
    event: str,
    now: datetime,
) -> None:
    if not conn.in_transaction:
        raise RuntimeError("notices are queued inside the transaction that changes the request")
    conn.execute(
        "INSERT INTO request_notices (request_id, kind, channel, recipient, subject, body,"
        " event, next_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (request_id, kind, channel, recipient, subject, text, event, to_text(now), to_text(now)),
    )


def due(conn: sqlite3.Connection, now: datetime, limit: int) -> list[Notice]:
    """Pending notices due now, oldest first."""
    rows = conn.execute(
        "SELECT id, request_id, kind, channel, recipient, subject, body, event, attempts"
        " FROM request_notices WHERE state = 'pending' AND next_at <= ?"
        " ORDER BY next_at, id LIMIT ?",
        (to_text(now), limit),
    ).fetchall()
    return [Notice(*row) for row in rows]


def sent(conn: sqlite3.Connection, notice: Notice, now: datetime) -> bool:
    return bool(
        conn.execute(
            "UPDATE request_notices SET state = 'sent', attempts = ?, sent_at = ?,"
            " last_error = NULL WHERE id = ? AND attempts = ? AND state = 'pending'",
            (notice.attempts + 1, to_text(now), notice.id, notice.attempts),
        ).rowcount
    )


def failed(conn: sqlite3.Connection, notice: Notice, error: str) -> bool:
    return bool(
        conn.execute(
            "UPDATE request_notices SET state = 'failed', attempts = ?, last_error = ?"
            " WHERE id = ? AND attempts = ? AND state = 'pending'",
            (notice.attempts + 1, error, notice.id, notice.attempts),
        ).rowcount
    )


def retry(conn: sqlite3.Connection, notice: Notice, error: str, next_at: datetime) -> bool:
    return bool(
        conn.execute(
            "UPDATE request_notices SET attempts = ?, next_at = ?, last_error = ?"
            " WHERE id = ? AND attempts = ? AND state = 'pending'",
            (notice.attempts + 1, to_text(next_at), error, notice.id, notice.attempts),
        ).rowcount
    )


def states(conn: sqlite3.Connection, request_id: str) -> list[tuple[str, str, str, str]]:
    """(kind, channel, recipient, state) of a request's notices, in queue order."""
    rows = conn.execute(
        "SELECT kind, channel, recipient, state FROM request_notices WHERE request_id = ?"
        " ORDER BY id",
        (request_id,),
    ).fetchall()
    return [(str(a), str(b), str(c), str(d)) for a, b, c, d in rows]


def backlog(conn: sqlite3.Connection) -> int:
    """How many notices wait to be sent (a figure to alert on)."""
    row = conn.execute("SELECT count(*) FROM request_notices WHERE state = 'pending'").fetchone()
    return int(row[0])
