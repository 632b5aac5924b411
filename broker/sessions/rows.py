"""SQL for recordings and the hook's session events, run on the caller's connection.

Writes run inside the caller's `Store.transaction()`; every value is a bound parameter.
A few reads join tables other packages write (grants, alerts, drift): `sessions show`
needs them, and those packages sit beside or above sessions, so it cannot ask them.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.core import sqldialect
from broker.core.timeutil import to_second_text, to_text
from broker.sessions.query import TextMatch

FINAL = ("complete", "incomplete", "quarantined", "purged")
COLUMNS = (
    "id", "path", "state", "node", "user", "runas", "command", "argv", "cwd", "tty",
    "started_at", "ended_at", "exit_value", "signal", "end_reason", "grant_id", "relayed",
    "bytes_in", "bytes_out", "sha256", "files", "error", "first_seen", "indexed_at",
)  # fmt: skip


# A recording without a grant is break-glass when its node's hook opened a break-glass
# session (pam_broker.so's pseudo-grant `break-glass`) for the same user within
# 120 s of its start: decided when read, so a hook event collected after the recording
# arrived (both wait out a broker outage) still marks it (docs/sessions.md).
def _select(conn: sqlite3.Connection) -> str:
    """The recording columns (all quoted: `user` is reserved in PostgreSQL) and whether
    it is break-glass, FROM recordings."""
    apart = sqldialect.seconds_between(sqldialect.engine_of(conn), "e.at", "recordings.started_at")
    break_glass = (
        "(CASE WHEN grant_id IS NULL AND EXISTS (SELECT 1 FROM session_events e"  # noqa: S608
        " WHERE e.node = recordings.node AND e.user = recordings.user AND e.kind = 'open'"
        f" AND e.grant_id = 'break-glass' AND ABS({apart}) <= 120) THEN 1 ELSE 0 END)"
    )
    columns = ", ".join(f'"{c}"' for c in COLUMNS)
    return f"SELECT {columns}, {break_glass} FROM recordings"  # noqa: S608 (fixed)


@dataclass(frozen=True)
class GrantWindow:
    id: str
    not_before: str
    not_after: str
    state: str
    ended_at: str | None


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
    reason: str | None = None  # deny events of pam_broker.so; the Python hook sent none
    # close and usage events of contained sessions (docs/elevation.md, "What is contained"):
    ended_by: str | None = None  # exit, revoke, expiry, quarantine, end-session
    killed: int | None = None  # processes killed when it was ended
    contained: bool | None = None  # ended through its cgroup (False: by process tree)
    cpu_usec: int | None = None
    memory_peak: int | None = None
    pids_peak: int | None = None
    session_pid: int | None = None  # escape: the session the process left
    detail: str | None = None  # escape: how it was seen leaving; usage: the cgroup


@dataclass(frozen=True)
class Filters:
    user: str | None = None
    node: str | None = None
    grant: str | None = None
    since: str | None = None
    until: str | None = None
    running: bool = False
    limit: int = 200
    exit_value: int | None = None


# --- recordings ---------------------------------------------------------------------------


def _row(raw: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip((*COLUMNS, "break_glass"), raw, strict=True))
    row["break_glass"] = bool(row["break_glass"])
    row["argv"] = json.loads(row["argv"]) if row["argv"] else []
    row["files"] = json.loads(row["files"]) if row["files"] else {}
    row["relayed"] = bool(row["relayed"])
    return row


def _where(f: Filters) -> tuple[str, list[object]]:
    """The filters as SQL over `recordings` (fixed column names, values bound)."""
    where, args = ["state != 'purged'"], list[object]()
    for column, value in (
        ('"user"', f.user), ("node", f.node), ("grant_id", f.grant), ("exit_value", f.exit_value)
    ):  # fmt: skip
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if f.since is not None:
        where.append("COALESCE(ended_at, '9999') >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append("started_at <= ?")
        args.append(f.until)
    if f.running:
        where.append("state = 'running'")
    return " AND ".join(where), args


_NEWEST_FIRST = " ORDER BY COALESCE(started_at, first_seen) DESC, id DESC"


def listing(conn: sqlite3.Connection, f: Filters) -> list[dict[str, Any]]:
    """Recordings not purged, newest first, filtered."""
    where, args = _where(f)
    sql = f"{_select(conn)} WHERE {where}{_NEWEST_FIRST} LIMIT ?"
    return [_row(r) for r in conn.execute(sql, (*args, f.limit))]


def has_user(conn: sqlite3.Connection, name: str) -> bool:
    """Whether a recording or a node's session event names exactly this user."""
    row = conn.execute(
        'SELECT EXISTS (SELECT 1 FROM recordings WHERE "user" = ?)'
        ' OR EXISTS (SELECT 1 FROM session_events WHERE "user" = ?)',
        (name, name),
    ).fetchone()
    return bool(row[0])


