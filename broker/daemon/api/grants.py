"""Elevation: preview, elevate, approvals, grants, retry, revoke.

A directory user elevates for themselves only (the caller's own account,
known by uid or Kerberos principal); codes travel in request bodies only.
Operators see and revoke every grant; a user sees and revokes their own.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, model_validator

from broker.app import App
from broker.core.durations import parse_duration
from broker.core.errors import RefusedError, UsageError
from broker.core.hostlist import fold
from broker.core.identity import Account, normalise_account_name
from broker.core.timeutil import utcnow
from broker.core.users import NamedUser
from broker.daemon.api.mfa import CodeText
from broker.daemon.api.names import DurationText, HostlistText, RoleName, UserText
from broker.daemon.caller import Access, Caller
from broker.daemon.routing import REGISTRY, Body, Context, Empty
from broker.daemon.scheduler import tick
from broker.grants.grantfile import validate_reason
from broker.grants.model import Grant, Request
from broker.grants.plan import ElevationPlan
from broker.grants.push import NodeOutcome
from broker.grants.service import ElevationResult
from broker.wire.base import from_domain
from broker.wire.grants import (
    ElevationOut,
    GrantNodeOut,
    GrantOut,
    NodeResultOut,
    PlanOut,
    ReapOut,
    RequestOut,
    RevokeOut,
)

log = logging.getLogger("broker.grants")


def _printable(text: str) -> str:
    if not text.isprintable():
        raise ValueError("must be one line of printable text")
    return text


ReasonText = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_printable)]
SetName = Annotated[str, Field(min_length=1, max_length=48, pattern=r"^[a-z][a-z0-9-]*$")]
GrantId = Annotated[str, Field(pattern=r"^g[0-9a-f]{16}$")]
RequestId = Annotated[str, Field(pattern=r"^r[0-9a-f]{16}$")]


class ElevateIn(Body):
    nodes: HostlistText
    duration: DurationText | None = None
    role: RoleName | None = None
    commands: list[SetName] | None = Field(default=None, max_length=32)
    reason: ReasonText | None = None
    code: CodeText | None = None
    # False: answer once the grant is issued and push it in the background; the client
    # watches GET /v1/grants/{id} (a progress bar over many nodes).
    wait: bool = True


class GrantsQuery(Body):
    user: UserText | None = None
    node: Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9.-]+$")] | None = None
    active: bool = False
    limit: int = Field(default=200, ge=1, le=10_000)


class RequestsQuery(Body):
    state: Literal["pending", "granted", "denied", "expired", "failed"] | None = None
    limit: int = Field(default=200, ge=1, le=1000)


class GrantPath(Body):
    id: GrantId


class ApproveIn(Body):
    id: RequestId
    code: CodeText | None = None
    wait: bool = True


class DenyIn(Body):
    id: RequestId
    reason: ReasonText
    code: CodeText | None = None


class RevokeIn(Body):
    ids: list[GrantId] = Field(default_factory=list, max_length=1000)
    user: UserText | None = None
    node: Annotated[str, Field(max_length=253, pattern=r"^[a-z0-9.-]+$")] | None = None
    reason: ReasonText = "revoked by an operator"

    @model_validator(mode="after")
    def _something(self) -> RevokeIn:
        if not self.ids and self.user is None and self.node is None:
            raise ValueError("name grant ids, a user or a node")
        return self


_PUSHERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="broker-push")


def push_in_background(ctx: Context[Any], grant_id: str) -> None:
    """Push an issued grant from a pusher thread with its own App (its own store
    connection); outcomes land in grant_nodes, where the client watches them."""
    settings = ctx.app.settings

    def work() -> None:
        app = App(settings)
        try:
            app.grants().push_pending(grant_id, now=utcnow())
        except Exception:  # recorded per node where possible; never lost silently
            log.exception("background push of %s failed", grant_id)
        finally:
            app.close()

    _PUSHERS.submit(work)


def _account(caller: Caller) -> Account:
    if caller.account is None:
        raise RefusedError(
            f"{caller.display} is not a usable directory account: {caller.problem}",
            fix="elevation is for enabled Active Directory accounts",
        )
    return caller.account


def _duration(text: str | None) -> timedelta | None:
    return None if text is None else parse_duration(text)


def grant_out(ctx: Context[Any], grant: Grant) -> GrantOut:
    nodes = ctx.app.grant_reader().nodes_of(grant.id)
    return from_domain(
        GrantOut,
        grant,
        active=grant.active_at(ctx.now),
        # A live row whose drop-in sudo does not read as pushed is shown `broken`, not live.
        node_states=[from_domain(GrantNodeOut, n, state=n.shown_state) for n in nodes],
    )


def request_out(request: Request) -> RequestOut:
    return from_domain(RequestOut, request)


def _results(outcomes: tuple[NodeOutcome, ...] | list[NodeOutcome]) -> list[NodeResultOut]:
    return [from_domain(NodeResultOut, o) for o in outcomes]


def elevation_out(ctx: Context[Any], result: ElevationResult, *, wait: bool) -> ElevationOut:
    """The answer to elevate/approve; a deferred push starts here (the client watches)."""
    if not wait and result.grant is not None:
        push_in_background(ctx, result.grant.id)
    return ElevationOut(
        grant=None if result.grant is None else grant_out(ctx, result.grant),
        request=None if result.request is None else request_out(result.request),
        results=_results(result.outcomes),
    )


def plan_out(account: Account, plan: ElevationPlan) -> PlanOut:
    return PlanOut(
        user=account.name,
        role=plan.role.name,
        nodes=fold(list(plan.nodes)),
        runas=plan.role.runas,
        commands=plan.commands_text,
        duration_s=int(plan.duration.total_seconds()),
        mfa=plan.role.mfa,
        approvals_needed=plan.role.approvals.count,
        approver_groups=list(plan.role.approvals.groups),
    )


@REGISTRY.add(
    "POST",
    "/v1/elevate/preview",
    request=ElevateIn,
    response=PlanOut,
    access=Access.USER,
    summary="What elevating would grant you (or the rule that refuses it); needs no code",
    refusal="grant.refused",
)
def preview(ctx: Context[ElevateIn]) -> PlanOut:
    ctx.app.directory().require_fresh(ctx.now)
    account = _account(ctx.caller)
    p = ctx.params
    if p.reason is not None:
        validate_reason(p.reason)
    plan = ctx.app.grants().preview(
        account,
        nodes=p.nodes,
        duration=_duration(p.duration),
        role=p.role,
        commands=p.commands,
        actor=ctx.caller.actor,
        now=ctx.now,
    )
    return plan_out(account, plan)


@REGISTRY.add(
    "POST",
    "/v1/elevate",
    request=ElevateIn,
    response=ElevationOut,
    access=Access.USER,
    summary="Elevate on nodes: a grant pushed to them, or a request waiting for approvals",
    refusal="grant.refused",
)
def elevate(ctx: Context[ElevateIn]) -> ElevationOut:
    ctx.app.directory().require_fresh(ctx.now)
    account = _account(ctx.caller)
    p = ctx.params
    if p.reason is None:
        raise UsageError("a reason is required", fix='give --reason "INC-4711 ..."')
    result = ctx.app.grants().elevate(
        account,
        nodes=p.nodes,
        duration=_duration(p.duration),
        reason=p.reason,
        role=p.role,
        commands=p.commands,
        code=p.code,
        actor=ctx.caller.actor,
        now=ctx.now,
        push_now=p.wait,
    )
    return elevation_out(ctx, result, wait=p.wait)


@REGISTRY.add(
    "GET",
    "/v1/requests",
    request=RequestsQuery,
    response=list[RequestOut],
    access=Access.SELF_OR_OPERATOR,
    summary="Elevation requests: operators and approvers see all, others their own",
)
def list_requests(ctx: Context[RequestsQuery]) -> list[RequestOut]:
    states = (ctx.params.state,) if ctx.params.state else ()
    account = ctx.caller.account
    visible = None
    if not ctx.caller.operator:
        assert account is not None  # SELF_OR_OPERATOR: a non-operator has an account
        visible = (account.sid, account.groups)
    found = ctx.app.grant_reader().requests(
        states=states, limit=ctx.params.limit, visible_to=visible
    )
    return [request_out(r) for r in found]


@REGISTRY.add(
    "POST",
    "/v1/requests/{id}/approve",
    request=ApproveIn,
    response=ElevationOut,
    access=Access.USER,
    summary="Approve a request (approver group, not the requester, MFA); enough approvals grant it",
    refusal="approve.refused",
)
def approve(ctx: Context[ApproveIn]) -> ElevationOut:
    ctx.app.directory().require_fresh(ctx.now)
    result = ctx.app.grants().approve(
        ctx.params.id,
        _account(ctx.caller),
        code=ctx.params.code,
        actor=ctx.caller.actor,
        now=ctx.now,
        push_now=ctx.params.wait,
    )
    return elevation_out(ctx, result, wait=ctx.params.wait)


@REGISTRY.add(
    "POST",
    "/v1/requests/{id}/deny",
    request=DenyIn,
    response=RequestOut,
    access=Access.USER,
    summary="Deny a request (approver group, not the requester, MFA)",
    refusal="approve.refused",
)
def deny(ctx: Context[DenyIn]) -> RequestOut:
    request = ctx.app.grants().deny(
        ctx.params.id,
        _account(ctx.caller),
        reason=ctx.params.reason,
        code=ctx.params.code,
        actor=ctx.caller.actor,
        now=ctx.now,
    )
    return request_out(request)


@REGISTRY.add(
    "GET",
    "/v1/grants",
    request=GrantsQuery,
    response=list[GrantOut],
    access=Access.SELF_OR_OPERATOR,
    summary="Grants, newest first: operators see all, others their own",
)
def list_grants(ctx: Context[GrantsQuery]) -> list[GrantOut]:
    p = ctx.params
    if ctx.caller.operator:
        user = None if p.user is None else named_user(ctx, p.user)
    else:
        account = _account(ctx.caller)
        # Decided on the folded text, before any lookup, so users cannot probe names.
        if p.user is not None and normalise_account_name(p.user) != account.name:
            raise RefusedError(
                "only operators may list other users' grants", fix="leave out --user"
            )
        user = NamedUser(account.name, account.sid)
    found = ctx.app.grant_reader().grants(
        user=user, node=p.node, states=("active",) if p.active else (), limit=p.limit
    )
    if p.active:
        found = [g for g in found if g.active_at(ctx.now)]
    return [grant_out(ctx, g) for g in found]


@REGISTRY.add(
    "GET",
    "/v1/grants/{id}",
    request=GrantPath,
    response=GrantOut,
    access=Access.SELF_OR_OPERATOR,
    summary="One grant with its state on every node (its holder, its approvers, operators)",
)
def show_grant(ctx: Context[GrantPath]) -> GrantOut:
    grant = _own_grant(ctx, ctx.params.id, approver_may_see=True)
    return grant_out(ctx, grant)


@REGISTRY.add(
    "POST",
    "/v1/grants/{id}/retry",
    request=GrantPath,
    response=list[NodeResultOut],
    access=Access.SELF_OR_OPERATOR,
    summary="Push a grant again to the nodes where it has not landed",
)
def retry(ctx: Context[GrantPath]) -> list[NodeResultOut]:
    ctx.app.directory().require_fresh(ctx.now)
    grant = _own_grant(ctx, ctx.params.id)
    outcomes = ctx.app.grants().retry(grant.id, actor=ctx.caller.actor, now=ctx.now)
    return _results(outcomes)


@REGISTRY.add(
    "POST",
    "/v1/revoke",
    request=RevokeIn,
    response=RevokeOut,
    access=Access.SELF_OR_OPERATOR,
    summary="Revoke grants by id, user or node: removed from the nodes, sessions ended",
)
def revoke(ctx: Context[RevokeIn]) -> RevokeOut:
    p = ctx.params
    if not ctx.caller.operator:
        account = _account(ctx.caller)
        if p.user is not None or p.node is not None:
            raise RefusedError("only operators may revoke by user or node", fix="name grant ids")
        for grant_id in p.ids:
            _own_grant(ctx, grant_id)
        del account
    result = ctx.app.grants().revoke(
        ids=p.ids,
        user=None if p.user is None else named_user(ctx, p.user),
        node=p.node,
        actor=ctx.caller.actor,
        reason=p.reason,
        now=ctx.now,
    )
    return RevokeOut(
        revoked=list(result.revoked),
        results=_results(result.outcomes),
        pending=[f"{g}@{n}" for g, n in result.pending],
    )


def named_user(ctx: Context[Any], text: str) -> NamedUser:
    """The user an operator named, resolved on the daemon by the directory snapshot; a user
    who has left it is found by their exact name in the grants; anyone else is an error."""
    return ctx.app.directory().resolve_user(text, ctx.now, ctx.app.grant_reader().has_user)


def _own_grant(ctx: Context[Any], grant_id: str, *, approver_may_see: bool = False) -> Grant:
    """The grant, for an operator or its holder (and, to watch it land, its approvers);
    anyone else is told it does not exist."""
    grant = ctx.app.grant_reader().grant(grant_id)
    if not ctx.caller.operator:
        account = _account(ctx.caller)
        approver = approver_may_see and account.name in grant.approvers
        if grant.sid != account.sid and not approver:
            raise RefusedError(f"no grant {grant_id}", fix="list yours with `broker grants list`")
    return grant


@REGISTRY.add(
    "POST",
    "/v1/grants/reap",
    response=ReapOut,
    access=Access.OPERATOR,
    summary="Run the scheduler's tick now: expire, retry removals, re-check, collect sessions",
)
def reap(ctx: Context[Empty]) -> ReapOut:
    report = tick(ctx.app)
    return from_domain(ReapOut, report)
