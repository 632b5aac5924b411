"""Read the chain: filtered listings for tail/export, and the verify walk."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.audit.chain import AuditEvent
from broker.audit.checkpoint import (
    checkpoint_keys,
    load_public_key,
    public_key_path,
    read_checkpoints,
)
from broker.audit.verify import Row, VerifyReport, verify_chain
from broker.core import sqldialect
from broker.core.pubkeys import load_peer_keys

_COLUMNS = "seq, ts, actor, action, target, outcome, details, prev_hash, hash"
PAGE_MAX = 5000  # events per request to the daemon; clients page with after_seq / before_seq


@dataclass(frozen=True)
class EventFilter:
    """Filters an operator can give; values are always bound as SQL parameters."""

    since: str | None = None
    until: str | None = None
    action: str | None = None
    actor: str | None = None
    after_seq: int = 0
    before_seq: int | None = None
    limit: int | None = None
    newest_first: bool = False


def count_events(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT count(*) FROM audit_events").fetchone()[0])


def happened_since(conn: sqlite3.Connection, action: str, target: str, since: str) -> bool:
    """Whether an `action` event on `target` was recorded after `since` (UTC text)."""
    row = conn.execute(
        "SELECT 1 FROM audit_events WHERE action = ? AND target = ? AND ts > ?",
        (action, target, since),
    ).fetchone()
    return row is not None


def forward_cursor(conn: sqlite3.Connection, target: str) -> int:
    """The last seq the forwarder delivered to `target` (0: nothing yet)."""
    row = conn.execute("SELECT seq FROM audit_forward WHERE target = ?", (target,)).fetchone()
    return int(row[0]) if row else 0


def advance_forward_cursor(conn: sqlite3.Connection, target: str, seq: int, now: str) -> bool:
    """Move `target`'s cursor to `seq`, only forward (in the caller's transaction); False
    when it already stood there or further (another forwarder was first)."""
    if not conn.in_transaction:
        raise RuntimeError("the forward cursor moves inside Store.transaction()")
    changed = conn.execute(
        "INSERT INTO audit_forward (target, seq, updated_at) VALUES (?, ?, ?)"
        " ON CONFLICT (target) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at"
        " WHERE excluded.seq > audit_forward.seq",
        (target, seq, now),
    ).rowcount
    return bool(changed)


def head_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT max(seq) FROM audit_events").fetchone()
    return int(row[0] or 0)


def iter_events(conn: sqlite3.Connection, filt: EventFilter) -> Iterator[AuditEvent]:
    clauses: list[str] = ["seq > ?"]
    params: list[int | str] = [filt.after_seq]
    if filt.before_seq is not None:
        clauses.append("seq < ?")
        params.append(filt.before_seq)
    if filt.since:
        clauses.append("ts >= ?")
        params.append(filt.since)
    if filt.until:
        clauses.append("ts < ?")
        params.append(filt.until)
    if filt.action:
        engine = sqldialect.engine_of(conn)
        clauses.append(sqldialect.glob(engine, "action"))
        params.append(sqldialect.glob_pattern(engine, filt.action))
    if filt.actor:
        clauses.append("actor = ?")
        params.append(filt.actor)
    order = "DESC" if filt.newest_first else "ASC"
    sql = f"SELECT {_COLUMNS} FROM audit_events WHERE {' AND '.join(clauses)} ORDER BY seq {order}"  # noqa: S608 (fixed clauses, bound values)
    if filt.limit is not None:
        sql += " LIMIT ?"
        params.append(filt.limit)
    for row in conn.execute(sql, params):
        yield AuditEvent(*row)


def verify_store(
    conn: sqlite3.Connection,
    signing_key_path: Path,
    checkpoint_paths: list[Path],
    trusted_keys: Sequence[Path] = (),
) -> VerifyReport:
    """Verify the stored chain against every checkpoint copy that can be read; checkpoints
    sealed by this broker's key or by a peer's in `trusted_keys` (audit.trusted_keys)."""
    public = load_public_key(public_key_path(signing_key_path))
    peers = load_peer_keys(public, trusted_keys, "trusted audit key")
    checkpoints = read_checkpoints(checkpoint_paths, checkpoint_keys(public, peers))

    def seq_of_hash(digest: str) -> int | None:
        # Only called once verification has already failed: a scan is fine, and an index on
        # random hashes would slow every append of a long chain.
        row = conn.execute("SELECT seq FROM audit_events WHERE hash = ?", (digest,)).fetchone()
        return int(row[0]) if row else None

    rows: Iterator[Row] = conn.execute(f"SELECT {_COLUMNS} FROM audit_events ORDER BY seq")  # noqa: S608
    report = verify_chain(rows, checkpoints, seq_of_hash)
    if not checkpoints and report.count:
        report.warnings.append(
            "no checkpoint log found at "
            + ", ".join(str(p) for p in checkpoint_paths)
            + ": deleted or rewritten newest events cannot be detected"
        )
    return report
