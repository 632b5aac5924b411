"""Who may approve or deny a request: the one rule, for the approval and for counting
approvals again when the grant is issued."""

from __future__ import annotations

from datetime import datetime

from broker.core.errors import RefusedError
from broker.core.identity import Account
from broker.grants.model import Request
from broker.policy.evaluate import state_at
from broker.policy.names import require_unix_name


def approver_check(request: Request, approver: Account, now: datetime) -> None:
    """Refuse an approval or denial the approver may not give (the request's state, its
    deadline, self-approval, group membership); the decision itself is stored elsewhere."""
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
    require_unix_name(approver.name, "approver")
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


def approver_holds(
    account: Account | None, groups: tuple[str, ...], requester_sid: str, now: datetime
) -> bool:
    """Whether an approval given earlier still counts today (account and groups as now)."""
    return (
        account is not None
        and account.sid != requester_sid
        and account.eligible
        and state_at(account, now) == "enabled"
        and bool(set(groups) & account.groups)
    )
