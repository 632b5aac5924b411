"""Policies and directory accounts shared by the policy tests (the lab's names)."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.core.identity import Account, AccountState, Group, MemorySnapshot
from broker.policy.load import LoadedPolicy, load_policy, parse_policy
from tests.helpers import REPO

LAB_POLICY = (REPO / "tests" / "data" / "lab-policy.toml").read_text()
EXAMPLE_POLICY = (REPO / "deploy" / "examples" / "policy.toml").read_text()
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

LAB_GROUPS = (
    "hpc-users",
    "gpu-admins",
    "storage-admins",
    "hpc-admins",
    "hpc-approvers",
    "break-glass",
    "incident-response",
    "svc-owners",
)


def load(text: str = LAB_POLICY, known: tuple[str, ...] | None = None) -> LoadedPolicy:
    return load_policy(text, "policy.toml", known_groups=frozenset(known) if known else None)


def errors(text: str, known: tuple[str, ...] | None = None) -> list[str]:
    """Every problem line the loader reports for `text` (named policy.toml)."""
    loaded, problems = parse_policy(
        text, "policy.toml", known_groups=frozenset(known) if known else None
    )
    assert (loaded is None) == bool(problems)
    return [str(p) for p in problems]


def line_of(text: str, needle: str) -> int:
    """The 1-based line of the first line containing `needle`."""
    for number, line in enumerate(text.split("\n"), 1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in the text")


def account(
    name: str,
    *groups: str,
    state: AccountState = "enabled",
    expires_at: datetime | None = None,
    locked_until: datetime | None = None,
    problem: str | None = None,
) -> Account:
    return Account(
        name=name,
        upn=f"{name}@HPC.TEST",
        sid=f"S-1-5-21-1-{sum(map(ord, name))}",
        dn=f"CN={name},OU=People,DC=hpc,DC=test",
        uid=10001,
        gid=10000,
        groups=frozenset(groups) | {"hpc-users"},
        direct_groups=frozenset(groups),
        state=state,
        last_logon=None,
        created=None,
        expires_at=expires_at,
        locked_until=locked_until,
        problem=problem,
    )


def lab_snapshot(*extra: Account) -> MemorySnapshot:
    """The lab's people as the directory sync would see them (nesting already flattened)."""
    people = [
        account("alice", "gpu-admins", "hpc-admins"),
        account("carol", "gpu-admins", "hpc-admins"),
        account("dave", "storage-admins", "hpc-admins"),
        account("erin", "storage-admins", "hpc-admins"),
        account("frank", "hpc-approvers"),
        account("heidi", "break-glass"),
        account("ivan", "incident-response"),
        account("bob"),
        account("dora", "gpu-admins", "hpc-admins", state="disabled"),
        account("evan", "gpu-admins", "hpc-admins", state="expired"),
        *extra,
    ]
    groups = [
        Group(name, f"S-1-5-21-2-{i}", f"CN={name},DC=hpc,DC=test", 10000 + i, 0)
        for i, name in enumerate(LAB_GROUPS)
    ]
    return MemorySnapshot.of(people, groups)