def recording(conn: sqlite3.Connection, recording_id: str) -> dict[str, Any] | None:
    raw = conn.execute(f"{_select(conn)} WHERE id = ?", (recording_id,)).fetchone()
    return None if raw is None else _row(raw)


def finished_paths(conn: sqlite3.Connection) -> set[str]:
    """Store paths of recordings no pass needs to look at again."""
    sql = f"SELECT path FROM recordings WHERE state IN ({', '.join('?' * len(FINAL))})"  # noqa: S608
    return {r[0] for r in conn.execute(sql, FINAL)}


def state(conn: sqlite3.Connection, recording_id: str) -> str | None:
    row = conn.execute("SELECT state FROM recordings WHERE id = ?", (recording_id,)).fetchone()
    return None if row is None else str(row[0])


def upsert(
    conn: sqlite3.Connection, rid: str, path: str, now: datetime, values: dict[str, object]
) -> bool:
    """Insert or update the row (the column names are the indexer's own); True when new."""
    values = {**values, "indexed_at": to_text(now)}
    columns = list(values)
    if state(conn, rid) is None:
        names = ", ".join(f'"{c}"' for c in ["id", "path", "first_seen", *columns])
        marks = ", ".join("?" * (len(columns) + 3))
        conn.execute(
            f"INSERT INTO recordings ({names}) VALUES ({marks})",  # noqa: S608
            (rid, path, to_text(now), *values.values()),
        )
        return True
    sets = ", ".join(f'"{c}" = ?' for c in columns)
    conn.execute(
        f"UPDATE recordings SET {sets} WHERE id = ?",  # noqa: S608
        (*values.values(), rid),
    )
    return False


def purgeable(conn: sqlite3.Connection, cutoff: datetime) -> list[tuple[str, str]]:
    """(id, path) of finished recordings that ended before `cutoff`."""
    rows = conn.execute(
        "SELECT id, path FROM recordings WHERE state IN ('complete', 'incomplete',"
        " 'quarantined') AND COALESCE(ended_at, first_seen) < ? ORDER BY id",
        (to_text(cutoff),),
    ).fetchall()
    return [(str(rid), str(path)) for rid, path in rows]


def mark_purged(conn: sqlite3.Connection, ids: Iterable[str], now: datetime) -> None:
    conn.executemany(
        "UPDATE recordings SET state = 'purged', indexed_at = ? WHERE id = ?",
        [(to_text(now), rid) for rid in ids],
    )


# --- the search index (migration 17: session_text, recordings.text_state) -----------------

# Recordings search may read: quarantined ones were never readable, purged ones are gone.
_SEARCHABLE = "state IN ('running', 'complete', 'incomplete')"
# Those whose input is not (all) in session_text; the same words as the partial index.
_PENDING = f"text_state != 1 AND {_SEARCHABLE}"
# How each engine keeps the index (SQLite: FTS5, keyed by the id read as base 36, stable
# across VACUUM; PostgreSQL: a pg_trgm-indexed table) is core/sqldialect's "session text
# index": _pending_rows and _matched are the recordings-side pieces of its queries.
TEXT_WHOLE, TEXT_PARTIAL = 1, 2  # 0: not in session_text (yet)


def _pending_rows(conn: sqlite3.Connection) -> str:
    return sqldialect.pending_recordings(sqldialect.engine_of(conn))


def _matched(conn: sqlite3.Connection) -> str:
    """The index first, then each recording by its key."""
    return sqldialect.text_joined(sqldialect.engine_of(conn))


