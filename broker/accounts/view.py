"""Accounts as an operator reviews them: directory facts joined with the active policy. Pure.

`broker accounts show/list/review` read this; the policy engine decides
what each role means, the snapshot says who is in which group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.core.durations import format_duration
from broker.core.identity import Account, Snapshot
from broker.policy.model import Policy
from broker.policy.rights import elevation_scope, roles_for


@dataclass(frozen=True)
class RoleRef:
    role: str
    via: str  # the AD group whose binding gives the role


@dataclass(frozen=True)
class Scope:
    role: str
    nodes: str  # folded hostlist
    max_duration: str


@dataclass(frozen=True)
class AccountView:
    account: Account
    roles: tuple[RoleRef, ...]
    scope: tuple[Scope, ...]  # empty unless the account is eligible
    no_roles_reason: str


def account_views(accounts: Iterable[Account], policy: Policy | None) -> list[AccountView]:
    views = []
    for account in accounts:
        if policy is None:
            views.append(AccountView(account, (), (), "no active policy"))
            continue
        roles = tuple(RoleRef(role, via) for role, via in roles_for(policy, account))
        scope = tuple(
            Scope(role, nodes, format_duration(limit) if limit else "none")
            for role, (nodes, limit) in elevation_scope(policy, account).items()
        )
        views.append(AccountView(account, roles, scope, "none (no binding names its groups)"))
    return views


@dataclass(frozen=True)
class Finding:
    control: str
    kind: str
    subject: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "control": self.control,
            "kind": self.kind,
            "subject": self.subject,
            "message": self.message,
        }


def review(
    snapshot: Snapshot, policy: Policy, now: datetime, stale_after: timedelta
) -> list[Finding]:
    """AC-2 review: who holds roles but should not, what the policy names that AD lacks."""
    return [
        *_holders(snapshot, policy, now, stale_after),
        *_bound_groups(snapshot, policy),
        *_service_owners(snapshot, policy),
    ]


def _holders(
    snapshot: Snapshot, policy: Policy, now: datetime, stale_after: timedelta
) -> list[Finding]:
    """Accounts that hold roles but are disabled, expired, locked or stale."""
    findings: list[Finding] = []
    for view in account_views(snapshot.accounts(), policy):
        account = view.account
        if not view.roles:
            continue
        held = ", ".join(sorted({r.role for r in view.roles}))
        if not account.eligible:
            why = f"unusable ({account.problem})" if account.problem else account.state
            findings.append(
                Finding(
                    "AC-2(3)",
                    "ineligible",
                    account.name,
                    f"holds roles {held} but is {why}; remove it from the bound groups",
                )
            )
        elif account.stale(now, stale_after):
            findings.append(
                Finding(
                    "AC-2(3)",
                    "stale",
                    account.name,
                    f"holds roles {held} but has not logged on in {format_duration(stale_after)}",
                )
            )
    return findings


def _bound_groups(snapshot: Snapshot, policy: Policy) -> list[Finding]:
    """Groups the policy binds that AD lacks or that have no members."""
    findings: list[Finding] = []
    for group in sorted({b.group for b in policy.bindings}, key=str.lower):
        found = snapshot.group(group)
        if found is None:
            findings.append(
                Finding("AC-2", "group-missing", group, "bound in the policy but not in AD")
            )
        elif found.members == 0:
            findings.append(
                Finding("AC-2", "group-empty", group, "bound in the policy but has no members")
            )
    return findings


def _service_owners(snapshot: Snapshot, policy: Policy) -> list[Finding]:
    """Service accounts without an owner group with members, or missing from AD."""
    findings: list[Finding] = []
    for name, service in sorted(policy.service_accounts.items()):
        if service.managed_by is None:
            findings.append(
                Finding("AC-2", "no-owner", name, "service account has no owner (managed_by)")
            )
            continue
        owner = snapshot.group(service.managed_by)
        if owner is None or owner.members == 0:
            findings.append(
                Finding(
                    "AC-2",
                    "no-owner",
                    name,
                    f"its owner group {service.managed_by} is "
                    + ("missing from AD" if owner is None else "empty"),
                )
            )
        if snapshot.account(service.account) is None:
            findings.append(
                Finding("AC-2", "service-missing", name, f"AD account {service.account} not found")
            )
    return findings
