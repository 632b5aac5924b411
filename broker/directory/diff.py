"""What changed for access between two snapshots. Pure.

Only changes that can alter a right are reported: an account appearing,
disappearing, being renamed or changing state, and membership of a mapped
group (the groups the active policy names; every group while no policy is
active) being gained or lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.core.identity import AccessChange, AccountState


@dataclass(frozen=True)
class UserView:
    """A user as far as access is concerned."""

    name: str
    sid: str
    state: AccountState
    groups: frozenset[str]  # group guids, transitive


def access_changes(
    old: Mapping[str, UserView],
    new: Mapping[str, UserView],
    old_group_names: Mapping[str, str],
    new_group_names: Mapping[str, str],
    mapped: frozenset[str] | None,
) -> list[AccessChange]:
    """Changes in a stable order (by user name, then kind, then group)."""

    def name_of(guid: str) -> str:
        return new_group_names.get(guid) or old_group_names.get(guid) or guid

    def counts(guid: str) -> bool:
        return mapped is None or name_of(guid).lower() in mapped

    changes: list[AccessChange] = []
    for guid in old.keys() | new.keys():
        before, after = old.get(guid), new.get(guid)
        seen = (before.groups if before else frozenset()) | (after.groups if after else frozenset())
        matters = mapped is None or any(counts(g) for g in seen)
        if not matters:
            continue
        if before is None and after is not None:
            changes.append(AccessChange("user.added", after.name, after.sid, after=after.state))
            before = UserView(after.name, after.sid, after.state, frozenset())
        elif after is None and before is not None:
            changes.append(
                AccessChange("user.deleted", before.name, before.sid, before=before.state)
            )
            # A deletion says it all: no separate membership removals.
            after = UserView(before.name, before.sid, "deleted", before.groups)
        assert before is not None and after is not None
        if before.name != after.name:
            changes.append(
                AccessChange(
                    "user.renamed", after.name, after.sid, before=before.name, after=after.name
                )
            )
        if before.state != after.state and after.state != "deleted":
            changes.append(
                AccessChange(
                    "user.state", after.name, after.sid, before=before.state, after=after.state
                )
            )
        for group in sorted(after.groups - before.groups, key=name_of):
            if counts(group):
                changes.append(
                    AccessChange("membership.added", after.name, after.sid, name_of(group))
                )
        for group in sorted(before.groups - after.groups, key=name_of):
            if counts(group):
                changes.append(
                    AccessChange("membership.removed", after.name, after.sid, name_of(group))
                )
    order = {"user.deleted": 0, "user.added": 1, "user.renamed": 2, "user.state": 3}
    changes.sort(key=lambda c: (c.user, c.user_sid, order.get(c.kind, 4), c.kind, c.group or ""))
    return changes
