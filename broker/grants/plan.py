"""What an elevation request would grant, decided by the policy alone. Pure: no I/O.

Every node must be allowed by one and the same role (a grant has one runas
and one command list); the refusal carries the words of `broker policy
explain`, so an operator can reproduce it. Obligations of the role (MFA,
approvals, recording) are returned for the service to enforce.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.core.durations import format_duration
from broker.core.errors import RefusedError, UsageError
from broker.core.hostlist import fold
from broker.core.identity import Account
from broker.policy.evaluate import Decision, decide
from broker.policy.model import Policy, Role


@dataclass(frozen=True)
class ElevationPlan:
    """One role's answer for every asked node."""

    role: Role
    nodes: tuple[str, ...]
    duration: timedelta
    command_sets: tuple[tuple[str, tuple[str, ...]], ...]  # empty: ALL
    decisions: tuple[Decision, ...]

    @property
    def commands_text(self) -> str:
        return "ALL" if not self.command_sets else ",".join(n for n, _ in self.command_sets)


def plan_elevation(
    policy: Policy,
    account: Account,
    nodes: Sequence[str],
    *,
    role: str | None,
    duration: timedelta | None,
    commands: Sequence[str] | None,
    now: datetime,
) -> ElevationPlan:
    """The plan, or RefusedError naming the rule that refused (first node that failed)."""
    if not nodes:
        raise UsageError("no nodes given", fix="name nodes as a hostlist, e.g. gpu[01-04]")
    if role is None:
        role = _common_role(policy, account, nodes, duration, now)
    decisions = [decide(policy, account, node, role, duration, now=now) for node in nodes]
    refused = [d for d in decisions if not d.allowed]
    if refused:
        first = refused[0]
        others = f" (and {len(refused) - 1} more nodes)" if len(refused) > 1 else ""
        raise RefusedError(
            f"{account.name} may not elevate on {first.node}{others}: {first.reason}",
            fix=f"see `broker policy explain {account.name} {first.node}`",
        )
    chosen = policy.roles[decisions[0].role or role]
    granted = decisions[0].duration or chosen.default_duration
    return ElevationPlan(
        role=chosen,
        nodes=tuple(nodes),
        duration=granted,
        command_sets=_command_sets(policy, chosen, commands),
        decisions=tuple(decisions),
    )


def _common_role(
    policy: Policy,
    account: Account,
    nodes: Sequence[str],
    duration: timedelta | None,
    now: datetime,
) -> str:
    """The first role (policy order) that allows every node; refuse with the first deny."""
    allowed_per_node: list[tuple[str, ...]] = []
    for node in nodes:
        decision = decide(policy, account, node, None, duration, now=now)
        if not decision.allowed:
            raise RefusedError(
                f"{account.name} may not elevate on {node}: {decision.reason}",
                fix=f"see `broker policy explain {account.name} {node}`",
            )
        allowed_per_node.append(decision.allowed_by)
    for name in allowed_per_node[0]:
        if all(name in allowed for allowed in allowed_per_node):
            return name
    raise RefusedError(
        f"no single role of {account.name} allows all of {fold(list(nodes))}",
        fix="elevate on the nodes of one role at a time, or name the role with --role",
    )


def _command_sets(
    policy: Policy, role: Role, asked: Sequence[str] | None
) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """The role's commands, or the asked sets when the role allows them (narrowing only)."""
    if not asked:
        if role.all_commands:
            return ()
        return tuple((n, policy.command_sets[n].commands) for n in role.command_sets)
    out: list[tuple[str, tuple[str, ...]]] = []
    for name in dict.fromkeys(asked):
        if name not in policy.command_sets:
            known = ", ".join(sorted(policy.command_sets)) or "none"
            raise UsageError(
                f"--commands {name!r} is not a command set of the policy",
                fix=f"name one of: {known}",
            )
        if not role.all_commands and name not in role.command_sets:
            raise RefusedError(
                f"role {role.name} does not allow command set {name}",
                fix=f"its sets are: {', '.join(role.command_sets)}",
            )
        out.append((name, policy.command_sets[name].commands))
    return tuple(out)


def describe(plan: ElevationPlan) -> str:
    """One line for people: role, nodes, duration, commands."""
    return (
        f"{plan.role.name} on {fold(list(plan.nodes))} for {format_duration(plan.duration)}, "
        f"as {plan.role.runas}, commands {plan.commands_text}"
    )
