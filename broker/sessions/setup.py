"""`broker sessions setup`: the log server's side of the carrier, idempotently.

Creates the session CA (its key beside the broker's other keys, readable by the
service user only, so the daemon can issue node certificates at bootstrap),
the server certificate for `sessions.tunnel_connect`, the store directory, and
the two configuration files the units in deploy/systemd/ start.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from broker.config.settings import Settings, host_port
from broker.core.errors import RefusedError, UnavailableError
from broker.sessions import carrier, tls
from broker.store.files import ensure_private_dir, service_ids, write_private_file
from broker.sudoers import check_with_visudo


def ca_paths(settings: Settings) -> tuple[Path, Path]:
    keys = settings.broker.state_dir / "keys"
    return keys / "session-ca.pem", keys / "session-ca.key"


def crl_path(settings: Settings) -> Path:
    """The session CA's CRL: written by the daemon (the service user owns the directory),
    read by the log server's stunnel (`CRLfile`)."""
    return settings.broker.state_dir / "keys" / "session-ca.crl"


def load_ca(settings: Settings) -> tls.Issued:
    cert, key = ca_paths(settings)
    try:
        return tls.Issued(cert.read_bytes(), key.read_bytes())
    except OSError:
        raise UnavailableError(
            f"no session CA at {cert}", fix="run `broker sessions setup` on the broker host"
        ) from None


def iolog_user(settings: Settings) -> str:
    """sudo_logsrvd writes recordings as the service user, so the daemon can read and purge."""
    try:
        pwd.getpwnam(settings.broker.service_user)
    except KeyError:
        return "root"
    return settings.broker.service_user


def _write_if_changed(path: Path, data: bytes, owner: tuple[int, int] | None, mode: int) -> bool:
    try:
        if path.read_bytes() == data and (os.stat(path).st_mode & 0o777) == mode:
            return False
    except FileNotFoundError:
        pass
    write_private_file(path, data, owner, mode)
    return True


def setup(settings: Settings, now: datetime) -> list[str]:
    """Create what is missing, rewrite configurations that differ; returns what changed."""
    changed: list[str] = []
    owner = service_ids(settings.broker.service_user)
    ca_cert, ca_key = ca_paths(settings)
    if not ca_key.exists():
        ca = tls.new_ca(now)
        write_private_file(ca_key, ca.key_pem, owner, 0o600)
        write_private_file(ca_cert, ca.cert_pem, owner, 0o644)
        changed.append(f"created the session CA {ca_cert}")
    ca = load_ca(settings)
    if not crl_path(settings).exists():
        # stunnel will not start without its CRLfile; the daemon rewrites this from the
        # store's revocations within a minute of starting (sessions/certs.py).
        write_private_file(crl_path(settings), tls.build_crl(ca, [], now), owner, 0o644)
        changed.append(f"wrote an empty CRL {crl_path(settings)}")
    paths = carrier.ServerPaths(settings.sessions.conf_dir)
    root = (0, 0) if os.geteuid() == 0 else None
    settings.sessions.conf_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    if _write_if_changed(paths.ca, ca.cert_pem, root, 0o644):
        changed.append(f"wrote {paths.ca}")
    host, _port = host_port(settings.sessions.tunnel_connect, "sessions.tunnel_connect")
    current = paths.cert.read_bytes() if paths.cert.exists() else None
    fresh = current is not None and tls.valid_leaf(
        ca.cert_pem, current, host, now + timedelta(days=30), server=True
    )
    if not fresh or not paths.key.exists():
        leaf = tls.issue(ca, host, [host], server=True, now=now)
        write_private_file(paths.key, leaf.key_pem, root, 0o600)
        write_private_file(paths.cert, leaf.cert_pem, root, 0o644)
        changed.append(f"issued {paths.cert} for {host}")
    user = iolog_user(settings)
    store = settings.session_store
    ensure_private_dir(store, service_ids(user) if user != "root" else root)
    confs = (
        (
            paths.logsrvd_conf,
            carrier.logsrvd_conf(settings, user, settings.session_store.parent / "events.json"),
        ),
        (paths.stunnel_conf, carrier.stunnel_server_conf(settings, paths, crl_path(settings))),
    )
    for path, text in confs:
        if _write_if_changed(path, text.encode("ascii"), root, 0o644):
            changed.append(f"wrote {path}")
    return changed


