"""What an elevation would grant, decided by the policy alone (broker/grants/plan.py)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from broker.core.errors import RefusedError, UsageError
from broker.grants.plan import describe, plan_elevation
from tests.unit.policy_samples import NOW, account, load

POLICY = load().policy
ALICE = account("alice", "gpu-admins", "hpc-admins")
DAVE = account("dave", "storage-admins", "hpc-admins")
BOB = account("bob", "hpc-users")


def test_the_first_role_allowing_every_node_is_chosen_with_its_obligations() -> None:
    plan = plan_elevation(
        POLICY,
        ALICE,
        ["gpu01", "gpu02"],
        role=None,
        duration=timedelta(minutes=30),
        commands=None,
        now=NOW,
    )
    assert plan.role.name == "gpu-root"
    assert plan.duration == timedelta(minutes=30)
    assert plan.command_sets == ()
    assert plan.commands_text == "ALL"
    assert plan.role.approvals.count == 1 and plan.role.mfa
    assert describe(plan) == "gpu-root on gpu[01-02] for 30m, as root, commands ALL"


def test_a_user_in_no_mapped_group_is_refused_with_the_rule_that_refused() -> None:
    with pytest.raises(RefusedError) as caught:
        plan_elevation(POLICY, BOB, ["gpu01"], role=None, duration=None, commands=None, now=NOW)
    assert caught.value.message == (
        "bob may not elevate on gpu01: bob is in no group bound to any role"
    )
    assert caught.value.fix == "see `broker policy explain bob gpu01`"


def test_a_node_outside_the_role_or_unknown_is_refused_before_anything_is_pushed() -> None:
    with pytest.raises(RefusedError, match="may not elevate on login01"):
        plan_elevation(
            POLICY, ALICE, ["gpu01", "login01"], role=None, duration=None, commands=None, now=NOW
        )
    with pytest.raises(RefusedError, match="gpu99 is in no zone of the policy"):
        plan_elevation(POLICY, ALICE, ["gpu99"], role=None, duration=None, commands=None, now=NOW)


def test_a_duration_over_the_role_maximum_is_refused() -> None:
    with pytest.raises(RefusedError, match="5h exceeds the maximum 4h of gpu-root"):
        plan_elevation(
            POLICY,
            ALICE,
            ["gpu01"],
            role="gpu-root",
            duration=timedelta(hours=5),
            commands=None,
            now=NOW,
        )


def test_nodes_of_two_roles_need_one_role_for_all() -> None:
    # dave: storage-root on stor01, node-diag on compute and storage -> node-diag is common.
    plan = plan_elevation(
        POLICY, DAVE, ["gpu01", "stor01"], role=None, duration=None, commands=None, now=NOW
    )
    assert plan.role.name == "node-diag"
    assert plan.commands_text == "node-diag"
    assert plan.command_sets[0][1] == (
        "/usr/bin/nvidia-smi -q",
        "/usr/bin/systemctl --no-pager status slurmd",
    )


def test_command_sets_only_narrow_what_the_role_allows() -> None:
    narrowed = plan_elevation(
        POLICY,
        ALICE,
        ["gpu01"],
        role="gpu-root",
        duration=None,
        commands=["node-diag"],
        now=NOW,
    )
    assert narrowed.commands_text == "node-diag"
    with pytest.raises(UsageError, match="'nope' is not a command set"):
        plan_elevation(
            POLICY, ALICE, ["gpu01"], role=None, duration=None, commands=["nope"], now=NOW
        )


def test_disabled_accounts_are_refused() -> None:
    dora = account("dora", "gpu-admins", state="disabled")
    with pytest.raises(RefusedError, match="dora is disabled"):
        plan_elevation(POLICY, dora, ["gpu01"], role=None, duration=None, commands=None, now=NOW)
