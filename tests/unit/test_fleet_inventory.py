"""The node inventory in a real store: validation, pinning, known_hosts, targets, audit."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

from broker.app import App
from broker.core.errors import RefusedError, UsageError
from broker.fleet import hostkeys, inventory
from broker.fleet.inventory import Observation
from broker.fleet.ssh import NodeTarget
from tests.unit.test_fleet_hostkeys import keygen


def actions(app: App) -> list[str]:
    rows = app.ready_store().conn.execute("SELECT action FROM audit_events ORDER BY seq")
    return [str(r[0]) for r in rows if str(r[0]).startswith("node.")]


def pin(app: App, name: str, key: tuple[str, str, str], known_hosts: Path) -> None:
    kind, b64, fp = key
    record = inventory.get(app.ready_store(), name)
    assert record is not None
    inventory.pin(
        app.ready_store(),
        name,
        kind,
        b64,
        fp,
        "unix:test",
        known_hosts=known_hosts,
        owner=app.owner,
        expect_previous=record.fingerprint,
    )


@pytest.mark.parametrize(
    "name",
    ["", "GPU01", "gpu01;id", "-gpu", "gpu-", "a" * 64, "gpu_01", "gpü01", "123", "gpu01\n",
     "../x", "gpu 01", "gpu.01"],
)  # fmt: skip
def test_hostile_names_are_refused(broker_app: App, name: str) -> None:
    with pytest.raises(UsageError, match="bad node name"):
        inventory.add(broker_app.ready_store(), name, "10.0.0.1", 22, "unix:test")
    assert inventory.list_nodes(broker_app.ready_store()) == []


@pytest.mark.parametrize(
    "address",
    ["", "host;id", "a b", "$(id)", "-oProxyCommand=x", "1.2.3.4.5", "256.1.1.1", "01.2.3.4",
     "fe80::1%eth0", "[::1]", "host..x", "-host", "x" * 254, "host_1", "10.0.0.1\n", "1.2.3",
     "gpu01:22", "::g"],
)  # fmt: skip
def test_hostile_addresses_are_refused(broker_app: App, address: str) -> None:
    with pytest.raises(UsageError, match="bad node address"):
        inventory.add(broker_app.ready_store(), "gpu01", address, 22, "unix:test")


def test_addresses_are_normalised_and_ports_checked(broker_app: App) -> None:
    store = broker_app.ready_store()
    assert inventory.add(store, "gpu01", "GPU01.Cluster.Example", 22, "unix:t").address == (
        "gpu01.cluster.example"
    )
    assert inventory.add(store, "gpu02", "2001:DB8:0::1", 2222, "unix:t").address == "2001:db8::1"
    assert inventory.add(store, "gpu03", "10.1.2.3", 22, "unix:t").address == "10.1.2.3"
    with pytest.raises(UsageError, match="bad SSH port"):
        inventory.add(store, "gpu04", "10.1.2.4", 0, "unix:t")
    assert inventory.split_host_port("gpu01:2222", None) == ("gpu01", 2222)
    assert inventory.split_host_port("[fd00::12]:2200", 22) == ("fd00::12", 2200)
    assert inventory.split_host_port("fd00::12", 22) == ("fd00::12", 22)
    assert inventory.split_host_port("10.0.0.1", None) == ("10.0.0.1", None)
    with pytest.raises(UsageError):
        inventory.split_host_port("gpu01:22x", None)


def test_duplicates_are_refused_with_the_fix(broker_app: App) -> None:
    store = broker_app.ready_store()
    inventory.add(store, "gpu01", "10.0.0.1", 22, "unix:test")
    with pytest.raises(RefusedError, match="already in the inventory") as info:
        inventory.add(store, "gpu01", "10.0.0.2", 22, "unix:test")
    assert "broker node remove gpu01" in str(info.value)
    with pytest.raises(RefusedError, match="already node gpu01"):
        inventory.add(store, "gpu02", "10.0.0.1", 22, "unix:test")
    inventory.add(store, "gpu02", "10.0.0.1", 2222, "unix:test")  # another sshd, same host
    assert actions(broker_app) == ["node.add", "node.add"]


def test_pin_writes_known_hosts_from_every_pinned_row(broker_app: App, tmp_path: Path) -> None:
    store = broker_app.ready_store()
    known = tmp_path / "state" / "known_hosts"
    first, second = keygen(tmp_path, "ed25519", "a"), keygen(tmp_path, "ecdsa", "b")
    inventory.add(store, "gpu01", "10.0.0.1", 22, "unix:test")
    inventory.add(store, "gpu02", "10.0.0.2", 2222, "unix:test")
    inventory.add(store, "gpu03", "10.0.0.3", 22, "unix:test")
    pin(broker_app, "gpu01", first, known)
    pin(broker_app, "gpu02", second, known)
    assert known.read_text() == (
        f"10.0.0.1 {first[0]} {first[1]}\n[10.0.0.2]:2222 {second[0]} {second[1]}\n"
    )
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    # What ssh itself and paramiko (the pool) look up in that file.
    found = subprocess.run(
        ["ssh-keygen", "-F", "[10.0.0.2]:2222", "-f", str(known)], capture_output=True, text=True
    )
    assert found.returncode == 0 and second[1] in found.stdout
    loaded = paramiko.HostKeys(str(known))
    assert loaded.lookup("10.0.0.1") is not None and loaded.lookup("10.0.0.3") is None
    record = inventory.get(store, "gpu02")
    assert record is not None and record.fingerprint == second[2] and record.enrolled_at
    assert actions(broker_app) == ["node.add"] * 3 + ["node.enroll"] * 2


def test_pin_refuses_a_wrong_fingerprint_or_a_race(broker_app: App, tmp_path: Path) -> None:
    store = broker_app.ready_store()
    known = tmp_path / "known_hosts"
    kind, b64, fp = keygen(tmp_path, "ed25519", "a")
    other = keygen(tmp_path, "ed25519", "b")
    inventory.add(store, "gpu01", "10.0.0.1", 22, "unix:test")
    with pytest.raises(RefusedError, match="does not belong"):
        inventory.pin(store, "gpu01", kind, b64, other[2], "unix:t", known_hosts=known, owner=None)
    pin(broker_app, "gpu01", (kind, b64, fp), known)
    with pytest.raises(RefusedError, match="changed while enrolling"):
        inventory.pin(
            store, "gpu01", *other, "unix:t", known_hosts=known, owner=None, expect_previous=None
        )
    assert hostkeys.known_keys(known.read_text(), "gpu01", "10.0.0.1", 22)[0][0].fingerprint == fp


def test_targets_refuse_unknown_and_unpinned_nodes_by_name(broker_app: App, tmp_path: Path) -> None:
    store = broker_app.ready_store()
    for i in (1, 2, 3):
        inventory.add(store, f"gpu0{i}", f"10.0.0.{i}", 22, "unix:test")
    pin(broker_app, "gpu01", keygen(tmp_path, "ed25519"), tmp_path / "known_hosts")
    assert inventory.targets(store, ["gpu01"]) == [NodeTarget("gpu01", "10.0.0.1", 22)]
    with pytest.raises(RefusedError, match=r"not in the inventory: gpu\[05-06\]") as info:
        inventory.targets(store, ["gpu01", "gpu05", "gpu06"])
    assert "broker node add" in str(info.value)
    with pytest.raises(RefusedError, match=r"not pinned yet: gpu\[02-03\]") as info:
        inventory.targets(store, ["gpu01", "gpu02", "gpu03"])
    assert "broker node enroll" in str(info.value)
    assert inventory.targets_known(store, ["gpu03", "gpu01", "gpu09"]) == [
        NodeTarget("gpu01", "10.0.0.1", 22)
    ]
    assert inventory.enrolled_names(store) == ["gpu01"]


def test_remove_drops_the_key_and_is_refused_while_a_grant_is_there(
    broker_app: App, tmp_path: Path
) -> None:
    store = broker_app.ready_store()
    known = tmp_path / "known_hosts"
    inventory.add(store, "gpu01", "10.0.0.1", 22, "unix:test")
    inventory.add(store, "gpu02", "10.0.0.2", 22, "unix:test")
    pin(broker_app, "gpu01", keygen(tmp_path, "ed25519", "a"), known)
    pin(broker_app, "gpu02", keygen(tmp_path, "ed25519", "b"), known)
    with store.transaction() as conn:
        conn.execute(
            "INSERT INTO grants VALUES ('g0123456789abcdef', 'alice', 'S-1', 'gpu-root', 'root',"
            " 'ALL', '[]', 'gpu02', 't0', 't1', 'r', '', 'x', 1, 0, 1, NULL, 't0', 'unix:t',"
            " 'active', NULL, NULL, NULL)"
        )
        conn.execute(
            "INSERT INTO grant_nodes (grant_id, node, state) VALUES ('g0123456789abcdef',"
            " 'gpu02', 'live')"
        )
    with pytest.raises(RefusedError, match="still has grant g0123456789abcdef"):
        inventory.remove(store, "gpu02", "unix:test", known_hosts=known, owner=None)
    inventory.remove(store, "gpu01", "unix:test", known_hosts=known, owner=None)
    assert known.read_text().startswith("10.0.0.2 ") and "10.0.0.1" not in known.read_text()
    with pytest.raises(RefusedError, match="not in the inventory"):
        inventory.remove(store, "gpu01", "unix:test", known_hosts=known, owner=None)
    assert actions(broker_app)[-1] == "node.remove"


def test_status_changes_are_audited_bookkeeping_is_not(broker_app: App) -> None:
    store = broker_app.ready_store()
    inventory.add(store, "gpu01", "10.0.0.1", 22, "unix:test")
    seen = Observation("gpu01", "1", "sudo", "1.9.13p3", True, 0.25)
    inventory.record_status(store, [seen], "unix:test")
    inventory.record_status(store, [seen], "unix:test")
    inventory.record_status(store, [Observation("gpu01", "1", "sudo", "1.9.13p3", False, 1.5)], "x")
    record = inventory.get(store, "gpu01")
    assert record is not None and record.io_logging is False and record.last_skew_s == 1.5
    assert record.last_seen_at is not None
    assert actions(broker_app) == ["node.add", "node.observe", "node.observe"]


def test_bootstrap_is_audited_when_something_changed(broker_app: App) -> None:
    store = broker_app.ready_store()
    inventory.add(store, "gpu01", "10.0.0.1", 22, "unix:test")
    inventory.mark_bootstrapped(store, "gpu01", [], "unix:t", ok=False, error="down")
    assert actions(broker_app) == ["node.add"]  # nothing happened on the node
    inventory.mark_bootstrapped(store, "gpu01", ["installed /etc/broker/node.conf"], "unix:t")
    inventory.mark_bootstrapped(store, "gpu01", [], "unix:t")
    record = inventory.get(store, "gpu01")
    assert record is not None and record.bootstrapped_at is not None
    assert actions(broker_app) == ["node.add", "node.bootstrap"]


def test_a_key_edited_in_the_database_stops_known_hosts_rewrites(
    broker_app: App, tmp_path: Path
) -> None:
    store = broker_app.ready_store()
    known = tmp_path / "known_hosts"
    inventory.add(store, "gpu01", "10.0.0.1", 22, "unix:test")
    inventory.add(store, "gpu02", "10.0.0.2", 22, "unix:test")
    pin(broker_app, "gpu01", keygen(tmp_path, "ed25519", "a"), known)
    with store.transaction() as conn:
        conn.execute("UPDATE nodes SET host_key = 'AAAA;rm' WHERE name = 'gpu01'")
    before = known.read_text()
    with pytest.raises(RefusedError):
        pin(broker_app, "gpu02", keygen(tmp_path, "ed25519", "b"), known)
    assert known.read_text() == before
    record = inventory.get(store, "gpu02")
    assert record is not None and record.fingerprint is None  # rolled back with the file write