def put_text(
    conn: sqlite3.Connection, recording_id: str, typed: str, raw: str, *, partial: bool
) -> None:
    """The recording's typed lines and input in the index, replacing what was there."""
    for sql, params in sqldialect.text_replace(
        sqldialect.engine_of(conn), recording_id, typed, raw
    ):
        conn.execute(sql, params)
    conn.execute(
        "UPDATE recordings SET text_state = ? WHERE id = ?",
        (TEXT_PARTIAL if partial else TEXT_WHOLE, recording_id),
    )


def drop_text(conn: sqlite3.Connection, ids: Iterable[str]) -> None:
    """Purged recordings leave the index (their rows stay, state purged); on SQLite FTS5's
    old segments are merged after (sqldialect.text_delete) and secure_delete (store/db.py)
    zeroes the freed pages."""
    engine = sqldialect.engine_of(conn)
    delete, after = sqldialect.text_delete(engine)
    conn.executemany(delete, [(sqldialect.text_key_value(engine, rid),) for rid in ids])
    if after is not None:
        conn.execute(after)


def text_backlog(conn: sqlite3.Connection, limit: int) -> list[tuple[str, str]]:
    """(id, path) of finished recordings whose input the index lacks (indexed before
    migration 17, or a pass that could not read it), oldest id first."""
    rows = conn.execute(
        f"SELECT id, path FROM {_pending_rows(conn)} WHERE {_PENDING} AND text_state = 0"  # noqa: S608
        " AND state != 'running' ORDER BY id LIMIT ?",
        (limit,),
    ).fetchall()
    return [(str(rid), str(path)) for rid, path in rows]


def regex_candidates(
    conn: sqlite3.Connection, f: Filters, match: TextMatch | None, limit: int
) -> Iterator[str]:
    """Ids of searchable recordings, filtered, newest first: with `match`, only those the
    index says hold every literal (driven from the index, each row then found by its
    key), plus those whose input it does not (all) hold (through the partial index
    recordings_text_pending): neither half reads the whole table."""
    where, args = _where(f)
    key = "COALESCE(started_at, first_seen) AS k, id"
    if match is None:
        sql = f"SELECT {key} FROM recordings WHERE {where} AND {_SEARCHABLE}"  # noqa: S608
    else:
        cond, found = _text_match(conn, match)
        indexed = f"SELECT {key} FROM {_matched(conn)} WHERE {where} AND {_SEARCHABLE}"  # noqa: S608
        pending = f"SELECT {key} FROM {_pending_rows(conn)} WHERE {where} AND {_PENDING}"  # noqa: S608
        sql = f"{indexed} AND {cond} UNION {pending}"
        args = [*args, *found, *args]
    for _key, rid in conn.execute(f"{sql} ORDER BY k DESC, id DESC LIMIT ?", (*args, limit)):
        yield str(rid)


def _text_match(conn: sqlite3.Connection, match: TextMatch) -> tuple[str, list[object]]:
    engine = sqldialect.engine_of(conn)
    return sqldialect.text_match(engine, match.column, list(match.terms), match.fts)


def typed_candidates(
    conn: sqlite3.Connection, f: Filters, match: TextMatch | None, limit: int
) -> Iterator[tuple[str, str, str]]:
    """(sort key, id, typed lines) of indexed recordings, filtered, newest first; with
    `match`, only those whose typed lines hold every term, each one's lines read when it
    is reached (a common word sorts keys, not every matching text); at most `limit`."""
    where, args = _where(f)
    engine = sqldialect.engine_of(conn)
    text_key = sqldialect.text_key(engine)
    text = text_key if match is not None else "t.typed"
    sql = f"SELECT COALESCE(started_at, first_seen), id, {text} FROM {_matched(conn)} WHERE {where}"  # noqa: S608
    sql += f" AND {_SEARCHABLE}"
    if match is not None:
        cond, found_args = _text_match(conn, match)
        sql += f" AND {cond}"
        args.extend(found_args)
    one = f"SELECT typed FROM session_text t WHERE {text_key} = ?"  # noqa: S608 (fixed)
    for key, rid, typed in conn.execute(sql + _NEWEST_FIRST + " LIMIT ?", (*args, limit)):
        if match is not None:
            typed = conn.execute(one, (typed,)).fetchone()[0]
        yield str(key), str(rid), str(typed)


