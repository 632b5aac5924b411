"""Numbered schema migrations. Each runs in its own write transaction with its audit event.

Never edit a migration that has shipped; add a new one. The runner is
idempotent: applied numbers are recorded in `schema_migrations`.
"""

from __future__ import annotations

import sqlite3

from broker.core.errors import UnavailableError
from broker.store.schema_base import FIRST, Migration
from broker.store.schema_later import LATER
from broker.store.schema_pg import postgresql_statements, translate

__all__ = ["MIGRATIONS", "Migration", "apply", "latest", "pending", "require_current"]

MIGRATIONS: tuple[Migration, ...] = FIRST + LATER


_TRACKING = """CREATE TABLE IF NOT EXISTS schema_migrations (
            number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"""


def is_postgresql(conn: sqlite3.Connection) -> bool:
    """Whether `conn` is the PostgreSQL adapter (store/pgconn.py) rather than sqlite3's."""
    return getattr(conn, "dialect", "sqlite") == "postgresql"


def ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(translate(_TRACKING) if is_postgresql(conn) else _TRACKING)


def applied_numbers(conn: sqlite3.Connection) -> set[int]:
    if is_postgresql(conn):
        found = conn.execute("SELECT to_regclass('schema_migrations')").fetchone()
        exists = found is not None and found[0] is not None
    else:
        exists = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
        ).fetchone()
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT number FROM schema_migrations")}


def pending(conn: sqlite3.Connection) -> list[Migration]:
    done = applied_numbers(conn)
    return [m for m in MIGRATIONS if m.number not in done]


def require_current(conn: sqlite3.Connection) -> None:
    """Refuse to work on a schema older than this code expects (the daemon migrates at start)."""
    waiting = pending(conn)
    if waiting:
        raise UnavailableError(
            f"the store schema is missing migrations {[m.number for m in waiting]}",
            fix="run `broker db migrate`",
        )


def latest() -> int:
    return MIGRATIONS[-1].number


def apply(conn: sqlite3.Connection, migration: Migration, applied_at: str) -> None:
    """Apply one migration; the caller holds the write transaction."""
    ensure_table(conn)
    pg = is_postgresql(conn)
    for statement in postgresql_statements(migration) if pg else migration.statements:
        try:
            conn.execute(statement)
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc):
                raise UnavailableError(
                    f"migration {migration.number} needs SQLite's FTS5, which this"
                    f" SQLite {sqlite3.sqlite_version} lacks ({exc})",
                    fix="run the broker on Debian's python3 (its libsqlite3-0 has FTS5)",
                ) from exc
            raise
    conn.execute(
        "INSERT INTO schema_migrations (number, name, applied_at) VALUES (?, ?, ?)",
        (migration.number, migration.name, applied_at),
    )