@dataclass(frozen=True)
class Leaf:
    """A certificate a node holds: where, for which names, for which ends of a tunnel."""

    cert: str
    key: str
    common: str
    hosts: tuple[str, ...]
    server: bool
    client: bool


def _no_record(_leaf: Leaf, _cert_pem: bytes) -> None:
    return None


def _no_revoke(_leaf: Leaf, _serial: int) -> None:
    return None


@dataclass(frozen=True)
class NodeTunnel:
    """A node's carrier files (a relay's too), and how to give it certificates when it has
    no good ones."""

    files: tuple[tuple[str, bytes, int], ...]  # remote path, content, mode
    leaves: tuple[Leaf, ...]
    dirs: tuple[tuple[str, int], ...]  # remote directories beyond the tunnel's own
    units: tuple[str, ...]  # systemd units to (re)start when anything changed
    ca: tls.Issued
    now: datetime
    # Serials on record for this node and not revoked; None: not checked (no store).
    current: frozenset[int] | None = None
    # Store a new certificate's serial before the node gets it; revoke one it replaces.
    record: Callable[[Leaf, bytes], None] = _no_record
    revoke: Callable[[Leaf, int], None] = _no_revoke
    gone: tuple[str, ...] = ()  # files that must not be there (no break-glass group)

    def cert_ok(self, leaf: Leaf, cert_pem: bytes | None) -> bool:
        """The certificate is ours, on record and not revoked, names what it must, serves
        what it must, has a month."""
        if cert_pem is None:
            return False
        if self.current is not None and not self._on_record(cert_pem):
            return False
        return tls.valid_leaf(
            self.ca.cert_pem,
            cert_pem,
            leaf.common,
            self.now + timedelta(days=30),
            hosts=leaf.hosts,
            server=leaf.server,
            client=leaf.client,
        )

    def _on_record(self, cert_pem: bytes) -> bool:
        try:
            return tls.serial_of(cert_pem) in (self.current or frozenset())
        except ValueError:
            return False

    def replace(self, leaf: Leaf, old_pem: bytes | None) -> tls.Issued:
        """A new certificate, its serial stored first; the one it replaces, if this CA
        signed it, revoked (the node keeps the old file until the new one is renamed over)."""
        if (
            old_pem is not None
            and tls.issued_by(self.ca.cert_pem, old_pem)
            and tls.cert_names(old_pem)[0] == leaf.common  # this node's name, not another's
        ):
            self.revoke(leaf, tls.serial_of(old_pem))
        issued = tls.issue(
            self.ca,
            leaf.common,
            list(leaf.hosts),
            server=leaf.server,
            client=leaf.client,
            now=self.now,
        )
        self.record(leaf, issued.cert_pem)
        return issued


def with_store(
    tunnel: NodeTunnel,
    current: frozenset[int],
    record: Callable[[Leaf, bytes], None],
    revoke: Callable[[Leaf, int], None],
) -> NodeTunnel:
    """The tunnel with the store's view: which serials the node may keep, and how to
    record and revoke (bootstrap runs nodes in parallel; the callables serialise)."""
    return replace(tunnel, current=current, record=record, revoke=revoke)


