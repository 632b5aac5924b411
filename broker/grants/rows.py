"""SQL for grants, their per-node state, elevation requests and approvals.

Callers hold `Store.transaction()` for writes; every value is a bound parameter.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from broker.core import sqldialect
from broker.core.timeutil import from_text, to_text
from broker.core.users import NamedUser
from broker.grants.model import Approval, Grant, GrantNode, NodeState, Request, RequestState

_GRANT_COLUMNS = (
    'id, "user", sid, role, runas, commands, command_lines, nodes, not_before, not_after, reason,'
    " approvers, policy_sha256, login, workloads, max_sessions, request_id, created_at,"
    " created_by, state, ended_at, ended_by, end_reason"
)


def _time(value: str | None) -> datetime | None:
    return None if value is None else from_text(value)


def _grant(row: Any) -> Grant:
    sets = tuple((str(n), tuple(str(c) for c in cs)) for n, cs in json.loads(row[6]))
    return Grant(
        id=row[0],
        user=row[1],
        sid=row[2],
        role=row[3],
        runas=row[4],
        commands=row[5],
        command_sets=sets,
        nodes=row[7],
        not_before=from_text(row[8]),
        not_after=from_text(row[9]),
        reason=row[10],
        approvers=tuple(json.loads(row[11])),
        policy_sha256=row[12],
        login=bool(row[13]),
        workloads=bool(row[14]),
        max_sessions=int(row[15]),
        request_id=row[16],
        created_at=from_text(row[17]),
        created_by=row[18],
        state=row[19],
        ended_at=_time(row[20]),
        ended_by=row[21],
        end_reason=row[22],
    )


def insert_grant(conn: sqlite3.Connection, grant: Grant, nodes: Iterable[str]) -> None:
    conn.execute(
        f"INSERT INTO grants ({_GRANT_COLUMNS}) VALUES ({', '.join('?' * 23)})",
        (
            grant.id,
            grant.user,
            grant.sid,
            grant.role,
            grant.runas,
            grant.commands,
            json.dumps([[n, list(cs)] for n, cs in grant.command_sets]),
            grant.nodes,
            to_text(grant.not_before),
            to_text(grant.not_after),
            grant.reason,
            json.dumps(list(grant.approvers)),
            grant.policy_sha256,
            int(grant.login),
            int(grant.workloads),
            grant.max_sessions,
            grant.request_id,
            to_text(grant.created_at),
            grant.created_by,
            grant.state,
            None,
            None,
            None,
        ),
    )
    conn.executemany(
        "INSERT INTO grant_nodes (grant_id, node, state) VALUES (?, ?, 'pending')",
        [(grant.id, node) for node in nodes],
    )


def grant(conn: sqlite3.Connection, grant_id: str) -> Grant | None:
    row = conn.execute(f"SELECT {_GRANT_COLUMNS} FROM grants WHERE id = ?", (grant_id,)).fetchone()
    return None if row is None else _grant(row)


def grants(
    conn: sqlite3.Connection,
    *,
    user: NamedUser | None = None,
    node: str | None = None,
    states: tuple[str, ...] = (),
    limit: int = 1000,
) -> list[Grant]:
    """Newest first, at most `limit` (-1: all, as revoking by user or node must see); a directory user's grants are those of their objectSid, whatever name
    they were issued under; a departed user's, those recorded under the name or its SIDs."""
    where: list[str] = []
    args: list[str] = []
    if user is not None and user.sid is not None:
        # The account's objectSid only: a new account that reuses a departed user's name
        # is not that user (review finding), and a renamed account keeps its grants.
        where.append("sid = ?")
        args.append(user.sid)
    elif user is not None:
        # A departed user: the name as recorded, and every SID ever recorded under it (the
        # grants they held under an earlier name too).
        where.append('("user" = ? OR sid IN (SELECT sid FROM grants WHERE "user" = ?))')
        args.extend((user.name, user.name))
    if node is not None:
        where.append("id IN (SELECT grant_id FROM grant_nodes WHERE node = ?)")
        args.append(node)
    if states:
        where.append(f"state IN ({', '.join('?' * len(states))})")
        args.extend(states)
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    # No LIMIT at all for -1: PostgreSQL refuses a negative one.
    tail, bound = (" LIMIT ?", [limit]) if limit >= 0 else ("", [])
    rows = conn.execute(
        f"SELECT {_GRANT_COLUMNS} FROM grants{clause} ORDER BY created_at DESC, id{tail}",
        (*args, *bound),
    ).fetchall()
    return [_grant(r) for r in rows]