def typed_pending(conn: sqlite3.Connection, f: Filters, limit: int) -> list[tuple[str, str]]:
    """(sort key, id) of searchable recordings whose typed lines the index lacks, filtered,
    newest first (running ones, and the backlog after an upgrade); at most `limit`."""
    where, args = _where(f)
    sql = (
        f"SELECT COALESCE(started_at, first_seen), id FROM {_pending_rows(conn)} WHERE {where}"  # noqa: S608
        f" AND {_PENDING} AND text_state = 0{_NEWEST_FIRST} LIMIT ?"
    )
    return [(str(key), str(rid)) for key, rid in conn.execute(sql, (*args, limit))]


def audited_recording(conn: sqlite3.Connection, recording_id: str) -> dict[str, Any]:
    """The details of the latest `session.recorded` audit event for it ({} when none)."""
    event = conn.execute(
        "SELECT details FROM audit_events WHERE action = 'session.recorded' AND target = ?"
        " ORDER BY seq DESC LIMIT 1",
        (recording_id,),
    ).fetchone()
    return dict(json.loads(event[0])) if event else {}


# --- what `sessions show` adds to a recording ---------------------------------------------


def drift(conn: sqlite3.Connection, recording_id: str) -> dict[str, Any] | None:
    d = conn.execute(
        "SELECT checked_at, changes, unexpected, error FROM session_drift WHERE recording_id = ?",
        (recording_id,),
    ).fetchone()
    if d is None:
        return None
    return {
        "checked_at": d[0],
        "changes": [c.get("summary", "?") for c in json.loads(d[1])],
        "unexpected": d[2],
        "error": d[3],
    }


def alert_ids(conn: sqlite3.Connection, recording_id: str) -> list[int]:
    return [
        r[0]
        for r in conn.execute(
            "SELECT id FROM alerts WHERE recording_id = ? ORDER BY id", (recording_id,)
        )
    ]


def grant_summary(conn: sqlite3.Connection, grant_id: str) -> dict[str, Any] | None:
    g = conn.execute(
        "SELECT id, role, reason, not_before, not_after, state, approvers FROM grants WHERE id = ?",
        (grant_id,),
    ).fetchone()
    if g is None:
        return None
    return {
        "id": g[0], "role": g[1], "reason": g[2], "not_before": g[3],
        "not_after": g[4], "state": g[5], "approvers": json.loads(g[6] or "[]"),
    }  # fmt: skip


_HOOK_KEYS = (
    "kind", "at", "tty", "pid", "service", "grant", "ended_by", "killed", "contained",
    "cpu_usec", "memory_peak", "pids_peak", "detail",
)  # fmt: skip
_HOOK_SELECT = (
    "SELECT kind, at, tty, pid, service, grant_id, ended_by, killed, contained, cpu_usec,"
    " memory_peak, pids_peak, detail FROM session_events"
)


def hook_events(
    conn: sqlite3.Connection, node: str, user: str, since: datetime, until: datetime
) -> list[dict[str, Any]]:
    """The node's own events of the user's sessions in that window (at most 50), and the
    usage events of those sessions, which come when their cgroup ended, maybe much later.
    Nodes write whole seconds (`...:SSZ`): the bounds are compared in that form, the end
    rounded up, or an event in the last second would sort after it."""
    start = to_second_text(since)
    end = to_second_text(until + timedelta(seconds=1))
    events = conn.execute(
        f"{_HOOK_SELECT} WHERE node = ? AND \"user\" = ? AND kind != 'usage' AND at >= ?"
        " AND at <= ? ORDER BY at, id LIMIT 50",
        (node, user, start, end),
    ).fetchall()
    found = [dict(zip(_HOOK_KEYS, e, strict=True)) for e in events]
    pids = sorted({e["pid"] for e in found if e["kind"] in ("open", "close")})
    if pids:
        marks = ", ".join("?" * len(pids))
        usage = conn.execute(
            f"{_HOOK_SELECT} WHERE node = ? AND kind = 'usage' AND at >= ? AND pid IN ({marks})"
            " ORDER BY at, id LIMIT 50",
            (node, start, *pids),
        ).fetchall()
        found += [dict(zip(_HOOK_KEYS, e, strict=True)) for e in usage]
    for e in found:
        e["contained"] = None if e["contained"] is None else bool(e["contained"])
    return found


# --- grants, as the indexer and the collector see them ------------------------------------


