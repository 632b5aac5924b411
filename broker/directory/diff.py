"""What changed for access between two snapshots. Pure.

Only changes that can alter a right are reported: an account appearing,
disappearing, being renamed or changing state, and membership of a mapped
group (the groups the active policy names; every group while no policy is
active) being gained or lost.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from broker.core.identity import AccessChange, AccountState, fold_name


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

    def old_name(guid: str) -> str:
        return old_group_names.get(guid) or new_group_names.get(guid) or guid

    def new_name(guid: str) -> str:
        return new_group_names.get(guid) or old_group_names.get(guid) or guid

    def counts(name: str) -> bool:
        return mapped is None or fold_name(name) in mapped

    changes: list[AccessChange] = []
    for guid in old.keys() | new.keys():
        before, after = old.get(guid), new.get(guid)
        # Compared by name, as policy binds groups by name: a renamed group gives and
        # takes rights without any membership changing.
        had = {fold_name(old_name(g)): old_name(g) for g in before.groups} if before else {}
        has = {fold_name(new_name(g)): new_name(g) for g in after.groups} if after else {}
        if mapped is not None and not any(counts(n) for n in (*had.values(), *has.values())):
            continue
        if before is None and after is not None:
            changes.append(AccessChange("user.added", after.name, after.sid, after=after.state))
            before = UserView(after.name, after.sid, after.state, frozenset())
        elif after is None and before is not None:
            changes.append(
                AccessChange("user.deleted", before.name, before.sid, before=before.state)
            )
            # A deletion says it all: no separate membership removals.
            after, has = UserView(before.name, before.sid, "deleted", before.groups), had
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
        for key in sorted(has.keys() - had.keys()):
            if counts(has[key]):
                changes.append(AccessChange("membership.added", after.name, after.sid, has[key]))
        for key in sorted(had.keys() - has.keys()):
            if counts(had[key]):
                changes.append(AccessChange("membership.removed", after.name, after.sid, had[key]))
    order = {"user.deleted": 0, "user.added": 1, "user.renamed": 2, "user.state": 3}
    changes.sort(key=lambda c: (c.user, c.user_sid, order.get(c.kind, 4), c.kind, c.group or ""))
    return changes
