"""Accounts from the directory snapshot, joined with the active policy (AC-2)."""

from __future__ import annotations

from broker.accounts.view import AccountView, account_views, review
from broker.core.durations import parse_duration
from broker.core.errors import RefusedError, UsageError
from broker.core.identity import normalise_account_name
from broker.daemon.api.names import AccountName, DurationText, GroupName, RoleName
from broker.daemon.caller import Access, Caller
from broker.daemon.routing import REGISTRY, Body, Context
from broker.wire.accounts import (
    AccountList,
    AccountOut,
    FindingOut,
)
from broker.wire.base import from_domain


class AccountQuery(Body):
    name: AccountName


class ListQuery(Body):
    group: GroupName | None = None
    role: RoleName | None = None
    disabled: bool = False
    stale: bool = False
    stale_after: DurationText | None = None


class ReviewQuery(Body):
    stale_after: DurationText | None = None


def account_out(view: AccountView, stale: bool) -> AccountOut:
    """The account's own fields, with what the view joins from the policy beside them."""
    a = view.account
    return from_domain(
        AccountOut,
        a,
        uid=a.uid if a.uid >= 0 else None,
        gid=a.gid if a.gid >= 0 else None,
        stale=stale,
        groups=sorted(a.groups),
        direct_groups=sorted(a.direct_groups),
        roles=view.roles,
        may_elevate=view.scope,
        no_roles_reason=view.no_roles_reason,
    )


def _stale_after(ctx: Context[ListQuery] | Context[ReviewQuery], text: str | None) -> str:
    if text is not None:
        parse_duration(text)
        return text
    return f"{int(ctx.app.directory().settings().stale_after.total_seconds())}s"


def may_see(caller: Caller, name: str, sid: str) -> None:
    """Operators see every account; a directory user sees only their own."""
    if caller.operator:
        return
    if caller.account is None or caller.account.sid != sid:
        raise RefusedError(
            f"{caller.display} may only look at their own account, not {name}",
            fix="ask a broker operator",
        )


@REGISTRY.add(
    "GET",
    "/v1/accounts/{name}",
    request=AccountQuery,
    response=AccountOut,
    access=Access.SELF_OR_OPERATOR,
    summary="One account: groups, roles, where it may elevate (operators: any; users: self)",
)
def show(ctx: Context[AccountQuery]) -> AccountOut:
    name = ctx.params.name
    if not ctx.caller.operator:
        own = ctx.caller.account
        # Decided before any lookup, with one text, so users cannot probe which names exist.
        if own is None or normalise_account_name(name) != own.name:
            raise RefusedError(
                f"{ctx.caller.display} may only look at their own account",
                fix="ask a broker operator",
            )
    directory = ctx.app.directory()
    directory.require_own_domain(name)  # LAB\\alice is not this domain's alice
    account = directory.snapshot(ctx.now).account(name)
    if account is None:
        raise RefusedError(
            f"no account {name!r} in the directory snapshot",
            fix="check the name, or run `broker sync` if it was created recently",
        )
    may_see(ctx.caller, name, account.sid)
    [view] = account_views([account], ctx.app.policy().active())
    return account_out(view, account.stale(ctx.now, ctx.app.directory().settings().stale_after))


@REGISTRY.add(
    "GET",
    "/v1/accounts",
    request=ListQuery,
    response=AccountList,
    access=Access.OPERATOR,
    summary="Accounts in the snapshot, filtered",
)
def list_accounts(ctx: Context[ListQuery]) -> AccountList:
    q = ctx.params
    after_text = _stale_after(ctx, q.stale_after)
    after = parse_duration(after_text)
    policy = ctx.app.policy().active()
    if q.role is not None and policy is None:
        raise UsageError(
            "--role needs an active policy", fix="apply one with `broker policy apply`"
        )
    snapshot = ctx.app.directory().snapshot(ctx.now)
    if q.group is not None and snapshot.group(q.group) is None:
        raise RefusedError(f"no group {q.group!r} in the directory snapshot", fix="check the name")
    result = []
    for view in account_views(snapshot.accounts(), policy):
        a = view.account
        if q.group is not None and q.group.lower() not in a.groups:
            continue
        if q.role is not None and q.role not in {r.role for r in view.roles}:
            continue
        if q.disabled and a.eligible:
            continue
        is_stale = a.stale(ctx.now, after)
        if q.stale and not is_stale:
            continue
        result.append(account_out(view, is_stale))
    return AccountList(stale_after=after_text, accounts=result)


@REGISTRY.add(
    "GET",
    "/v1/reviews/accounts",
    request=ReviewQuery,
    response=list[FindingOut],
    access=Access.OPERATOR,
    summary="AC-2 review findings (empty: nothing to review)",
)
def review_accounts(ctx: Context[ReviewQuery]) -> list[FindingOut]:
    after = parse_duration(_stale_after(ctx, ctx.params.stale_after))
    findings = review(
        ctx.app.directory().snapshot(ctx.now), ctx.app.policy().require(), ctx.now, after
    )
    return [FindingOut(**f.as_dict()) for f in findings]
