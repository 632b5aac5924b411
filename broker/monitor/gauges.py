"""The store's numbers an operator alerts on, read at scrape time with cheap queries.

Each figure is one indexed count or a single-row read, so a Prometheus scrape every 15 s
costs the store next to nothing and never takes the write lock (WAL readers do not block
the writer). The SQL lives here, read-only, rather than in each package's rows module:
monitoring must not grow every service's API, and it writes nothing.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from broker.audit.checkpoint import last_sealed_seq
from broker.core.timeutil import to_text
from broker.directory.snapshot import load_state


@dataclass(frozen=True)
class StoreGauges:
    """One reading of the store; `sync_age_s` is None when the directory never synced."""

    nodes_enrolled: int
    nodes_quarantined: int
    grants_active: int
    pushes_failed: int
    removals_pending: int
    nodes_unreachable: int
    requests_waiting: int
    sync_age_s: float | None
    audit_head_seq: int
    audit_sealed_seq: int
    mfa_locked_accounts: int
    webhook_backlog: int
    deliveries_failed: int
    recordings_running: int

    @property
    def seal_lag(self) -> int:
        """Events committed but not yet covered by a signed checkpoint."""
        return max(0, self.audit_head_seq - self.audit_sealed_seq)


def _one(conn: sqlite3.Connection, sql: str, *params: object) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0] or 0) if row is not None else 0


# A node the broker needed and could not reach: an install that failed for a grant still
# active, or a removal that has been tried at least once and is still waiting.
_UNREACHABLE = (
    "SELECT COUNT(DISTINCT gn.node) FROM grant_nodes gn JOIN grants g ON g.id = gn.grant_id"
    " WHERE (gn.state = 'failed' AND g.state = 'active')"
    " OR (gn.state = 'removing' AND gn.attempts > 0)"
)


def read(conn: sqlite3.Connection, checkpoint_log: Path, now: datetime) -> StoreGauges:
    """Read every gauge in one go (each query is its own consistent WAL snapshot)."""
    state = load_state(conn)
    return StoreGauges(
        nodes_enrolled=_one(conn, "SELECT COUNT(*) FROM nodes WHERE enrolled_at IS NOT NULL"),
        nodes_quarantined=_one(conn, "SELECT COUNT(*) FROM quarantines"),
        grants_active=_one(conn, "SELECT COUNT(*) FROM grants WHERE state = 'active'"),
        pushes_failed=_one(
            conn,
            "SELECT COUNT(*) FROM grant_nodes gn JOIN grants g ON g.id = gn.grant_id"
            " WHERE gn.state = 'failed' AND g.state = 'active'",
        ),
        removals_pending=_one(conn, "SELECT COUNT(*) FROM grant_nodes WHERE state = 'removing'"),
        nodes_unreachable=_one(conn, _UNREACHABLE),
        requests_waiting=_one(
            conn, "SELECT COUNT(*) FROM elevation_requests WHERE state = 'pending'"
        ),
        sync_age_s=None if state is None else (now - state.checked_at).total_seconds(),
        audit_head_seq=_one(conn, "SELECT MAX(seq) FROM audit_events"),
        audit_sealed_seq=last_sealed_seq(checkpoint_log),
        mfa_locked_accounts=_one(
            conn, "SELECT COUNT(*) FROM mfa_locks WHERE until > ?", to_text(now)
        ),
        webhook_backlog=_one(
            conn,
            "SELECT COUNT(*) FROM alert_deliveries WHERE channel = 'webhook' AND state = 'pending'",
        ),
        deliveries_failed=_one(
            conn, "SELECT COUNT(*) FROM alert_deliveries WHERE state = 'failed'"
        ),
        recordings_running=_one(conn, "SELECT COUNT(*) FROM recordings WHERE state = 'running'"),
    )
