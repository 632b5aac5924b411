"""Detection's storage: every SQL statement of detect/, run on the caller's connection.

A finding becomes one alert row, its audit event, its deliveries and the actions it asks
for, all in the caller's transaction (nothing half-raised). Here too: the detector's
cursor and memory, the stream offsets, the responder's action queue, the drift baselines
and results, and the notifier's deliveries. Reads of other packages' tables (audit events,
recordings) are detection's own questions of them. Values are always bound.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker.audit import writer
from broker.core import sqldialect
from broker.core.errors import RefusedError
from broker.core.timeutil import from_text, to_text
from broker.detect.engine import AuditEvent, Finding
from broker.detect.eventdata import details_of
from broker.policy.detection_rules import SEVERITIES, Severity

DETECTOR = "broker:detect"
# The alerts table's columns, in the order both readers (`alert` here, the notifier's
# `AlertMessage.from_row`) take them.
COLUMNS = (
    "id",
    "created_at",
    "event_at",
    "rule",
    "severity",
    "user",
    "node",
    "grant_id",
    "recording_id",
    "message",
    "details",
    "actions",
    "source",
    "acked_at",
    "acked_by",
    "ack_note",
)
# All quoted: an unquoted `user` in a select list is PostgreSQL's CURRENT_USER (the
# database role), so every alert read back there named the broker's role as its user.
_COLUMNS = ", ".join(f'"{c}"' for c in COLUMNS)


@dataclass(frozen=True)
class Alert:
    id: int
    created_at: str
    event_at: str | None
    rule: str
    severity: Severity
    user: str | None
    node: str | None
    grant_id: str | None
    recording_id: str | None
    message: str
    details: dict[str, Any]
    actions: list[dict[str, Any]]  # kind, target, state, result
    source: str
    acked_at: str | None
    acked_by: str | None
    ack_note: str | None


def action_target(finding: Finding, kind: str) -> str | None:
    """Whom an action acts on; None when the finding names no such subject."""
    if kind in ("lock_mfa", "revoke_grants"):
        return finding.user
    if kind == "quarantine_node":
        return finding.node
    if kind == "end_session" and finding.node:
        return f"{finding.node}:{finding.grant_id or 'break-glass'}"
    return None


def raise_alert(
    conn: sqlite3.Connection,
    finding: Finding,
    now: datetime,
    enqueue: Any = None,
) -> int:
    """Store one finding as an alert; `enqueue(conn, alert_id, now)` queues its deliveries
    when the rule's actions include `alert`."""
    alert_id = _insert_alert(conn, finding, now)
    _queue_actions(conn, alert_id, finding, now)
    if "alert" in finding.actions and enqueue is not None:
        enqueue(conn, alert_id, now)
    writer.record(conn, _raise_event(alert_id, finding), now)
    return alert_id


def _insert_alert(conn: sqlite3.Connection, finding: Finding, now: datetime) -> int:
    cur = conn.execute(
        'INSERT INTO alerts (created_at, event_at, rule, severity, "user", node, grant_id,'
        " recording_id, message, details, actions, source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)"
        " RETURNING id",
        (
            to_text(now),
            to_text(datetime.fromtimestamp(finding.at, UTC)),
            finding.rule,
            finding.severity,
            finding.user,
            finding.node,
            finding.grant_id,
            finding.recording_id,
            finding.message[:500],
            json.dumps(finding.details, sort_keys=True, default=str),
            json.dumps(list(finding.actions)),
            finding.source,
        ),
    )
    return int(cur.fetchone()[0])


def _queue_actions(
    conn: sqlite3.Connection, alert_id: int, finding: Finding, now: datetime
) -> None:
    """One responder row per action but `alert`; one with nothing to act on is failed at once."""
    for kind in finding.actions:
        if kind == "alert":
            continue
        target = action_target(finding, kind)
        conn.execute(
            "INSERT INTO alert_actions (alert_id, kind, target, state, next_at, result, updated_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                alert_id,
                kind,
                target or "-",
                "pending" if target else "failed",
                to_text(now),
                None if target else "the finding names nothing to act on",
                to_text(now),
            ),
        )


