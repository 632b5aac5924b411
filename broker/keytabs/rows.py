"""SQL for keytab rotation: accounts, rotations (the state machine), node views, retired
key versions. Callers hold `Store.transaction()` for writes; values are bound parameters."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from broker.core.timeutil import from_text, to_second_text, to_text
from broker.keytabs.plan import OPEN_STATES


@dataclass(frozen=True)
class AccountRow:
    name: str
    account: str
    kvno: int | None
    last_rotated_at: datetime | None
    last_verified_at: datetime | None
    last_error: str | None
    attempts: int
    retry_after: datetime | None


@dataclass(frozen=True)
class Rotation:
    id: int
    name: str
    state: str
    from_kvno: int
    target_kvno: int
    ad_kvno: int | None
    nodes: tuple[str, ...]
    actor: str
    started_at: datetime
    updated_at: datetime
    error: str | None


@dataclass(frozen=True)
class NodeView:
    name: str
    node: str
    kvnos: tuple[int, ...]
    verified_kvno: int | None
    checked_at: datetime | None
    error: str | None


def _time(value: str | None) -> datetime | None:
    return None if value is None else from_text(value)


def account(conn: sqlite3.Connection, name: str) -> AccountRow | None:
    row = conn.execute(
        "SELECT name, account, kvno, last_rotated_at, last_verified_at, last_error, attempts,"
        " retry_after FROM keytab_accounts WHERE name = ?",
        (name,),
    ).fetchone()
    if row is None:
        return None
    return AccountRow(
        row[0], row[1], row[2], _time(row[3]), _time(row[4]), row[5], int(row[6]), _time(row[7])
    )


def upsert_account(conn: sqlite3.Connection, name: str, account_name: str) -> None:
    conn.execute(
        "INSERT INTO keytab_accounts (name, account) VALUES (?, ?)"
        " ON CONFLICT (name) DO UPDATE SET account = excluded.account",
        (name, account_name),
    )


def record_success(
    conn: sqlite3.Connection, name: str, kvno: int, now: datetime, *, rotated: bool
) -> None:
    stamp = to_text(now)
    conn.execute(
        "UPDATE keytab_accounts SET kvno = ?, last_verified_at = ?, last_error = NULL,"
        " attempts = 0, retry_after = NULL,"
        " last_rotated_at = CASE WHEN CAST(? AS INTEGER) = 1 THEN ? ELSE last_rotated_at END"
        " WHERE name = ?",
        (kvno, stamp, int(rotated), stamp, name),
    )


def record_failure(
    conn: sqlite3.Connection, name: str, error: str, retry_after: datetime | None
) -> None:
    conn.execute(
        "UPDATE keytab_accounts SET last_error = ?, attempts = attempts + 1, retry_after = ?"
        " WHERE name = ?",
        (error, None if retry_after is None else to_text(retry_after), name),
    )


def mark_verified(conn: sqlite3.Connection, name: str, now: datetime) -> None:
    """Every node accepted fresh tickets now (whole seconds, as `broker keytab verify` writes)."""
    conn.execute(
        "UPDATE keytab_accounts SET last_verified_at = ? WHERE name = ?",
        (to_second_text(now), name),
    )


def set_kvno(conn: sqlite3.Connection, name: str, kvno: int) -> None:
    conn.execute("UPDATE keytab_accounts SET kvno = ? WHERE name = ?", (kvno, name))


_ROTATION = (
    "id, name, state, from_kvno, target_kvno, ad_kvno, nodes, actor, started_at, updated_at, error"
)


def _rotation(row: Sequence[object]) -> Rotation:
    nodes = str(row[6])
    return Rotation(
        id=int(row[0]),  # type: ignore[call-overload]
        name=str(row[1]),
        state=str(row[2]),
        from_kvno=int(row[3]),  # type: ignore[call-overload]
        target_kvno=int(row[4]),  # type: ignore[call-overload]
        ad_kvno=None if row[5] is None else int(row[5]),  # type: ignore[call-overload]
        nodes=tuple(n for n in nodes.split(",") if n),
        actor=str(row[7]),
        started_at=from_text(str(row[8])),
        updated_at=from_text(str(row[9])),
        error=None if row[10] is None else str(row[10]),
    )


def open_rotation(conn: sqlite3.Connection, name: str) -> Rotation | None:
    marks = ", ".join("?" for _ in OPEN_STATES)
    row = conn.execute(
        f"SELECT {_ROTATION} FROM keytab_rotations WHERE name = ? AND state IN ({marks})",  # noqa: S608
        (name, *OPEN_STATES),
    ).fetchone()
    return None if row is None else _rotation(row)


def last_rotation(conn: sqlite3.Connection, name: str) -> Rotation | None:
    row = conn.execute(
        f"SELECT {_ROTATION} FROM keytab_rotations WHERE name = ? ORDER BY id DESC LIMIT 1",  # noqa: S608
        (name,),
    ).fetchone()
    return None if row is None else _rotation(row)


def start_rotation(
    conn: sqlite3.Connection,
    name: str,
    from_kvno: int,
    target_kvno: int,
    nodes: Sequence[str],
    actor: str,
    now: datetime,
) -> int:
    stamp = to_text(now)
    cursor = conn.execute(
        "INSERT INTO keytab_rotations (name, state, from_kvno, target_kvno, nodes, actor,"
        " started_at, updated_at) VALUES (?, 'planned', ?, ?, ?, ?, ?, ?) RETURNING id",
        (name, from_kvno, target_kvno, ",".join(nodes), actor, stamp, stamp),
    )
    return int(cursor.fetchone()[0])


def move(
    conn: sqlite3.Connection,
    rotation_id: int,
    state: str,
    now: datetime,
    *,
    error: str | None = None,
    ad_kvno: int | None = None,
    target_kvno: int | None = None,
) -> None:
    conn.execute(
        "UPDATE keytab_rotations SET state = ?, updated_at = ?, error = COALESCE(?, error),"
        " ad_kvno = COALESCE(?, ad_kvno), target_kvno = COALESCE(?, target_kvno) WHERE id = ?",
        (state, to_text(now), error, ad_kvno, target_kvno, rotation_id),
    )


def node_views(conn: sqlite3.Connection, name: str) -> dict[str, NodeView]:
    rows = conn.execute(
        "SELECT name, node, kvnos, verified_kvno, checked_at, error FROM keytab_nodes"
        " WHERE name = ? ORDER BY node",
        (name,),
    ).fetchall()
    return {
        r[1]: NodeView(r[0], r[1], tuple(int(k) for k in json.loads(r[2])), r[3], _time(r[4]), r[5])
        for r in rows
    }


def record_node(
    conn: sqlite3.Connection,
    name: str,
    node: str,
    now: datetime,
    *,
    kvnos: Sequence[int] | None = None,
    verified_kvno: int | None = None,
    error: str | None = None,
) -> None:
    """A node's latest view: versions seen (kept when unknown), verification, error."""
    conn.execute(
        "INSERT INTO keytab_nodes (name, node, kvnos, verified_kvno, checked_at, error)"
        " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (name, node) DO UPDATE SET"
        " kvnos = CASE WHEN CAST(? AS INTEGER) IS NULL THEN keytab_nodes.kvnos"
        " ELSE excluded.kvnos END,"
        " verified_kvno = COALESCE(excluded.verified_kvno, keytab_nodes.verified_kvno),"
        " checked_at = excluded.checked_at, error = excluded.error",
        (
            name,
            node,
            json.dumps(sorted(kvnos or [])),
            verified_kvno,
            to_text(now),
            error,
            None if kvnos is None else 1,
        ),
    )


