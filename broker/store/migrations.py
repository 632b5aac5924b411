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
    Migration(
        2,
        "directory snapshot",
        (
            # One row per AD user, keyed by objectGUID (stable across renames and moves).
            # Raw account attributes are kept so state can be recomputed at any moment.
            """CREATE TABLE dir_users (
                guid TEXT PRIMARY KEY,
                sid TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                upn TEXT,
                dn TEXT NOT NULL,
                uid_number INTEGER,
                gid_number INTEGER,
                primary_group_rid INTEGER,
                uac INTEGER NOT NULL,
                account_expires INTEGER NOT NULL,
                lockout_time INTEGER NOT NULL,
                last_logon INTEGER NOT NULL,
                created TEXT,
                changed TEXT,
                usn_changed INTEGER NOT NULL,
                spns TEXT NOT NULL,
                uid INTEGER,
                gid INTEGER,
                problem TEXT,
                state TEXT NOT NULL
            )""",
            "CREATE INDEX dir_users_name ON dir_users (name)",
            """CREATE TABLE dir_groups (
                guid TEXT PRIMARY KEY,
                sid TEXT NOT NULL UNIQUE,
                name TEXT NOT NULL,
                dn TEXT NOT NULL,
                gid_number INTEGER,
                usn_changed INTEGER NOT NULL,
                members TEXT NOT NULL,
                security INTEGER NOT NULL,
                gid INTEGER
            )""",
            "CREATE INDEX dir_groups_name ON dir_groups (name)",
            # Transitive membership, derived from the groups' member lists at each sync.
            """CREATE TABLE dir_memberships (
                user_guid TEXT NOT NULL REFERENCES dir_users (guid) ON DELETE CASCADE,
                group_guid TEXT NOT NULL REFERENCES dir_groups (guid) ON DELETE CASCADE,
                direct INTEGER NOT NULL,
                PRIMARY KEY (user_guid, group_guid)
            ) WITHOUT ROWID""",
            "CREATE INDEX dir_memberships_group ON dir_memberships (group_guid)",
            """CREATE TABLE dir_sync (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                dc_uri TEXT NOT NULL,
                dc_name TEXT NOT NULL,
                highest_usn INTEGER NOT NULL,
                domain_sid TEXT NOT NULL,
                lockout_duration_s INTEGER,
                full_at TEXT NOT NULL,
                changed_at TEXT NOT NULL,
                checked_at TEXT NOT NULL
            )""",
        ),
    ),
    Migration(
        3,
        "policy versions",
        (
            # Every policy ever applied, with its exact text; re-applying an older text
            # adds a row, so the table is the history of activations.
            """CREATE TABLE policy_versions (
                id INTEGER PRIMARY KEY,
                sha256 TEXT NOT NULL CHECK (length(sha256) = 64),
                source TEXT NOT NULL,
                text TEXT NOT NULL,
                applied_at TEXT NOT NULL,
                actor TEXT NOT NULL
            )""",
            "CREATE INDEX policy_versions_sha256 ON policy_versions (sha256)",
            # The active version: one row, switched in the same transaction as its audit event.
            """CREATE TABLE policy_active (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                version_id INTEGER NOT NULL REFERENCES policy_versions (id)
            )""",
        ),
    ),
    Migration(
        4,
        "mfa",
        (
            # Keyed by objectSid, not by name: every spelling of an account (Alice, HPC\alice,
            # alice@HPC.TEST) and a rename land on one factor and one failure counter.
            # `secret` is AES-GCM sealed with the sid as associated data.
            """CREATE TABLE mfa_factors (
                sid TEXT PRIMARY KEY,
                account TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('pending', 'active')),
                secret BLOB NOT NULL,
                created_at TEXT NOT NULL,
                activated_at TEXT,
                last_step INTEGER,
                last_used_at TEXT
            )""",
            # scrypt hashes only; used_at set once, never cleared.
            """CREATE TABLE mfa_recovery (
                sid TEXT NOT NULL,
                idx INTEGER NOT NULL,
                hash TEXT NOT NULL,
                used_at TEXT,
                PRIMARY KEY (sid, idx)
            ) WITHOUT ROWID""",
            """CREATE TABLE mfa_failures (
                sid TEXT NOT NULL,
                at TEXT NOT NULL
            )""",
            "CREATE INDEX mfa_failures_sid_at ON mfa_failures (sid, at)",
            # The latest lock per account; kept after it expires so failures from before
            # it are not counted again.
            """CREATE TABLE mfa_locks (
                sid TEXT PRIMARY KEY,
                until TEXT NOT NULL,
                failures INTEGER NOT NULL
            )""",
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
