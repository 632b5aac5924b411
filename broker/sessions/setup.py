"""`broker sessions setup`: the log server's side of the carrier, idempotently.

Creates the session CA (its key beside the broker's other keys, readable by the
service user only, so the daemon can issue node certificates at bootstrap),
the server certificate for `sessions.tunnel_connect`, the store directory, and
the two configuration files the units in deploy/systemd/ start.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from broker.config.settings import Settings, host_port
from broker.core.errors import UnavailableError
from broker.sessions import carrier, tls
from broker.store.files import ensure_private_dir, service_ids, write_private_file


def ca_paths(settings: Settings) -> tuple[Path, Path]:
    keys = settings.broker.state_dir / "keys"
    return keys / "session-ca.pem", keys / "session-ca.key"


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
    paths = carrier.ServerPaths(settings.sessions.conf_dir)
    root = (0, 0) if os.geteuid() == 0 else None
    settings.sessions.conf_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    if _write_if_changed(paths.ca, ca.cert_pem, root, 0o644):
        changed.append(f"wrote {paths.ca}")
    host, _port = host_port(settings.sessions.tunnel_connect, "sessions.tunnel_connect")
    current = paths.cert.read_bytes() if paths.cert.exists() else None
    fresh = current is not None and tls.valid_leaf(
        ca.cert_pem, current, host, now + timedelta(days=30)
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
        (paths.stunnel_conf, carrier.stunnel_server_conf(settings, paths)),
    )
    for path, text in confs:
        if _write_if_changed(path, text.encode("ascii"), root, 0o644):
            changed.append(f"wrote {path}")
    return changed


@dataclass(frozen=True)
class NodeTunnel:
    """A node's carrier files, and how to give it a certificate when it has no good one."""

    files: tuple[tuple[str, bytes, int], ...]  # remote path, content, mode
    ca: tls.Issued
    node: str
    now: datetime

    def cert_ok(self, cert_pem: bytes | None) -> bool:
        """The node's certificate is ours, names the node and has a month left."""
        return cert_pem is not None and tls.valid_leaf(
            self.ca.cert_pem, cert_pem, self.node, self.now + timedelta(days=30)
        )

    def issue(self) -> tls.Issued:
        return tls.issue(self.ca, self.node, [self.node], server=False, now=self.now)


def node_tunnel(
    settings: Settings, ca: tls.Issued, node: str, address: str, zone: str | None, now: datetime
) -> NodeTunnel:
    listen = carrier.node_listen(settings, address)
    connect = carrier.node_connect(settings, zone)
    files = (
        (carrier.NODE_CA, ca.cert_pem, 0o644),
        (carrier.NODE_CONF, carrier.stunnel_node_conf(listen, connect).encode("ascii"), 0o644),
        (carrier.NODE_UNIT, carrier.NODE_UNIT_TEXT.encode("ascii"), 0o644),
    )
    return NodeTunnel(files, ca, node, now)
