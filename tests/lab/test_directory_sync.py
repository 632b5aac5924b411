"""Directory sync against the lab's real Samba AD DC: full, incremental, unchanged, failures."""

from __future__ import annotations

import contextlib
import json
import subprocess
from pathlib import Path
from typing import Any

import ldap3
import pytest

from broker.app import App
from broker.config.kerberos import use_krb5_conf
from broker.config.loader import load_settings
from broker.core.identity import AccessChange
from tests.helpers import REPO, run_broker, serving
from tests.lab.conftest import config_of, private_daemon_config

pytestmark = pytest.mark.lab


def sync(lab: dict[str, Any], *args: str) -> dict[str, Any]:
    result = run_broker("sync", "--json", *args, config=config_of(lab))
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def show(lab: dict[str, Any], name: str) -> dict[str, Any]:
    result = run_broker("accounts", "show", name, "--json", config=config_of(lab))
    assert result.returncode == 0, result.stderr
    data: dict[str, Any] = json.loads(result.stdout)
    return data


LAB_POLICY = REPO / "deploy" / "lab" / "policy.toml"


@pytest.fixture(scope="module")
def synced(lab: dict[str, Any]) -> dict[str, Any]:
    """A full sync, then the lab policy applied (its groups must be in the snapshot)."""
    init = run_broker("init", config=config_of(lab))
    assert init.returncode == 0, init.stderr
    report = sync(lab, "--full")
    applied = run_broker("policy", "apply", str(LAB_POLICY), config=config_of(lab))
    assert applied.returncode == 0, applied.stderr
    return report


def people(lab: dict[str, Any]) -> str:
    return f"OU=People,OU=Cluster,{lab['base_dn']}"


def group_dn(lab: dict[str, Any], name: str) -> str:
    return f"CN={name},OU=Groups,OU=Cluster,{lab['base_dn']}"


def test_full_sync_reads_users_nested_groups_and_account_state(
    lab: dict[str, Any], synced: dict[str, Any]
) -> None:
    assert synced["kind"] == "full" and synced["skipped"] == []
    alice = show(lab, "HPC\\Alice")
    other = run_broker("accounts", "show", "LAB\\alice", config=config_of(lab))
    assert other.returncode == 1 and "names an account of domain 'LAB'" in other.stderr
    assert alice["name"] == "alice" and alice["uid"] == lab["users"]["alice"]["uid"]
    assert {"gpu-admins", "hpc-admins", "hpc-users"} <= set(alice["groups"])
    assert "hpc-admins" not in alice["direct_groups"]  # only through gpu-admins
    assert alice["eligible"] and alice["state"] == "enabled"
    for name, state in (("dora", "disabled"), ("evan", "expired"), ("lena", "locked")):
        account = show(lab, f"{name}@HPC.TEST")
        assert account["state"] == state and not account["eligible"], name
    assert show(lab, "nomad")["groups"] == ["domain users", "users"]


