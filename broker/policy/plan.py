"""What changes when a policy replaces another: rights gained and lost, and every setting changed.

Rights are compared at two levels. By group, from the two policies alone,
so a plan means something even before the first directory sync. By user,
over the directory snapshot: who actually gains or loses what, where.
Setting changes (a role losing MFA, a longer maximum, a command set
growing) are listed too, since they change rights without moving any.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any

from broker.core.durations import format_duration
from broker.core.hostlist import fold
from broker.core.identity import Snapshot
from broker.policy.model import Policy
from broker.policy.rights import Rights, group_rights, user_rights

AUDIT_ENTRIES = 200  # per list in the audit event; the counts are always complete


@dataclass(frozen=True)
class RightChange:
    holder: str  # a user name, or a group name
    role: str
    nodes: str  # folded hostlist
    count: int

    def as_dict(self) -> dict[str, Any]:
        return {"holder": self.holder, "role": self.role, "nodes": self.nodes, "count": self.count}


@dataclass(frozen=True)
class Change:
    subject: str  # "role gpu-root", "zone compute", "command set node-diag", "policy"
    what: str  # "added", "removed", or "max_duration: 4h -> 8h"


@dataclass(frozen=True)
class Plan:
    old_sha256: str | None
    new_sha256: str | None
    changes: tuple[Change, ...]
    group_gains: tuple[RightChange, ...]
    group_losses: tuple[RightChange, ...]
    user_gains: tuple[RightChange, ...]
    user_losses: tuple[RightChange, ...]
    accounts: int  # accounts in the snapshot that may elevate (0: user level means nothing yet)

    @property
    def unchanged(self) -> bool:
        return not (self.changes or self.group_gains or self.group_losses)

    def summary(self, *, limit: int | None = AUDIT_ENTRIES) -> dict[str, Any]:
        """JSON-ready; lists are cut at `limit` entries (None: all), counts stay complete."""

        def cut(items: tuple[RightChange, ...]) -> list[dict[str, Any]]:
            return [c.as_dict() for c in (items if limit is None else items[:limit])]

        return {
            "old_sha256": self.old_sha256,
            "new_sha256": self.new_sha256,
            "eligible_accounts": self.accounts,
            "users_gaining": len({c.holder for c in self.user_gains}),
            "users_losing": len({c.holder for c in self.user_losses}),
            "groups_gaining": len({c.holder for c in self.group_gains}),
            "groups_losing": len({c.holder for c in self.group_losses}),
            "changes": [{"subject": c.subject, "what": c.what} for c in self.changes],
            "user_gains": cut(self.user_gains),
            "user_losses": cut(self.user_losses),
            "group_gains": cut(self.group_gains),
            "group_losses": cut(self.group_losses),
            "truncated": limit is not None
            and any(
                len(items) > limit
                for items in (
                    self.user_gains,
                    self.user_losses,
                    self.group_gains,
                    self.group_losses,
                )
            ),
        }


def make_plan(
    old: Policy | None,
    new: Policy,
    snapshot: Snapshot,
    *,
    old_sha256: str | None = None,
    new_sha256: str | None = None,
) -> Plan:
    """`new` replacing `old` (None: no active policy, so everything is gained)."""
    old_groups = group_rights(old) if old is not None else {}
    old_users = user_rights(old, snapshot) if old is not None else {}
    new_users = user_rights(new, snapshot)
    group_gains, group_losses = _diff(old_groups, group_rights(new))
    user_gains, user_losses = _diff(old_users, new_users)
    accounts = sum(1 for a in snapshot.accounts() if a.eligible)
    return Plan(
        old_sha256,
        new_sha256,
        tuple(_changes(old, new)),
        group_gains,
        group_losses,
        user_gains,
        user_losses,
        accounts,
    )


def _diff(old: Rights, new: Rights) -> tuple[tuple[RightChange, ...], tuple[RightChange, ...]]:
    gains: list[RightChange] = []
    losses: list[RightChange] = []
    empty: frozenset[str] = frozenset()
    for key in sorted(old.keys() | new.keys()):
        before, after = old.get(key, empty), new.get(key, empty)
        if before == after:
            continue
        for nodes, into in ((after - before, gains), (before - after, losses)):
            if nodes:
                into.append(RightChange(key[0], key[1], fold(sorted(nodes)), len(nodes)))
    return tuple(gains), tuple(losses)


def _show(value: object) -> str:
    if isinstance(value, timedelta):
        return format_duration(value)
    if isinstance(value, frozenset):
        return fold(sorted(value)) if value else "-"
    if isinstance(value, tuple):
        return ", ".join(_show(v) for v in value) or "-"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _settings(old: Any, new: Any, skip: tuple[str, ...] = ()) -> list[str]:
    """`key: old -> new` for every dataclass field that differs (nested ones flattened)."""
    out: list[str] = []
    for item in fields(old):
        name = item.name
        if name in skip or not item.compare:
            continue
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if hasattr(before, "__dataclass_fields__"):
            out.extend(f"{name}.{line}" for line in _settings(before, after))
        else:
            out.append(f"{name}: {_show(before)} -> {_show(after)}")
    return out


def _changes(old: Policy | None, new: Policy) -> list[Change]:
    """Added, removed and changed zones, command sets, roles, service accounts and groups."""
    changes: list[Change] = []
    sections: tuple[tuple[str, str], ...] = (
        ("zone", "zones"),
        ("command set", "command_sets"),
        ("role", "roles"),
        ("service account", "service_accounts"),
    )
    for label, attribute in sections:
        before: dict[str, Any] = dict(getattr(old, attribute)) if old is not None else {}
        after: dict[str, Any] = dict(getattr(new, attribute))
        for name in [*before, *(n for n in after if n not in before)]:
            subject = f"{label} {name}"
            if name not in after:
                changes.append(Change(subject, "removed"))
            elif name not in before:
                changes.append(Change(subject, "added"))
            else:
                skip = ("hostlist",)  # the folded form of `nodes`, which is compared
                changes.extend(
                    Change(subject, what) for what in _settings(before[name], after[name], skip)
                )
    for key in ("break_glass_group", "incident_response_group"):
        was = getattr(old, key) if old is not None else None
        now = getattr(new, key)
        if was != now:
            changes.append(Change("policy", f"{key}: {_show(was)} -> {_show(now)}"))
    return changes
