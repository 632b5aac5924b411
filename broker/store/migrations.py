"""Numbered schema migrations. Each runs in its own write transaction with its audit event.

Never edit a migration that has shipped; add a new one. The runner is
idempotent: applied numbers are recorded in `schema_migrations`.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

from broker.core.errors import UnavailableError


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
    Migration(
        5,
        "nodes, elevation requests, grants, session events",
        (
            # The inventory: a node is reachable only after its host key is pinned here
            # (enroll); known_hosts is written from these rows.
            """CREATE TABLE nodes (
                name TEXT PRIMARY KEY,
                address TEXT NOT NULL,
                port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
                host_key_type TEXT,
                host_key TEXT,
                fingerprint TEXT,
                added_at TEXT NOT NULL,
                added_by TEXT NOT NULL,
                enrolled_at TEXT,
                enrolled_by TEXT,
                bootstrapped_at TEXT,
                hook_version TEXT,
                sudo_flavour TEXT,
                sudo_version TEXT,
                io_logging INTEGER,
                last_seen_at TEXT,
                last_skew_s REAL
            )""",
            # A request waits for approvals; it never becomes a grant after expires_at.
            """CREATE TABLE elevation_requests (
                id TEXT PRIMARY KEY,
                user TEXT NOT NULL,
                sid TEXT NOT NULL,
                nodes TEXT NOT NULL,
                role TEXT NOT NULL,
                runas TEXT NOT NULL,
                commands TEXT NOT NULL,
                duration_s INTEGER NOT NULL CHECK (duration_s > 0),
                reason TEXT NOT NULL,
                policy_sha256 TEXT NOT NULL,
                approvals_needed INTEGER NOT NULL,
                approver_groups TEXT NOT NULL,
                state TEXT NOT NULL
                    CHECK (state IN ('pending', 'granted', 'denied', 'expired', 'failed')),
                created_at TEXT NOT NULL,
                expires_at TEXT NOT NULL,
                decided_at TEXT,
                decided_by TEXT,
                decision_reason TEXT,
                grant_id TEXT
            )""",
            "CREATE INDEX elevation_requests_state ON elevation_requests (state, expires_at)",
            """CREATE TABLE approvals (
                request_id TEXT NOT NULL REFERENCES elevation_requests (id),
                approver TEXT NOT NULL,
                approver_sid TEXT NOT NULL,
                decision TEXT NOT NULL CHECK (decision IN ('approve', 'deny')),
                reason TEXT NOT NULL,
                at TEXT NOT NULL,
                PRIMARY KEY (request_id, approver_sid)
            ) WITHOUT ROWID""",
            # A grant is signed once per node; `grant_nodes` says where it landed.
            """CREATE TABLE grants (
                id TEXT PRIMARY KEY,
                user TEXT NOT NULL,
                sid TEXT NOT NULL,
                role TEXT NOT NULL,
                runas TEXT NOT NULL,
                commands TEXT NOT NULL,
                command_lines TEXT NOT NULL,
                nodes TEXT NOT NULL,
                not_before TEXT NOT NULL,
                not_after TEXT NOT NULL,
                reason TEXT NOT NULL,
                approvers TEXT NOT NULL,
                policy_sha256 TEXT NOT NULL,
                login INTEGER NOT NULL,
                workloads INTEGER NOT NULL,
                max_sessions INTEGER NOT NULL,
                request_id TEXT,
                created_at TEXT NOT NULL,
                created_by TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('active', 'revoked', 'expired')),
                ended_at TEXT,
                ended_by TEXT,
                end_reason TEXT
            )""",
            "CREATE INDEX grants_state ON grants (state, not_after)",
            "CREATE INDEX grants_user ON grants (user)",
            """CREATE TABLE grant_nodes (
                grant_id TEXT NOT NULL REFERENCES grants (id),
                node TEXT NOT NULL,
                state TEXT NOT NULL
                    CHECK (state IN ('pending', 'live', 'failed', 'removing', 'removed')),
                error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                pushed_at TEXT,
                removed_at TEXT,
                PRIMARY KEY (grant_id, node)
            ) WITHOUT ROWID""",
            "CREATE INDEX grant_nodes_node ON grant_nodes (node, state)",
            # Session open/close events collected from the nodes' spools (deduplicated).
            """CREATE TABLE session_events (
                id INTEGER PRIMARY KEY,
                node TEXT NOT NULL,
                event_id TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('open', 'close')),
                grant_id TEXT,
                user TEXT NOT NULL,
                runas TEXT NOT NULL,
                service TEXT NOT NULL,
                tty TEXT NOT NULL,
                pid INTEGER NOT NULL,
                at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                UNIQUE (node, event_id)
            )""",
        ),
    ),
    Migration(
        6,
        "session recordings",
        (
            # One row per sudo_logsrvd recording (`path` is its %{seq} directory). Rows are
            # never deleted: a purged recording keeps its metadata and digest.
            """CREATE TABLE recordings (
                id TEXT PRIMARY KEY,
                path TEXT NOT NULL UNIQUE,
                state TEXT NOT NULL
                    CHECK (state IN ('running', 'complete', 'incomplete', 'quarantined', 'purged')),
                node TEXT,
                user TEXT,
                runas TEXT,
                command TEXT,
                argv TEXT,
                cwd TEXT,
                tty TEXT,
                started_at TEXT,
                ended_at TEXT,
                exit_value INTEGER,
                signal TEXT,
                end_reason TEXT,
                grant_id TEXT,
                relayed INTEGER NOT NULL DEFAULT 0,
                bytes_in INTEGER NOT NULL DEFAULT 0,
                bytes_out INTEGER NOT NULL DEFAULT 0,
                sha256 TEXT,
                files TEXT,
                error TEXT,
                first_seen TEXT NOT NULL,
                indexed_at TEXT NOT NULL
            )""",
            "CREATE INDEX recordings_started ON recordings (started_at)",
            "CREATE INDEX recordings_user ON recordings (user, started_at)",
            "CREATE INDEX recordings_node ON recordings (node, started_at)",
            "CREATE INDEX recordings_grant ON recordings (grant_id)",
            "CREATE INDEX recordings_state ON recordings (state)",
        ),
    ),
    Migration(
        7,
        "keytab rotation",
        (
            # One row per service account the broker has rotated or checked.
            """CREATE TABLE keytab_accounts (
                name TEXT PRIMARY KEY,
                account TEXT NOT NULL,
                kvno INTEGER,
                last_rotated_at TEXT,
                last_verified_at TEXT,
                last_error TEXT,
                attempts INTEGER NOT NULL DEFAULT 0,
                retry_after TEXT
            ) WITHOUT ROWID""",
            # The rotation state machine (docs/keytabs.md); written ahead of every step.
            """CREATE TABLE keytab_rotations (
                id INTEGER PRIMARY KEY,
                name TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('planned', 'staged', 'ad_pending',
                    'ad_set', 'done', 'abandoned', 'failed', 'superseded')),
                from_kvno INTEGER NOT NULL,
                target_kvno INTEGER NOT NULL,
                ad_kvno INTEGER,
                nodes TEXT NOT NULL,
                actor TEXT NOT NULL,
                started_at TEXT NOT NULL,
                updated_at TEXT NOT NULL,
                error TEXT
            )""",
            """CREATE UNIQUE INDEX keytab_rotations_open ON keytab_rotations (name)
                WHERE state IN ('planned', 'staged', 'ad_pending', 'ad_set')""",
            # What each node's keytab held when last seen (versions only, never keys).
            """CREATE TABLE keytab_nodes (
                name TEXT NOT NULL,
                node TEXT NOT NULL,
                kvnos TEXT NOT NULL DEFAULT '[]',
                verified_kvno INTEGER,
                checked_at TEXT,
                error TEXT,
                PRIMARY KEY (name, node)
            ) WITHOUT ROWID""",
            # When AD stopped issuing tickets under a key version (prune after max lifetime).
            """CREATE TABLE keytab_retired (
                name TEXT NOT NULL,
                kvno INTEGER NOT NULL,
                retired_at TEXT NOT NULL,
                PRIMARY KEY (name, kvno)
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        8,
        "detection, alerts, quarantine, drift",
        (
            # The hook now also spools refused sudo attempts ('deny'): rebuild the table
            # with the wider CHECK (SQLite cannot alter one), keeping every row and id.
            """CREATE TABLE session_events_new (
                id INTEGER PRIMARY KEY,
                node TEXT NOT NULL,
                event_id TEXT NOT NULL,
                kind TEXT NOT NULL CHECK (kind IN ('open', 'close', 'deny')),
                grant_id TEXT,
                user TEXT NOT NULL,
                runas TEXT NOT NULL,
                service TEXT NOT NULL,
                tty TEXT NOT NULL,
                pid INTEGER NOT NULL,
                at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                UNIQUE (node, event_id)
            )""",
            "INSERT INTO session_events_new SELECT * FROM session_events",
            "DROP TABLE session_events",
            "ALTER TABLE session_events_new RENAME TO session_events",
            # One row per finding of a detection rule (or of a drift check).
            """CREATE TABLE alerts (
                id INTEGER PRIMARY KEY,
                created_at TEXT NOT NULL,
                event_at TEXT,
                rule TEXT NOT NULL,
                severity TEXT NOT NULL
                    CHECK (severity IN ('info', 'low', 'medium', 'high', 'critical')),
                user TEXT,
                node TEXT,
                grant_id TEXT,
                recording_id TEXT,
                message TEXT NOT NULL,
                details TEXT NOT NULL DEFAULT '{}',
                actions TEXT NOT NULL DEFAULT '[]',
                source TEXT NOT NULL,
                acked_at TEXT,
                acked_by TEXT,
                ack_note TEXT
            )""",
            "CREATE INDEX alerts_created ON alerts (created_at)",
            "CREATE INDEX alerts_open ON alerts (acked_at, severity)",
            # What a finding asked the broker to do, done by the responder (retried).
            # Also drift jobs (baseline at grant push, check at session end): no alert_id.
            """CREATE TABLE alert_actions (
                id INTEGER PRIMARY KEY,
                alert_id INTEGER REFERENCES alerts (id),
                kind TEXT NOT NULL,
                target TEXT NOT NULL,
                state TEXT NOT NULL CHECK (state IN ('pending', 'done', 'failed')),
                attempts INTEGER NOT NULL DEFAULT 0,
                next_at TEXT NOT NULL,
                result TEXT,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX alert_actions_due ON alert_actions (state, next_at)",
            # Alerts on their way to syslog and the webhook (retried; never blocks detection).
            """CREATE TABLE alert_deliveries (
                alert_id INTEGER NOT NULL REFERENCES alerts (id),
                channel TEXT NOT NULL CHECK (channel IN ('syslog', 'webhook')),
                state TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'failed')),
                attempts INTEGER NOT NULL DEFAULT 0,
                next_at TEXT NOT NULL,
                last_error TEXT,
                sent_at TEXT,
                PRIMARY KEY (alert_id, channel)
            ) WITHOUT ROWID""",
            "CREATE INDEX alert_deliveries_due ON alert_deliveries (state, next_at)",
            # The detector's cursor and rule memory (one JSON value per key).
            """CREATE TABLE detect_state (
                key TEXT PRIMARY KEY,
                value TEXT NOT NULL
            ) WITHOUT ROWID""",
            # How far each stream of each recording has been read, and its unfinished line.
            """CREATE TABLE detect_streams (
                recording_id TEXT NOT NULL,
                stream TEXT NOT NULL,
                offset INTEGER NOT NULL,
                carry BLOB NOT NULL DEFAULT x'',
                done INTEGER NOT NULL DEFAULT 0,
                PRIMARY KEY (recording_id, stream)
            ) WITHOUT ROWID""",
            # Nodes under quarantine (a row exists until the release reached the node).
            """CREATE TABLE quarantines (
                node TEXT PRIMARY KEY,
                state TEXT NOT NULL CHECK (state IN ('quarantined', 'releasing')),
                reason TEXT NOT NULL,
                since TEXT NOT NULL,
                by TEXT NOT NULL,
                marker TEXT NOT NULL CHECK (marker IN ('pending', 'placed')),
                error TEXT,
                updated_at TEXT NOT NULL
            ) WITHOUT ROWID""",
            # What root could leave behind on a node, as seen when a grant landed there.
            """CREATE TABLE drift_baselines (
                grant_id TEXT NOT NULL,
                node TEXT NOT NULL,
                taken_at TEXT NOT NULL,
                manifest TEXT NOT NULL,
                PRIMARY KEY (grant_id, node)
            ) WITHOUT ROWID""",
            # The drift a finished elevated session left, attached to its recording.
            """CREATE TABLE session_drift (
                recording_id TEXT PRIMARY KEY,
                grant_id TEXT,
                node TEXT NOT NULL,
                checked_at TEXT NOT NULL,
                changes TEXT NOT NULL DEFAULT '[]',
                unexpected INTEGER NOT NULL DEFAULT 0,
                error TEXT
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        9,
        "contained sessions: how they ended, what they used, escapes",
        (
            # Node events now also say what a session's cgroup used ('usage') and when a
            # process left it ('escape'); close events say how the session ended. Rebuilt for
            # the wider CHECK, every row and id kept.
            """CREATE TABLE session_events_new (
                id INTEGER PRIMARY KEY,
                node TEXT NOT NULL,
                event_id TEXT NOT NULL,
                kind TEXT NOT NULL
                    CHECK (kind IN ('open', 'close', 'deny', 'usage', 'escape')),
                grant_id TEXT,
                user TEXT NOT NULL,
                runas TEXT NOT NULL,
                service TEXT NOT NULL,
                tty TEXT NOT NULL,
                pid INTEGER NOT NULL,
                at TEXT NOT NULL,
                received_at TEXT NOT NULL,
                ended_by TEXT CHECK (ended_by IN
                    ('exit', 'revoke', 'expiry', 'quarantine', 'end-session')),
                killed INTEGER,
                contained INTEGER,
                cpu_usec INTEGER,
                memory_peak INTEGER,
                pids_peak INTEGER,
                session_pid INTEGER,
                detail TEXT,
                UNIQUE (node, event_id)
            )""",
            "INSERT INTO session_events_new (id, node, event_id, kind, grant_id, user, runas,"
            " service, tty, pid, at, received_at) SELECT id, node, event_id, kind, grant_id,"
            " user, runas, service, tty, pid, at, received_at FROM session_events",
            "DROP TABLE session_events",
            "ALTER TABLE session_events_new RENAME TO session_events",
            "CREATE INDEX session_events_session ON session_events (node, pid, kind)",
        ),
    ),
    Migration(
        10,
        "drop-in integrity: what was pushed per grant and node, and what the node shows",
        (
            # The sha256 of the drop-in text sent with the last successful push; NULL for a
            # grant pushed before this migration (then only owner and mode are checked).
            "ALTER TABLE grant_nodes ADD COLUMN drop_in_sha256 TEXT",
            # Why the drop-in on the node is not what sudo should read (missing, changed,
            # ignored by sudo); NULL while it is fine. A live row with a problem is not live.
            "ALTER TABLE grant_nodes ADD COLUMN drop_in_problem TEXT",
            "ALTER TABLE grant_nodes ADD COLUMN drop_in_checked_at TEXT",
        ),
    ),
    Migration(
        11,
        "recording tunnel certificates: serials issued to nodes, revocations",
        (
            """CREATE TABLE tunnel_certs (
                serial TEXT PRIMARY KEY
                    CHECK (serial NOT GLOB '*[^0-9a-f]*' AND length(serial) BETWEEN 1 AND 40),
                node TEXT NOT NULL,
                path TEXT NOT NULL,
                issued_at TEXT,
                not_after TEXT,
                revoked_at TEXT,
                revoked_by TEXT,
                reason TEXT CHECK (reason IN ('node-removed', 'superseded'))
            ) WITHOUT ROWID""",
            "CREATE INDEX tunnel_certs_node ON tunnel_certs (node)",
        ),
    ),
    Migration(
        12,
        "hook events by node, user and time: what corroborates a recording",
        (
            # Every listed recording asks for its user's open events on its node near its
            # start (sessions/provenance.py); without this a busy node's events are scanned.
            "CREATE INDEX session_events_user ON session_events (node, user, kind, at)",
        ),
    ),
    Migration(
        14,
        "request notices: the outbox of approver and requester notifications",
        (
            """CREATE TABLE request_notices (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                request_id TEXT NOT NULL,
                kind TEXT NOT NULL
                    CHECK (kind IN ('requested', 'approved', 'denied', 'expired')),
                channel TEXT NOT NULL CHECK (channel IN ('webhook', 'email')),
                recipient TEXT NOT NULL DEFAULT '',
                subject TEXT NOT NULL,
                body TEXT NOT NULL,
                event TEXT NOT NULL,
                state TEXT NOT NULL DEFAULT 'pending'
                    CHECK (state IN ('pending', 'sent', 'failed')),
                attempts INTEGER NOT NULL DEFAULT 0,
                next_at TEXT NOT NULL,
                last_error TEXT,
                created_at TEXT NOT NULL,
                sent_at TEXT
            )""",
            "CREATE INDEX request_notices_due ON request_notices (state, next_at)",
            "CREATE INDEX request_notices_request ON request_notices (request_id)",
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
    for statement in migration.statements:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO schema_migrations (number, name, applied_at) VALUES (?, ?, ?)",
        (migration.number, migration.name, applied_at),
    )
