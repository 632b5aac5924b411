"""Policy as code: check, plan, apply, show and explain, against the daemon's store.

Policy texts arrive in the request body (the CLI reads the caller's file) with
the name they came from, which is only ever shown and stored, never opened.
"""

from __future__ import annotations

from broker.core.durations import format_duration, parse_duration
from broker.core.errors import BrokerError, RefusedError, UsageError
from broker.core.hostlist import expand
from broker.core.identity import ACCOUNT_NAME, normalise_account_name
from broker.core.timeutil import utcnow
from broker.daemon.api.names import (
    AccountName,
    DurationText,
    HostlistText,
    PolicyText,
    RoleName,
    SourceText,
)
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context
from broker.policy import names
from broker.policy.check import check_policy
from broker.policy.evaluate import decide, no_policy, unknown_account
from broker.policy.load import load_policy
from broker.policy.model import Policy
from broker.policy.plan import make_plan
from broker.policy.rights import directory_groups
from broker.policy.versions import PolicyVersion, located, refuse_lint_errors
from broker.wire.base import from_domain
from broker.wire.policy import (
    ApplyOut,
    CheckOut,
    CheckStepOut,
    ExplainOut,
    PlanOut,
    PlanSummaryOut,
    PolicyRoleOut,
    ShowOut,
    VersionOut,
    ZoneOut,
)

# ---------------------------------------------------------------- models


class PolicyFile(Body):
    """A policy file's text and the name it is reported under (file:line)."""

    text: PolicyText
    source: SourceText


class ShowQuery(Body):
    text: bool = False  # include the active policy's exact text


class ExplainRequest(Body):
    user: AccountName
    node: HostlistText  # must name exactly one node
    role: RoleName | None = None
    duration: DurationText | None = None
    policy_text: PolicyText | None = None  # judge against this text instead of the active policy
    policy_source: SourceText | None = None


# ---------------------------------------------------------------- routes


def _known_groups(ctx: Context[PolicyFile]) -> tuple[frozenset[str] | None, str | None]:
    """Group names from the snapshot, or why they cannot be checked (never fatal for check)."""
    try:
        groups = directory_groups(ctx.app.directory().snapshot(ctx.now))
    except BrokerError as exc:
        return None, f"group names not checked against the directory: {exc.one_line()}"
    if groups is None:
        return None, "group names not checked: the directory snapshot is empty (sync it first)"
    return groups, None


@REGISTRY.add(
    "POST",
    "/v1/policy/check",
    request=PolicyFile,
    response=CheckOut,
    access=Access.OPERATOR,
    summary="Validate a policy text: schema, meaning, groups against the snapshot, lint",
)
def check(ctx: Context[PolicyFile]) -> CheckOut:
    known, note = _known_groups(ctx)
    report = check_policy(ctx.params.text, ctx.params.source, known)
    return CheckOut(**report, note=note)


@REGISTRY.add(
    "POST",
    "/v1/policy/plan",
    request=PolicyFile,
    response=PlanOut,
    access=Access.OPERATOR,
    summary="Who would gain and lose which rights where if this text replaced the active policy",
)
def plan(ctx: Context[PolicyFile]) -> PlanOut:
    snapshot = ctx.app.directory().snapshot(ctx.now)
    loaded = load_policy(
        ctx.params.text, ctx.params.source, known_groups=directory_groups(snapshot)
    )
    warnings = refuse_lint_errors(loaded)
    active = ctx.app.policy().version()
    result = make_plan(
        ctx.app.policy().active(),
        loaded.policy,
        snapshot,
        old_sha256=active.sha256 if active else None,
        new_sha256=loaded.sha256,
    )
    return PlanOut(**result.summary(limit=None), warnings=[located(loaded, f) for f in warnings])


@REGISTRY.add(
    "POST",
    "/v1/policy/apply",
    request=PolicyFile,
    response=ApplyOut,
    access=Access.OPERATOR,
    summary="Activate a policy text atomically; audited with its sha256 and plan",
)
def apply(ctx: Context[PolicyFile]) -> ApplyOut:
    result = ctx.app.policy().apply(ctx.params.text, ctx.params.source, ctx.caller.actor)
    revoked = (
        ctx.app.revocation().recheck(actor=ctx.caller.actor, cause="policy", now=utcnow())
        if result.applied
        else []
    )
    version = result.version
    return ApplyOut(
        revoked=revoked,
        applied=result.applied,
        sha256=version.sha256,
        version=version.id,
        previous_sha256=result.previous.sha256 if result.previous and result.applied else None,
        plan=None if result.plan is None else PlanSummaryOut(**result.plan.summary(limit=None)),
        warnings=[w.text() for w in result.warnings],
        applied_at=version.applied_at,
        actor=version.actor,
    )


