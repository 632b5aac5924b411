"""The recording carrier's configuration text, the session CA, and `broker sessions setup`."""

from __future__ import annotations

import configparser
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509

from broker.config.loader import load_settings
from broker.config.settings import Settings
from broker.core.errors import RefusedError, UnavailableError, UsageError
from broker.sessions import carrier, setup, tls
from tests.helpers import write_config

NOW = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def settings_for(tmp_path: Path, sessions: str = "") -> Settings:
    extra = (
        "[sessions]\n"
        f'conf_dir = "{tmp_path / "etc-sessions"}"\n'
        'tunnel_connect = "logs.cluster.example:30344"\n' + sessions
    )
    return load_settings(write_config(tmp_path, extra))


def ini(text: str) -> configparser.RawConfigParser:
    """The file as an INI reader sees it; a key twice in a section is an error."""
    parser = configparser.RawConfigParser(
        strict=True, comment_prefixes=("#", ";"), empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string("[global]\n" + text)
    return parser


# --- sudo_logsrvd ---------------------------------------------------------------------------------


def test_logsrvd_stores_each_session_under_its_seq_in_the_configured_store(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, 'store_dir = "/srv/recordings"\n')
    text = carrier.logsrvd_conf(settings, "broker", Path("/var/lib/broker/sessions/events.json"))
    conf = ini(text)
    assert conf["iolog"]["iolog_dir"] == "/srv/recordings"
    # Nothing a node sends (host, user, command) becomes part of a path in the store.
    assert conf["iolog"]["iolog_file"] == "%{seq}"
    assert conf["iolog"]["iolog_user"] == "broker"
    assert conf["iolog"]["iolog_mode"] == "0600"
    assert conf["iolog"]["iolog_compress"] == "false"  # the indexer reads plain files
    assert conf["iolog"]["log_passwords"] == "false"
    assert conf["server"]["listen_address"] == "127.0.0.1:30343"  # only stunnel reaches it
    assert conf["logfile"]["path"] == "/var/lib/broker/sessions/events.json"
    assert "%{" not in text.replace("%{seq}", "")


def test_logsrvd_uses_the_state_dir_store_by_default(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    conf = ini(carrier.logsrvd_conf(settings, "root", tmp_path / "events.json"))
    assert conf["iolog"]["iolog_dir"] == str(tmp_path / "state" / "sessions" / "iolog")


@pytest.mark.parametrize(
    "store", ["/srv/rec ordings", "/srv/rec\\nx", "/srv/%{user}", "/srv/../etc"]
)
def test_a_store_path_that_could_change_the_file_is_refused(tmp_path: Path, store: str) -> None:
    settings = settings_for(tmp_path, f'store_dir = "{store}"\n')
    with pytest.raises(ValueError, match="cannot be written into a carrier configuration"):
        carrier.logsrvd_conf(settings, "broker", Path("/var/lib/broker/events.json"))


@pytest.mark.parametrize("user", ["Broker", "broker\n[iolog]", "", "a b", "x" * 33])
def test_a_bad_iolog_user_is_refused(tmp_path: Path, user: str) -> None:
    with pytest.raises(ValueError, match="iolog_user"):
        carrier.logsrvd_conf(settings_for(tmp_path), user, Path("/var/lib/broker/events.json"))


# --- stunnel --------------------------------------------------------------------------------------


def test_the_server_tunnel_admits_only_clients_with_a_certificate_from_the_session_ca(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path, 'tunnel_listen = "10.0.0.1:30344"\n')
    paths = carrier.ServerPaths(tmp_path / "etc-sessions")
    crl = tmp_path / "state" / "keys" / "session-ca.crl"
    service = ini(carrier.stunnel_server_conf(settings, paths, crl))["broker-logsrv"]
    assert service["requireCert"] == "yes"
    assert service["verifyChain"] == "yes"
    assert service["CAfile"] == str(paths.ca)
    assert service["CRLfile"] == str(crl)
    assert (service["cert"], service["key"]) == (str(paths.cert), str(paths.key))
    assert service["accept"] == "10.0.0.1:30344"
    assert service["connect"] == "127.0.0.1:30343"
    assert service["sslVersionMin"] == "TLSv1.2"
    assert "client" not in service


def test_a_node_tunnel_checks_the_servers_name_with_checkhost_for_names() -> None:
    conf = ini(carrier.stunnel_node_conf(("127.0.0.1", 30343), [("logs.cluster.example", 30344)]))
    service = conf["broker-logsrv"]
    assert service["client"] == "yes"
    assert service["accept"] == "127.0.0.1:30343"
    assert service["connect"] == "logs.cluster.example:30344"
    assert service["verifyChain"] == "yes"
    assert service["checkHost"] == "logs.cluster.example"
    assert "checkIP" not in service
    assert (service["cert"], service["key"], service["CAfile"]) == (
        carrier.NODE_CERT, carrier.NODE_KEY, carrier.NODE_CA,
    )  # fmt: skip


def test_a_node_tunnel_checks_an_ip_address_with_checkip() -> None:
    service = ini(carrier.stunnel_node_conf(("10.0.0.7", 30343), [("10.0.0.1", 30344)]))[
        "broker-logsrv"
    ]
    assert service["checkIP"] == "10.0.0.1"
    assert "checkHost" not in service
    assert service["accept"] == "10.0.0.7:30343"


def test_where_a_node_listens_and_connects(tmp_path: Path) -> None:
    settings = settings_for(
        tmp_path, 'node_port = 4711\n[sessions.relays]\nsouth = "relay-s:30344"\n'
    )
    assert carrier.node_listen(settings, "10.0.0.7") == ("127.0.0.1", 4711)
    assert carrier.node_connects(settings, None) == [("logs.cluster.example", 30344)]
    assert carrier.node_connects(settings, "north") == [("logs.cluster.example", 30344)]
    assert carrier.node_connects(settings, "south") == [("relay-s", 30344)]
    shared = settings_for(tmp_path, 'node_listen = "node-address"\n')
    assert carrier.node_listen(shared, "10.0.0.7") == ("10.0.0.7", 30343)
    with pytest.raises(ValueError, match="the node's address"):
        carrier.node_listen(shared, "10.0.0.7\naccept = 0.0.0.0:1")


# --- the session CA -----------------------------------------------------------------------------


def test_a_node_certificate_from_the_ca_is_valid_for_its_name_only() -> None:
    ca = tls.new_ca(NOW)
    leaf = tls.issue(ca, "gpu01", ["gpu01"], server=False, now=NOW)
    assert tls.valid_leaf(ca.cert_pem, leaf.cert_pem, "gpu01", NOW + timedelta(days=30))
    assert not tls.valid_leaf(ca.cert_pem, leaf.cert_pem, "gpu02", NOW)
    other = tls.new_ca(NOW)
    assert not tls.valid_leaf(other.cert_pem, leaf.cert_pem, "gpu01", NOW)
    forged = tls.issue(other, "gpu01", ["gpu01"], server=False, now=NOW)
    assert not tls.valid_leaf(ca.cert_pem, forged.cert_pem, "gpu01", NOW)
    assert not tls.valid_leaf(ca.cert_pem, b"not a certificate", "gpu01", NOW)
    assert not tls.valid_leaf(ca.cert_pem, ca.cert_pem, "gpu01", NOW)
    # Valid only until its end.
    assert not tls.valid_leaf(
        ca.cert_pem, leaf.cert_pem, "gpu01", NOW + timedelta(days=tls.LEAF_DAYS)
    )


def test_certificates_name_hosts_and_addresses_and_carry_their_use() -> None:
    ca = tls.new_ca(NOW)
    server = tls.issue(ca, "10.0.0.1", ["10.0.0.1", "logs"], server=True, now=NOW)
    common, names, expires = tls.cert_names(server.cert_pem)
    assert (common, sorted(names)) == ("10.0.0.1", ["10.0.0.1", "logs"])
    assert expires == (NOW + timedelta(days=tls.LEAF_DAYS)).replace(microsecond=0)
    cert = x509.load_pem_x509_certificate(server.cert_pem)
    alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(a) for a in alt.get_values_for_type(x509.IPAddress)] == ["10.0.0.1"]
    usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]
    node = x509.load_pem_x509_certificate(tls.issue(ca, "n", ["n"], server=False, now=NOW).cert_pem)
    usage = node.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]
    assert b"PRIVATE KEY" in server.key_pem and b"ENCRYPTED" not in server.key_pem


