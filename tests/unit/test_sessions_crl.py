"""Tunnel certificate revocation: serials stored at issue, `node remove` revokes them, the
CRL the log server's stunnel reads lists them, bootstrap never keeps a revoked one."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta

import pytest

from broker.app import App
from broker.fleet import inventory
from broker.provision.nodes import NodeService
from broker.sessions import carrier, certs, tls
from broker.sessions.setup import Leaf, ca_paths, crl_path, node_tunnel, with_store
from broker.store.files import write_private_file

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
NODE_LEAF = Leaf(carrier.NODE_CERT, carrier.NODE_KEY, "gpu01", ("gpu01",), False, True)


class Pool:
    def __init__(self) -> None:
        self.forgotten: list[str] = []

    def forget(self, name: str) -> None:
        self.forgotten.append(name)


def _no_policy() -> object:
    raise AssertionError("removing a node needs no policy")


def nodes(app: App, pool: Pool) -> NodeService:
    return NodeService(
        store=app.ready_store(),
        pool=lambda: pool,  # type: ignore[arg-type,return-value]
        settings=app.settings,
        owner=None,
        policy=_no_policy,  # type: ignore[arg-type]
        grant_key_file=lambda: "unused",
        drop_ins=app.drop_ins,
    )


def with_ca(app: App) -> tls.Issued:
    ca = tls.new_ca(NOW)
    cert, key = ca_paths(app.settings)
    write_private_file(key, ca.key_pem, None, 0o600)
    write_private_file(cert, ca.cert_pem, None, 0o644)
    return ca


def issue_recorded(app: App, ca: tls.Issued, node: str = "gpu01") -> tls.Issued:
    """What bootstrap does for a node with no good certificate: issue, store the serial."""
    issued = tls.issue(ca, node, [node], server=False, now=NOW)
    with app.ready_store().transaction() as conn:
        certs.record_issued(conn, node, carrier.NODE_CERT, issued.cert_pem, "unix:test", NOW)
    return issued


def crl_serials(app: App, ca: tls.Issued) -> frozenset[int]:
    view = tls.read_crl(ca.cert_pem, crl_path(app.settings).read_bytes())
    assert view is not None
    return view.serials


def audit(app: App, action: str) -> list[tuple[str, str]]:
    rows = app.ready_store().conn.execute(
        "SELECT target, details FROM audit_events WHERE action = ? ORDER BY seq", (action,)
    )
    return [(str(r[0]), str(r[1])) for r in rows]


def test_the_crl_lists_revoked_serials_signed_by_the_session_ca_for_a_week() -> None:
    ca = tls.new_ca(NOW)
    gone = tls.issue(ca, "gpu01", ["gpu01"], server=False, now=NOW)
    serial = tls.serial_of(gone.cert_pem)
    view = tls.read_crl(ca.cert_pem, tls.build_crl(ca, [(serial, NOW)], NOW))
    assert view is not None
    assert view.serials == {serial}
    assert view.next_update == NOW + timedelta(days=tls.CRL_DAYS)


def test_a_crl_signed_by_another_ca_or_not_a_crl_is_not_taken() -> None:
    ca, other = tls.new_ca(NOW), tls.new_ca(NOW)
    assert tls.read_crl(ca.cert_pem, tls.build_crl(other, [(12345, NOW)], NOW)) is None
    assert (
        tls.read_crl(ca.cert_pem, b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
        is None
    )
    assert tls.read_crl(ca.cert_pem, ca.cert_pem) is None


def test_node_remove_revokes_the_nodes_certificate_and_writes_the_crl(broker_app: App) -> None:
    ca = with_ca(broker_app)
    inventory.add(broker_app.ready_store(), "gpu01", "10.0.0.1", 22, "unix:test")
    kept = issue_recorded(broker_app, ca, "gpu02")  # another node's stays valid
    issued = issue_recorded(broker_app, ca)
    serial = tls.serial_of(issued.cert_pem)
    pool = Pool()
    removed = nodes(broker_app, pool).remove("gpu01", "unix:test", NOW)
    assert removed.revoked == [f"{serial:x}"]
    assert pool.forgotten == ["gpu01"]
    assert crl_serials(broker_app, ca) == {serial}
    assert tls.serial_of(kept.cert_pem) not in crl_serials(broker_app, ca)
    info = os.stat(crl_path(broker_app.settings))
    assert stat.S_IMODE(info.st_mode) == 0o644
    events = audit(broker_app, "session.cert.revoke")
    assert len(events) == 1 and events[0][0] == "node:gpu01"
    assert f'"serial":"{serial:x}"' in events[0][1] and "node-removed" in events[0][1]


def test_a_re_enrolled_node_gets_a_new_serial_and_the_crl_keeps_the_old(broker_app: App) -> None:
    ca = with_ca(broker_app)
    inventory.add(broker_app.ready_store(), "gpu01", "10.0.0.1", 22, "unix:test")
    old = issue_recorded(broker_app, ca)
    nodes(broker_app, Pool()).remove("gpu01", "unix:test", NOW)
    # Bootstrap again: the certificate the node still holds is ours and names it, but it
    # is revoked, so it is replaced.
    current = certs.current(broker_app.ready_store().conn, "gpu01")
    recorded: list[bytes] = []
    tunnel = with_store(
        node_tunnel(broker_app.settings, ca, "gpu01", "10.0.0.1", None, NOW),
        current,
        lambda _leaf, pem: recorded.append(pem),
        lambda _leaf, _serial: None,
    )
    assert not tunnel.cert_ok(NODE_LEAF, old.cert_pem)
    new = issue_recorded(broker_app, ca)
    assert tls.serial_of(new.cert_pem) != tls.serial_of(old.cert_pem)
    assert certs.current(broker_app.ready_store().conn, "gpu01") == {tls.serial_of(new.cert_pem)}
    assert (
        certs.TunnelCerts(broker_app.settings, broker_app.ready_store()).refresh_crl(NOW) is False
    )
    assert crl_serials(broker_app, ca) == {tls.serial_of(old.cert_pem)}


def test_bootstrap_replaces_a_certificate_not_on_record_and_revokes_it(broker_app: App) -> None:
    ca = with_ca(broker_app)
    store = broker_app.ready_store()
    unknown = tls.issue(ca, "gpu01", ["gpu01"], server=False, now=NOW)  # before serials were kept

    def record(leaf: Leaf, pem: bytes) -> None:
        with store.transaction() as conn:
            certs.record_issued(conn, "gpu01", leaf.cert, pem, "unix:test", NOW)

    def revoke(leaf: Leaf, serial: int) -> None:
        with store.transaction() as conn:
            certs.revoke_replaced(conn, "gpu01", leaf.cert, serial, "unix:test", NOW)

    base = node_tunnel(broker_app.settings, ca, "gpu01", "10.0.0.1", None, NOW)
    tunnel = with_store(base, certs.current(store.conn, "gpu01"), record, revoke)
    assert not tunnel.cert_ok(NODE_LEAF, unknown.cert_pem)
    new = tunnel.replace(NODE_LEAF, unknown.cert_pem)
    fresh = with_store(base, certs.current(store.conn, "gpu01"), record, revoke)
    assert fresh.cert_ok(NODE_LEAF, new.cert_pem)
    assert [s for s, _at in certs.revoked(store.conn)] == [tls.serial_of(unknown.cert_pem)]
    assert "superseded" in audit(broker_app, "session.cert.revoke")[0][1]
    # A certificate from some other CA is not ours to list.
    stranger = tls.issue(tls.new_ca(NOW), "gpu01", ["gpu01"], server=False, now=NOW)
    fresh.replace(NODE_LEAF, stranger.cert_pem)
    assert len(certs.revoked(store.conn)) == 1


def test_the_crl_is_rewritten_a_day_on_or_when_it_disagrees_with_the_store(
    broker_app: App,
) -> None:
    service = certs.TunnelCerts(broker_app.settings, broker_app.ready_store())
    assert service.refresh_crl(NOW) is False  # no session CA: nothing was ever issued
    ca = with_ca(broker_app)
    assert service.refresh_crl(NOW) is True  # no CRL yet
    assert service.refresh_crl(NOW + timedelta(hours=23)) is False
    assert service.refresh_crl(NOW + timedelta(days=1)) is True
    later = NOW + timedelta(days=1, hours=1)
    issued = issue_recorded(broker_app, ca)
    with broker_app.ready_store().transaction() as conn:
        certs.revoke_node(conn, "gpu01", "unix:test", later)
    assert service.refresh_crl(later) is True
    assert crl_serials(broker_app, ca) == {tls.serial_of(issued.cert_pem)}
    crl_path(broker_app.settings).write_bytes(b"not a crl")
    assert service.refresh_crl(later) is True


def test_a_serial_that_is_not_lower_case_hex_is_refused_by_the_store(broker_app: App) -> None:
    import sqlite3

    with pytest.raises(sqlite3.IntegrityError), broker_app.ready_store().transaction() as conn:
        conn.execute(
            "INSERT INTO tunnel_certs (serial, node, path) VALUES (?, ?, ?)",
            ("1f'; DROP", "gpu01", carrier.NODE_CERT),
        )


def test_a_node_showing_another_nodes_certificate_cannot_get_it_revoked(broker_app: App) -> None:
    """Review finding: every node of a relay zone is shown the relay's certificate; copied
    into its own tunnel's file, bootstrap revoked it and cut the relay's zone off."""
    ca = with_ca(broker_app)
    store = broker_app.ready_store()
    relays = issue_recorded(broker_app, ca, "login01")

    def revoke(leaf: Leaf, serial: int) -> None:
        with store.transaction() as conn:
            certs.revoke_replaced(conn, "gpu01", leaf.cert, serial, "unix:test", NOW)

    def record(leaf: Leaf, pem: bytes) -> None:
        with store.transaction() as conn:
            certs.record_issued(conn, "gpu01", leaf.cert, pem, "unix:test", NOW)

    base = node_tunnel(broker_app.settings, ca, "gpu01", "10.0.0.1", None, NOW)
    tunnel = with_store(base, certs.current(store.conn, "gpu01"), record, revoke)
    tunnel.replace(NODE_LEAF, relays.cert_pem)  # another node's name: not revoked at all
    assert certs.revoked(store.conn) == []
    # The same serial offered under this node's name (a forged leaf is not possible, but
    # the store must refuse on its own): refused and audited, never revoked.
    revoke(NODE_LEAF, tls.serial_of(relays.cert_pem))
    assert certs.revoked(store.conn) == []
    assert certs.current(store.conn, "login01") == {tls.serial_of(relays.cert_pem)}
    [(target, details)] = audit(broker_app, "session.cert.foreign")
    assert target == "node:gpu01" and '"issued_to":"login01"' in details
