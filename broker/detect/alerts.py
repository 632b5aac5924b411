"""Alerts in the store: a finding becomes one row, its audit event, its deliveries and the
actions it asks for, all in the caller's transaction (nothing half-raised)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from broker.audit import writer
from broker.core.errors import RefusedError
from broker.core.timeutil import to_text
from broker.detect.engine import Finding
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
_COLUMNS = ", ".join(COLUMNS)


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
    cur = conn.execute(
        "INSERT INTO alerts (created_at, event_at, rule, severity, user, node, grant_id,"
        " recording_id, message, details, actions, source) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
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
    alert_id = int(cur.lastrowid or 0)
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
    if "alert" in finding.actions and enqueue is not None:
        enqueue(conn, alert_id, now)
    writer.record(
        conn,
        writer.EventInput(
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
        ),
        now,
    )
    return alert_id


def queue_job(conn: sqlite3.Connection, kind: str, target: str, now: datetime) -> None:
    """A drift job (baseline or check) for the responder; no alert behind it."""
    conn.execute(
        "INSERT INTO alert_actions (alert_id, kind, target, state, next_at, updated_at)"
        " VALUES (NULL, ?, ?, 'pending', ?, ?)",
        (kind, target, to_text(now), to_text(now)),
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
