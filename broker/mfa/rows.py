"""SQL for the MFA tables, run inside the caller's transaction. Values are always bound."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.core.timeutil import from_text, to_text


@dataclass(frozen=True)
class Factor:
    state: str  # pending | active
    sealed: bytes = b""  # never shown: repr below hides it
    created_at: str = ""
    activated_at: str | None = None
    last_step: int | None = None
    last_used_at: str | None = None

    def __repr__(self) -> str:
        return f"Factor(state={self.state!r}, last_step={self.last_step!r})"


@dataclass(frozen=True)
class Lock:
    until: datetime
    failures: int


def factor(conn: sqlite3.Connection, sid: str) -> Factor | None:
    row = conn.execute(
        "SELECT state, secret, created_at, activated_at, last_step, last_used_at"
        " FROM mfa_factors WHERE sid = ?",
        (sid,),
    ).fetchone()
    return None if row is None else Factor(str(row[0]), bytes(row[1]), *row[2:])


def put_pending(
    conn: sqlite3.Connection, sid: str, account: str, sealed: bytes, now: datetime
) -> None:
    """Store a new pending factor, replacing an older pending one (never an active one)."""
    conn.execute(
        "INSERT INTO mfa_factors (sid, account, state, secret, created_at)"
        " VALUES (?, ?, 'pending', ?, ?)"
        " ON CONFLICT (sid) DO UPDATE SET account = excluded.account, secret = excluded.secret,"
        " created_at = excluded.created_at, activated_at = NULL, last_step = NULL,"
        " last_used_at = NULL WHERE mfa_factors.state = 'pending'",
        (sid, account, sealed, to_text(now)),
    )


def activate(
    conn: sqlite3.Connection, sid: str, step: int, now: datetime, hashes: list[str]
) -> None:
    """Make the pending factor active and replace the recovery codes, in the caller's txn."""
    conn.execute(
        "UPDATE mfa_factors SET state = 'active', activated_at = ?, last_step = ?"
        " WHERE sid = ? AND state = 'pending'",
        (to_text(now), step, sid),
    )
    conn.execute("DELETE FROM mfa_recovery WHERE sid = ?", (sid,))
    conn.executemany(
        "INSERT INTO mfa_recovery (sid, idx, hash) VALUES (?, ?, ?)",
        [(sid, idx, digest) for idx, digest in enumerate(hashes)],
    )


def accept_step(conn: sqlite3.Connection, sid: str, step: int, now: datetime) -> None:
    conn.execute(
        "UPDATE mfa_factors SET last_step = ?, last_used_at = ? WHERE sid = ?",
        (step, to_text(now), sid),
    )


def unused_recovery(conn: sqlite3.Connection, sid: str) -> list[tuple[int, str]]:
    rows = conn.execute(
        "SELECT idx, hash FROM mfa_recovery WHERE sid = ? AND used_at IS NULL ORDER BY idx",
        (sid,),
    ).fetchall()
    return [(int(idx), str(digest)) for idx, digest in rows]


def use_recovery(conn: sqlite3.Connection, sid: str, idx: int, digest: str, now: datetime) -> bool:
    """Mark one code used; False when it was used (or replaced) since it was read."""
    cursor = conn.execute(
        "UPDATE mfa_recovery SET used_at = ?"
        " WHERE sid = ? AND idx = ? AND hash = ? AND used_at IS NULL",
        (to_text(now), sid, idx, digest),
    )
    return cursor.rowcount == 1


def lock(conn: sqlite3.Connection, sid: str) -> Lock | None:
    """The latest lock, expired or not."""
    row = conn.execute("SELECT until, failures FROM mfa_locks WHERE sid = ?", (sid,)).fetchone()
    return None if row is None else Lock(from_text(row[0]), int(row[1]))


def active_lock(conn: sqlite3.Connection, sid: str, now: datetime) -> Lock | None:
    found = lock(conn, sid)
    return found if found is not None and found.until > now else None


def recent_failures(conn: sqlite3.Connection, sid: str, now: datetime, window: timedelta) -> int:
    """Failures in the last `window`, not counting those a lock already answered for."""
    since = to_text(now - window)
    previous = lock(conn, sid)
    floor = to_text(previous.until) if previous is not None and previous.until <= now else ""
    row = conn.execute(
        "SELECT count(*) FROM mfa_failures WHERE sid = ? AND at > ? AND at >= ?",
        (sid, since, floor),
    ).fetchone()
    return int(row[0])


def add_failure(conn: sqlite3.Connection, sid: str, now: datetime, window: timedelta) -> int:
    """Record one failure, forget this account's failures older than `window`; the recent count."""
    conn.execute("DELETE FROM mfa_failures WHERE sid = ? AND at <= ?", (sid, to_text(now - window)))
    conn.execute("INSERT INTO mfa_failures (sid, at) VALUES (?, ?)", (sid, to_text(now)))
    return recent_failures(conn, sid, now, window)


def set_lock(conn: sqlite3.Connection, sid: str, until: datetime, failures: int) -> None:
    conn.execute(
        "INSERT INTO mfa_locks (sid, until, failures) VALUES (?, ?, ?)"
        " ON CONFLICT (sid) DO UPDATE SET until = excluded.until, failures = excluded.failures",
        (sid, to_text(until), failures),
    )


def recovery_left(conn: sqlite3.Connection, sid: str) -> int:
    row = conn.execute(
        "SELECT count(*) FROM mfa_recovery WHERE sid = ? AND used_at IS NULL", (sid,)
    ).fetchone()
    return int(row[0])


def delete_all(conn: sqlite3.Connection, sid: str) -> bool:
    """Remove every MFA row of the account; whether there was any."""
    removed = 0
    for table in ("mfa_factors", "mfa_recovery", "mfa_failures", "mfa_locks"):
        removed += conn.execute(f"DELETE FROM {table} WHERE sid = ?", (sid,)).rowcount  # noqa: S608 (fixed names)
    return removed > 0
