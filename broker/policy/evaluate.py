"""May this account elevate on this node? One pure function shared by the daemon, plan and explain.

`decide` consults every rule that bears on the answer and records each
with its outcome, in the words `broker policy explain` prints, so a
decision can always be explained. Anything it cannot establish (an
unknown node, an account that is not enabled, no role) is a deny.
Obligations of an allowed role (MFA, approvals, recording, session limit)
are recorded as `requires`: the grant path enforces them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from broker.core.durations import format_duration
from broker.core.identity import Account
from broker.policy.model import Policy, Role

Outcome = Literal["pass", "fail", "requires"]


@dataclass(frozen=True)
class Check:
    """One rule consulted: which, for which role (if any), its outcome and why."""

    rule: str
    outcome: Outcome
    detail: str
    role: str | None = None


@dataclass(frozen=True)
class Decision:
    user: str
    node: str
    allowed: bool
    role: str | None  # the role that allows it (the first in policy order)
    duration: timedelta | None  # what the grant would last: asked, or the role's default
    checks: tuple[Check, ...]
    reason: str  # one line: why allowed, or the first reason it is not
    allowed_by: tuple[str, ...] = ()  # every role that would allow it, in policy order

    @property
    def verdict(self) -> str:
        return "allow" if self.allowed else "deny"


def state_at(account: Account, now: datetime) -> str:
    """The account's state at `now`: the snapshot's, made stricter if it has since expired
    or a lockout has begun; never more lenient than the snapshot (fail closed)."""
    if account.state != "enabled":
        return account.state
    if account.expires_at is not None and account.expires_at <= now:
        return "expired"
    if account.locked_until is not None and account.locked_until > now:
        return "locked"
    return "enabled"


def decide(
    policy: Policy,
    account: Account,
    node: str,
    role: str | None = None,
    duration: timedelta | None = None,
    *,
    now: datetime,
) -> Decision:
    """Whether `account` may elevate on `node` (as `role`, for `duration`), and every reason."""
    checks: list[Check] = []
    user = account.name
    state = state_at(account, now)
    account_ok = state == "enabled" and account.eligible
    if account_ok:
        checks.append(Check("account", "pass", f"{user} is enabled"))
    elif state != "enabled":
        checks.append(
            Check("account", "fail", f"{user} is {state}: only enabled accounts may elevate")
        )
    else:
        checks.append(Check("account", "fail", f"{user} may not elevate: {account.problem}"))
    zone = policy.zone_of.get(node)
    if zone is None:
        checks.append(Check("node", "fail", f"{node} is in no zone of the policy"))
    else:
        kind = policy.zones[zone].kind
        checks.append(Check("node", "pass", f"{node} is in zone {zone} (kind {kind})"))
    candidates = _candidates(policy, account, role, checks)
    allowing: list[tuple[Role, timedelta]] = []
    for candidate, via in candidates:
        granted = _judge_role(policy, candidate, via, account, node, duration, checks)
        if granted is not None:
            allowing.append((candidate, granted))
    if account_ok and zone is not None and allowing:
        chosen, granted = allowing[0]
        checks.extend(_obligations(chosen, user, node))
        reason = f"{user} may elevate on {node} as {chosen.name} for {format_duration(granted)}"
        others = tuple(r.name for r, _ in allowing)
        return Decision(user, node, True, chosen.name, granted, tuple(checks), reason, others)
    first = next(c for c in checks if c.outcome == "fail")
    return Decision(user, node, False, None, None, tuple(checks), first.detail)


def unknown_account(user: str, node: str) -> Decision:
    """The decision for a name the directory snapshot does not hold: deny."""
    detail = f"{user} is not in the directory snapshot: unknown accounts may not elevate"
    return Decision(user, node, False, None, None, (Check("account", "fail", detail),), detail)


def no_policy(user: str, node: str) -> Decision:
    """The decision when no policy is active: deny (could not decide)."""
    detail = "no policy is active: nothing allows elevation until one is applied"
    return Decision(user, node, False, None, None, (Check("policy", "fail", detail),), detail)


def _candidates(
    policy: Policy, account: Account, asked: str | None, checks: list[Check]
) -> list[tuple[Role, list[str]]]:
    """Roles to judge, each with the account's groups bound to it."""
    user = account.name
    if asked is not None:
        role = policy.roles.get(asked)
        if role is None:
            checks.append(Check("role", "fail", f"role {asked} is not in the policy", asked))
            return []
        bound = policy.groups_of_role.get(asked, ())
        return [(role, [g for g in bound if g in account.groups])]
    held: dict[str, list[str]] = {}
    for group in account.groups:
        for name in policy.roles_of_group.get(group, ()):
            held.setdefault(name, []).append(group)
    if not held:
        checks.append(Check("binding", "fail", f"{user} is in no group bound to any role"))
        return []
    names = sorted(held, key=policy.role_rank.__getitem__)
    return [(policy.roles[n], sorted(held[n])) for n in names]