def _raise_event(alert_id: int, finding: Finding) -> writer.EventInput:
    return writer.EventInput(
        DETECTOR,
        "alert.raise",
        str(alert_id),
        details={
            "rule": finding.rule,
            "severity": finding.severity,
            "user": finding.user,
            "node": finding.node,
            "grant": finding.grant_id,
            "session": finding.recording_id,
            "actions": list(finding.actions),
        },
    )


def queue_jobs(conn: sqlite3.Connection, jobs: Sequence[tuple[str, str]], now: datetime) -> None:
    """Drift jobs (kind, target: baseline or check) for the responder; no alert behind them."""
    stamp = to_text(now)
    conn.executemany(
        "INSERT INTO alert_actions (alert_id, kind, target, state, next_at, updated_at)"
        " VALUES (NULL, ?, ?, 'pending', ?, ?)",
        [(kind, target, stamp, stamp) for kind, target in jobs],
    )


def _alert(conn: sqlite3.Connection, row: Sequence[Any]) -> Alert:
    actions = [
        {"kind": k, "target": t, "state": s, "result": r}
        for k, t, s, r in conn.execute(
            "SELECT kind, target, state, result FROM alert_actions WHERE alert_id = ? ORDER BY id",
            (row[0],),
        )
    ]
    return Alert(
        id=row[0],
        created_at=row[1],
        event_at=row[2],
        rule=row[3],
        severity=row[4],
        user=row[5],
        node=row[6],
        grant_id=row[7],
        recording_id=row[8],
        message=row[9],
        details=json.loads(row[10]),
        actions=actions,
        source=row[12],
        acked_at=row[13],
        acked_by=row[14],
        ack_note=row[15],
    )


def alerts(
    conn: sqlite3.Connection,
    *,
    since: datetime | None = None,
    severity: Severity | None = None,
    unacked: bool = False,
    rule: str | None = None,
    limit: int = 200,
) -> list[Alert]:
    """Newest first; `severity` means that severity or worse."""
    where, args = [], []
    if since is not None:
        where.append("created_at >= ?")
        args.append(to_text(since))
    if severity is not None:
        where.append(
            f"severity IN ({','.join('?' * (len(SEVERITIES) - SEVERITIES.index(severity)))})"
        )
        args.extend(SEVERITIES[SEVERITIES.index(severity) :])
    if unacked:
        where.append("acked_at IS NULL")
    if rule is not None:
        where.append("rule = ?")
        args.append(rule)
    sql = f"SELECT {_COLUMNS} FROM alerts"  # noqa: S608 (fixed clauses, bound values)
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT ?"
    rows = conn.execute(sql, (*args, limit)).fetchall()
    return [_alert(conn, r) for r in rows]


def alert(conn: sqlite3.Connection, alert_id: int) -> Alert:
    sql = f"SELECT {_COLUMNS} FROM alerts WHERE id = ?"  # noqa: S608 (fixed columns)
    row = conn.execute(sql, (alert_id,)).fetchone()
    if row is None:
        raise RefusedError(f"no alert {alert_id}", fix="see `broker alerts list`")
    return _alert(conn, row)


def ack(conn: sqlite3.Connection, alert_id: int, *, by: str, note: str, now: datetime) -> None:
    """Mark an alert handled (audited); acknowledging twice is refused, not overwritten."""
    current = alert(conn, alert_id)
    if current.acked_at is not None:
        raise RefusedError(
            f"alert {alert_id} was acknowledged by {current.acked_by} at {current.acked_at}",
            fix="nothing to do",
        )
    conn.execute(
        "UPDATE alerts SET acked_at = ?, acked_by = ?, ack_note = ? WHERE id = ?",
        (to_text(now), by, note or None, alert_id),
    )
    writer.record(
        conn,
        writer.EventInput(by, "alert.ack", str(alert_id), details={"note": note}),
        now,
    )


def alert_row(conn: sqlite3.Connection, alert_id: int) -> tuple[Any, ...] | None:
    """The alert's columns in `COLUMNS` order, as the notifier sends them."""
    sql = f"SELECT {_COLUMNS} FROM alerts WHERE id = ?"  # noqa: S608 (fixed columns)
    row = conn.execute(sql, (alert_id,)).fetchone()
    return None if row is None else tuple(row)


