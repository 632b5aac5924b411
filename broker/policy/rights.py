"""Which rights a policy gives to whom: per group (policy alone) and per user (over a snapshot).

A right is (holder, role, nodes). Accounts that may not elevate (disabled,
expired, locked, deleted, or not mappable to a Unix user) hold none, so
they never appear in a plan. Pure: the snapshot is read, nothing else.
"""

from __future__ import annotations

from datetime import timedelta
from typing import NamedTuple

from broker.core.hostlist import fold_lists
from broker.core.identity import Account, Snapshot
from broker.policy.model import Policy

Rights = dict[tuple[str, str], frozenset[str]]


class HeldRole(NamedTuple):
    """A role an account holds, and the group that gives it (unpacks as `role, via`)."""

    role: str
    via: str  # lower-cased; the first binding in the file that names one of its groups


class ElevationScope(NamedTuple):
    """Where a role reaches and for how long at most (unpacks as `nodes, max_duration`)."""

    nodes: str  # folded hostlist
    max_duration: timedelta  # the role's maximum, or its default when it sets none


def roles_for(policy: Policy, account: Account) -> list[HeldRole]:
    """The roles `account`'s groups are bound to, in policy order, whatever the account's state."""
    held: dict[str, str] = {}
    for binding in policy.bindings:
        if binding.group in account.groups:
            for name in binding.roles:
                held.setdefault(name, binding.group)
    ordered = sorted(held, key=policy.role_rank.__getitem__)
    return [HeldRole(name, held[name]) for name in ordered]


def elevation_scope(policy: Policy, account: Account) -> dict[str, ElevationScope]:
    """Role -> where (folded hostlist) and how long `account` may elevate; {} if it may not."""
    if not account.eligible:
        return {}
    out: dict[str, ElevationScope] = {}
    for name, _via in roles_for(policy, account):
        role = policy.roles[name]
        # Folded from the zones' and the role's folded lists: the same text as folding
        # `policy.role_nodes(role)` name by name, without seconds per 100,000 nodes.
        lists = [policy.zones[zone].hostlist for zone in role.zones] + [role.hostlist]
        out[name] = ElevationScope(fold_lists(lists), role.longest)
    return out


def mapped_groups(policy: Policy) -> frozenset[str]:
    """Every group the policy names (lower-cased): membership changes in these are audited."""
    groups: set[str] = {b.group for b in policy.bindings}
    for role in policy.roles.values():
        groups.update(role.approvals.groups)
    for service in policy.service_accounts.values():
        if service.managed_by is not None:
            groups.add(service.managed_by)
    for special in (policy.break_glass_group, policy.incident_response_group):
        if special is not None:
            groups.add(special)
    return frozenset(groups)


class _RoleNodes:
    """Nodes per role, computed once per role for one pass."""

    def __init__(self, policy: Policy) -> None:
        self._policy = policy
        self._cache: dict[str, frozenset[str]] = {}

    def __call__(self, role: str) -> frozenset[str]:
        nodes = self._cache.get(role)
        if nodes is None:
            nodes = self._policy.role_nodes(self._policy.roles[role])
            self._cache[role] = nodes
        return nodes


def group_rights(policy: Policy) -> Rights:
    """(group, role) -> nodes, from the bindings alone: needs no directory."""
    nodes_of = _RoleNodes(policy)
    return {
        (group, role): nodes_of(role)
        for group, roles in policy.roles_of_group.items()
        for role in roles
    }


def user_rights(policy: Policy, snapshot: Snapshot) -> Rights:
    """(user, role) -> nodes for every account in `snapshot` that may elevate."""
    nodes_of = _RoleNodes(policy)
    rights: Rights = {}
    for account in snapshot.accounts():
        if not account.eligible:
            continue
        for group in account.groups:
            for role in policy.roles_of_group.get(group, ()):
                rights[(account.name, role)] = nodes_of(role)
    return rights


def directory_groups(snapshot: Snapshot) -> frozenset[str] | None:
    """Lower-cased group names the snapshot holds, for the unknown-group check.

    None when it holds none (no sync yet): then group names cannot be checked.
    """
    names = frozenset(group.name.lower() for group in snapshot.groups())
    return names or None
