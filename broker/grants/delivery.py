"""Delivering an issued grant: push it to its nodes and record, per node, where it landed.

Used by elevation, approval, retry and the deferred push alike, so the rule that a grant
revoked while it was being pushed comes off again lives in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import writer
from broker.core.hostlist import fold
from broker.fleet.pool import SshPool
from broker.fleet.ssh import NodeTarget
from broker.grants import push, rows
from broker.grants.model import Grant
from broker.store.db import Store


@dataclass(frozen=True)
class GrantRules:
    max_skew: timedelta
    log_listen: str = "loopback"  # sessions.node_listen
    log_port: int = 30343


class Delivery:
    def __init__(
        self, *, store: Store, pool: SshPool, signing_key: Ed25519PrivateKey, rules: GrantRules
    ) -> None:
        self._store = store
        self._pool = pool
        self._key = signing_key
        self._rules = rules

    def push(
        self,
        grant: Grant,
        targets: Sequence[NodeTarget],
        now: datetime,
        progress: push.Progress | None,
    ) -> list[push.NodeOutcome]:
        """Install `grant` on `targets`; record where it landed (or, if it was revoked
        meanwhile, that it must come off again)."""
        outcomes = push.install(
            self._pool,
            targets,
            grant,
            self._key,
            max_skew=self._rules.max_skew,
            log_listen=self._rules.log_listen,
            log_port=self._rules.log_port,
            now=now,
            on_done=progress,
        )
        with self._store.transaction() as conn:
            current = rows.grant(conn, grant.id)
            still_active = current is not None and current.state == "active"
            for outcome in outcomes:
                if not still_active:
                    # Revoked while we pushed: whatever landed (even a push that reported
                    # failure may have renamed its files) must come off again.
                    rows.set_node_state(
                        conn, grant.id, outcome.node, "removing", error=None, now=now
                    )
                else:
                    rows.set_node_state(
                        conn,
                        grant.id,
                        outcome.node,
                        "live" if outcome.ok else "failed",
                        error=outcome.error,
                        now=now,
                    )
                    if outcome.ok and outcome.drop_in_sha256 is not None:
                        rows.record_drop_in(conn, grant.id, outcome.node, outcome.drop_in_sha256)
            writer.record(
                conn,
                writer.EventInput(
                    "broker",
                    "grant.push",
                    grant.id,
                    outcome="ok" if all(o.ok for o in outcomes) else "failed",
                    details={
                        "live": fold([o.node for o in outcomes if o.ok]),
                        "failed": {o.node: o.error for o in outcomes if not o.ok},
                    },
                ),
                now,
            )
        return outcomes