def test_openssl_completes_mutual_tls_with_the_issued_certificates(tmp_path: Path) -> None:
    """What stunnel does at both ends (verifyChain, requireCert, checkHost), here with
    Python's OpenSSL over memory buffers."""
    now = datetime.now(UTC)
    ca = tls.new_ca(now)
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)

    def context(purpose: ssl.Purpose, leaf: tls.Issued, name: str) -> ssl.SSLContext:
        ctx = ssl.create_default_context(purpose, cafile=str(tmp_path / "ca.pem"))
        (tmp_path / f"{name}.pem").write_bytes(leaf.cert_pem)
        (tmp_path / f"{name}.key").write_bytes(leaf.key_pem)
        ctx.load_cert_chain(tmp_path / f"{name}.pem", tmp_path / f"{name}.key")
        ctx.verify_mode = ssl.CERT_REQUIRED
        return ctx

    def handshake(client_leaf: tls.Issued, server_name: str) -> None:
        server_leaf = tls.issue(ca, "logs.cluster.example", ["logs.cluster.example"],
                                server=True, now=now)  # fmt: skip
        server_ctx = context(ssl.Purpose.CLIENT_AUTH, server_leaf, "server")
        client_ctx = context(ssl.Purpose.SERVER_AUTH, client_leaf, "client")
        bios = [ssl.MemoryBIO() for _ in range(4)]
        server = server_ctx.wrap_bio(bios[0], bios[1], server_side=True)
        client = client_ctx.wrap_bio(bios[2], bios[3], server_hostname=server_name)
        for _ in range(10):
            done = 0
            for end, outgoing in ((client, bios[3]), (server, bios[1])):
                try:
                    end.do_handshake()
                    done += 1
                except ssl.SSLWantReadError:
                    pass
                (bios[0] if end is client else bios[2]).write(outgoing.read())
            if done == 2:
                return
        raise AssertionError("no handshake")

    node = tls.issue(ca, "gpu01", ["gpu01"], server=False, now=now)
    handshake(node, "logs.cluster.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(node, "other.cluster.example")  # checkHost
    stranger = tls.issue(tls.new_ca(now), "gpu01", ["gpu01"], server=False, now=now)
    with pytest.raises(ssl.SSLError, match="certificate verify failed"):
        handshake(stranger, "logs.cluster.example")  # requireCert + verifyChain


# --- `broker sessions setup` and a node's tunnel -----------------------------------------------


def test_setup_creates_the_ca_server_certificate_store_and_configs_once(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    changed = setup.setup(settings, NOW)
    cert, key = setup.ca_paths(settings)
    assert cert == tmp_path / "state" / "keys" / "session-ca.pem"
    assert key.stat().st_mode & 0o777 == 0o600
    assert changed[0] == f"created the session CA {cert}"
    paths = carrier.ServerPaths(settings.sessions.conf_dir)
    for path in (paths.ca, paths.cert, paths.key, paths.logsrvd_conf, paths.stunnel_conf):
        assert path.is_file()
    assert paths.key.stat().st_mode & 0o777 == 0o600
    ca = setup.load_ca(settings)
    assert paths.ca.read_bytes() == ca.cert_pem
    assert tls.valid_leaf(ca.cert_pem, paths.cert.read_bytes(), "logs.cluster.example", NOW)
    assert settings.session_store.is_dir()
    assert ini(paths.logsrvd_conf.read_text())["iolog"]["iolog_dir"] == str(settings.session_store)
    assert setup.setup(settings, NOW + timedelta(minutes=1)) == []


def test_setup_issues_a_new_server_certificate_when_the_name_changes(tmp_path: Path) -> None:
    setup.setup(settings_for(tmp_path), NOW)
    moved = load_settings(
        write_config(
            tmp_path,
            f'[sessions]\nconf_dir = "{tmp_path / "etc-sessions"}"\n'
            'tunnel_connect = "10.0.0.1:30344"\n',
        )
    )
    changed = setup.setup(moved, NOW)
    paths = carrier.ServerPaths(moved.sessions.conf_dir)
    assert any(c.startswith(f"issued {paths.cert} for 10.0.0.1") for c in changed)
    ca = setup.load_ca(moved)
    assert tls.valid_leaf(ca.cert_pem, paths.cert.read_bytes(), "10.0.0.1", NOW)


def test_without_setup_there_is_no_session_ca(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="no session CA"):
        setup.load_ca(settings_for(tmp_path))


def test_a_node_tunnel_carries_the_ca_its_config_and_a_certificate_when_needed(
    tmp_path: Path,
) -> None:
    settings = settings_for(tmp_path)
    setup.setup(settings, NOW)
    ca = setup.load_ca(settings)
    tunnel = setup.node_tunnel(settings, ca, "gpu01", "10.0.0.7", None, NOW)
    files = {path: (data, mode) for path, data, mode in tunnel.files}
    assert files[carrier.NODE_CA] == (ca.cert_pem, 0o644)
    conf = ini(files[carrier.NODE_CONF][0].decode())["broker-logsrv"]
    assert (conf["accept"], conf["checkHost"]) == ("127.0.0.1:30343", "logs.cluster.example")
    assert (
        b"ExecStart=/usr/bin/stunnel4 " + carrier.NODE_CONF.encode() in files[carrier.NODE_UNIT][0]
    )
    assert [u.rsplit("/", 1)[1] for u in tunnel.units] == ["broker-logsrv-tunnel.service"]
    assert tunnel.dirs == () and carrier.RELAY_LOGSRVD_CONF not in files  # not a relay
    [spec] = tunnel.leaves
    leaf = tunnel.replace(spec, None)
    assert tunnel.cert_ok(spec, leaf.cert_pem)
    assert not tunnel.cert_ok(spec, None)
    other = setup.node_tunnel(settings, ca, "gpu02", "10.0.0.8", None, NOW)
    assert not other.cert_ok(other.leaves[0], leaf.cert_pem)
    # A certificate with less than a month left is replaced at the next bootstrap.
    later = NOW + timedelta(days=tls.LEAF_DAYS - 20)
    aged = setup.node_tunnel(settings, ca, "gpu01", "10.0.0.7", None, later)
    assert not aged.cert_ok(aged.leaves[0], leaf.cert_pem)


RELAYED = 'relay_retry = "5s"\n[sessions.relays]\nsouth = "relay-s:30350"\neast = "relay-s:30350"\n'


def test_a_node_named_as_a_relay_gets_a_store_and_forward_log_server(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, RELAYED)
    setup.setup(settings, NOW)
    ca = setup.load_ca(settings)
    assert carrier.relay_of(settings, "relay-s", "10.0.9.1") == ("relay-s", 30350)
    assert carrier.relay_of(settings, "r1", "relay-s") == ("relay-s", 30350)  # by address
    assert carrier.relay_of(settings, "gpu01", "10.0.0.7") is None
    tunnel = setup.node_tunnel(settings, ca, "relay-s", "10.0.9.1", "infra", NOW)
    files = {path: data.decode() for path, data, _mode in tunnel.files}

    logsrvd = ini(files[carrier.RELAY_LOGSRVD_CONF])
    assert logsrvd["server"]["listen_address"] == "127.0.0.1:30345"
    assert dict(logsrvd["relay"]) == {
        "relay_host": "127.0.0.1:30346",
        "relay_dir": "/var/lib/broker/relay",
        "store_first": "true",
        "retry_interval": "5",
        "connect_timeout": "10",
        "timeout": "30",
        "tcp_keepalive": "true",
    }
    flush = ini(files[carrier.RELAY_FLUSH_CONF])
    assert flush["server"]["listen_address"] == "127.0.0.1:0"  # an ephemeral port
    assert dict(flush["relay"]) == dict(logsrvd["relay"])

    stunnel = ini(files[carrier.RELAY_TUNNEL_CONF])
    inbound, outbound = stunnel["relay-in"], stunnel["relay-out"]
    assert (inbound["accept"], inbound["connect"]) == ("10.0.9.1:30350", "127.0.0.1:30345")
    assert (inbound["requireCert"], inbound["verifyChain"]) == ("yes", "yes")
    assert (outbound["client"], outbound["accept"]) == ("yes", "127.0.0.1:30346")
    assert (outbound["connect"], outbound["checkHost"]) == (
        "logs.cluster.example:30344",
        "logs.cluster.example",
    )
    assert inbound["cert"] == outbound["cert"] == carrier.RELAY_CERT
    assert "--min-age 10" in files[carrier.RELAY_FLUSH_UNIT]
    assert "OnUnitInactiveSec=10s" in files[carrier.RELAY_FLUSH_TIMER]
    assert tunnel.dirs == ((carrier.RELAY_SPOOL, 0o700),)
    assert [u.rsplit("/", 1)[1] for u in tunnel.units] == [
        "broker-logsrv-tunnel.service",
        "broker-logsrv-relay.service",
        "broker-logsrv-relay-tunnel.service",
        "broker-logsrv-relay-flush.timer",
    ]

    # One certificate serves both ends and names what the zones' nodes connect to.
    node_spec, relay_spec = tunnel.leaves
    relay_leaf = tunnel.replace(relay_spec, None)
    assert tunnel.cert_ok(relay_spec, relay_leaf.cert_pem)
    usage = x509.load_pem_x509_certificate(relay_leaf.cert_pem).extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert set(usage.value) == {
        x509.oid.ExtendedKeyUsageOID.SERVER_AUTH,
        x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    # A node's client-only certificate is not good enough for the relay's listening end.
    assert not tunnel.cert_ok(relay_spec, tunnel.replace(node_spec, None).cert_pem)
    by_address = setup.node_tunnel(
        settings_for(tmp_path, '[sessions.relays]\nsouth = "10.0.9.1:30350"\n'),
        ca, "relay-s", "10.0.9.1", None, NOW,
    )  # fmt: skip
    assert by_address.leaves[1].hosts == ("relay-s", "10.0.9.1")


def test_a_node_with_a_break_glass_group_records_it_through_its_own_store_and_forward(
    tmp_path: Path,
) -> None:
    """The group's sudo goes to the node's own sudo_logsrvd, which stores first and relays
    through the node's tunnel: recorded even while the broker host is away."""
    settings = settings_for(tmp_path, 'relay_retry = "5s"\n')
    setup.setup(settings, NOW)
    ca = setup.load_ca(settings)
    tunnel = setup.node_tunnel(settings, ca, "gpu01", "10.0.0.7", None, NOW, "breakglass")
    files = {path: (data.decode(), mode) for path, data, mode in tunnel.files}
    drop_in, mode = files[carrier.BREAK_GLASS_DROP_IN]
    assert mode == 0o440 and tunnel.gone == ()
    assert "Defaults:%breakglass log_input, log_output, ignore_iolog_errors\n" in drop_in
    assert "Defaults:%breakglass log_servers=127.0.0.1:30347, log_server_timeout=5\n" in drop_in
    assert list(files)[-1] == carrier.BREAK_GLASS_DROP_IN  # sudo is pointed at it last
    recorder = ini(files[carrier.BREAK_GLASS_LOGSRVD_CONF][0])
    assert recorder["server"]["listen_address"] == "127.0.0.1:30347"
    assert recorder["relay"]["relay_host"] == "127.0.0.1:30343"  # the node's own tunnel
    assert (recorder["relay"]["store_first"], recorder["relay"]["relay_dir"]) == (
        "true", "/var/lib/broker/break-glass",
    )  # fmt: skip
    flush = ini(files[carrier.BREAK_GLASS_FLUSH_CONF][0])
    assert flush["server"]["listen_address"] == "127.0.0.1:0"
    assert dict(flush["relay"]) == dict(recorder["relay"])
    flush_unit = files[carrier.BREAK_GLASS_FLUSH_UNIT][0]
    flush_args = (
        f"--spool {carrier.BREAK_GLASS_SPOOL}/outgoing --conf {carrier.BREAK_GLASS_FLUSH_CONF}"
    )
    assert flush_args in flush_unit
    assert "ReadWritePaths=/var/lib/broker/break-glass\n" in flush_unit
    assert (carrier.BREAK_GLASS_SPOOL, 0o700) in tunnel.dirs
    assert [u.rsplit("/", 1)[1] for u in tunnel.units] == [
        "broker-logsrv-tunnel.service",
        "broker-logsrv-break-glass.service",
        "broker-logsrv-break-glass-flush.timer",
    ]
    # Without a group: nothing of it, and a drop-in left by an earlier policy goes.
    plain = setup.node_tunnel(settings, ca, "gpu01", "10.0.0.7", None, NOW)
    assert not [p for p, _d, _m in plain.files if "break-glass" in p]
    assert plain.gone == (carrier.BREAK_GLASS_DROP_IN,)


@pytest.mark.parametrize("group", ["-x", "a b", "a,b", "x" * 65, "%wheel"])
def test_a_break_glass_group_sudoers_could_misread_is_refused(tmp_path: Path, group: str) -> None:
    settings = settings_for(tmp_path)
    setup.setup(settings, NOW)
    ca = setup.load_ca(settings)
    with pytest.raises(RefusedError, match="cannot be written into sudoers"):
        setup.node_tunnel(settings, ca, "gpu01", "10.0.0.7", None, NOW, group)


@pytest.mark.parametrize(
    ("sessions", "message"),
    [
        ("break_glass_port = 30345\n", "must all differ"),
        ('[sessions.relays]\nsouth = "r:1"\neast = "r:2"\n', "relay r is given two ports"),
        ("relay_forward_port = 30343\n", "must all differ"),
        ('[sessions.relays]\nsouth = "r:30345"\n', "must all differ"),
        ('relay_retry = "2h"\n', "between 1s and 1h"),
        ('[sessions.relays]\nSouth = "r:1"\n', "is not a zone name"),
    ],
)
def test_relay_settings_that_cannot_work_are_refused(
    tmp_path: Path, sessions: str, message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        settings_for(tmp_path, sessions)


def test_setup_reissues_the_server_certificate_when_the_ca_was_recreated(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    setup.setup(settings, NOW)
    for path in setup.ca_paths(settings):
        path.unlink()
    setup.setup(settings, NOW)
    ca = setup.load_ca(settings)
    cert = carrier.ServerPaths(settings.sessions.conf_dir).cert.read_bytes()
    assert tls.valid_leaf(ca.cert_pem, cert, "logs.cluster.example", NOW)