def _judge_role(
    policy: Policy,
    role: Role,
    via: list[str],
    account: Account,
    node: str,
    duration: timedelta | None,
    checks: list[Check],
) -> timedelta | None:
    """Append the role's checks (binding, scope, duration); return the grant length if the
    role allows it."""
    judged = [
        _binding_check(policy, role, via, account),
        _scope_check(policy, role, node),
        _duration_check(role, duration),
    ]
    checks.extend(judged)
    granted = role.default_duration if duration is None else duration
    return granted if all(c.outcome == "pass" for c in judged) else None


def _binding_check(policy: Policy, role: Role, via: list[str], account: Account) -> Check:
    name = role.name
    if via:
        groups = ", ".join(via)
        return Check("binding", "pass", f"{account.name} is in {groups}, bound to {name}", name)
    bound = ", ".join(policy.groups_of_role.get(name, ())) or "no group"
    return Check(
        "binding",
        "fail",
        f"{account.name} is in none of the groups bound to {name} ({bound})",
        name,
    )


def _scope_check(policy: Policy, role: Role, node: str) -> Check:
    name = role.name
    if policy.covers(role, node):
        zone = policy.zone_of.get(node)
        how = f"zone {zone}" if zone in role.zones else "its nodes"
        return Check("scope", "pass", f"{name} covers {node} through {how}", name)
    return Check("scope", "fail", f"{name} does not cover {node} ({role.scope_text()})", name)


def _duration_check(role: Role, duration: timedelta | None) -> Check:
    """No duration asked takes the role's default; one asked must be within its maximum."""
    name, longest = role.name, role.longest
    if duration is None:
        return Check(
            "duration",
            "pass",
            f"no duration asked: the default {format_duration(role.default_duration)} applies "
            f"(at most {format_duration(longest)})",
            name,
        )
    if timedelta(0) < duration <= longest:
        return Check(
            "duration",
            "pass",
            f"{format_duration(duration)} is within the maximum {format_duration(longest)}",
            name,
        )
    shown = format_duration(duration) if duration > timedelta(0) else "a non-positive time"
    return Check(
        "duration",
        "fail",
        f"{shown} exceeds the maximum {format_duration(longest)} of {name}",
        name,
    )


def _obligations(role: Role, user: str, node: str) -> list[Check]:
    """What the grant path must still enforce for the allowing role."""
    name = role.name
    out = [
        Check(
            "runas",
            "requires",
            f"runs as {role.runas}, commands {role.commands_text}",
            name,
        )
    ]
    if role.mfa:
        out.append(Check("mfa", "requires", "a valid TOTP code at elevation", name))
    if role.approvals.required:
        approvals = role.approvals
        out.append(
            Check(
                "approvals",
                "requires",
                f"{_plural(approvals.count, 'approval')} from {', '.join(approvals.groups)}, "
                f"not counting {user}; the request expires after "
                f"{format_duration(approvals.expires_after)} without them",
                name,
            )
        )
    if role.record_sessions:
        out.append(Check("recording", "requires", "every elevated session is recorded", name))
    out.append(
        Check(
            "sessions",
            "requires",
            f"at most {_plural(role.max_sessions_per_node, 'elevated session')} at once on {node}",
            name,
        )
    )
    if not role.workloads:
        out.append(
            Check("workloads", "requires", f"{user} may not run workloads on {node} (AC-6)", name)
        )
    return out


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"