def alert_rule(conn: sqlite3.Connection, alert_id: int) -> str | None:
    row = conn.execute("SELECT rule FROM alerts WHERE id = ?", (alert_id,)).fetchone()
    return None if row is None else str(row[0])


@dataclass(frozen=True)
class Origin:
    """What an alert was raised on: its source, and for an audit source that event."""

    source: str
    recording_id: str | None
    actor: str | None = None
    action: str | None = None
    target: str | None = None
    details: dict[str, Any] | None = None
    at: str | None = None


def alert_origin(conn: sqlite3.Connection, alert_id: int) -> Origin | None:
    row = conn.execute(
        "SELECT source, recording_id FROM alerts WHERE id = ?", (alert_id,)
    ).fetchone()
    if row is None:
        return None
    source, recording_id = str(row[0]), row[1]
    if not source.startswith("audit:") or not source[6:].isdigit():
        return Origin(source, recording_id)
    event = conn.execute(
        "SELECT actor, action, target, details, ts FROM audit_events WHERE seq = ?",
        (int(source[6:]),),
    ).fetchone()
    if event is None:
        return Origin(source, recording_id)
    return Origin(
        source, recording_id, event[0], event[1], event[2], json.loads(event[3]), event[4]
    )


def alert_moment(conn: sqlite3.Connection, alert_id: int | None) -> datetime | None:
    """When the alert's finding happened (its event, else when it was raised)."""
    row = conn.execute(
        "SELECT COALESCE(event_at, created_at) FROM alerts WHERE id = ?", (alert_id,)
    ).fetchone()
    return None if row is None else from_text(row[0])


def released_since(conn: sqlite3.Connection, alert_id: int | None, node: str) -> bool:
    """Whether a person released the node after the alert was raised."""
    row = conn.execute(
        "SELECT 1 FROM audit_events e JOIN alerts a ON a.id = ? WHERE e.action ="
        " 'node.release' AND e.target = ? AND e.ts > a.created_at",
        (alert_id, node),
    ).fetchone()
    return row is not None


# --- the detector's cursor, memory and stream offsets ---------------------------------------


def load_state_text(conn: sqlite3.Connection) -> str | None:
    row = conn.execute("SELECT value FROM detect_state WHERE key = 'detector'").fetchone()
    return None if row is None else str(row[0])


def load_state(conn: sqlite3.Connection) -> dict[str, Any] | None:
    text = load_state_text(conn)
    return None if text is None else dict(json.loads(text))


def save_state(conn: sqlite3.Connection, state: dict[str, Any]) -> str:
    """Store the detector's state; returns the text stored."""
    text = json.dumps(state, separators=(",", ":"))
    conn.execute(
        "INSERT INTO detect_state (key, value) VALUES ('detector', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (text,),
    )
    return text


def last_audit_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0])


def audit_between(
    conn: sqlite3.Connection,
    after: int,
    upto: int,
    actions: Sequence[str],
    refused: Sequence[str] = (),
) -> Iterator[AuditEvent]:
    """Events with `after` < seq <= `upto` whose action is one of `actions`, or matches a
    glob of `refused` with outcome refused; oldest first, details parsed on first look."""
    match = [f"action IN ({', '.join('?' * len(actions))})"] if actions else []
    engine = sqldialect.engine_of(conn)
    match += [f"({sqldialect.glob(engine, 'action')} AND outcome = 'refused')"] * len(refused)
    patterns = [sqldialect.glob_pattern(engine, p) for p in refused]
    where = f"seq > ? AND seq <= ? AND ({' OR '.join(match) or 'FALSE'})"  # '?' placeholders only
    sql = f"SELECT seq, ts, actor, action, target, outcome, details FROM audit_events WHERE {where}"  # noqa: S608
    iso, event, details = datetime.fromisoformat, AuditEvent, details_of  # hot loop: locals
    rows = conn.execute(f"{sql} ORDER BY seq", (after, upto, *actions, *patterns))
    for seq, ts, actor, action, target, outcome, raw in rows:
        # The writer's UTC text ends in Z; anything else takes the careful parse.
        at = (iso(ts) if ts.endswith("Z") else from_text(ts)).timestamp()
        yield event(seq, at, actor, action, target, outcome, details(raw))


