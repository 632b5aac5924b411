"""Elevation, approval, revocation and expiry: the flows, over the store and the fleet.

Every state change is one `Store.transaction()` with its audit event; the
SSH work happens outside it, and its outcome is recorded per node in a
second transaction. A grant is active only on the nodes where it landed and
was confirmed live; a removal that could not reach a node stays `removing`
and the reaper retries it until the node answers.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import writer
from broker.core.durations import format_duration
from broker.core.errors import RefusedError, UsageError
from broker.core.hostlist import expand, fold
from broker.core.identity import Account, Snapshot
from broker.fleet import inventory
from broker.fleet.pool import SshPool
from broker.fleet.quarantine import quarantines
from broker.fleet.ssh import NodeTarget
from broker.grants import push, rows
from broker.grants.grantfile import new_grant_id, validate_reason
from broker.grants.model import Grant, Request
from broker.grants.plan import ElevationPlan, plan_elevation
from broker.grants.reader import GrantReader
from broker.policy.evaluate import decide, state_at
from broker.policy.model import Policy
from broker.policy.names import POSIX_NAME
from broker.store.db import Store

log = logging.getLogger("broker.grants")

# Called with (account, code, purpose, actor); raises RefusedError unless the code is accepted.
MfaCheck = Callable[[Account, str | None, str, str], None]
Progress = Callable[[push.NodeOutcome], None]


@dataclass(frozen=True)
class GrantRules:
    max_skew: timedelta
    log_listen: str = "loopback"  # sessions.node_listen
    log_port: int = 30343


@dataclass(frozen=True)
class ElevationResult:
    grant: Grant | None
    request: Request | None
    outcomes: tuple[push.NodeOutcome, ...] = ()


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


def new_request_id() -> str:
    return "r" + secrets.token_hex(8)


class GrantService:
    """The grant flows for one process; SSH work goes through the shared pool."""

    def __init__(
        self,
        *,
        store: Store,
        pool: SshPool,
        signing_key: Ed25519PrivateKey,
        rules: GrantRules,
        policy: Callable[[], tuple[str, Policy] | None],
        snapshot: Callable[[datetime], Snapshot],
        mfa: MfaCheck,
    ) -> None:
        self._store = store
        self._pool = pool
        self._key = signing_key
        self._rules = rules
        self._policy = policy
        self._snapshot = snapshot
        self._mfa = mfa

    # ------------------------------------------------------------ elevate

    def _require_policy(self) -> tuple[str, Policy]:
        active = self._policy()
        if active is None:
            raise RefusedError(
                "no policy is active: nothing allows elevation",
                fix="an operator applies one with `broker policy apply FILE`",
            )
        return active

    def preview(
        self,
        account: Account,
        *,
        nodes: str,
        duration: timedelta | None,
        role: str | None,
        commands: Sequence[str] | None,
        now: datetime,
    ) -> ElevationPlan:
        """What `elevate` would grant, refused exactly as it would be (no code needed)."""
        _sha, policy = self._require_policy()
        names = expand(nodes)
        plan = plan_elevation(
            policy, account, names, role=role, duration=duration, commands=commands, now=now
        )
        self._not_quarantined(policy, account, names)
        self._targets(names)
        return plan

    def _not_quarantined(
        self,
        policy: Policy,
        account: Account,
        names: Sequence[str],
        conn: sqlite3.Connection | None = None,
    ) -> None:
        """A quarantined node takes grants only for the incident-response group (checked
        again inside the transaction that issues, so a quarantine meanwhile still wins)."""
        held = {q.node: q for q in quarantines(conn or self._store.conn)}
        blocked = [n for n in names if n in held]
        if not blocked:
            return
        group = policy.incident_response_group
        if group is not None and group in account.groups:
            return
        first = held[blocked[0]]
        raise RefusedError(
            f"{fold(blocked)} {'is' if len(blocked) == 1 else 'are'} quarantined since"
            f" {first.since[:19]}Z ({first.reason}): only {group or 'incident response'}"
            " members may elevate there",
            fix="leave those nodes out, or ask incident response to release them",
        )

    def _targets(self, names: Sequence[str]) -> list[NodeTarget]:
        """Inventory targets, refusing unknown nodes and nodes that cannot record sessions."""
        conn = self._store.conn
        targets = inventory.targets(self._store, names)
        unable: list[str] = []
        reasons: list[str] = []
        for name in names:
            record = inventory.get(conn, name)
            if record is None:
                continue
            if record.sudo_flavour != "sudo" or not record.io_logging:
                unable.append(name)
                if record.io_logging is None:
                    reasons.append(f"{name}: sudo not checked yet")
                else:
                    flavour = record.sudo_flavour or "unknown sudo"
                    reasons.append(f"{name}: {flavour} cannot record sessions (no I/O logging)")
        if unable:
            raise RefusedError(
                f"no grants on {fold(unable)}: {reasons[0]}",
                fix="install sudo with I/O logging (ogsudo) and run `broker node status` "
                "or `broker node bootstrap` on those nodes",
            )
        return targets

    def elevate(
        self,
        account: Account,
        *,
        nodes: str,
        duration: timedelta | None,
        reason: str,
        role: str | None,
        commands: Sequence[str] | None,
        code: str | None,
        actor: str,
        now: datetime,
        progress: Progress | None = None,
        push_now: bool = True,
    ) -> ElevationResult:
        """Check everything, then grant and push, or open a request that waits for approvals.

        With `push_now` False the grant is issued and the caller pushes it from another
        thread (`push_pending`), so a client can watch the nodes land one by one."""
        reason = validate_reason(reason)
        _unix_name(account.name, "requester")
        sha, policy = self._require_policy()
        names = expand(nodes)
        plan = plan_elevation(
            policy, account, names, role=role, duration=duration, commands=commands, now=now
        )
        self._not_quarantined(policy, account, names)
        targets = self._targets(names)
        if plan.role.mfa:
            self._mfa(account, code, "elevate", actor)
        approvals = plan.role.approvals
        if approvals.required:
            request = Request(
                id=new_request_id(),
                user=account.name,
                sid=account.sid,
                nodes=fold(list(plan.nodes)),
                role=plan.role.name,
                runas=plan.role.runas,
                commands=plan.commands_text,
                duration_s=int(plan.duration.total_seconds()),
                reason=reason,
                policy_sha256=sha,
                approvals_needed=approvals.count,
                approver_groups=approvals.groups,
                state="pending",
                created_at=now,
                expires_at=now + approvals.expires_after,
                decided_at=None,
                decided_by=None,
                decision_reason=None,
                grant_id=None,
            )
            with self._store.transaction() as conn:
                rows.insert_request(conn, request)
                writer.record(
                    conn,
                    writer.EventInput(
                        actor,
                        "grant.request",
                        request.id,
                        details={
                            "user": request.user,
                            "nodes": request.nodes,
                            "role": request.role,
                            "duration": format_duration(plan.duration),
                            "reason": reason,
                            "approvals_needed": approvals.count,
                            "expires_at": request.expires_at.isoformat(),
                        },
                    ),
                    now,
                )
            return ElevationResult(None, request)
        grant = self._issue(
            account,
            plan,
            reason=reason,
            sha=sha,
            approvers=(),
            request_id=None,
            actor=actor,
            now=now,
        )
        if not push_now:
            return ElevationResult(self.grant(grant.id), None)
        outcomes = self._push(grant, targets, now, progress)
        return ElevationResult(self.grant(grant.id), None, tuple(outcomes))

    def _issue(
        self,
        account: Account,
        plan: ElevationPlan,
        *,
        reason: str,
        sha: str,
        approvers: tuple[str, ...],
        request_id: str | None,
        actor: str,
        now: datetime,
    ) -> Grant:
        # Whole seconds: sudoers and the grant file carry no fractions, and a grant must
        # not outlast what the node will enforce.
        start = now.replace(microsecond=0)
        grant = Grant(
            id=new_grant_id(),
            user=account.name,
            sid=account.sid,
            role=plan.role.name,
            runas=plan.role.runas,
            commands=plan.commands_text,
            command_sets=plan.command_sets,
            nodes=fold(list(plan.nodes)),
            not_before=start,
            not_after=start + plan.duration,
            reason=reason,
            approvers=approvers,
            policy_sha256=sha,
            login=plan.role.login,
            workloads=plan.role.workloads,
            max_sessions=plan.role.max_sessions_per_node,
            request_id=request_id,
            created_at=now,
            created_by=actor,
            state="active",
        )
        # Rendered (and so validated) before anything is stored: a grant whose drop-in
        # cannot be written never exists.
        push.drop_in_text(grant, f"127.0.0.1:{self._rules.log_port}")
        with self._store.transaction() as conn:
            self._not_quarantined(self._require_policy()[1], account, list(plan.nodes), conn)
            rows.insert_grant(conn, grant, plan.nodes)
            if request_id is not None and not rows.decide_request(
                conn,
                request_id,
                "granted",
                by=actor,
                reason="approved",
                now=now,
                grant_id=grant.id,
            ):
                # Denied, expired or granted by a concurrent approval meanwhile: the
                # insert above rolls back with this error.
                raise RefusedError(
                    f"request {request_id} is no longer pending",
                    fix="see `broker requests list --state ''`",
                )
            writer.record(
                conn,
                writer.EventInput(
                    actor,
                    "grant.issue",
                    grant.id,
                    details={
                        "user": grant.user,
                        "nodes": grant.nodes,
                        "role": grant.role,
                        "runas": grant.runas,
                        "commands": grant.commands,
                        "not_before": grant.not_before.isoformat(),
                        "not_after": grant.not_after.isoformat(),
                        "reason": reason,
                        "approvers": list(approvers),
                        "request": request_id,
                        "policy_sha256": sha,
                    },
                ),
                now,
            )
        return grant

    def _push(
        self,
        grant: Grant,
        targets: Sequence[NodeTarget],
        now: datetime,
        progress: Progress | None,
    ) -> list[push.NodeOutcome]:
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

    # ------------------------------------------------------------ approvals

    def _approver_check(self, request: Request, approver: Account, now: datetime) -> None:
        if request.state != "pending":
            raise RefusedError(
                f"request {request.id} is {request.state}, not pending",
                fix="list open requests with `broker requests list`",
            )
        if request.expires_at <= now:
            raise RefusedError(
                f"request {request.id} expired at {request.expires_at:%Y-%m-%d %H:%M:%SZ}",
                fix="the requester must elevate again",
            )
        if approver.sid == request.sid:
            raise RefusedError(
                f"{approver.name} requested {request.id} and may not approve or deny it",
                fix=f"ask a member of {', '.join(request.approver_groups)}",
            )
        _unix_name(approver.name, "approver")
        if (
            state_at(approver, now) != "enabled"
            or not approver.eligible
            or not (set(request.approver_groups) & approver.groups)
        ):
            raise RefusedError(
                f"{approver.name} is not in an approver group of {request.id} "
                f"({', '.join(request.approver_groups)})",
                fix="ask a member of one of those groups",
            )

    def approve(
        self,
        request_id: str,
        approver: Account,
        *,
        code: str | None,
        actor: str,
        now: datetime,
        progress: Progress | None = None,
        push_now: bool = True,
    ) -> ElevationResult:
        """Record an approval; with enough of them, issue the grant and push it."""
        request = self.request(request_id)
        self._approver_check(request, approver, now)
        self._mfa(approver, code, "approve", actor)
        with self._store.transaction() as conn:
            current = rows.request(conn, request_id)
            if current is None or current.state != "pending":
                raise RefusedError(f"request {request_id} is no longer pending")
            if not rows.add_approval(
                conn,
                request_id,
                approver=approver.name,
                approver_sid=approver.sid,
                decision="approve",
                reason="",
                now=now,
            ):
                raise RefusedError(
                    f"{approver.name} already decided on {request_id}",
                    fix="another approver must approve it",
                )
            writer.record(
                conn,
                writer.EventInput(
                    actor, "grant.approve", request_id, details={"requester": request.user}
                ),
                now,
            )
        request = self.request(request_id)
        approvers = tuple(a.approver for a in request.approvals if a.decision == "approve")
        if len(approvers) < request.approvals_needed:
            return ElevationResult(None, request)
        return self._grant_request(request, approvers, actor, now, progress, push_now)

    def _grant_request(
        self,
        request: Request,
        approvers: tuple[str, ...],
        actor: str,
        now: datetime,
        progress: Progress | None,
        push_now: bool = True,
    ) -> ElevationResult:
        """Re-check the request against today's directory and policy, then issue it."""
        try:
            sha, policy = self._require_policy()
            account = self._snapshot(now).account(request.user)
            if account is None or account.sid != request.sid:
                raise RefusedError(f"{request.user} is no longer in the directory snapshot")
            commands = None if request.commands == "ALL" else request.commands.split(",")
            names = expand(request.nodes)
            plan = plan_elevation(
                policy,
                account,
                names,
                role=request.role,
                duration=timedelta(seconds=request.duration_s),
                commands=commands,
                now=now,
            )
            self._not_quarantined(policy, account, names)
            targets = self._targets(names)
        except (RefusedError, UsageError) as exc:
            with self._store.transaction() as conn:
                rows.decide_request(
                    conn, request.id, "failed", by=actor, reason=exc.one_line(), now=now
                )
                writer.record(
                    conn,
                    writer.EventInput(
                        actor,
                        "grant.request.fail",
                        request.id,
                        outcome="refused",
                        details={"reason": exc.one_line()},
                    ),
                    now,
                )
            raise
        # Count only approvals that still hold: today's role decides how many and from which
        # groups, and an approver disabled, expired or moved out since does not count.
        snapshot = self._snapshot(now)
        wanted = plan.role.approvals
        holding = tuple(
            name
            for name in approvers
            if _approver_holds(snapshot.account(name), wanted.groups, request.sid, now)
        )
        if len(holding) < wanted.count:
            return ElevationResult(None, request)
        grant = self._issue(
            account,
            plan,
            reason=request.reason,
            sha=sha,
            approvers=holding,
            request_id=request.id,
            actor=actor,
            now=now,
        )
        if not push_now:
            return ElevationResult(self.grant(grant.id), self.request(request.id))
        outcomes = self._push(grant, targets, now, progress)
        return ElevationResult(self.grant(grant.id), self.request(request.id), tuple(outcomes))

    def push_pending(self, grant_id: str, *, now: datetime) -> list[push.NodeOutcome]:
        """Push a just-issued grant to its nodes still `pending` (the deferred half of
        `elevate(push_now=False)`)."""
        grant = self.grant(grant_id)
        if grant.state != "active":
            return []
        todo = [
            n.node for n in rows.grant_nodes(self._store.conn, grant_id) if n.state == "pending"
        ]
        if not todo:
            return []
        return self._push(grant, inventory.targets_known(self._store, todo), now, None)

    def deny(
        self,
        request_id: str,
        approver: Account,
        *,
        reason: str,
        code: str | None,
        actor: str,
        now: datetime,
    ) -> Request:
        reason = validate_reason(reason)
        request = self.request(request_id)
        self._approver_check(request, approver, now)
        self._mfa(approver, code, "deny", actor)
        with self._store.transaction() as conn:
            rows.add_approval(
                conn,
                request_id,
                approver=approver.name,
                approver_sid=approver.sid,
                decision="deny",
                reason=reason,
                now=now,
            )
            if not rows.decide_request(
                conn, request_id, "denied", by=approver.name, reason=reason, now=now
            ):
                raise RefusedError(f"request {request_id} is no longer pending")
            writer.record(
                conn,
                writer.EventInput(
                    actor,
                    "grant.deny",
                    request_id,
                    details={"requester": request.user, "reason": reason},
                ),
                now,
            )
        return self.request(request_id)

    def request(self, request_id: str) -> Request:
        return GrantReader(self._store).request(request_id)

    def grant(self, grant_id: str) -> Grant:
        return GrantReader(self._store).grant(grant_id)

    # ------------------------------------------------------------ retry, revoke, expire

    def retry(
        self, grant_id: str, *, actor: str, now: datetime, progress: Progress | None = None
    ) -> list[push.NodeOutcome]:
        """Push again to the nodes where the grant has not landed."""
        grant = self.grant(grant_id)
        if not grant.active_at(now):
            raise RefusedError(
                f"grant {grant_id} is {grant.state if grant.state != 'active' else 'expired'}",
                fix="elevate again",
            )
        todo = [
            n.node
            for n in rows.grant_nodes(self._store.conn, grant_id)
            if n.state in ("pending", "failed")
        ]
        if not todo:
            return []
        with self._store.transaction() as conn:
            writer.record(
                conn,
                writer.EventInput(actor, "grant.retry", grant_id, details={"nodes": fold(todo)}),
                now,
            )
        return self._push(grant, self._targets(todo), now, progress)

    def revoke(
        self,
        *,
        ids: Iterable[str] = (),
        user: str | None = None,
        node: str | None = None,
        actor: str,
        reason: str,
        now: datetime,
        progress: Progress | None = None,
    ) -> RevokeResult:
        """End grants at once: marked revoked first (so nothing re-pushes them), then removed
        from their nodes with their running sessions."""
        conn = self._store.conn
        chosen: dict[str, Grant] = {}
        for grant_id in ids:
            chosen[grant_id] = self.grant(grant_id)
        if user is not None:
            for g in rows.grants(conn, user=user, states=("active",)):
                chosen[g.id] = g
        if node is not None:
            for g in rows.grants(conn, node=node, states=("active",)):
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
            [g.id for g in chosen.values()], now=now, progress=progress
        )
        return RevokeResult(tuple(g.id for g in active), tuple(outcomes), tuple(pending))

    def remove_pending(
        self,
        grant_ids: Sequence[str] | None,
        *,
        node: str | None = None,
        now: datetime,
        progress: Progress | None = None,
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
        outcomes = push.remove(self._pool, targets, by_node, on_done=progress)
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

    # ------------------------------------------------------------ automatic revocation

    def recheck(self, *, actor: str, cause: str, now: datetime) -> list[str]:
        """Revoke every active grant the directory and policy of `now` would not issue:
        the user left the group, was disabled, expired or locked, or the policy changed."""
        revoked: list[str] = []
        active = self._policy()
        snapshot = self._snapshot(now)
        for g in rows.grants(self._store.conn, states=("active",), limit=1_000_000):
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


def _approver_holds(
    account: Account | None, groups: tuple[str, ...], requester_sid: str, now: datetime
) -> bool:
    return (
        account is not None
        and account.sid != requester_sid
        and account.eligible
        and state_at(account, now) == "enabled"
        and bool(set(groups) & account.groups)
    )


def _unix_name(name: str, what: str) -> None:
    """Names reach sudoers and grant files: the POSIX portable allow-list, nothing else."""
    if not POSIX_NAME.fullmatch(name):
        raise RefusedError(
            f"the {what} name {name!r} is not a POSIX user name ([a-z_][a-z0-9_-]*, at most "
            "32 characters)",
            fix="rename the account in AD, or have another person act",
        )
