"""Elevation, approval, revocation and expiry: the flows, over the store and the fleet.

Every state change is one `Store.transaction()` with its audit event; the
SSH work happens outside it, and its outcome is recorded per node in a
second transaction. A grant is active only on the nodes where it landed and
was confirmed live; a removal that could not reach a node stays `removing`
and the reaper retries it until the node answers.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import writer
from broker.audit.refusals import RefusalRecorder
from broker.core.errors import RefusedError, UsageError
from broker.core.hostlist import expand, fold
from broker.core.identity import Account, Snapshot
from broker.core.users import NamedUser
from broker.fleet import inventory
from broker.fleet.pool import SshPool
from broker.fleet.quarantine import quarantines
from broker.fleet.ssh import NodeTarget
from broker.grants import push, records, rows
from broker.grants.approvers import approver_check, approver_holds
from broker.grants.delivery import Delivery, GrantRules
from broker.grants.grantfile import validate_reason
from broker.grants.model import Grant, Request
from broker.grants.notices import notice_queue
from broker.grants.plan import ElevationPlan
from broker.grants.precheck import planned
from broker.grants.reader import GrantReader
from broker.grants.revocation import ReapReport, Revocation, RevokeResult
from broker.notify.notices import RequestNotices
from broker.policy.model import Policy
from broker.policy.names import require_unix_name
from broker.store.db import Store

log = logging.getLogger("broker.grants")

# Called with (account, code, purpose, actor); raises RefusedError unless the code is accepted.
MfaCheck = Callable[[Account, str | None, str, str], None]


@dataclass(frozen=True)
class ElevationResult:
    grant: Grant | None
    request: Request | None
    outcomes: tuple[push.NodeOutcome, ...] = ()


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
        refusals: RefusalRecorder,
        notices: RequestNotices | None = None,
    ) -> None:
        self._store = store
        self._refusals = refusals
        self._pool = pool
        self._key = signing_key
        self._rules = rules
        self._policy = policy
        self._snapshot = snapshot
        self._mfa = mfa
        self._delivery = Delivery(store=store, pool=pool, signing_key=signing_key, rules=rules)
        self._notice = notice_queue(notices, snapshot)  # approvers and requesters hear
        self._ending = Revocation(
            store=store, pool=lambda: pool, policy=policy, snapshot=snapshot, notice=self._notice
        )

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
        actor: str,
        now: datetime,
    ) -> ElevationPlan:
        """What `elevate` would grant, refused exactly as it would be (no code needed), and
        audited as it would be: probing where one may elevate leaves a trace too."""
        _sha, plan, _targets = self._checked(
            account, nodes=nodes, duration=duration, role=role, commands=commands,
            actor=actor, now=now, preview=True,
        )  # fmt: skip
        return plan

    def _checked(
        self,
        account: Account,
        *,
        nodes: str,
        duration: timedelta | None,
        role: str | None,
        commands: Sequence[str] | None,
        actor: str,
        now: datetime,
        preview: bool = False,
    ) -> tuple[str, ElevationPlan, list[NodeTarget]]:
        """Policy, quarantine and node checks of an elevation; a refusal is audited as
        `request.refused` when the role waits for approvals, else `grant.refused`."""
        action = "grant.refused"
        try:
            require_unix_name(account.name, "requester")
            sha, policy = self._require_policy()
            named = policy.roles.get(role or "")
            if named is not None and named.approvals.required:
                action = "request.refused"
            names = expand(nodes)
            plan = planned(
                policy, account, names, role=role, duration=duration, commands=commands, now=now
            )
            action = "request.refused" if plan.role.approvals.required else "grant.refused"
            self._not_quarantined(policy, account, names)
            return sha, plan, self._targets(names)
        except RefusedError as exc:
            self._refused(
                exc, action, actor, nodes, now, user=account.name, role=role,
                duration_s=None if duration is None else int(duration.total_seconds()),
                step="preview" if preview else "elevate",
            )  # fmt: skip
            raise

    def _refused(
        self, exc: RefusedError, action: str, actor: str, target: str, now: datetime, **more: Any
    ) -> None:
        """Audit a refusal in its own transaction (rate-limited per caller: audit/refusals)."""
        self._refusals.record(
            actor=actor, action=action, target=target, reason=exc.one_line(), now=now,
            details=more,
        )  # fmt: skip

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
        progress: push.Progress | None = None,
        push_now: bool = True,
    ) -> ElevationResult:
        """Check everything, then grant and push, or open a request that waits for approvals.

        With `push_now` False the grant is issued and the caller pushes it from another
        thread (`push_pending`), so a client can watch the nodes land one by one."""
        reason = validate_reason(reason)
        sha, plan, targets = self._checked(
            account, nodes=nodes, duration=duration, role=role, commands=commands,
            actor=actor, now=now,
        )  # fmt: skip
        if plan.role.mfa:
            self._mfa(account, code, "elevate", actor)
        if plan.role.approvals.required:
            request = records.new_request(account, plan, reason=reason, sha=sha, now=now)
            with self._store.transaction() as conn:
                rows.insert_request(conn, request)
                writer.record(conn, records.request_event(actor, request, plan), now)
                self._notice(conn, "requested", request.id, now)
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
        outcomes = self._delivery.push(grant, targets, now, progress)
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
        """Store the grant the plan becomes, with its audit event; the request it answers
        (if any) is marked granted in the same transaction."""
        grant = records.new_grant(
            account, plan, reason=reason, sha=sha, approvers=approvers,
            request_id=request_id, actor=actor, now=now,
        )  # fmt: skip
        # Rendered (validated) before anything is stored: a grant whose drop-in cannot be
        # written never exists.
        push.check_drop_ins(grant, plan.nodes, f"127.0.0.1:{self._rules.log_port}")
        try:
            self._store_grant(grant, account, plan, request_id, actor, now)
        except RefusedError as exc:  # rolled back: quarantined or decided meanwhile
            self._refused(exc, "grant.refused", actor, grant.nodes, now, request=request_id)
            raise
        return grant

    def _store_grant(
        self,
        grant: Grant,
        account: Account,
        plan: ElevationPlan,
        request_id: str | None,
        actor: str,
        now: datetime,
    ) -> None:
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
            writer.record(conn, records.issue_event(actor, grant), now)
            if request_id is not None:
                self._notice(conn, "approved", request_id, now)

    # ------------------------------------------------------------ approvals

    def approve(
        self,
        request_id: str,
        approver: Account,
        *,
        code: str | None,
        actor: str,
        now: datetime,
        progress: push.Progress | None = None,
        push_now: bool = True,
    ) -> ElevationResult:
        """Record an approval; with enough of them, issue the grant and push it."""
        with self._approval_refusals(request_id, approver, "approve", actor, now):
            request = self.request(request_id)
            approver_check(request, approver, now)
        self._mfa(approver, code, "approve", actor)
        with self._approval_refusals(request_id, approver, "approve", actor, now):
            self._store_approval(request, approver, actor, now)
        request = self.request(request_id)
        approvers = tuple(a.approver for a in request.approvals if a.decision == "approve")
        if len(approvers) < request.approvals_needed:
            return ElevationResult(None, request)
        return self._grant_request(request, approvers, actor, now, progress, push_now)

    def _store_approval(
        self, request: Request, approver: Account, actor: str, now: datetime
    ) -> None:
        with self._store.transaction() as conn:
            current = rows.request(conn, request.id)
            if current is None or current.state != "pending":
                raise RefusedError(f"request {request.id} is no longer pending")
            if not rows.add_approval(
                conn,
                request.id,
                approver=approver.name,
                approver_sid=approver.sid,
                decision="approve",
                reason="",
                now=now,
            ):
                raise RefusedError(
                    f"{approver.name} already decided on {request.id}",
                    fix="another approver must approve it",
                )
            event = writer.EventInput(
                actor, "grant.approve", request.id, details={"requester": request.user}
            )
            writer.record(conn, event, now)

    @contextmanager
    def _approval_refusals(
        self, request_id: str, approver: Account, decision: str, actor: str, now: datetime
    ) -> Iterator[None]:
        """Audit a refused approval or denial (self-approval, not an approver, wrong state,
        no such request) as `approve.refused`, after its transaction rolled back."""
        try:
            yield
        except RefusedError as exc:
            self._refused(
                exc, "approve.refused", actor, request_id, now,
                approver=approver.name, decision=decision,
            )  # fmt: skip
            raise

    def _grant_request(
        self,
        request: Request,
        approvers: tuple[str, ...],
        actor: str,
        now: datetime,
        progress: push.Progress | None,
        push_now: bool = True,
    ) -> ElevationResult:
        """Re-check the request against today's directory and policy, then issue it."""
        sha, account, plan, targets = self._replan(request, actor, now)
        # Count only approvals that still hold: today's role decides how many and from which
        # groups, and an approver disabled, expired or moved out since does not count.
        snapshot = self._snapshot(now)
        wanted = plan.role.approvals
        holding = tuple(
            name
            for name in approvers
            if approver_holds(snapshot.account(name), wanted.groups, request.sid, now)
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
        outcomes = self._delivery.push(grant, targets, now, progress)
        return ElevationResult(self.grant(grant.id), self.request(request.id), tuple(outcomes))

    def _replan(
        self, request: Request, actor: str, now: datetime
    ) -> tuple[str, Account, ElevationPlan, list[NodeTarget]]:
        """The request planned again as if asked now; a refusal fails the request (audited)."""
        try:
            sha, policy = self._require_policy()
            account = self._snapshot(now).account(request.user)
            if account is None or account.sid != request.sid:
                raise RefusedError(f"{request.user} is no longer in the directory snapshot")
            commands = None if request.commands == "ALL" else request.commands.split(",")
            names = expand(request.nodes)
            duration = timedelta(seconds=request.duration_s)
            plan = planned(
                policy, account, names, role=request.role, duration=duration,
                commands=commands, now=now,
            )  # fmt: skip
            self._not_quarantined(policy, account, names)
            return sha, account, plan, self._targets(names)
        except (RefusedError, UsageError) as exc:
            with self._store.transaction() as conn:
                why = exc.one_line()
                rows.decide_request(conn, request.id, "failed", by=actor, reason=why, now=now)
                writer.record(
                    conn,
                    writer.EventInput(
                        actor, "grant.request.fail", request.id, outcome="refused",
                        details={"reason": why},
                    ),
                    now,
                )  # fmt: skip
            raise

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
        return self._delivery.push(grant, inventory.targets_known(self._store, todo), now, None)

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
        with self._approval_refusals(request_id, approver, "deny", actor, now):
            request = self.request(request_id)
            approver_check(request, approver, now)
        self._mfa(approver, code, "deny", actor)
        with (
            self._approval_refusals(request_id, approver, "deny", actor, now),
            self._store.transaction() as conn,
        ):
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
            self._notice(conn, "denied", request_id, now)
        return self.request(request_id)

    def request(self, request_id: str) -> Request:
        return GrantReader(self._store).request(request_id)

    def grant(self, grant_id: str) -> Grant:
        return GrantReader(self._store).grant(grant_id)

    # ------------------------------------------------------------ retry, revoke, expire

    def retry(
        self, grant_id: str, *, actor: str, now: datetime, progress: push.Progress | None = None
    ) -> list[push.NodeOutcome]:
        """Push again to the nodes where the grant has not landed, or its drop-in broke."""
        grant = self.grant(grant_id)
        if not grant.active_at(now):
            raise RefusedError(
                f"grant {grant_id} is {grant.state if grant.state != 'active' else 'expired'}",
                fix="elevate again",
            )
        todo = [
            n.node
            for n in rows.grant_nodes(self._store.conn, grant_id)
            if n.shown_state in ("pending", "failed", "broken")
        ]
        if not todo:
            return []
        with self._store.transaction() as conn:
            writer.record(
                conn,
                writer.EventInput(actor, "grant.retry", grant_id, details={"nodes": fold(todo)}),
                now,
            )
        return self._delivery.push(grant, self._targets(todo), now, progress)

    # Ending grants is its own job (revocation.py); these keep the service's one face.

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
        return self._ending.revoke(
            ids=ids, user=user, node=node, actor=actor, reason=reason, now=now,
            progress=progress, ended_by=ended_by,
        )  # fmt: skip

    def reap(self, now: datetime) -> ReapReport:
        return self._ending.reap(now)

    def recheck(self, *, actor: str, cause: str, now: datetime) -> list[str]:
        return self._ending.recheck(actor=actor, cause=cause, now=now)