@dataclass(frozen=True)
class Unread:
    """A recording with streams not yet read to their end."""

    id: str
    path: str
    node: str | None
    user: str | None
    grant_id: str | None
    state: str
    command: str | None
    argv: str | None
    indexed_at: str


def recordings_to_read(conn: sqlite3.Connection, since: str) -> list[Unread]:
    """Recordings first seen since `since` that are live or finished and not read through."""
    rows = conn.execute(
        "SELECT r.id, r.path, r.node, r.user, r.grant_id, r.state, r.command, r.argv,"
        " r.indexed_at"
        " FROM recordings r WHERE r.first_seen >= ? AND r.state IN"
        " ('running', 'complete', 'incomplete') AND NOT EXISTS (SELECT 1 FROM"
        " detect_streams d WHERE d.recording_id = r.id AND d.stream = '*')"
        " ORDER BY r.first_seen",
        (since,),
    ).fetchall()
    return [Unread(*row) for row in rows]


def stream_offsets(conn: sqlite3.Connection, recording_id: str) -> list[tuple[str, int, bytes]]:
    """(stream, offset, carry) of each stream of the recording read so far."""
    return [
        (str(name), int(offset), bytes(carry))
        for name, offset, carry in conn.execute(
            'SELECT stream, "offset", carry FROM detect_streams WHERE recording_id = ?',
            (recording_id,),
        )
    ]


def save_stream(
    conn: sqlite3.Connection, recording_id: str, stream: str, offset: int, carry: bytes
) -> None:
    """Where reading a stream got to; the stream `*` marks the recording read through."""
    conn.execute(
        'INSERT INTO detect_streams (recording_id, stream, "offset", carry, done)'
        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (recording_id, stream) DO UPDATE"
        ' SET "offset" = excluded."offset", carry = excluded.carry,'
        " done = excluded.done",
        (recording_id, stream, offset, carry, int(stream == "*")),
    )


# --- the responder's queue -------------------------------------------------------------------


@dataclass(frozen=True)
class DueAction:
    id: int
    alert_id: int | None
    kind: str
    target: str
    attempts: int


def due_actions(conn: sqlite3.Connection, now: datetime, limit: int) -> list[DueAction]:
    rows = conn.execute(
        "SELECT id, alert_id, kind, target, attempts FROM alert_actions"
        # An alert's actions before drift jobs: a scan of many nodes must never hold up
        # the response to a critical finding.
        " WHERE state = 'pending' AND next_at <= ? ORDER BY (alert_id IS NULL), id LIMIT ?",
        (to_text(now), limit),
    ).fetchall()
    return [DueAction(*row) for row in rows]


def action_tried(
    conn: sqlite3.Connection, action_id: int, state: str, result: str, later: datetime,
    now: datetime,
) -> None:  # fmt: skip
    """One more attempt of the action, its outcome and when it is due again."""
    conn.execute(
        "UPDATE alert_actions SET state = ?, attempts = attempts + 1, result = ?,"
        " next_at = ?, updated_at = ? WHERE id = ?",
        (state, result, to_text(later), to_text(now), action_id),
    )


# --- drift --------------------------------------------------------------------------------------


def session_subject(
    conn: sqlite3.Connection, recording_id: str
) -> tuple[str | None, str | None, str | None] | None:
    """(node, user, grant_id) of a recording."""
    row = conn.execute(
        'SELECT node, "user", grant_id FROM recordings WHERE id = ?', (recording_id,)
    ).fetchone()
    return None if row is None else (row[0], row[1], row[2])


def baseline(conn: sqlite3.Connection, grant_id: str, node: str) -> str | None:
    """The manifest (JSON) taken when the grant landed on the node, or moved on since."""
    row = conn.execute(
        "SELECT manifest FROM drift_baselines WHERE grant_id = ? AND node = ?",
        (grant_id, node),
    ).fetchone()
    return None if row is None else str(row[0])


