"""The broker's own adapters against the lab: LDAPS + GSSAPI with its keytab, pinned SSH to nodes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from broker.config.kerberos import use_krb5_conf
from broker.config.loader import load_settings
from broker.config.settings import DirectorySection
from broker.core.errors import UnavailableError
from broker.directory.connection import connect
from broker.fleet.runner import SshRunner
from broker.fleet.ssh import NodeTarget
from tests.helpers import run_broker

pytestmark = pytest.mark.lab


def directory_of(lab: dict[str, Any], **changes: Any) -> DirectorySection:
    settings = load_settings(Path(lab["broker"]["config"]))
    use_krb5_conf(settings.kerberos)  # as every broker entry point does
    assert settings.directory is not None
    return settings.directory.model_copy(update=changes)


def test_gssapi_bind_over_ldaps_with_the_broker_keytab(lab: dict[str, Any]) -> None:
    conn, info = connect(directory_of(lab))
    try:
        assert info.identity == "CN=svc-broker,OU=Service Accounts,OU=Cluster,DC=hpc,DC=test"
        assert info.tls.startswith("TLSv1.")
        assert conn.search(lab["base_dn"], "(sAMAccountName=alice)", attributes=["uidNumber"])
        assert int(conn.entries[0]["uidNumber"].value) == lab["users"]["alice"]["uid"]
    finally:
        conn.unbind()


def test_directory_ping_cli_reports_the_bound_identity(lab: dict[str, Any]) -> None:
    result = run_broker("directory", "ping", "--json", config=Path(lab["broker"]["config"]))
    assert result.returncode == 0, result.stderr
    [status] = json.loads(result.stdout)
    assert status["ok"] and "svc-broker" in status["detail"].lower()


def test_failover_skips_a_dead_dc(lab: dict[str, Any]) -> None:
    cfg = directory_of(lab, uris=["ldaps://127.0.0.1:1", lab["dc"]["ldaps_uri"]])
    conn, info = connect(cfg)
    conn.unbind()
    assert info.uri == lab["dc"]["ldaps_uri"]


def test_an_untrusted_ca_is_refused_with_the_fix(lab: dict[str, Any], tmp_path: Path) -> None:
    other_ca = tmp_path / "other-ca.pem"
    shutil.copy("/etc/ssl/certs/ca-certificates.crt", other_ca)
    with pytest.raises(UnavailableError) as info:
        connect(directory_of(lab, ca_file=other_ca))
    assert "not trusted by" in str(info.value) and "directory.ca_file" in str(info.value)


def test_a_keytab_for_another_principal_fails_clearly(lab: dict[str, Any], tmp_path: Path) -> None:
    empty = tmp_path / "empty.keytab"
    empty.write_bytes(b"\x05\x02")
    with pytest.raises(UnavailableError) as info:
        connect(directory_of(lab, keytab=empty))
    message = str(info.value)
    assert lab["dc"]["ldaps_uri"] in message and "svc-broker@HPC.TEST" in message


def runner(lab: dict[str, Any], known_hosts: Path | None = None) -> SshRunner:
    settings = load_settings(Path(lab["broker"]["config"]))
    return SshRunner(
        key_path=settings.ssh_key,
        known_hosts=known_hosts or settings.known_hosts,
        user="root",
        timeout=settings.ssh.connect_timeout,
    )


def test_a_command_runs_on_every_node_in_its_own_namespace(lab: dict[str, Any]) -> None:
    targets = [NodeTarget(n["name"], n["address"], n["port"]) for n in lab["nodes"]]
    results = runner(lab).run_many(targets, ["hostname"])
    assert [r.error for r in results] == [None] * len(targets)
    assert [r.stdout.strip() for r in results] == [n["name"] for n in lab["nodes"]]


def test_argv_is_quoted_for_the_remote_shell(lab: dict[str, Any]) -> None:
    node = lab["nodes"][0]
    result = runner(lab).run(
        NodeTarget(node["name"], node["address"]), ["echo", "a b; id", "$(id)"]
    )
    assert result.ok and result.stdout == "a b; id $(id)\n"


def test_an_unpinned_host_key_is_refused(lab: dict[str, Any], tmp_path: Path) -> None:
    node = lab["nodes"][0]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    result = runner(lab, empty).run(NodeTarget(node["name"], node["address"]), ["true"])
    assert not result.ok and "not pinned" in (result.error or "")


def test_a_changed_host_key_is_refused(lab: dict[str, Any], tmp_path: Path) -> None:
    first, second = lab["nodes"][0], lab["nodes"][1]
    real = Path(lab["broker"]["known_hosts"]).read_text().splitlines()
    second_key = next(
        line.split(None, 1)[1]
        for line in real
        if line.split()[0].split(",")[0] in (second["name"], second["address"])
    )
    swapped = tmp_path / "known_hosts"
    swapped.write_text(f"{first['address']} {second_key}\n")
    result = runner(lab, swapped).run(NodeTarget(first["name"], first["address"]), ["true"])
    assert not result.ok and "host key changed" in (result.error or "")