def has_user(conn: sqlite3.Connection, name: str) -> bool:
    """Whether any grant was issued to exactly this account name."""
    row = conn.execute('SELECT EXISTS (SELECT 1 FROM grants WHERE "user" = ?)', (name,)).fetchone()
    return bool(row[0])


def due_to_expire(conn: sqlite3.Connection, now: datetime) -> list[Grant]:
    rows = conn.execute(
        f"SELECT {_GRANT_COLUMNS} FROM grants WHERE state = 'active' AND not_after <= ?",
        (to_text(now),),
    ).fetchall()
    return [_grant(r) for r in rows]


def work_to_reap(conn: sqlite3.Connection) -> bool:
    """Anything for the reaper: active grants, removals, pending requests, or a grant ended
    in the last day (its node's spool is still collected). The day is counted here, not
    in SQL, so both engines compare the same UTC text."""
    day_ago = to_text(datetime.now(UTC) - timedelta(days=1))
    row = conn.execute(
        "SELECT EXISTS (SELECT 1 FROM grants WHERE state = 'active')"
        " OR EXISTS (SELECT 1 FROM grant_nodes WHERE state = 'removing')"
        " OR EXISTS (SELECT 1 FROM elevation_requests WHERE state = 'pending')"
        " OR EXISTS (SELECT 1 FROM grants WHERE ended_at > ?)",
        (day_ago,),
    ).fetchone()
    return bool(row[0])


_NODE_COLUMNS = (
    "grant_id, node, state, error, attempts, pushed_at, removed_at, drop_in_sha256, drop_in_problem"
)


def _grant_node(r: Any) -> GrantNode:
    return GrantNode(r[0], r[1], r[2], r[3], int(r[4]), _time(r[5]), _time(r[6]), r[7], r[8])


def grant_nodes(conn: sqlite3.Connection, grant_id: str) -> list[GrantNode]:
    rows = conn.execute(
        f"SELECT {_NODE_COLUMNS} FROM grant_nodes WHERE grant_id = ? ORDER BY node",
        (grant_id,),
    ).fetchall()
    return [_grant_node(r) for r in rows]


def live_grant_nodes(
    conn: sqlite3.Connection, *, nodes: Sequence[str] | None, until: datetime
) -> list[GrantNode]:
    """Rows `live` for active grants that stay in force past `until` (on `nodes`, or
    everywhere): what should be on the node now, drop-in included."""
    where, args = "", [to_text(until)]
    if nodes is not None:
        if not nodes:
            return []
        where = f" AND n.node IN ({', '.join('?' * len(nodes))})"
        args.extend(nodes)
    columns = ", ".join(f"n.{c.strip()}" for c in _NODE_COLUMNS.split(","))
    rows = conn.execute(
        f"SELECT {columns} FROM grant_nodes n JOIN grants g ON g.id = n.grant_id"
        f" WHERE n.state = 'live' AND g.state = 'active' AND g.not_after > ?{where}"
        " ORDER BY n.node, n.grant_id",
        args,
    ).fetchall()
    return [_grant_node(r) for r in rows]