def _version_out(version: PolicyVersion) -> VersionOut:
    return from_domain(VersionOut, version, version=version.id)


def _role_out(policy: Policy, name: str) -> PolicyRoleOut:
    role = policy.roles[name]
    return PolicyRoleOut(
        zones=list(role.zones),
        runas=role.runas,
        commands=role.commands_text,
        default_duration=format_duration(role.default_duration),
        max_duration=format_duration(role.longest),
        mfa=role.mfa,
        record_sessions=role.record_sessions,
        approvals=role.approvals.count,
        groups=list(policy.groups_of_role.get(name, ())),
        where=role.scope_text(),
        approval_groups=list(role.approvals.groups),
    )


@REGISTRY.add(
    "GET",
    "/v1/policy",
    request=ShowQuery,
    response=ShowOut,
    access=Access.OPERATOR,
    summary="The active policy: sha256, when and by whom it was applied, zones, roles",
)
def show(ctx: Context[ShowQuery]) -> ShowOut:
    version = ctx.app.policy().version()
    policy = ctx.app.policy().active()
    if version is None or policy is None:
        return ShowOut(active=None)
    return ShowOut(
        active=_version_out(version),
        zones={
            z.name: ZoneOut(kind=z.kind, nodes=z.hostlist, count=len(z.nodes))
            for z in policy.zones.values()
        },
        roles={name: _role_out(policy, name) for name in policy.roles},
        bindings=len(policy.bindings),
        service_accounts=sorted(policy.service_accounts),
        break_glass_group=policy.break_glass_group,
        incident_response_group=policy.incident_response_group,
        text=version.text if ctx.params.text else None,
    )


def _one_node(text: str) -> str:
    nodes = expand(text)
    if len(nodes) != 1:
        raise UsageError(f"{text!r} names {len(nodes)} nodes", fix="explain one node at a time")
    return nodes[0]


@REGISTRY.add(
    "POST",
    "/v1/policy/explain",
    request=ExplainRequest,
    response=ExplainOut,
    access=Access.SELF_OR_OPERATOR,
    summary="Every rule that decides whether a user may elevate on a node, and the verdict "
    "(operators: anyone; users: themselves)",
)
def explain(ctx: Context[ExplainRequest]) -> ExplainOut:
    q = ctx.params
    if q.policy_text is not None and not ctx.caller.operator:
        raise RefusedError(
            "only operators may explain against a policy text; ask about the active policy"
        )
    name = normalise_account_name(q.user)
    if not ACCOUNT_NAME.fullmatch(name):
        raise UsageError(f"bad user name {q.user!r}", fix="give an account name such as alice")
    node = _one_node(q.node)
    if q.role is not None and names.policy_name(q.role) is not None:
        raise UsageError(f"bad role name {q.role!r}", fix="give a role name such as gpu-root")
    asked = parse_duration(q.duration) if q.duration is not None else None
    if not ctx.caller.operator:
        own = ctx.caller.account
        # Decided before any lookup, with one text, so users cannot probe which names exist.
        if own is None or name != own.name:
            raise RefusedError(
                f"{ctx.caller.display} may only ask about their own account, not {name}",
                fix="ask a broker operator",
            )
    account = ctx.app.directory().snapshot(ctx.now).account(name)
    sha: str | None
    policy: Policy | None
    if q.policy_text is not None:
        loaded = load_policy(q.policy_text, q.policy_source or "policy text")
        policy, sha = loaded.policy, loaded.sha256
    else:
        policy = ctx.app.policy().active()
        version = ctx.app.policy().version()
        sha = version.sha256 if version else None
    if policy is None:
        decision = no_policy(name, node)
    elif account is None:
        decision = unknown_account(name, node)
    else:
        decision = decide(policy, account, node, q.role, asked, now=ctx.now)
    return ExplainOut(
        user=decision.user,
        node=decision.node,
        verdict=decision.verdict,
        role=decision.role,
        allowed_by=list(decision.allowed_by),
        duration=format_duration(decision.duration) if decision.duration else None,
        reason=decision.reason,
        policy_sha256=sha,
        checks=[
            CheckStepOut(rule=c.rule, role=c.role, outcome=c.outcome, detail=c.detail)
            for c in decision.checks
        ],
    )
