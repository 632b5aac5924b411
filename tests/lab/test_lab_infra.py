"""The lab is what the other lab tests rely on: a strict DC, isolated nodes, the seeded directory."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from broker.config.kerberos import use_krb5_conf
from broker.config.loader import load_settings
from broker.directory.connection import connect
from tests.lab.conftest import ssh

pytestmark = pytest.mark.lab

ADMIN_DN = "CN=Administrator,CN=Users,DC=hpc,DC=test"


def admin_password_file(lab: dict[str, Any], tmp_path: Path) -> Path:
    """ldap tools' -y sends the whole file, so strip the newline (and keep it off argv)."""
    source = Path(lab["dc"]["admin_password_file"]).read_text().strip()
    target = tmp_path / "pw"
    target.write_text(source)
    target.chmod(0o600)
    return target


def simple_bind(uri: str, pw: Path, lab: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, LDAPTLS_CACERT=lab["dc"]["ca_file"], LDAPTLS_REQCERT="demand")
    return subprocess.run(
        [
            "ldapsearch",
            "-LLL",
            "-x",
            "-H",
            uri,
            "-D",
            ADMIN_DN,
            "-y",
            str(pw),
            "-b",
            lab["base_dn"],
            "-s",
            "base",
            "dn",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        check=False,
    )


def test_plain_ldap_simple_bind_is_refused_but_ldaps_works(
    lab: dict[str, Any], tmp_path: Path
) -> None:
    pw = admin_password_file(lab, tmp_path)
    plain = simple_bind(lab["dc"]["ldap_uri"], pw, lab)
    assert plain.returncode != 0 and "Strong" in plain.stderr
    secure = simple_bind(lab["dc"]["ldaps_uri"], pw, lab)
    assert secure.returncode == 0, secure.stderr
    assert secure.stdout.strip() == f"dn: {lab['base_dn']}"


def test_each_node_has_its_own_sudoers_d(lab: dict[str, Any]) -> None:
    first, second = lab["nodes"][0], lab["nodes"][1]
    marker = Path(first["dir"]) / "etc" / "sudoers.d" / "lab_isolation_probe"
    marker.write_text("# probe\n")
    try:
        assert "lab_isolation_probe" in ssh(lab, "root", first, "ls /etc/sudoers.d").stdout
        assert "lab_isolation_probe" not in ssh(lab, "root", second, "ls /etc/sudoers.d").stdout
        assert not Path("/etc/sudoers.d/lab_isolation_probe").exists()
    finally:
        marker.unlink()


def test_lab_users_log_in_with_their_key_and_have_no_sudo(lab: dict[str, Any]) -> None:
    # login01 (zone access) admits any user; the compute nodes are login-gated by the lab
    # policy (gpu-root has login = true), so alice needs a grant there.
    node = next(n for n in lab["nodes"] if n["name"] == "login01")
    result = ssh(lab, "alice", node, "id -u; hostname; sudo -n true")
    lines = result.stdout.split()
    assert lines[:2] == [str(lab["users"]["alice"]["uid"]), node["name"]]
    assert result.returncode != 0 and "password is required" in result.stderr
    gated = ssh(lab, "alice", lab["nodes"][0], "id -u")
    assert gated.returncode == 255 and gated.stdout == ""


def test_lab_exec_enters_the_node(lab_module: ModuleType, lab: dict[str, Any]) -> None:
    node = lab["nodes"][-1]
    out = subprocess.run(
        ["nsenter", "--target", str(node["pid"]), "--mount", "--uts", "--", "hostname"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip() == node["name"]
    assert lab_module.status(Path(lab["root"]))["up"]


def test_directory_is_seeded_with_nested_groups_and_special_accounts(lab: dict[str, Any]) -> None:
    settings = load_settings(Path(lab["broker"]["config"]))
    use_krb5_conf(settings.kerberos)
    assert settings.directory is not None
    conn, _info = connect(settings.directory)
    try:
        chain = "1.2.840.113556.1.4.1941"
        conn.search(
            lab["base_dn"],
            f"(memberOf:{chain}:=CN=hpc-admins,OU=Groups,OU=Cluster,{lab['base_dn']})",
            attributes=["sAMAccountName"],
        )
        transitive = sorted(str(e["sAMAccountName"]) for e in conn.entries)
        assert transitive == [
            "alice",
            "carol",
            "dave",
            "dora",
            "erin",
            "evan",
            "gpu-admins",
            "o'brien(ops)",
            "ops (night) 'shift'",
            "rupert",
            "storage-admins",
            "zoë",
        ]
        conn.search(
            lab["base_dn"],
            "(|(sAMAccountName=dora)(sAMAccountName=evan)(sAMAccountName=lena)"
            "(sAMAccountName=xavier))",
            attributes=[
                "sAMAccountName",
                "userAccountControl",
                "accountExpires",
                "lockoutTime",
                "uidNumber",
            ],
        )
        users = {str(e["sAMAccountName"]): e.entry_attributes_as_dict for e in conn.entries}
        assert int(users["dora"]["userAccountControl"][0]) & 0x2
        assert 0 < int(users["evan"]["accountExpires"][0]) < 0x7FFFFFFFFFFFFFFF
        assert int(users["lena"]["lockoutTime"][0]) > 0
        assert not users["xavier"].get("uidNumber")
        conn.search(
            lab["base_dn"], "(sAMAccountName=svc-slurm)", attributes=["servicePrincipalName"]
        )
        assert list(conn.entries[0]["servicePrincipalName"]) == ["slurm/mgmt01.hpc.test"]
    finally:
        conn.unbind()
