"""Ending grants: revoke (by id, user or node), take ended grants off their nodes, expire
what is overdue, and revoke what today's directory and policy would no longer issue.

Apart from issuing (service.py): ending needs no signing key and no MFA, and it must keep
working when issuing cannot (no policy, a missing key).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from broker.audit import writer
from broker.core.durations import format_duration
from broker.core.hostlist import expand, fold
from broker.core.identity import Account, Snapshot
from broker.core.users import NamedUser
from broker.fleet import inventory
from broker.fleet.pool import SshPool
from broker.grants import push, rows
from broker.grants.model import Grant
from broker.grants.notices import NoticeQueue
from broker.grants.reader import GrantReader
from broker.policy.evaluate import decide
from broker.policy.model import Policy
from broker.store.db import Store

log = logging.getLogger("broker.grants")


@dataclass(frozen=True)
class RevokeResult:
    revoked: tuple[str, ...]
    outcomes: tuple[push.NodeOutcome, ...]
    pending: tuple[tuple[str, str], ...]  # (grant, node) still to be removed


@dataclass
class ReapReport:
    requests_expired: list[str] = field(default_factory=list)
    grants_expired: list[str] = field(default_factory=list)
    removed: list[tuple[str, str]] = field(default_factory=list)
    still_pending: list[tuple[str, str]] = field(default_factory=list)


class Revocation:
    def __init__(
        self,
        *,
        store: Store,
        pool: Callable[[], SshPool],
        policy: Callable[[], tuple[str, Policy] | None],
        snapshot: Callable[[datetime], Snapshot],
        notice: NoticeQueue | None = None,
    ) -> None:
        self._store = store
        self._notice = notice
        self._pool = pool  # built on first use: re-checking with nothing to revoke needs no SSH
        self._policy = policy
        self._snapshot = snapshot

    def revoke(
        self,
        *,
        ids: Iterable[str] = (),
        user: NamedUser | None = None,
        node: str | None = None,
        actor: str,
        reason: str,
        now: datetime,
        progress: push.Progress | None = None,
        ended_by: str = "revoke",
    ) -> RevokeResult:
        """End grants at once: marked revoked first (so nothing re-pushes them), then removed
        from their nodes with their running sessions (whose close events say `ended_by`:
        revoke, or quarantine)."""
        conn = self._store.conn
        chosen: dict[str, Grant] = {}
        for grant_id in ids:
            chosen[grant_id] = GrantReader(self._store).grant(grant_id)
        if user is not None:
            for g in rows.grants(conn, user=user, states=("active",), limit=-1):
                chosen[g.id] = g
        if node is not None:
            for g in rows.grants(conn, node=node, states=("active",), limit=-1):
                chosen[g.id] = g
        active = [g for g in chosen.values() if g.state == "active"]
        with self._store.transaction() as tx:
            for g in active:
                rows.end_grant(tx, g.id, "revoked", by=actor, reason=reason, now=now)
                writer.record(
                    tx,
                    writer.EventInput(
                        actor,
                        "grant.revoke",
                        g.id,
                        details={"user": g.user, "nodes": g.nodes, "reason": reason},
                    ),
                    now,
                )
        # Every node of each revoked grant, not only `node`: a revoked grant must go
        # everywhere at once, and what cannot be reached is reported as pending.
        outcomes, pending = self.remove_pending(
            [g.id for g in chosen.values()], now=now, progress=progress, ended_by=ended_by
        )
        return RevokeResult(tuple(g.id for g in active), tuple(outcomes), tuple(pending))

    def remove_pending(
        self,
        grant_ids: Sequence[str] | None,
        *,
        node: str | None = None,
        now: datetime,
        progress: push.Progress | None = None,
        ended_by: str = "revoke",
    ) -> tuple[list[push.NodeOutcome], list[tuple[str, str]]]:
        """Take ended grants off their nodes; returns outcomes and what is still pending."""
        pairs = rows.pending_removals(self._store.conn, grant_ids=grant_ids, node=node)
        if not pairs:
            return [], []
        by_node: dict[str, list[str]] = {}
        for grant_id, name in pairs:
            by_node.setdefault(name, []).append(grant_id)
        known = {t.name: t for t in inventory.targets_known(self._store, list(by_node))}
        targets = [known[n] for n in by_node if n in known]
        outcomes = push.remove(self._pool(), targets, by_node, on_done=progress, ended_by=ended_by)
        pending: list[tuple[str, str]] = []
        with self._store.transaction() as conn:
            for outcome in outcomes:
                for grant_id in by_node[outcome.node]:
                    if outcome.ok:
                        rows.set_node_state(
                            conn, grant_id, outcome.node, "removed", error=None, now=now
                        )
                    else:
                        rows.set_node_state(
                            conn, grant_id, outcome.node, "removing", error=outcome.error, now=now
                        )
                        pending.append((grant_id, outcome.node))
            for name in by_node:
                if name not in known:  # removed from the inventory: nothing left to reach
                    for grant_id in by_node[name]:
                        rows.set_node_state(
                            conn, grant_id, name, "removed", error="node not in inventory", now=now
                        )
            if any(o.ok for o in outcomes) or pending:
                writer.record(
                    conn,
                    writer.EventInput(
                        "broker",
                        "grant.remove",
                        ",".join(sorted({p[0] for p in pairs}))[:200],
                        outcome="ok" if not pending else "failed",
                        details={
                            "removed": fold([o.node for o in outcomes if o.ok]),
                            "killed": sum(o.killed for o in outcomes),
                            "pending": {f"{g}@{n}": "" for g, n in pending},
                        },
                    ),
                    now,
                )
        return outcomes, pending

    def reap(self, now: datetime) -> ReapReport:
        """Expire overdue requests and grants, and retry removals from nodes that were down."""
        report = ReapReport()
        conn = self._store.conn
        overdue = rows.overdue_requests(conn, now)
        expiring = rows.due_to_expire(conn, now)
        if overdue or expiring:
            with self._store.transaction() as tx:
                for request_id in overdue:
                    if rows.decide_request(
                        tx,
                        request_id,
                        "expired",
                        by="broker",
                        reason="not approved in time",
                        now=now,
                    ):
                        report.requests_expired.append(request_id)
                        writer.record(
                            tx,
                            writer.EventInput(
                                "broker", "grant.request.expire", request_id, outcome="refused"
                            ),
                            now,
                        )
                        if self._notice is not None:
                            self._notice(tx, "expired", request_id, now)
                for g in expiring:
                    if rows.end_grant(tx, g.id, "expired", by="broker", reason="expired", now=now):
                        report.grants_expired.append(g.id)
                        writer.record(
                            tx,
                            writer.EventInput(
                                "broker", "grant.expire", g.id, details={"user": g.user}
                            ),
                            now,
                        )
        before = set(rows.pending_removals(conn))
        _outcomes, pending = self.remove_pending(None, now=now)
        report.still_pending = sorted(pending)
        report.removed = sorted(before - set(pending))
        if pending:
            log.info("grant removals still pending on %d node(s)", len({n for _, n in pending}))
        return report

    def recheck(self, *, actor: str, cause: str, now: datetime) -> list[str]:
        """Revoke every active grant the directory and policy of `now` would not issue:
        the user left the group, was disabled, expired or locked, or the policy changed.
        With no active grant, neither the policy nor the snapshot is read."""
        revoked: list[str] = []
        current = rows.grants(self._store.conn, states=("active",), limit=1_000_000)
        if not current:
            return revoked
        active = self._policy()
        snapshot = self._snapshot(now)
        for g in current:
            if g.not_after <= now:
                continue  # the reaper expires it
            why = _still_allowed(active, snapshot.account(g.user), g, now)
            if why is not None:
                log.info("revoking %s of %s: %s: %s", g.id, g.user, cause, why)
                result = self.revoke(ids=[g.id], actor=actor, reason=f"{cause}: {why}", now=now)
                revoked.extend(result.revoked)
        return revoked


def _still_allowed(
    active: tuple[str, Policy] | None, account: Account | None, grant: Grant, now: datetime
) -> str | None:
    """None when the grant's user may still hold it on all its nodes; otherwise why not."""
    if active is None:
        return "no policy is active"
    if account is None:
        return f"{grant.user} is no longer in the directory"
    if account.sid != grant.sid:
        return f"{grant.user} is now another directory account"
    _sha, policy = active
    for node in expand(grant.nodes):
        decision = decide(policy, account, node, grant.role, None, now=now)
        if not decision.allowed:
            return decision.reason
    return _narrower_role(policy, grant)


def _narrower_role(policy: Policy, grant: Grant) -> str | None:
    """Why the grant gives more than its role gives now (after a policy change), or None."""
    role = policy.roles.get(grant.role)
    if role is None:
        return f"role {grant.role} is no longer in the policy"
    if role.runas != grant.runas:
        return f"role {role.name} now runs as {role.runas}, not {grant.runas}"
    if not role.all_commands:
        held = set(role.command_sets)
        granted = {n for n, _ in grant.command_sets}
        if grant.commands == "ALL" or not granted <= held:
            return f"role {role.name} no longer allows commands {grant.commands}"
    if grant.not_after - grant.not_before > role.longest:
        return f"role {role.name} now allows at most {format_duration(role.longest)}"
    if grant.login and not role.login:
        return f"role {role.name} no longer allows login"
    if grant.workloads and not role.workloads:
        return f"role {role.name} no longer allows workloads"
    return None
