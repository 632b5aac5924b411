"""What an elevation writes: the request or grant a plan becomes, and its audit event.

Pure (no store, no nodes), so the service's flows read as checks, then one transaction.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from broker.audit import writer
from broker.core.durations import format_duration
from broker.core.hostlist import fold
from broker.core.identity import Account
from broker.core.timeutil import to_text
from broker.grants.grantfile import new_grant_id
from broker.grants.model import Grant, Request
from broker.grants.plan import ElevationPlan


def new_request_id() -> str:
    return "r" + secrets.token_hex(8)


def new_request(
    account: Account, plan: ElevationPlan, *, reason: str, sha: str, now: datetime
) -> Request:
    """A pending request for the plan, open until the role's approvals expire."""
    approvals = plan.role.approvals
    return Request(
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


def request_event(actor: str, request: Request, plan: ElevationPlan) -> writer.EventInput:
    return writer.EventInput(
        actor,
        "grant.request",
        request.id,
        details={
            "user": request.user,
            "nodes": request.nodes,
            "role": request.role,
            "duration": format_duration(plan.duration),
            "reason": request.reason,
            "approvals_needed": request.approvals_needed,
            "expires_at": to_text(request.expires_at),
        },
    )


def new_grant(
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
    """An active grant for the plan, starting now."""
    # Whole seconds: sudoers and the grant file carry no fractions, and a grant must
    # not outlast what the node will enforce.
    start = now.replace(microsecond=0)
    return Grant(
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


def issue_event(actor: str, grant: Grant) -> writer.EventInput:
    return writer.EventInput(
        actor,
        "grant.issue",
        grant.id,
        details={
            "user": grant.user,
            "nodes": grant.nodes,
            "role": grant.role,
            "runas": grant.runas,
            "commands": grant.commands,
            "not_before": to_text(grant.not_before),
            "not_after": to_text(grant.not_after),
            "reason": grant.reason,
            "approvers": list(grant.approvers),
            "request": grant.request_id,
            "policy_sha256": grant.policy_sha256,
        },
    )
