"""decide(): the verdict, the role that allows it, and every rule consulted, in explain's words."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.identity import Account, MemorySnapshot
from broker.policy.evaluate import Decision, decide, no_policy, unknown_account
from broker.policy.model import Policy
from broker.policy.rights import user_rights
from tests.unit.policy_samples import NOW, account, lab_snapshot, load

POLICY = load().policy
SNAPSHOT = lab_snapshot()


def who(name: str) -> Account:
    found = SNAPSHOT.account(name)
    assert found is not None
    return found


def details(decision: Decision) -> list[tuple[str, str | None, str, str]]:
    return [(c.rule, c.role, c.outcome, c.detail) for c in decision.checks]


def test_allowed_with_the_first_role_in_policy_order_and_its_obligations() -> None:
    decision = decide(POLICY, who("alice"), "gpu01", now=NOW)
    assert decision.allowed and decision.verdict == "allow"
    assert decision.role == "gpu-root" and decision.allowed_by == ("gpu-root", "node-diag")
    assert decision.duration == timedelta(hours=1)
    assert decision.reason == "alice may elevate on gpu01 as gpu-root for 1h"
    assert details(decision)[:5] == [
        ("account", None, "pass", "alice is enabled"),
        ("node", None, "pass", "gpu01 is in zone compute (kind compute)"),
        ("binding", "gpu-root", "pass", "alice is in gpu-admins, bound to gpu-root"),
        ("scope", "gpu-root", "pass", "gpu-root covers gpu01 through zone compute"),
        (
            "duration",
            "gpu-root",
            "pass",
            "no duration asked: the default 1h applies (at most 4h)",
        ),
    ]
    required = {c.rule: c.detail for c in decision.checks if c.outcome == "requires"}
    assert required["mfa"] == "a valid TOTP code at elevation"
    assert required["approvals"] == (
        "1 approval from hpc-approvers, not counting alice; the request expires after 30m "
        "without them"
    )
    assert required["recording"] == "every elevated session is recorded"
    assert required["sessions"] == "at most 1 elevated session at once on gpu01"


def test_a_narrower_role_allows_where_the_wider_one_does_not_reach() -> None:
    decision = decide(POLICY, who("alice"), "stor01", now=NOW)
    assert decision.allowed and decision.role == "node-diag"
    scope = [c for c in decision.checks if c.rule == "scope" and c.role == "gpu-root"]
    assert scope[0].outcome == "fail"
    assert scope[0].detail == "gpu-root does not cover stor01 (zone compute)"


def test_asking_for_a_role_judges_only_that_role() -> None:
    decision = decide(POLICY, who("alice"), "stor01", role="storage-root", now=NOW)
    assert not decision.allowed and decision.role is None
    assert (
        decision.reason == "alice is in none of the groups bound to storage-root (storage-admins)"
    )
    # The other rules are still consulted, so explain shows all of them.
    assert [c.rule for c in decision.checks] == ["account", "node", "binding", "scope", "duration"]


@pytest.mark.parametrize(
    ("duration", "allowed", "detail"),
    [
        (timedelta(hours=4), True, "4h is within the maximum 4h"),
        (timedelta(hours=4, seconds=1), False, "4h1s exceeds the maximum 4h of gpu-root"),
        (timedelta(0), False, "a non-positive time exceeds the maximum 4h of gpu-root"),
        (timedelta(minutes=-5), False, "a non-positive time exceeds the maximum 4h of gpu-root"),
    ],
)
def test_durations_within_the_maximum(duration: timedelta, allowed: bool, detail: str) -> None:
    decision = decide(POLICY, who("carol"), "gpu02", role="gpu-root", duration=duration, now=NOW)
    assert decision.allowed is allowed
    assert any(c.rule == "duration" and c.detail == detail for c in decision.checks)


@pytest.mark.parametrize(
    ("person", "reason"),
    [
        (account("dora", "gpu-admins", state="disabled"), "dora is disabled"),
        (account("evan", "gpu-admins", state="expired"), "evan is expired"),
        (account("lena", "gpu-admins", state="locked"), "lena is locked"),
        (account("gone", "gpu-admins", state="deleted"), "gone is deleted"),
        (account("old", "gpu-admins", expires_at=NOW - timedelta(seconds=1)), "old is expired"),
        (account("lock", "gpu-admins", locked_until=NOW + timedelta(minutes=5)), "lock is locked"),
    ],
)
def test_accounts_that_are_not_enabled_are_denied(person: Account, reason: str) -> None:
    decision = decide(POLICY, person, "gpu01", now=NOW)
    assert not decision.allowed
    assert decision.reason == f"{reason}: only enabled accounts may elevate"
    # The role would otherwise allow it: the account rule alone decides.
    assert all(c.outcome == "pass" for c in decision.checks[1:])


def test_an_account_that_cannot_be_a_unix_user_is_denied() -> None:
    person = account("xavier", "gpu-admins", problem="no uidNumber and no idmap range")
    decision = decide(POLICY, person, "gpu01", now=NOW)
    assert not decision.allowed
    assert decision.reason == "xavier may not elevate: no uidNumber and no idmap range"


def test_a_lockout_that_has_ended_counts_as_enabled() -> None:
    person = account("lena", "gpu-admins", locked_until=NOW - timedelta(minutes=1))
    assert decide(POLICY, person, "gpu01", now=NOW).allowed


@pytest.mark.parametrize(
    ("node", "reason"),
    [
        ("gpu03", "gpu03 is in no zone of the policy"),
        ("login01", "gpu-root does not cover login01 (zone compute)"),
        ("gpu01\nALL", "is in no zone of the policy"),
        ("gpu01,stor01", "is in no zone of the policy"),
        ("", "is in no zone of the policy"),
    ],
)
def test_unknown_or_hostile_nodes_are_denied(node: str, reason: str) -> None:
    decision = decide(POLICY, who("alice"), node, now=NOW)
    assert not decision.allowed and reason in decision.reason


def test_no_role_no_policy_no_account_all_deny() -> None:
    bob = decide(POLICY, who("bob"), "gpu01", now=NOW)
    assert not bob.allowed and bob.reason == "bob is in no group bound to any role"
    missing = decide(POLICY, who("alice"), "gpu01", role="gpu-admin", now=NOW)
    assert missing.reason == "role gpu-admin is not in the policy"
    assert not no_policy("alice", "gpu01").allowed
    unknown = unknown_account("mallory", "gpu01")
    assert not unknown.allowed and "not in the directory snapshot" in unknown.reason


def test_nested_groups_count_through_the_flattened_membership() -> None:
    # hpc-admins contains gpu-admins in the lab; the snapshot lists both for alice.
    text = load().text + '\n[[bindings]]\ngroup = "hpc-admins"\nroles = ["storage-root"]\n'
    policy = load(text).policy
    assert decide(policy, who("alice"), "stor01", role="storage-root", now=NOW).allowed


# ---------------------------------------------------------------- property: decide agrees with rights

NODES = [f"n{i}" for i in range(8)]


@st.composite
def policies(draw: st.DrawFn) -> str:
    zone_of = [draw(st.integers(0, 2)) for _ in NODES]
    parts = ["version = 1"]
    for z in range(3):
        members = [n for n, zi in zip(NODES, zone_of, strict=True) if zi == z]
        if members:
            parts.append(f'[zones.z{z}]\nkind = "compute"\nnodes = {members!r}'.replace("'", '"'))
    zones = sorted({f"z{z}" for z in zone_of})
    for r in range(4):
        chosen = draw(st.lists(st.sampled_from(zones), min_size=1, unique=True))
        extra = draw(st.lists(st.sampled_from(NODES), unique=True, max_size=2))
        lines = [f"[roles.r{r}]", f"zones = {chosen!r}", 'commands = "ALL"', 'max_duration = "2h"']
        if extra:
            lines.append(f"nodes = {extra!r}")
        parts.append("\n".join(lines).replace("'", '"'))
    for g in range(3):
        roles = draw(
            st.lists(st.sampled_from([f"r{r}" for r in range(4)]), min_size=1, unique=True)
        )
        parts.append(f'[[bindings]]\ngroup = "g{g}"\nroles = {roles!r}'.replace("'", '"'))
    return "\n\n".join(parts) + "\n"


@settings(max_examples=80, deadline=None)
@given(
    text=policies(),
    groups=st.lists(
        st.frozensets(st.sampled_from(["g0", "g1", "g2", "other"])), min_size=1, max_size=4
    ),
    states=st.lists(
        st.sampled_from(["enabled", "enabled", "disabled", "locked"]), min_size=4, max_size=4
    ),
    hours=st.integers(0, 3),
)
def test_decide_agrees_with_the_rights_a_plan_computes(
    text: str, groups: list[frozenset[str]], states: list[str], hours: int
) -> None:
    policy: Policy = load(text).policy
    people = [
        account(f"u{i}", *g, state=states[i])  # type: ignore[arg-type]
        for i, g in enumerate(groups)
    ]
    rights = user_rights(policy, MemorySnapshot.of(people))
    asked = timedelta(hours=hours)
    for person in people:
        for node in [*NODES, "elsewhere"]:
            anywhere = any(node in nodes for (u, _), nodes in rights.items() if u == person.name)
            decision = decide(policy, person, node, now=NOW)
            assert decision.allowed == anywhere, (person, node, decision)
            if decision.allowed:
                assert node in rights[(person.name, decision.role or "")]
            for role in policy.roles:
                held = node in rights.get((person.name, role), frozenset())
                timed = decide(policy, person, node, role=role, duration=asked, now=NOW)
                assert timed.allowed == (held and 0 < hours <= 2)
