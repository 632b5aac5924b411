"""Schema migrations from 10 on (broker.store.migrations runs FIRST + LATER in order)."""

from __future__ import annotations

from broker.store.schema_base import Migration

LATER: tuple[Migration, ...] = (
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
        13,
        "the audit forwarder's cursor: the last event each SIEM target took",
        (
            # One row per `audit.forward` target: a new target starts at the chain's
            # beginning; `seq` only moves forward, after the receiver took the events.
            """CREATE TABLE audit_forward (
                target TEXT PRIMARY KEY,
                seq INTEGER NOT NULL CHECK (seq >= 0),
                updated_at TEXT NOT NULL
            ) WITHOUT ROWID""",
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
    Migration(
        15,
        "keytab rotation claims: one worker per service account at a time",
        (
            # Taken before a rotation of the account starts and dropped when it ends, so two
            # workers (threads or processes) never rotate one account at once. `owner` is
            # "host:pid:process start time:random"; a claim of this host is taken over only
            # once its process is gone (kill -9), one of another host (or unparseable) once
            # keytabs/claims.py's CLAIM_TTL has passed since its holder's last step.
            """CREATE TABLE keytab_claims (
                name TEXT PRIMARY KEY,
                owner TEXT NOT NULL,
                claimed_at TEXT NOT NULL
            ) WITHOUT ROWID""",
        ),
    ),
    Migration(
        16,
        "the controls report: audit events by action (and time, actor or target), hook events by time",
        (
            # `broker report controls` counts events per action and outcome over a period and
            # looks up each elevation's TOTP (same action, actor, just before) and each
            # recording's digest event (same action, target) on these, instead of reading
            # the rows. (action, ts, outcome) serves every query the single-column action
            # index served; (ts, outcome) every query the ts index served.
            "CREATE INDEX audit_events_action_ts ON audit_events (action, ts, outcome)",
            "CREATE INDEX audit_events_action_actor ON audit_events (action, actor, ts)",
            "CREATE INDEX audit_events_action_target ON audit_events (action, target)",
            "DROP INDEX audit_events_action",
            "CREATE INDEX audit_events_ts_outcome ON audit_events (ts, outcome)",
            "DROP INDEX audit_events_ts",
            # AC-10's running count of open elevated sessions per node and user, in time
            # order: read in index order instead of sorting every hook event.
            "CREATE INDEX session_events_timeline ON session_events (node, user, at)",
        ),
    ),
    Migration(
        17,
        "session search: typed command lines and input text in FTS5, per recording",
        (
            # 0: its input is not in session_text yet (running, or indexed before this
            # migration: the indexer's pass backfills those, and search reads their files
            # meanwhile); 1: all of it is; 2: only the first MAX_TEXT bytes are (search
            # reads the rest from the files).
            "ALTER TABLE recordings ADD COLUMN text_state INTEGER NOT NULL DEFAULT 0"
            " CHECK (text_state IN (0, 1, 2))",
            "CREATE INDEX recordings_text_pending ON recordings (id)"
            " WHERE text_state != 1 AND state IN ('running', 'complete', 'incomplete')",
            # rowid = the recording id read as base 36 (stable across VACUUM, deleted by
            # rowid); typed = the command lines `sessions show` lists; input = the stdin
            # and ttyin files as text. Trigram: any substring of 3+ characters is a query.
            "CREATE VIRTUAL TABLE session_text USING fts5("
            "rid UNINDEXED, typed, input, tokenize = 'trigram')",
        ),
    ),
    Migration(
        18,
        "scheduler lease: which broker runs the scheduler's duties, for how long, its term",
        (
            # One row: the broker holding the lease (host:pid:token), the term (raised at
            # every change of holder: a fencing number that never goes back), and when it
            # was renewed and runs out (UTC text). Another broker takes it over only once
            # expires_at has passed.
            """CREATE TABLE scheduler_lease (
                id INTEGER PRIMARY KEY CHECK (id = 1),
                holder TEXT NOT NULL,
                term INTEGER NOT NULL CHECK (term >= 1),
                renewed_at TEXT NOT NULL,
                expires_at TEXT NOT NULL
            )""",
        ),
    ),
)