def node_tunnel(
    settings: Settings,
    ca: tls.Issued,
    node: str,
    address: str,
    zone: str | None,
    now: datetime,
    break_glass_group: str | None = None,
) -> NodeTunnel:
    """Every node's tunnel to its log server; a node named as a relay gets the relay too,
    and a node with a break-glass group its break-glass recorder and drop-in."""
    listen = carrier.node_listen(settings, address)
    connects = carrier.node_connects(settings, zone)
    files = [
        (carrier.NODE_CA, ca.cert_pem, 0o644),
        (carrier.NODE_CONF, carrier.stunnel_node_conf(listen, connects).encode("ascii"), 0o644),
        (carrier.NODE_UNIT, carrier.NODE_UNIT_TEXT.encode("ascii"), 0o644),
    ]
    leaves = [Leaf(carrier.NODE_CERT, carrier.NODE_KEY, node, (node,), False, True)]
    units = [carrier.NODE_UNIT]
    dirs: list[tuple[str, int]] = []
    relay = carrier.relay_of(settings, node, address)
    if relay is not None:
        files += relay_files(settings, address, relay)
        hosts = tuple(dict.fromkeys((node, relay[0])))
        leaves.append(Leaf(carrier.RELAY_CERT, carrier.RELAY_KEY, node, hosts, True, True))
        dirs.append((carrier.RELAY_SPOOL, 0o700))
        units += [carrier.RELAY_LOGSRVD_UNIT, carrier.RELAY_TUNNEL_UNIT, carrier.RELAY_FLUSH_TIMER]
    if not break_glass_group:
        gone = (carrier.BREAK_GLASS_DROP_IN,)
        return NodeTunnel(
            tuple(files), tuple(leaves), tuple(dirs), tuple(units), ca, now, gone=gone
        )
    files += break_glass_files(settings, address, break_glass_group)
    dirs.append((carrier.BREAK_GLASS_SPOOL, 0o700))
    units += [carrier.BREAK_GLASS_UNIT, carrier.BREAK_GLASS_FLUSH_TIMER]
    return NodeTunnel(tuple(files), tuple(leaves), tuple(dirs), tuple(units), ca, now)


def relay_files(
    settings: Settings, address: str, relay: tuple[str, int]
) -> list[tuple[str, bytes, int]]:
    """A relay's store-and-forward sudo_logsrvd, its two-way stunnel and its flush timer."""
    texts = (
        (carrier.RELAY_LOGSRVD_CONF, carrier.relay_logsrvd_conf(settings, address)),
        (carrier.RELAY_TUNNEL_CONF, carrier.relay_tunnel_conf(settings, address, relay)),
        (carrier.RELAY_FLUSH_CONF, carrier.relay_logsrvd_conf(settings, address, flush=True)),
        (carrier.RELAY_LOGSRVD_UNIT, carrier.RELAY_LOGSRVD_UNIT_TEXT),
        (carrier.RELAY_FLUSH_UNIT, carrier.relay_flush_unit_text(settings)),
        (carrier.RELAY_FLUSH_TIMER, carrier.relay_flush_timer_text(settings)),
        (carrier.RELAY_TUNNEL_UNIT, carrier.RELAY_TUNNEL_UNIT_TEXT),
    )
    return [(path, text.encode("ascii"), 0o644) for path, text in texts]


def break_glass_files(settings: Settings, address: str, group: str) -> list[tuple[str, bytes, int]]:
    """The break-glass recorder (sudo_logsrvd, store first, out through the node's tunnel),
    its flush timer, and the drop-in, last: sudo is pointed at the recorder only once its
    files are in place. The drop-in is checked with the broker host's visudo first."""
    try:
        drop_in = carrier.break_glass_drop_in(group, carrier.break_glass_listen(settings, address))
    except ValueError as exc:
        raise RefusedError(str(exc), fix="name a break_glass_group sudoers can hold") from None
    check_with_visudo(drop_in)
    texts = (
        (carrier.BREAK_GLASS_LOGSRVD_CONF, carrier.break_glass_logsrvd_conf(settings, address)),
        (
            carrier.BREAK_GLASS_FLUSH_CONF,
            carrier.break_glass_logsrvd_conf(settings, address, flush=True),
        ),
        (carrier.BREAK_GLASS_UNIT, carrier.BREAK_GLASS_UNIT_TEXT),
        (
            carrier.BREAK_GLASS_FLUSH_UNIT,
            carrier.relay_flush_unit_text(settings, break_glass=True),
        ),
        (carrier.BREAK_GLASS_FLUSH_TIMER, carrier.relay_flush_timer_text(settings)),
    )
    files = [(path, text.encode("ascii"), 0o644) for path, text in texts]
    return [*files, (carrier.BREAK_GLASS_DROP_IN, drop_in.encode("ascii"), 0o440)]
