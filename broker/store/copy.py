"""`broker db copy`: this broker's SQLite store, row for row, into an empty PostgreSQL
database (the move from one broker to the HA pair), checked on arrival.

The copy runs inside one write transaction on the source: writers wait (stop the daemon
first), and what is copied is one consistent snapshot. The target gets the same
migrations, then every table's rows in foreign-key order, then its identity counters moved
past the copied ids. It is committed only when every table holds as many rows as the
source, the audit chain's head (seq and hash) is the source's, and the chain verifies on
the target against the checkpoints; otherwise nothing of it is kept.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from broker.core.errors import RefusedError
from broker.store import migrations
from broker.store.db import Store

BATCH = 5000
# SQLite's FTS5 keeps the session text index in these; the index itself is copied.
_FTS_SHADOWS = (
    "session_text_data",
    "session_text_idx",
    "session_text_content",
    "session_text_docsize",
    "session_text_config",
)


@dataclass
class CopyReport:
    tables: dict[str, int] = field(default_factory=dict)
    head_seq: int = 0
    head_hash: str = ""

    @property
    def rows(self) -> int:
        return sum(self.tables.values())


def quoted(name: str) -> str:
    """A table or column name as an SQL identifier (names come from the schema, not users)."""
    if not name.replace("_", "").isalnum() or not name.isascii():
        raise RefusedError(f"the store has a table or column named {name!r}; not copied")
    return f'"{name}"'


def source_tables(conn: sqlite3.Connection) -> list[str]:
    """The SQLite store's tables in an order where each comes after those it references."""
    names = [
        str(r[0])
        for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
            " AND name != 'schema_migrations' ORDER BY name"
        )
        if str(r[0]) not in _FTS_SHADOWS
    ]
    refs = {
        t: {str(r[2]) for r in conn.execute(f"PRAGMA foreign_key_list({quoted(t)})")} - {t}
        for t in names
    }
    ordered: list[str] = []
    while len(ordered) < len(names):
        ready = [t for t in names if t not in ordered and refs[t] <= set(ordered)]
        if not ready:
            raise RefusedError("the store's tables reference each other in a cycle; not copied")
        ordered += ready
    return ordered


# Virtual tables whose rowid is part of what they hold (session_text: the recording id
# read as base 36, by which the indexer deletes); PostgreSQL has it as a column.
_ROWID_TABLES = ("session_text",)


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    names = [str(r[1]) for r in conn.execute(f"PRAGMA table_info({quoted(table)})")]
    return ["rowid", *names] if table in _ROWID_TABLES else names


def _rows(conn: sqlite3.Connection, table: str, cols: Sequence[str]) -> Iterator[list[tuple]]:  # type: ignore[type-arg]
    cursor = conn.execute(f"SELECT {', '.join(map(quoted, cols))} FROM {quoted(table)}")  # noqa: S608
    while batch := cursor.fetchmany(BATCH):
        yield batch


def _require_empty(conn: sqlite3.Connection, where: str) -> None:
    """Inside the target's transaction: no broker store there yet (the bookkeeping table this
    creates goes with the transaction if the copy is refused)."""
    migrations.ensure_table(conn)
    if migrations.applied_numbers(conn):
        raise RefusedError(
            f"the target {where} already holds a broker store; nothing was copied",
            fix="copy into a new, empty database",
        )


def _move_identities(conn: sqlite3.Connection, tables: Sequence[str]) -> None:
    """PostgreSQL: identity columns continue after the copied ids (SQLite needs nothing)."""
    if not migrations.is_postgresql(conn):
        return
    for table in tables:
        for col in columns_pg_identity(conn, table):
            conn.execute(
                f"SELECT setval(pg_get_serial_sequence(?, ?),"  # noqa: S608
                f" COALESCE((SELECT MAX({quoted(col)}) FROM {quoted(table)}), 0) + 1, false)",
                (table, col),
            )


def columns_pg_identity(conn: sqlite3.Connection, table: str) -> list[str]:
    rows = conn.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_schema ="
        " current_schema() AND table_name = ? AND is_identity = 'YES'",
        (table,),
    ).fetchall()
    return [str(r[0]) for r in rows]


def _head(conn: sqlite3.Connection) -> tuple[int, str]:
    row = conn.execute("SELECT seq, hash FROM audit_events ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(row[0]), str(row[1])) if row else (0, "")


def copy_store(
    source: Store,
    target: Store,
    verify: Callable[[sqlite3.Connection], str | None],
    before: Callable[[sqlite3.Connection], None] = lambda conn: None,
) -> CopyReport:
    """Copy `source` into the empty `target`. `before` runs first in the source's
    transaction (the audit event of the copy, so it is copied too); `verify` checks the
    target's chain (None when it holds, else why not)."""
    migrations.require_current(source.conn)
    report = CopyReport()
    with source.transaction() as src:
        before(src)
        tables = source_tables(src)
        applied = {
            int(r[0]): str(r[1])
            for r in src.execute("SELECT number, applied_at FROM schema_migrations")
        }
        with target.transaction() as dst:
            _require_empty(dst, str(target.path))
            for migration in migrations.MIGRATIONS:
                migrations.apply(dst, migration, applied.get(migration.number, ""))
            for table in tables:
                report.tables[table] = _copy_table(src, dst, table)
            _move_identities(dst, tables)
            _check(src, dst, report, verify)
    return report


def _copy_table(src: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> int:
    """One table's rows; a row the target refuses is a refusal naming the table (the
    caller's transactions roll back, so nothing of the copy is kept)."""
    cols = columns(src, table)
    insert = (
        f"INSERT INTO {quoted(table)} ({', '.join(map(quoted, cols))})"  # noqa: S608
        f" VALUES ({', '.join('?' * len(cols))})"
    )
    copied = 0
    try:
        for batch in _rows(src, table, cols):
            dst.executemany(insert, batch)
            copied += len(batch)
    except sqlite3.DatabaseError as exc:  # the adapter raises sqlite3's types for PostgreSQL
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        raise RefusedError(
            f"the target refused a row of {table} ({first}); nothing was kept"
        ) from None
    return copied


def _check(
    src: sqlite3.Connection,
    dst: sqlite3.Connection,
    report: CopyReport,
    verify: Callable[[sqlite3.Connection], str | None],
) -> None:
    """Refuse (rolling both back) unless the target holds what the source holds."""
    for table, count in report.tables.items():
        got = int(dst.execute(f"SELECT COUNT(*) FROM {quoted(table)}").fetchone()[0])  # noqa: S608
        if got != count:
            raise RefusedError(
                f"the copy of {table} holds {got} rows, the source {count}; nothing was kept"
            )
    report.head_seq, report.head_hash = _head(src)
    if _head(dst) != (report.head_seq, report.head_hash):
        raise RefusedError("the copied audit chain's head is not the source's; nothing was kept")
    problem = verify(dst)
    if problem is not None:
        raise RefusedError(f"the copied audit chain does not verify: {problem}; nothing was kept")