def grant_window(conn: sqlite3.Connection, user: str, node: str, at: str) -> GrantWindow | None:
    """The user's newest grant on that node whose window holds `at`."""
    row = conn.execute(
        "SELECT g.id, g.not_before, g.not_after, g.state, g.ended_at FROM grants g"
        " JOIN grant_nodes n ON n.grant_id = g.id"
        " WHERE g.user = ? AND n.node = ? AND g.not_before <= ? AND g.not_after >= ?"
        " ORDER BY g.created_at DESC LIMIT 1",
        (user, node, at, at),
    ).fetchone()
    return None if row is None else GrantWindow(*row)


def nodes_to_collect(conn: sqlite3.Connection, now: datetime) -> list[str]:
    """Nodes that held a grant in the last day (only they can have elevated sessions) and
    quarantined nodes."""
    since = to_text(now - timedelta(days=1))
    rows = conn.execute(
        "SELECT DISTINCT n.node FROM grant_nodes n JOIN grants g ON g.id = n.grant_id"
        " WHERE g.not_after > ? OR n.state IN ('live', 'removing')"
        # Quarantined nodes too: who tries sudo there is what incident response watches.
        " UNION SELECT node FROM quarantines ORDER BY 1",
        (since,),
    ).fetchall()
    return [r[0] for r in rows]


def grants_on_node(conn: sqlite3.Connection, node: str) -> set[str]:
    """Ids of every grant the broker ever put on the node."""
    return {r[0] for r in conn.execute("SELECT grant_id FROM grant_nodes WHERE node = ?", (node,))}


# --- the hook's events --------------------------------------------------------------------


def insert_event(conn: sqlite3.Connection, e: SessionEvent, now: datetime) -> bool:
    """Store one event; False when the node had delivered it before (at-least-once)."""
    cur = conn.execute(
        'INSERT INTO session_events (node, event_id, kind, grant_id, "user",'
        " runas, service, tty, pid, at, received_at, ended_by, killed, contained, cpu_usec,"
        " memory_peak, pids_peak, session_pid, detail)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (node, event_id) DO NOTHING",
        (
            e.node, e.event_id, e.kind, e.grant_id, e.user,
            e.runas, e.service, e.tty, e.pid, e.at, to_text(now),
            e.ended_by, e.killed, None if e.contained is None else int(e.contained),
            e.cpu_usec, e.memory_peak, e.pids_peak, e.session_pid, e.detail,
        ),
    )  # fmt: skip
    return bool(cur.rowcount)


# --- what corroborates a recording (provenance.py) -----------------------------------------


def hook_opens(
    conn: sqlite3.Connection, node: str, user: str, since: datetime, until: datetime
) -> list[tuple[str, str | None, str]]:
    """(user, grant_id, at) of the `open` events collected from this node for this user
    between the bounds (node times are whole seconds; the end is rounded up)."""
    rows = conn.execute(
        'SELECT "user", grant_id, at FROM session_events WHERE node = ? AND "user" = ?'
        " AND kind = 'open' AND at >= ? AND at <= ? ORDER BY at LIMIT 50",
        (node, user, to_second_text(since), to_second_text(until + timedelta(seconds=1))),
    ).fetchall()
    return [(str(u), None if g is None else str(g), str(a)) for u, g, a in rows]


def recordings_near(
    conn: sqlite3.Connection, node: str, user: str, since: datetime, until: datetime
) -> int:
    """How many recordings name this node and user with a start between the bounds (at
    most 51: beyond the hook events' 50 the answer is the same)."""
    row = conn.execute(
        'SELECT count(*) FROM (SELECT 1 FROM recordings WHERE node = ? AND "user" = ?'
        " AND started_at >= ? AND started_at <= ? LIMIT 51) AS near",
        (node, user, to_text(since), to_text(until)),
    ).fetchone()
    return int(row[0])


def grant_of(
    conn: sqlite3.Connection, grant_id: str, user: str, node: str
) -> tuple[str, str, str] | None:
    """(id, not_before, not_after) of this grant when it is this user's and was put on
    this node; None otherwise."""
    row = conn.execute(
        "SELECT g.id, g.not_before, g.not_after FROM grants g"
        " JOIN grant_nodes n ON n.grant_id = g.id WHERE g.id = ? AND g.user = ? AND n.node = ?",
        (grant_id, user, node),
    ).fetchone()
    return None if row is None else (str(row[0]), str(row[1]), str(row[2]))
