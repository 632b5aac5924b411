"""Tunnel certificate revocation end to end: `broker node remove` puts the node's recording
tunnel certificate on the session CA's CRL, the log server's stunnel (reloaded on the CRL's
change, as broker-logsrv-crl.path does) refuses it, and the node re-added and bootstrapped
gets a new certificate that works while the CRL keeps the old serial.

gpu02 is removed and restored within the test, so later modules find it as before.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from broker.sessions import tls
from tests.lab.conftest import cli

pytestmark = pytest.mark.lab

NODE = "gpu02"


def root() -> Path:
    return Path(os.environ.get("BROKER_LAB_ROOT", "/var/lib/broker-lab"))


def node_of(lab: dict[str, Any]) -> dict[str, Any]:
    return next(n for n in lab["nodes"] if n["name"] == NODE)


def node_cert(lab: dict[str, Any]) -> bytes:
    return (Path(node_of(lab)["dir"]) / "etc" / "broker" / "logsrv" / "node.pem").read_bytes()


def handshake(lab: dict[str, Any], lab_module: ModuleType) -> str:
    """TLS from the node to the log server's stunnel with the node's own certificate and
    key; what openssl said (a refused client certificate shows as an alert)."""
    command = (
        "sleep 2 | timeout 10 openssl s_client -quiet -verify_return_error"
        f" -connect {lab_module.BROKER_ADDR}:{lab_module.TUNNEL_PORT}"
        " -cert /etc/broker/logsrv/node.pem -key /etc/broker/logsrv/node.key"
        " -CAfile /etc/broker/logsrv/ca.pem 2>&1; echo exit=$?"
    )
    # Inside the node's namespaces, not over SSH: a removed node's host key is unpinned.
    result = subprocess.run(
        [*lab_module.in_node(node_of(lab)), "sh", "-c", command],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return result.stdout + result.stderr


def refused(said: str) -> bool:
    assert "exit=" in said, f"openssl did not run in the node: {said}"
    return "alert" in said.lower()


def crl_serials(lab: dict[str, Any]) -> frozenset[int]:
    keys = Path(lab["broker"]["state_dir"]) / "keys"
    view = tls.read_crl(
        (keys / "session-ca.pem").read_bytes(), (keys / "session-ca.crl").read_bytes()
    )
    assert view is not None, "the CRL is not one the session CA signed"
    return view.serials


def wait_refused(lab: dict[str, Any], lab_module: ModuleType) -> str:
    deadline = time.monotonic() + 20
    said = handshake(lab, lab_module)
    while not refused(said) and time.monotonic() < deadline:
        time.sleep(1)
        said = handshake(lab, lab_module)
    return said


def restore(lab: dict[str, Any], lab_module: ModuleType) -> dict[str, Any]:
    """Add, pin and bootstrap the node again, and restart its tunnel (the lab's systemd)."""
    node = node_of(lab)
    added = cli(lab, "node", "add", NODE, "--address", node["address"])
    assert added.returncode == 0, added.stderr
    pinned = cli(lab, "node", "enroll", NODE, "--fingerprint", node["host_key_fingerprint"])
    assert pinned.returncode == 0, pinned.stderr
    booted = cli(lab, "node", "bootstrap", NODE, "--json")
    assert booted.returncode == 0, booted.stderr + booted.stdout
    result = json.loads(booted.stdout)[0]
    lab_module.restart_tunnel(root(), NODE)
    return dict(result)


def test_a_removed_node_is_refused_by_the_log_server_and_a_re_enrolled_one_is_not(
    lab: dict[str, Any], lab_module: ModuleType
) -> None:
    before = handshake(lab, lab_module)
    assert not refused(before), f"the node's tunnel certificate should work first: {before}"
    old = tls.serial_of(node_cert(lab))

    removed = cli(lab, "node", "remove", NODE)
    assert removed.returncode == 0, removed.stderr
    try:
        said = re.search(r"revoked its tunnel certificate, serial ([0-9a-f]+)", removed.stdout)
        assert said is not None, removed.stdout
        assert int(said.group(1), 16) == old
        assert old in crl_serials(lab)
        after = wait_refused(lab, lab_module)
        assert refused(after), f"the revoked certificate still opens the tunnel: {after}"
        log = (root() / "broker" / "stunnel.log").read_text(errors="replace")
        assert "certificate revoked" in log
    finally:
        result = restore(lab, lab_module)

    assert result["ok"], result
    assert "issued /etc/broker/logsrv/node.pem" in result["changed"]
    new = tls.serial_of(node_cert(lab))
    assert new != old
    assert old in crl_serials(lab) and new not in crl_serials(lab)
    again = handshake(lab, lab_module)
    assert not refused(again), f"the new certificate should open the tunnel: {again}"
