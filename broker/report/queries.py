"""The report's figures, aggregated in SQL: read-only, indexed, no loop over events in Python.

Why here and not in each package's rows module: like broker.monitor, the report reads
across the store (grants, recordings, hook events, keytab state and the audit chain)
without writing anything, and must not grow every service's API for it. Why SQL: a
report over a million audit events has to finish in seconds, so every figure is a
GROUP BY or an EXISTS on an index (migration 16 adds audit_events (action, ts) and
(action, actor, ts)); Python only sees the aggregates and the bounded detail tables.

Every value is a bound parameter; the only text put together is fixed clauses.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

from broker.core import sqldialect

DETAIL_ROWS = 500  # rows per detail table: the report must stay one readable document
DIRECTORY_CHANGES = (
    "directory.user.added",
    "directory.user.deleted",
    "directory.user.renamed",
    "directory.user.state",
    "directory.membership.added",
    "directory.membership.removed",
)
# How long before an elevation or approval its TOTP code may have been accepted: the CLI
# asks for the code and sends the request at once, so minutes are generous. And after: an
# event is stamped with its request's start, the code's acceptance a moment later in the
# same request, so up to a minute after counts as the same request.
MFA_FRESH_S = 300
# Commands that install software, matched on the argv sudo recorded as the index stores it
# (JSON text, `["apt-get", "install", "-y", "hello"]`): a GLOB on the text, no JSON parse
# per recording. `apt-get"` also matches `/usr/bin/apt-get"` as argv[0].
INSTALL_PATTERNS = (
    '*apt-get", "install"*',
    '*apt", "install"*',
    '*dpkg", "-i"*',
    '*dpkg", "--install"*',
    '*dnf", "install"*',
    '*yum", "install"*',
    '*rpm", "-i*',
    '*rpm", "-U*',
    '*pip", "install"*',
    '*pip3", "install"*',
)


@dataclass(frozen=True)
class Period:
    """[since, until) in the store's UTC text; `nodes` limits node facts to one zone."""

    since: str
    until: str
    nodes: tuple[str, ...] | None = None

    @property
    def zone(self) -> list[Any]:
        """The two parameters of a zone clause, `(CAST(? AS TEXT) IS NULL OR col IN
        ({values}))` ({values}: sqldialect.json_values): both None without a zone, so the
        clause holds for every row."""
        nodes = None if self.nodes is None else json.dumps(self.nodes)
        return [nodes, nodes]