def put_baseline(
    conn: sqlite3.Connection, grant_id: str, node: str, now: datetime, manifest: str
) -> None:
    conn.execute(
        "INSERT INTO drift_baselines (grant_id, node, taken_at, manifest)"
        " VALUES (?, ?, ?, ?) ON CONFLICT (grant_id, node) DO UPDATE"
        " SET taken_at = excluded.taken_at, manifest = excluded.manifest",
        (grant_id, node, to_text(now), manifest),
    )


def move_baseline(
    conn: sqlite3.Connection, grant_id: str, node: str, now: datetime, manifest: str
) -> None:
    conn.execute(
        "UPDATE drift_baselines SET taken_at = ?, manifest = ? WHERE grant_id = ? AND node = ?",
        (to_text(now), manifest, grant_id, node),
    )


def put_session_drift(
    conn: sqlite3.Connection, recording_id: str, grant_id: str, node: str, now: datetime,
    changes: list[dict[str, Any]], unexpected: int, error: str | None,
) -> None:  # fmt: skip
    """What a session left on its node (replacing an earlier check of it)."""
    conn.execute(
        "INSERT INTO session_drift (recording_id, grant_id, node, checked_at, changes, unexpected,"
        " error) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (recording_id) DO UPDATE SET"
        " checked_at = excluded.checked_at, changes = excluded.changes,"
        " unexpected = excluded.unexpected, error = excluded.error",
        (
            recording_id,
            grant_id,
            node,
            to_text(now),
            json.dumps(changes, default=str),
            unexpected,
            error,
        ),
    )


# --- the notifier's deliveries ----------------------------------------------------------------


def queue_deliveries(
    conn: sqlite3.Connection, alert_id: int, channels: Sequence[str], now: datetime
) -> None:
    conn.executemany(
        "INSERT INTO alert_deliveries (alert_id, channel, state, attempts, next_at)"
        " VALUES (?, ?, 'pending', 0, ?)",
        [(alert_id, channel, to_text(now)) for channel in channels],
    )


def due_deliveries(
    conn: sqlite3.Connection, now: datetime, limit: int
) -> list[tuple[int, str, int]]:
    """(alert_id, channel, attempts) of pending deliveries due now, oldest first."""
    rows = conn.execute(
        "SELECT alert_id, channel, attempts FROM alert_deliveries"
        " WHERE state = 'pending' AND next_at <= ? ORDER BY next_at, alert_id, channel"
        " LIMIT ?",
        (to_text(now), limit),
    ).fetchall()
    return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]


# Each outcome below applies only to the try it answers (same attempts, still pending):
# False when another deliverer recorded that try first.


def delivery_sent(
    conn: sqlite3.Connection, alert_id: int, channel: str, attempts: int, now: datetime
) -> bool:
    return bool(
        conn.execute(
            "UPDATE alert_deliveries SET state = 'sent', attempts = ?, sent_at = ?,"
            " last_error = NULL"
            " WHERE alert_id = ? AND channel = ? AND attempts = ? AND state = 'pending'",
            (attempts + 1, to_text(now), alert_id, channel, attempts),
        ).rowcount
    )


def delivery_failed(
    conn: sqlite3.Connection, alert_id: int, channel: str, attempts: int, error: str
) -> bool:
    return bool(
        conn.execute(
            "UPDATE alert_deliveries SET state = 'failed', attempts = ?, last_error = ?"
            " WHERE alert_id = ? AND channel = ? AND attempts = ? AND state = 'pending'",
            (attempts + 1, error, alert_id, channel, attempts),
        ).rowcount
    )


def delivery_retry(
    conn: sqlite3.Connection, alert_id: int, channel: str, attempts: int, error: str,
    next_at: datetime,
) -> bool:  # fmt: skip
    return bool(
        conn.execute(
            "UPDATE alert_deliveries SET attempts = ?, next_at = ?, last_error = ?"
            " WHERE alert_id = ? AND channel = ? AND attempts = ? AND state = 'pending'",
            (attempts + 1, to_text(next_at), error, alert_id, channel, attempts),
        ).rowcount
    )