def test_ids_without_uidnumber_match_sssd_own_murmurhash(
    lab: dict[str, Any], synced: dict[str, Any]
) -> None:
    xavier = show(lab, "xavier")
    domain_sid, rid = xavier["sid"].rsplit("-", 1)
    # SSSD's own implementation (python3-sss), with SSSD's default range and seed.
    expected = subprocess.run(
        [
            "/usr/bin/python3",
            "-c",
            "import sys, pysss_murmur as m; d = sys.argv[1];"
            " print(200000 + (m.murmurhash3(d, len(d), 0xdeadbeef) % 10000) * 200000 + int(sys.argv[2]))",
            domain_sid,
            rid,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert xavier["uid"] == int(expected)
    assert show(lab, "alice")["uid"] == 10001  # uidNumber wins when AD has it


def test_a_group_past_the_1500_value_range_is_read_whole(
    lab: dict[str, Any], synced: dict[str, Any]
) -> None:
    result = run_broker(
        "accounts", "list", "--group", "bulk-users", "--json", config=config_of(lab)
    )
    assert result.returncode == 0, result.stderr
    names = {a["name"] for a in json.loads(result.stdout)}
    assert len(names) == lab["bulk"]["users"] > 1500
    assert f"bulk{lab['bulk']['users']:05d}" in names


def test_hostile_names_are_kept_harmless(lab: dict[str, Any], synced: dict[str, Any]) -> None:
    for name in lab["hostile"]["users"]:
        account = show(lab, name)
        assert account["name"] == name
        assert not account["eligible"] and "not a valid Unix user name" in account["problem"]
        assert lab["hostile"]["group"].lower() in account["groups"]
        assert "gpu-admins" in account["groups"]  # nested through the hostile group
    table = run_broker("accounts", "show", "o'brien(ops)", config=config_of(lab))
    assert table.returncode == 0 and "\n\\, y" not in table.stdout
    listed = run_broker(
        "accounts", "list", "--group", lab["hostile"]["group"], "--json", config=config_of(lab)
    )
    assert sorted(a["name"] for a in json.loads(listed.stdout)) == sorted(lab["hostile"]["users"])


def test_stale_and_disabled_filters(lab: dict[str, Any], synced: dict[str, Any]) -> None:
    stale = run_broker("accounts", "list", "--stale", "--json", config=config_of(lab))
    names = {a["name"] for a in json.loads(stale.stdout)}
    assert lab["stale_user"]["name"] in names and "alice" not in names
    disabled = run_broker("accounts", "list", "--disabled", "--json", config=config_of(lab))
    states = {a["name"]: a["state"] for a in json.loads(disabled.stdout)}
    assert {states["dora"], states["evan"], states["lena"]} == {"disabled", "expired", "locked"}
    assert "alice" not in states


def test_an_unchanged_directory_costs_one_rootdse_read(
    lab: dict[str, Any], synced: dict[str, Any]
) -> None:
    sync(lab)  # catch up with anything an earlier test changed
    again = sync(lab)
    assert again["kind"] == "unchanged" and again["changes"] == []
    assert again["elapsed_s"] < 1.0


def test_incremental_sync_sees_access_changes_and_matches_a_full_sync(
    lab: dict[str, Any], synced: dict[str, Any], admin: ldap3.Connection
) -> None:
    dn = {n: f"CN={n},{people(lab)}" for n in ("tmp-joiner", "tmp-leaver")}
    for name, target in dn.items():
        admin.add(
            target,
            ["top", "person", "organizationalPerson", "user"],
            {"sAMAccountName": name, "userAccountControl": 512},
        )
        admin.modify(group_dn(lab, "storage-admins"), {"member": [(ldap3.MODIFY_ADD, [target])]})
    try:
        sync(lab)
        settings = load_settings(config_of(lab))
        use_krb5_conf(settings.kerberos)
        app = App(settings)
        published: list[AccessChange] = []
        app.directory().subscribe(published.extend)
        # The joiner is disabled and loses storage-admins; the leaver is deleted.
        admin.modify(dn["tmp-joiner"], {"userAccountControl": [(ldap3.MODIFY_REPLACE, [514])]})
        admin.modify(
            group_dn(lab, "storage-admins"),
            {"member": [(ldap3.MODIFY_DELETE, [dn["tmp-joiner"]])]},
        )
        admin.delete(dn["tmp-leaver"])
        report = app.directory().sync("unix:test")
        app.close()
        assert report.kind == "incremental"
        seen = {(c.action, c.user, c.group, c.after) for c in published}
        assert ("directory.user.state", "tmp-joiner", None, "disabled") in seen
        assert ("directory.membership.removed", "tmp-joiner", "storage-admins", None) in seen
        # hpc-admins (which nests storage-admins) is not named by the policy: not audited.
        assert not any(group == "hpc-admins" for _a, _u, group, _s in seen)
        assert ("directory.user.deleted", "tmp-leaver", None, None) in seen
        assert all(c.revokes for c in published if c.user == "tmp-leaver")
        events = run_broker(
            "audit", "tail", "-n", "50", "--action", "directory.*", "--json", config=config_of(lab)
        )
        audited = {(e["action"], e["target"]) for e in json.loads(events.stdout)}
        assert ("directory.user.deleted", "user:tmp-leaver") in audited
        assert ("directory.user.state", "user:tmp-joiner") in audited
        gone = run_broker("accounts", "show", "tmp-leaver", config=config_of(lab))
        assert gone.returncode == 1 and "no account 'tmp-leaver'" in gone.stderr
        assert show(lab, "tmp-joiner")["state"] == "disabled"
        # What the incremental sync built is exactly what a full read gives.
        full = sync(lab, "--full")
        assert full["kind"] == "full" and full["changes"] == [] and full["rows_written"] == 0
    finally:
        for target in dn.values():
            with contextlib.suppress(ldap3.core.exceptions.LDAPNoSuchObjectResult):
                admin.delete(target)
        sync(lab)


def test_an_unreachable_or_untrusted_dc_leaves_the_snapshot_alone(
    lab: dict[str, Any], synced: dict[str, Any], tmp_path: Path
) -> None:
    before = run_broker("directory", "status", "--json", config=config_of(lab))
    assert before.returncode == 0, before.stderr
    bad_ca = tmp_path / "ca.pem"
    bad_ca.write_text(Path("/etc/ssl/certs/ca-certificates.crt").read_text())
    text = config_of(lab).read_text()
    for broken, needle in (
        (text.replace(lab["dc"]["ca_file"], str(bad_ca)), "not trusted by"),
        (text.replace("ldaps://dc1.hpc.test:636", "ldaps://127.0.0.9:636"), "cannot connect"),
    ):
        config = private_daemon_config(broken, tmp_path)
        with serving(config):
            result = run_broker("sync", "--full", config=config)
        assert result.returncode == 3, result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert needle in result.stderr and "ldaps://" in result.stderr
    after = run_broker("directory", "status", "--json", config=config_of(lab))
    assert json.loads(after.stdout) == json.loads(before.stdout)


def test_show_gives_roles_through_nested_groups_and_where_to_elevate(
    lab: dict[str, Any], synced: dict[str, Any]
) -> None:
    alice = show(lab, "alice")
    assert {(r["role"], r["via"]) for r in alice["roles"]} == {
        ("gpu-root", "gpu-admins"),
        ("node-diag", "gpu-admins"),
    }
    scope = {s["role"]: (s["nodes"], s["max_duration"]) for s in alice["may_elevate"]}
    assert scope["gpu-root"] == ("gpu[01-02]", "4h")
    assert scope["node-diag"] == ("gpu[01-02],stor01", "8h")
    dora = show(lab, "dora")  # holds the roles through gpu-admins, but is disabled
    assert dora["roles"] and dora["may_elevate"] == []
    table = run_broker("accounts", "show", "alice", config=config_of(lab))
    assert "gpu-root on gpu[01-02] for up to 4h" in table.stdout
    holders = run_broker(
        "accounts", "list", "--role", "storage-root", "--json", config=config_of(lab)
    )
    assert {a["name"] for a in json.loads(holders.stdout)} == {"dave", "erin", "rupert"}


def test_account_review_reports_what_ac2_asks_for(
    lab: dict[str, Any], synced: dict[str, Any]
) -> None:
    result = run_broker("accounts", "review", "--json", config=config_of(lab))
    assert result.returncode == 1, result.stderr
    found = {(f["kind"], f["subject"]) for f in json.loads(result.stdout)}
    for name in ("dora", "evan", *lab["hostile"]["users"]):
        assert ("ineligible", name) in found
    assert ("stale", lab["stale_user"]["name"]) in found
    assert ("group-empty", "retired-admins") in found
    assert ("no-owner", "svc-nfs") in found
    assert not any(subject in ("alice", "dave", "svc-slurm") for _kind, subject in found)
    table = run_broker("accounts", "review", config=config_of(lab))
    assert table.returncode == 1 and "AC-2(3)" in table.stdout


def test_policy_plan_against_the_real_snapshot_names_who_gains_and_loses(
    lab: dict[str, Any], synced: dict[str, Any], tmp_path: Path
) -> None:
    changed = tmp_path / "policy.toml"
    text = LAB_POLICY.read_text().replace(
        '[[bindings]]\ngroup = "storage-admins"\nroles = ["storage-root", "node-diag"]',
        '[[bindings]]\ngroup = "storage-admins"\nroles = ["node-diag"]\n\n'
        '[[bindings]]\ngroup = "hpc-approvers"\nroles = ["storage-root"]',
    )
    assert text != LAB_POLICY.read_text()
    changed.write_text(text)
    result = run_broker("policy", "plan", str(changed), "--json", config=config_of(lab))
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    gains = {(c["holder"], c["role"], c["nodes"]) for c in plan["user_gains"]}
    losses = {(c["holder"], c["role"]) for c in plan["user_losses"]}
    assert gains == {("frank", "storage-root", "stor01"), ("grace", "storage-root", "stor01")}
    # rupert holds storage-root too but is only stale, so he loses it as well; nobody
    # ineligible (disabled, expired, locked) appears in a plan at all.
    assert {"dave", "erin"} <= {holder for holder, role in losses if role == "storage-root"}
    assert not any(
        holder in ("dora", "evan", "lena") for holder, _role in losses | {g[:2] for g in gains}
    )


def test_small_pages_with_ranged_groups_read_everything(
    lab: dict[str, Any], synced: dict[str, Any], tmp_path: Path
) -> None:
    """Pages of 10 entries, and a 1,600-member group read in ranges on the same connection
    in the middle of a page: every group and every member still arrives."""
    text = config_of(lab).read_text()
    config = private_daemon_config(
        text.replace(lab["broker"]["state_dir"], str(tmp_path / "state")).replace(
            '\nkeytab = "', '\npage_size = 10\nkeytab = "'
        ),
        tmp_path,
    )
    assert run_broker("init", config=config).returncode == 0
    with serving(config):
        small = run_broker("sync", "--full", "--json", config=config)
        listed = run_broker("accounts", "list", "--group", "bulk-users", "--json", config=config)
    assert small.returncode == 0, small.stderr
    reference = json.loads(
        run_broker("directory", "status", "--json", config=config_of(lab)).stdout
    )
    assert json.loads(small.stdout)["groups"] == reference["groups"]
    assert json.loads(small.stdout)["users"] == reference["users"]
    assert len(json.loads(listed.stdout)) == lab["bulk"]["users"]
