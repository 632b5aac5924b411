"""Rights a policy gives, plans between two policies, and what `broker accounts` reads."""

from __future__ import annotations

from datetime import timedelta

from broker.core.identity import MemorySnapshot
from broker.policy.plan import RightChange, make_plan
from broker.policy.rights import (
    directory_groups,
    elevation_scope,
    group_rights,
    mapped_groups,
    roles_for,
    user_rights,
)
from tests.unit.policy_samples import LAB_POLICY, account, lab_snapshot, load

OLD = load().policy
SNAPSHOT = lab_snapshot()


def rows(changes: tuple[RightChange, ...]) -> list[tuple[str, str, str]]:
    return [(c.holder, c.role, c.nodes) for c in changes]


def test_first_policy_gives_everything_and_only_to_eligible_accounts() -> None:
    plan = make_plan(None, OLD, SNAPSHOT, new_sha256="b" * 64)
    assert rows(plan.user_gains) == [
        ("alice", "gpu-root", "gpu[01-02]"),
        ("alice", "node-diag", "gpu[01-02],stor01"),
        ("carol", "gpu-root", "gpu[01-02]"),
        ("carol", "node-diag", "gpu[01-02],stor01"),
        ("dave", "node-diag", "gpu[01-02],stor01"),
        ("dave", "storage-root", "stor01"),
        ("erin", "node-diag", "gpu[01-02],stor01"),
        ("erin", "storage-root", "stor01"),
    ]
    assert plan.user_losses == () and plan.accounts == 8  # dora and evan may not elevate
    assert ("gpu-admins", "gpu-root", "gpu[01-02]") in rows(plan.group_gains)
    assert ("role gpu-root", "added") in [(c.subject, c.what) for c in plan.changes]


def test_gains_losses_and_setting_changes() -> None:
    text = LAB_POLICY.replace(
        'roles = ["storage-root", "node-diag"]', 'roles = ["storage-root"]'
    ).replace('zones = ["compute"]', 'zones = ["compute", "storage"]')
    text = text.replace('max_duration = "4h"', 'max_duration = "8h"\nmfa = false')
    text = text.replace("count = 1,", "count = 2,").replace(
        'nodes = "gpu[01-02]"', 'nodes = "gpu[01-03]"'
    )
    plan = make_plan(OLD, load(text).policy, SNAPSHOT)
    assert rows(plan.user_gains) == [
        ("alice", "gpu-root", "gpu03,stor01"),
        ("alice", "node-diag", "gpu03"),
        ("carol", "gpu-root", "gpu03,stor01"),
        ("carol", "node-diag", "gpu03"),
    ]
    assert rows(plan.user_losses) == [
        ("dave", "node-diag", "gpu[01-02],stor01"),
        ("erin", "node-diag", "gpu[01-02],stor01"),
    ]
    assert rows(plan.group_losses) == [("storage-admins", "node-diag", "gpu[01-02],stor01")]
    changes = [(c.subject, c.what) for c in plan.changes]
    assert changes == [
        ("zone compute", "nodes: gpu[01-02] -> gpu[01-03]"),
        ("role gpu-root", "zones: compute -> compute, storage"),
        ("role gpu-root", "max_duration: 4h -> 8h"),
        ("role gpu-root", "mfa: true -> false"),
        ("role gpu-root", "approvals.count: 1 -> 2"),
    ]
    summary = plan.summary()
    assert summary["users_gaining"] == 2 and summary["users_losing"] == 2
    assert summary["groups_losing"] == 1 and not summary["truncated"]


def test_the_same_policy_plans_nothing() -> None:
    plan = make_plan(OLD, load().policy, SNAPSHOT)
    assert plan.unchanged and plan.user_gains == plan.user_losses == ()


def test_command_set_service_account_and_group_changes_are_listed() -> None:
    text = LAB_POLICY.replace('"/usr/bin/nvidia-smi -q", ', "").replace(
        'break_glass_group = "break-glass"', 'break_glass_group = "hpc-admins"'
    )
    text = text.replace(
        'keytab = "/etc/krb5.keytab"', 'keytab = "/etc/krb5.keytab"\nrotate_every = "7d"'
    )
    changes = [(c.subject, c.what) for c in make_plan(OLD, load(text).policy, SNAPSHOT).changes]
    assert changes == [
        (
            "command set node-diag",
            "commands: /usr/bin/nvidia-smi -q, /usr/bin/systemctl --no-pager status slurmd -> "
            "/usr/bin/systemctl --no-pager status slurmd",
        ),
        ("service account svc-nfs", "rotate_every: 30d -> 7d"),
        ("policy", "break_glass_group: break-glass -> hpc-admins"),
    ]


def test_without_a_directory_snapshot_the_group_level_still_shows_the_change() -> None:
    empty = MemorySnapshot.of([])
    text = LAB_POLICY.replace('roles = ["gpu-root", "node-diag"]', 'roles = ["node-diag"]')
    plan = make_plan(OLD, load(text).policy, empty)
    assert plan.accounts == 0 and plan.user_losses == ()
    assert rows(plan.group_losses) == [("gpu-admins", "gpu-root", "gpu[01-02]")]
    assert directory_groups(empty) is None


def test_audit_summary_is_cut_but_counts_stay_complete() -> None:
    summary = make_plan(None, OLD, SNAPSHOT).summary(limit=3)
    assert len(summary["user_gains"]) == 3 and summary["truncated"]
    assert summary["users_gaining"] == 4


def test_user_and_group_rights() -> None:
    rights = user_rights(OLD, SNAPSHOT)
    assert rights[("dave", "storage-root")] == frozenset({"stor01"})
    assert ("dora", "gpu-root") not in rights
    assert group_rights(OLD)[("gpu-admins", "node-diag")] == frozenset({"gpu01", "gpu02", "stor01"})


def test_roles_for_and_elevation_scope_for_accounts_show() -> None:
    alice = SNAPSHOT.account("alice")
    assert alice is not None
    held = roles_for(OLD, alice)
    assert held == [("gpu-root", "gpu-admins"), ("node-diag", "gpu-admins")]
    role, via = held[0]
    assert (role, via) == (held[0].role, held[0].via)
    scope = elevation_scope(OLD, alice)
    assert scope == {
        "gpu-root": ("gpu[01-02]", timedelta(hours=4)),
        "node-diag": ("gpu[01-02],stor01", timedelta(hours=8)),
    }
    dora = account("dora", "gpu-admins", state="disabled")
    assert [r.role for r in roles_for(OLD, dora)] == ["gpu-root", "node-diag"]
    assert elevation_scope(OLD, dora) == {}


def test_mapped_groups_name_every_group_the_policy_mentions() -> None:
    assert mapped_groups(OLD) == frozenset(
        {
            "gpu-admins",
            "storage-admins",
            "hpc-approvers",
            "break-glass",
            "incident-response",
            "svc-owners",
        }
    )
    assert directory_groups(SNAPSHOT) is not None and "hpc-users" in (
        directory_groups(SNAPSHOT) or ()
    )