def _rows(conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """The rows of `sql`, its sqldialect markers ({values}, {seconds:a,b}...) filled."""
    return [tuple(r) for r in conn.execute(_sql(conn, sql), params)]


def _sql(conn: sqlite3.Connection, sql: str) -> str:
    return sqldialect.render(sqldialect.engine_of(conn), sql)


def _one(conn: sqlite3.Connection, sql: str, params: list[Any]) -> Any:
    row = conn.execute(_sql(conn, sql), params).fetchone()
    return None if row is None else row[0]


def _by_action(
    conn: sqlite3.Connection, p: Period, actions: tuple[str, ...], outcome: str | None = None
) -> dict[str, int]:
    """Events per action in the period (each action one range scan of (action, ts))."""
    return {
        action: int(
            _one(
                conn,
                "SELECT count(*) FROM audit_events WHERE action = ? AND ts >= ? AND ts < ?"
                " AND (CAST(? AS TEXT) IS NULL OR outcome = ?)",
                [action, p.since, p.until, outcome, outcome],
            )
            or 0
        )
        for action in actions
    }


def account_management(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """AC-2: who held roles, what AD changed, and how fast grants ended after it.

    A grant counts in the period when it was in force at some moment of it; in a zone,
    when it was on at least one of the zone's nodes.
    """
    holders = _rows(
        conn,
        "SELECT g.user, count(*) FROM grants g"
        " WHERE g.not_before < ? AND coalesce(g.ended_at, g.not_after) >= ?"
        " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
        "   WHERE node IN ({values})))"
        " GROUP BY g.user ORDER BY g.user LIMIT ?",
        [p.until, p.since, *p.zone, DETAIL_ROWS],
    )
    ended = _rows(
        conn,
        "SELECT g.id, g.user, g.end_reason, g.ended_at, ch.action, ch.ts,"
        " {seconds:g.ended_at,ch.ts}"
        " FROM grants g JOIN audit_events ch ON ch.seq = ("
        "   SELECT max(e.seq) FROM audit_events e WHERE e.action IN"
        "   ({values}) AND e.target = 'user:' || g.user"
        "   AND e.ts <= g.ended_at)"
        " WHERE g.state = 'revoked' AND g.ended_at >= ? AND g.ended_at < ?"
        " AND (g.end_reason LIKE 'directory:%' OR g.end_reason LIKE 'recheck:%')"
        " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
        "   WHERE node IN ({values})))"
        " ORDER BY g.ended_at LIMIT ?",
        [json.dumps(DIRECTORY_CHANGES), p.since, p.until, *p.zone, DETAIL_ROWS],
    )
    still_active = _rows(
        conn,
        "SELECT g.id, g.user, u.state FROM grants g JOIN dir_users u ON u.sid = g.sid"
        " WHERE g.state = 'active' AND u.state != 'enabled'"
        " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
        "   WHERE node IN ({values})))"
        " ORDER BY g.id LIMIT ?",
        [*p.zone, DETAIL_ROWS],
    )
    return {
        "holders": holders,
        "changes": _by_action(conn, p, DIRECTORY_CHANGES),
        "ended_by_directory": ended,
        "disabled_still_active": still_active,
    }


def time_boxes(conn: sqlite3.Connection, p: Period, now: str) -> dict[str, Any]:
    """AC-2(2): grants that ended in the period, how, and whether any outlived its box."""
    ends = dict(
        _rows(
            conn,
            "SELECT g.state, count(*) FROM grants g WHERE g.state != 'active'"
            " AND g.ended_at >= ? AND g.ended_at < ?"
            " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
            " WHERE node IN ({values})))"
            " GROUP BY g.state",
            [p.since, p.until, *p.zone],
        )
    )
    longest = _rows(
        conn,
        "SELECT g.id, g.user, {seconds:g.not_after,g.not_before}"
        " FROM grants g WHERE g.not_before < ? AND coalesce(g.ended_at, g.not_after) >= ?"
        " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
        " WHERE node IN ({values})))"
        " ORDER BY 3 DESC, g.id LIMIT 1",
        [p.until, p.since, *p.zone],
    )
    # Outlived: still active in the store after its end, or its sudo rule still waiting
    # for removal from a node (the node's own check refuses it either way).
    outlived = _rows(
        conn,
        "SELECT g.id, g.user, g.not_after, g.state FROM grants g WHERE"
        " ((g.state = 'active' AND g.not_after < ?) OR (g.state != 'active' AND EXISTS"
        " (SELECT 1 FROM grant_nodes n WHERE n.grant_id = g.id AND n.state = 'removing')))"
        " AND g.not_before < ?"
        " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
        " WHERE node IN ({values})))"
        " ORDER BY g.not_after LIMIT ?",
        [now, p.until, *p.zone, DETAIL_ROWS],
    )
    late = _one(
        conn,
        "SELECT max({seconds:g.ended_at,g.not_after}) FROM grants g"
        " WHERE g.state = 'expired' AND g.ended_at >= ? AND g.ended_at < ?"
        " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
        " WHERE node IN ({values})))",
        [p.since, p.until, *p.zone],
    )
    return {"ends": ends, "longest": longest, "outlived": outlived, "reaper_lag_s": late}


def least_privilege(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """AC-6: elevations per person and node, root against command sets, refused launches."""
    per = _rows(
        conn,
        "SELECT g.user, n.node, count(*), sum(CASE WHEN g.runas = 'root' AND g.commands = 'ALL' THEN 1 ELSE 0 END)"
        " FROM grants g JOIN grant_nodes n ON n.grant_id = g.id"
        " WHERE g.created_at >= ? AND g.created_at < ?"
        " AND (CAST(? AS TEXT) IS NULL OR n.node IN ({values}))"
        " GROUP BY g.user, n.node ORDER BY g.user, n.node LIMIT ?",
        [p.since, p.until, *p.zone, DETAIL_ROWS],
    )
    kinds = _rows(
        conn,
        "SELECT count(*), coalesce(sum(CASE WHEN g.runas = 'root' AND g.commands = 'ALL' THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN g.request_id IS NOT NULL THEN 1 ELSE 0 END), 0) FROM grants g"
        " WHERE g.created_at >= ? AND g.created_at < ?"
        " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
        "   WHERE node IN ({values})))",
        [p.since, p.until, *p.zone],
    )[0]
    refused = node_refusals(conn, p)
    return {
        "per_person_node": per,
        "grants": int(kinds[0]),
        "root": int(kinds[1]),
        "approved": int(kinds[2]),
        "refused_launches": refused.get("workloads", 0),
        "refused_logins": refused.get("no_login", 0),
        "refused_elevations": _by_action(conn, p, ("grant.refused", "request.refused")),
    }


def node_refusals(conn: sqlite3.Connection, p: Period) -> dict[str, int]:
    """Refusals the nodes reported (`session.deny`, actor `node:NAME`), per reason code."""
    found = _rows(
        conn,
        "SELECT {text:details,reason}, count(*) FROM audit_events"
        " WHERE action = 'session.deny' AND ts >= ? AND ts < ?"
        " AND (CAST(? AS TEXT) IS NULL OR substr(actor, 6) IN ({values}))"
        " GROUP BY 1",
        [p.since, p.until, *p.zone],
    )
    return {str(r): int(c) for r, c in found}


def privileged_use(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """AC-6(9): elevated sessions opened, recorded, refused by the node."""
    states = _rows(
        conn,
        "SELECT state, count(*) FROM recordings WHERE started_at >= ? AND started_at < ?"
        " AND (CAST(? AS TEXT) IS NULL OR node IN ({values})) GROUP BY state",
        [p.since, p.until, *p.zone],
    )
    hook = _rows(
        conn,
        "SELECT action, count(*) FROM audit_events WHERE action IN"
        " ('session.open', 'session.deny', 'session.escape') AND ts >= ? AND ts < ?"
        " AND (CAST(? AS TEXT) IS NULL OR substr(actor, 6) IN ({values}))"
        " GROUP BY action",
        [p.since, p.until, *p.zone],
    )
    return {
        "recordings": {str(k): int(v) for k, v in states},
        "hook": {str(k): int(v) for k, v in hook},
    }


def concurrent_sessions(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """AC-10: the most elevated sessions one user had open at once on one node, against the
    largest limit of the grants in force, and the refusals at the limit.

    A running sum over the hook's open (+1) and close (-1) events per node and user, in
    time order: one window query, however many events.
    """
    peak = _rows(
        conn,
        'SELECT node, "user", max(open_now) FROM (SELECT node, "user", sum(CASE kind'
        " WHEN 'open' THEN 1 WHEN 'close' THEN -1 ELSE 0 END) OVER (PARTITION BY node, \"user\""
        " ORDER BY at, id ROWS UNBOUNDED PRECEDING) AS open_now, at FROM session_events"
        " WHERE kind IN ('open', 'close') AND at < ?"
        " AND (CAST(? AS TEXT) IS NULL OR node IN ({values}))) AS running"
        ' WHERE at >= ? GROUP BY node, "user" ORDER BY 3 DESC, node, "user" LIMIT 1',
        [p.until, *p.zone, p.since],
    )
    limit = _one(
        conn,
        "SELECT max(g.max_sessions) FROM grants g"
        " WHERE g.not_before < ? AND coalesce(g.ended_at, g.not_after) >= ?"
        " AND (CAST(? AS TEXT) IS NULL OR g.id IN (SELECT grant_id FROM grant_nodes"
        "   WHERE node IN ({values})))",
        [p.until, p.since, *p.zone],
    )
    return {
        "peak": peak[0] if peak else None,
        "limit": limit,
        "refused": node_refusals(conn, p).get("max_sessions", 0),
    }


def software_installs(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """CM-11: recorded commands that install software, per grant (command and argv as sudo
    recorded them; an install typed inside `sudo -i` is in the recording, not here)."""
    engine = sqldialect.engine_of(conn)
    patterns = [sqldialect.glob_pattern(engine, g) for g in INSTALL_PATTERNS]
    rows = _rows(
        conn,
        "SELECT coalesce(r.grant_id, '-'), r.user, r.node, count(*), min(r.started_at)"
        " FROM recordings r WHERE r.started_at >= ? AND r.started_at < ?"
        " AND ({contains:r.argv,'install'} OR {contains:r.argv,'\"-'})"
        " AND EXISTS (SELECT 1 FROM ({values}) AS pat WHERE {glob:r.argv,pat.v})"
        " AND (CAST(? AS TEXT) IS NULL OR r.node IN ({values}))"
        " GROUP BY 1, 2, 3 ORDER BY 5 LIMIT ?",
        [p.since, p.until, json.dumps(patterns), *p.zone, DETAIL_ROWS],
    )
    return {"per_grant": rows, "installs": sum(int(r[3]) for r in rows)}


# An elevation (a direct grant, or a request that waits for approvals) or an approval,
# and whether the same caller had a TOTP code accepted for that purpose just before
# (one index probe of (action, actor, ts) per elevation).
_ELEVATION = (
    " FROM audit_events e WHERE e.action = ? AND e.ts >= ? AND e.ts < ?"
    " AND (? = 0 OR {text:e.details,request} IS NULL)"
)
_NO_TOTP = (
    "NOT EXISTS (SELECT 1 FROM audit_events m WHERE m.action = 'mfa.verify'"
    " AND m.actor = e.actor AND m.outcome = 'ok'"
    " AND m.ts >= {shifted:e.ts,?}"
    " AND m.ts <= {shifted:e.ts,60}"
    " AND {text:m.details,purpose} = ?)"
)
_COUNT_ELEVATIONS = (
    "SELECT count(*), coalesce(sum(CASE WHEN " + _NO_TOTP + " THEN 1 ELSE 0 END), 0)" + _ELEVATION
)
_WITHOUT_TOTP = (
    "SELECT e.seq, e.actor, e.target, e.ts" + _ELEVATION + " AND " + _NO_TOTP
    + " ORDER BY e.seq LIMIT ?"
)  # fmt: skip


def mfa_elevations(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """IA-2(1): elevations and approvals, and those without a fresh TOTP before them
    (counted in the same pass; listed only when there are any)."""
    window = -MFA_FRESH_S
    out: dict[str, Any] = {}
    for name, action, direct_only, purpose in (
        ("direct", "grant.issue", 1, "elevate"),
        ("requests", "grant.request", 0, "elevate"),
        ("approvals", "grant.approve", 0, "approve"),
    ):
        total, missing = _rows(
            conn, _COUNT_ELEVATIONS, [window, purpose, action, p.since, p.until, direct_only]
        )[0]
        listed = (
            _rows(
                conn,
                _WITHOUT_TOTP,
                [action, p.since, p.until, direct_only, window, purpose, DETAIL_ROWS],
            )
            if missing
            else []
        )
        out[name] = {"total": int(total), "missing": int(missing), "without_totp": listed}
    return out


def mfa_replays(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """IA-2(8): accepted codes, and refusals by reason (replays, wrong codes, locked)."""
    reasons = _rows(
        conn,
        "SELECT {text:details,reason}, count(*) FROM audit_events"
        " WHERE action = 'mfa.verify' AND outcome = 'refused' AND ts >= ? AND ts < ?"
        " GROUP BY 1",
        [p.since, p.until],
    )
    return {
        "accepted": _by_action(conn, p, ("mfa.verify",), "ok")["mfa.verify"],
        "refused": {str(k): int(v) for k, v in reasons},
        "locks": _by_action(conn, p, ("mfa.lock",))["mfa.lock"],
        "locked_now": _rows(
            conn,
            "SELECT e.target, max(e.ts) FROM audit_events e WHERE e.action = 'mfa.lock'"
            " AND e.ts >= ? AND e.ts < ? GROUP BY e.target ORDER BY e.target LIMIT ?",
            [p.since, p.until, DETAIL_ROWS],
        ),
    }


def keytab_rotation(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """IA-5: rotations finished, failed or abandoned in the period; each account's state."""
    states = _rows(
        conn,
        "SELECT state, count(*) FROM keytab_rotations WHERE updated_at >= ? AND updated_at < ?"
        " GROUP BY state",
        [p.since, p.until],
    )
    accounts = _rows(
        conn,
        "SELECT name, kvno, last_rotated_at, last_error FROM keytab_accounts ORDER BY name LIMIT ?",
        [DETAIL_ROWS],
    )
    failed = _rows(
        conn,
        "SELECT name, target_kvno, updated_at, coalesce(error, '') FROM keytab_rotations"
        " WHERE state = 'failed' AND updated_at >= ? AND updated_at < ? ORDER BY updated_at"
        " LIMIT ?",
        [p.since, p.until, DETAIL_ROWS],
    )
    return {
        "states": {str(k): int(v) for k, v in states},
        "accounts": accounts,
        "failed": failed,
    }


def pinned_nodes(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """SC-8 (the SSH side): nodes with a pinned host key, nodes without one, relayed
    recordings."""
    unpinned = _rows(
        conn,
        "SELECT name FROM nodes WHERE (host_key IS NULL OR enrolled_at IS NULL)"
        " AND (CAST(? AS TEXT) IS NULL OR name IN ({values})) ORDER BY name LIMIT ?",
        [*p.zone, DETAIL_ROWS],
    )
    pinned = _one(
        conn,
        "SELECT count(*) FROM nodes WHERE host_key IS NOT NULL AND enrolled_at IS NOT NULL"
        " AND (CAST(? AS TEXT) IS NULL OR name IN ({values}))",
        p.zone,
    )
    relayed = _one(
        conn,
        "SELECT count(*) FROM recordings WHERE relayed = 1 AND started_at >= ? AND started_at < ?"
        " AND (CAST(? AS TEXT) IS NULL OR node IN ({values}))",
        [p.since, p.until, *p.zone],
    )
    return {
        "pinned": int(pinned or 0),
        "unpinned": [r[0] for r in unpinned],
        "relayed": int(relayed or 0),
    }


def event_logging(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """AU-2: events in the period by outcome, and the lowest and highest seq among them
    (one pass over the (ts, outcome) index, no row read and no sort)."""
    total, refused, failed, first, last = _rows(
        conn,
        "SELECT count(*), coalesce(sum(CASE WHEN outcome = 'refused' THEN 1 ELSE 0 END), 0),"
        " coalesce(sum(CASE WHEN outcome = 'failed' THEN 1 ELSE 0 END), 0), min(seq), max(seq) FROM audit_events"
        " WHERE ts >= ? AND ts < ?",
        [p.since, p.until],
    )[0]
    outcomes = {"ok": int(total) - int(refused) - int(failed), "refused": int(refused),
                "failed": int(failed)}  # fmt: skip
    return {
        "outcomes": {k: v for k, v in outcomes.items() if v},
        "first_seq": first,
        "last_seq": last,
    }


def recording_digests(conn: sqlite3.Connection, p: Period) -> dict[str, Any]:
    """AU-10: finished recordings of the period, and those whose SHA-256 is in the chain
    (one probe of (action, target) per recording; listed only when some are missing)."""
    total, missing = _rows(
        conn,
        "SELECT count(*), coalesce(sum(CASE WHEN NOT EXISTS (SELECT 1 FROM audit_events e"
        " WHERE e.action = 'session.recorded' AND e.target = r.id"
        " AND {contains:e.details,'\"sha256\":\"' || r.sha256 || '\"'}) THEN 1 ELSE 0 END), 0)"
        " FROM recordings r"
        " WHERE r.state IN ('complete', 'incomplete', 'purged') AND r.sha256 IS NOT NULL"
        " AND r.started_at >= ? AND r.started_at < ?"
        " AND (CAST(? AS TEXT) IS NULL OR r.node IN ({values}))",
        [p.since, p.until, *p.zone],
    )[0]
    listed = (
        _rows(
            conn,
            "SELECT r.id, r.node, r.user FROM recordings r"
            " WHERE r.state IN ('complete', 'incomplete', 'purged') AND r.sha256 IS NOT NULL"
            " AND r.started_at >= ? AND r.started_at < ?"
            " AND (CAST(? AS TEXT) IS NULL OR r.node IN ({values}))"
            " AND NOT EXISTS (SELECT 1 FROM audit_events e"
            " WHERE e.action = 'session.recorded' AND e.target = r.id"
            " AND {contains:e.details,'\"sha256\":\"' || r.sha256 || '\"'}) ORDER BY r.id LIMIT ?",
            [p.since, p.until, *p.zone, DETAIL_ROWS],
        )
        if missing
        else []
    )
    return {"finished": int(total), "in_chain": int(total) - int(missing), "missing": listed}


def hash_at(conn: sqlite3.Connection, seq: int) -> str | None:
    row = conn.execute("SELECT hash FROM audit_events WHERE seq = ?", (seq,)).fetchone()
    return None if row is None else str(row[0])