def set_drop_in_problem(
    conn: sqlite3.Connection, row: GrantNode, problem: str | None, now: datetime
) -> None:
    """What the last check found of the drop-in (None: as pushed and read by sudo); not
    stored when the row changed since it was read (a push landed meanwhile)."""
    conn.execute(
        "UPDATE grant_nodes SET drop_in_problem = ?, drop_in_checked_at = ?"
        " WHERE grant_id = ? AND node = ? AND state = 'live' AND drop_in_sha256 IS NOT DISTINCT FROM ?",
        (problem, to_text(now), row.grant_id, row.node, row.drop_in_sha256),
    )


def record_drop_in(conn: sqlite3.Connection, grant_id: str, node: str, sha256: str) -> None:
    """A push landed: this is the drop-in the node holds now (no problem known)."""
    conn.execute(
        "UPDATE grant_nodes SET drop_in_sha256 = ?, drop_in_problem = NULL,"
        " drop_in_checked_at = NULL WHERE grant_id = ? AND node = ?",
        (sha256, grant_id, node),
    )


def pending_removals(
    conn: sqlite3.Connection,
    *,
    grant_ids: Sequence[str] | None = None,
    node: str | None = None,
    limit: int = 10_000,
) -> list[tuple[str, str]]:
    """(grant id, node) pairs still to be removed from nodes, least tried first; filtered
    before the limit, so a named grant is never crowded out by a backlog."""
    where: list[str] = ["state = 'removing'"]
    args: list[object] = []
    if grant_ids is not None:
        if not grant_ids:
            return []
        where.append(f"grant_id IN ({', '.join('?' * len(grant_ids))})")
        args.extend(grant_ids)
    if node is not None:
        where.append("node = ?")
        args.append(node)
    rows = conn.execute(
        f"SELECT grant_id, node FROM grant_nodes WHERE {' AND '.join(where)}"
        " ORDER BY attempts, grant_id, node LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [(r[0], r[1]) for r in rows]


def set_node_state(
    conn: sqlite3.Connection,
    grant_id: str,
    node: str,
    state: NodeState,
    *,
    error: str | None,
    now: datetime,
) -> None:
    stamp = to_text(now)
    conn.execute(
        "UPDATE grant_nodes SET state = ?, error = ?, attempts = attempts + 1,"
        " pushed_at = CASE WHEN ? = 'live' THEN ? ELSE pushed_at END,"
        " removed_at = CASE WHEN ? = 'removed' THEN ? ELSE removed_at END"
        " WHERE grant_id = ? AND node = ?",
        (state, error, state, stamp, state, stamp, grant_id, node),
    )


def end_grant(
    conn: sqlite3.Connection,
    grant_id: str,
    state: str,
    *,
    by: str,
    reason: str,
    now: datetime,
) -> bool:
    """Mark an active grant revoked/expired and every node it may be on as to be removed."""
    changed = conn.execute(
        "UPDATE grants SET state = ?, ended_at = ?, ended_by = ?, end_reason = ?"
        " WHERE id = ? AND state = 'active'",
        (state, to_text(now), by, reason, grant_id),
    ).rowcount
    if changed:
        conn.execute(
            "UPDATE grant_nodes SET state = 'removing'"
            " WHERE grant_id = ? AND state IN ('pending', 'live', 'failed')",
            (grant_id,),
        )
    return bool(changed)


# ---------------------------------------------------------------- requests

_REQUEST_COLUMNS = (
    'id, "user", sid, nodes, role, runas, commands, duration_s, reason, policy_sha256,'
    " approvals_needed, approver_groups, state, created_at, expires_at, decided_at,"
    " decided_by, decision_reason, grant_id"
)


def _request(conn: sqlite3.Connection, row: Any) -> Request:
    approvals = tuple(
        Approval(r[0], r[1], r[2], from_text(r[3]))
        for r in conn.execute(
            "SELECT approver, decision, reason, at FROM approvals WHERE request_id = ? ORDER BY at",
            (row[0],),
        )
    )
    return Request(
        id=row[0],
        user=row[1],
        sid=row[2],
        nodes=row[3],
        role=row[4],
        runas=row[5],
        commands=row[6],
        duration_s=int(row[7]),
        reason=row[8],
        policy_sha256=row[9],
        approvals_needed=int(row[10]),
        approver_groups=tuple(json.loads(row[11])),
        state=row[12],
        created_at=from_text(row[13]),
        expires_at=from_text(row[14]),
        decided_at=_time(row[15]),
        decided_by=row[16],
        decision_reason=row[17],
        grant_id=row[18],
        approvals=approvals,
    )


def insert_request(conn: sqlite3.Connection, request: Request) -> None:
    conn.execute(
        f"INSERT INTO elevation_requests ({_REQUEST_COLUMNS}) VALUES ({', '.join('?' * 19)})",
        (
            request.id,
            request.user,
            request.sid,
            request.nodes,
            request.role,
            request.runas,
            request.commands,
            request.duration_s,
            request.reason,
            request.policy_sha256,
            request.approvals_needed,
            json.dumps(list(request.approver_groups)),
            request.state,
            to_text(request.created_at),
            to_text(request.expires_at),
            None,
            None,
            None,
            None,
        ),
    )


def request(conn: sqlite3.Connection, request_id: str) -> Request | None:
    row = conn.execute(
        f"SELECT {_REQUEST_COLUMNS} FROM elevation_requests WHERE id = ?", (request_id,)
    ).fetchone()
    return None if row is None else _request(conn, row)


def requests(
    conn: sqlite3.Connection,
    *,
    states: tuple[str, ...] = (),
    limit: int = 1000,
    visible_to: tuple[str, frozenset[str]] | None = None,
) -> list[Request]:
    """Newest first. `visible_to` (sid, groups): only requests that account made or may
    decide on, filtered before the limit."""
    where: list[str] = []
    args: list[object] = []
    if states:
        where.append(f"state IN ({', '.join('?' * len(states))})")
        args.extend(states)
    if visible_to is not None:
        sid, groups = visible_to
        mine = "sid = ?"
        args.append(sid)
        if groups:
            listed = sqldialect.json_values(sqldialect.engine_of(conn), "approver_groups")
            marks = ", ".join("?" * len(groups))
            mine += f" OR EXISTS (SELECT 1 FROM ({listed}) AS a WHERE a.v IN ({marks}))"
            args.extend(sorted(groups))
        where.append(f"({mine})")
    clause = f" WHERE {' AND '.join(where)}" if where else ""
    rows = conn.execute(
        f"SELECT {_REQUEST_COLUMNS} FROM elevation_requests{clause}"
        " ORDER BY created_at DESC, id LIMIT ?",
        (*args, limit),
    ).fetchall()
    return [_request(conn, r) for r in rows]


def overdue_requests(conn: sqlite3.Connection, now: datetime) -> list[str]:
    rows = conn.execute(
        "SELECT id FROM elevation_requests WHERE state = 'pending' AND expires_at <= ?",
        (to_text(now),),
    ).fetchall()
    return [r[0] for r in rows]


def add_approval(
    conn: sqlite3.Connection,
    request_id: str,
    *,
    approver: str,
    approver_sid: str,
    decision: str,
    reason: str,
    now: datetime,
) -> bool:
    """False when this approver already decided on the request (no error to catch: the
    conflict is the same row count on both engines)."""
    added = conn.execute(
        "INSERT INTO approvals (request_id, approver, approver_sid, decision, reason, at)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (request_id, approver_sid) DO NOTHING",
        (request_id, approver, approver_sid, decision, reason, to_text(now)),
    ).rowcount
    return bool(added)


def decide_request(
    conn: sqlite3.Connection,
    request_id: str,
    state: RequestState,
    *,
    by: str,
    reason: str,
    now: datetime,
    grant_id: str | None = None,
) -> bool:
    changed = conn.execute(
        "UPDATE elevation_requests SET state = ?, decided_at = ?, decided_by = ?,"
        " decision_reason = ?, grant_id = ? WHERE id = ? AND state = 'pending'",
        (state, to_text(now), by, reason, grant_id, request_id),
    ).rowcount
    return bool(changed)
