"""Numbered schema migrations. Each runs in its own write transaction with its audit event.

Never edit a migration that has shipped; add a new one. The runner is
idempotent: applied numbers are recorded in `schema_migrations`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "audit chain",
        (
            """CREATE TABLE audit_events (
                seq INTEGER PRIMARY KEY,
                ts TEXT NOT NULL,
                actor TEXT NOT NULL,
                action TEXT NOT NULL,
                target TEXT NOT NULL,
                outcome TEXT NOT NULL CHECK (outcome IN ('ok', 'refused', 'failed')),
                details TEXT NOT NULL,
                prev_hash TEXT NOT NULL,
                hash TEXT NOT NULL
            )""",
            "CREATE INDEX audit_events_ts ON audit_events (ts)",
            "CREATE INDEX audit_events_action ON audit_events (action)",
            "CREATE INDEX audit_events_actor ON audit_events (actor)",
            # Append-only by construction; an attacker with the file can drop these,
            # which the hash chain and the sealed checkpoints then reveal.
            """CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
               BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
            """CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
               BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END""",
        ),
    ),
)


def ensure_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        """CREATE TABLE IF NOT EXISTS schema_migrations (
            number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at TEXT NOT NULL)"""
    )


def applied_numbers(conn: sqlite3.Connection) -> set[int]:
    exists = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'"
    ).fetchone()
    if not exists:
        return set()
    return {row[0] for row in conn.execute("SELECT number FROM schema_migrations")}


def pending(conn: sqlite3.Connection) -> list[Migration]:
    done = applied_numbers(conn)
    return [m for m in MIGRATIONS if m.number not in done]


def latest() -> int:
    return MIGRATIONS[-1].number


def apply(conn: sqlite3.Connection, migration: Migration, applied_at: str) -> None:
    """Apply one migration; the caller holds the write transaction."""
    ensure_table(conn)
    for statement in migration.statements:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO schema_migrations (number, name, applied_at) VALUES (?, ?, ?)",
        (migration.number, migration.name, applied_at),
    )