def retired(conn: sqlite3.Connection, name: str) -> dict[int, datetime]:
    rows = conn.execute(
        "SELECT kvno, retired_at FROM keytab_retired WHERE name = ?", (name,)
    ).fetchall()
    return {int(r[0]): from_text(r[1]) for r in rows}


def retire(conn: sqlite3.Connection, name: str, kvno: int, now: datetime) -> None:
    conn.execute(
        "INSERT INTO keytab_retired (name, kvno, retired_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name, kvno) DO NOTHING",
        (name, kvno, to_text(now)),
    )


def claim_of(conn: sqlite3.Connection, name: str) -> tuple[str, datetime] | None:
    """Who holds the account's rotation claim, and since when (None: nobody)."""
    row = conn.execute(
        "SELECT owner, claimed_at FROM keytab_claims WHERE name = ?", (name,)
    ).fetchone()
    return None if row is None else (str(row[0]), from_text(str(row[1])))


def set_claim(conn: sqlite3.Connection, name: str, owner: str, now: datetime) -> None:
    conn.execute(
        "INSERT INTO keytab_claims (name, owner, claimed_at) VALUES (?, ?, ?)"
        " ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,"
        " claimed_at = excluded.claimed_at",
        (name, owner, to_text(now)),
    )


def drop_claim(conn: sqlite3.Connection, name: str, owner: str) -> None:
    """Only the holder's own claim: one taken over meanwhile stays with its new owner."""
    conn.execute("DELETE FROM keytab_claims WHERE name = ? AND owner = ?", (name, owner))


def refresh_claim(conn: sqlite3.Connection, name: str, owner: str, now: datetime) -> bool:
    """Stamp the holder's claim with `now`; False when `owner` no longer holds it."""
    cursor = conn.execute(
        "UPDATE keytab_claims SET claimed_at = ? WHERE name = ? AND owner = ?",
        (to_text(now), name, owner),
    )
    return cursor.rowcount == 1
