"""Which tunnel certificates the session CA gave to which node, and the CRL of those revoked.

A node's serial is stored (with its audit event) before the node receives the
certificate, so `broker node remove` revokes exactly what that node was given. The CRL
the log server's stunnel checks (`CRLfile`) is rebuilt from these rows, never edited: it
is re-derived whenever it disagrees with the store or nears its nextUpdate, because an
expired CRL makes stunnel refuse every node.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from datetime import datetime, timedelta
from pathlib import Path

from broker.audit import writer
from broker.config.settings import Settings
from broker.core.timeutil import from_text, to_text
from broker.sessions import tls
from broker.sessions.setup import ca_paths, crl_path, load_ca
from broker.store.db import Store
from broker.store.files import write_private_file

log = logging.getLogger("broker.sessions.certs")

# Rewritten once a day: six days of margin before stunnel would refuse every node.
CRL_RENEW_AFTER = timedelta(days=1)
# The daemon's refresh thread and a `node remove` request may both write the CRL.
_CRL_LOCK = threading.Lock()


def serial_text(serial: int) -> str:
    return f"{serial:x}"


def _event(actor: str, action: str, node: str, **details: object) -> writer.EventInput:
    return writer.EventInput(actor, action, f"node:{node}", details=details)


def record_issued(
    conn: sqlite3.Connection, node: str, path: str, cert_pem: bytes, actor: str, now: datetime
) -> str:
    """Store a newly issued node certificate's serial; runs in the caller's transaction."""
    serial = serial_text(tls.serial_of(cert_pem))
    expires = tls.cert_names(cert_pem)[2]
    conn.execute(
        "INSERT INTO tunnel_certs (serial, node, path, issued_at, not_after) VALUES (?, ?, ?, ?, ?)",
        (serial, node, path, to_text(now), to_text(expires)),
    )
    writer.record(conn, _event(actor, "session.cert.issue", node, serial=serial, path=path), now)
    return serial


def revoke_replaced(
    conn: sqlite3.Connection, node: str, path: str, serial: int, actor: str, now: datetime
) -> None:
    """A certificate of ours that bootstrap replaced (or one issued before serials were
    stored): revoked, so the copy left on the node opens nothing. Only this node's own: a
    serial on record for another node is refused and audited, never revoked."""
    text = serial_text(serial)
    owner = conn.execute("SELECT node FROM tunnel_certs WHERE serial = ?", (text,)).fetchone()
    if owner is not None and owner[0] != node:
        # Review finding: a node showing another node's certificate (a relay's, which every
        # node of its zone is shown) would get it revoked, and the relay's zone cut off.
        event = writer.EventInput(
            actor, "session.cert.foreign", f"node:{node}", outcome="refused",
            details={"serial": text, "issued_to": owner[0], "path": path},
        )  # fmt: skip
        writer.record(conn, event, now)
        return
    conn.execute(
        "INSERT INTO tunnel_certs (serial, node, path) VALUES (?, ?, ?) "
        "ON CONFLICT (serial) DO NOTHING",
        (text, node, path),
    )
    changed = conn.execute(
        "UPDATE tunnel_certs SET revoked_at = ?, revoked_by = ?, reason = 'superseded' "
        "WHERE serial = ? AND node = ? AND revoked_at IS NULL",
        (to_text(now), actor, text, node),
    ).rowcount
    if changed:
        event = _event(actor, "session.cert.revoke", node, serial=text, reason="superseded")
        writer.record(conn, event, now)


def current(conn: sqlite3.Connection, node: str) -> frozenset[int]:
    """Serials issued to `node` and not revoked: the only ones bootstrap leaves in place."""
    rows = conn.execute(
        "SELECT serial FROM tunnel_certs WHERE node = ? AND revoked_at IS NULL", (node,)
    )
    return frozenset(int(r[0], 16) for r in rows)


def revoke_node(conn: sqlite3.Connection, node: str, actor: str, now: datetime) -> list[str]:
    """Revoke every certificate `node` holds (its tunnel's, a relay's); audited one by one."""
    serials = sorted(serial_text(s) for s in current(conn, node))
    for serial in serials:
        conn.execute(
            "UPDATE tunnel_certs SET revoked_at = ?, revoked_by = ?, reason = 'node-removed' "
            "WHERE serial = ?",
            (to_text(now), actor, serial),
        )
        event = _event(actor, "session.cert.revoke", node, serial=serial, reason="node-removed")
        writer.record(conn, event, now)
    return serials


def revoked(conn: sqlite3.Connection) -> list[tuple[int, datetime]]:
    rows = conn.execute(
        "SELECT serial, revoked_at FROM tunnel_certs WHERE revoked_at IS NOT NULL ORDER BY serial"
    )
    return [(int(serial, 16), from_text(at)) for serial, at in rows]


def write_crl(settings: Settings, store: Store, now: datetime) -> Path:
    """Sign the CRL of every revoked serial and put it where the log server's stunnel reads
    it: written beside, owner and mode set, fsynced, then renamed (never half a CRL)."""
    with _CRL_LOCK:  # built and written as one step: an older CRL never lands last
        ca = load_ca(settings)
        data = tls.build_crl(ca, revoked(store.conn), now)
        path = crl_path(settings)
        write_private_file(path, data, None, 0o644)
    return path


def crl_due(settings: Settings, store: Store, now: datetime) -> bool:
    """The CRL is missing, not ours, lists other serials than the store, or is a day old."""
    ca = load_ca(settings)
    try:
        view = tls.read_crl(ca.cert_pem, crl_path(settings).read_bytes())
    except OSError:
        return True
    if view is None:
        return True
    wanted = frozenset(serial for serial, _at in revoked(store.conn))
    renew_at = view.next_update - timedelta(days=tls.CRL_DAYS) + CRL_RENEW_AFTER
    return view.serials != wanted or now >= renew_at


class TunnelCerts:
    """The CRL as a service: what the daemon's scheduler calls (it reads no rows itself)."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self._settings = settings
        self._store = store

    def refresh_crl(self, now: datetime) -> bool:
        """Rewrite the CRL when it is due; True when it was rewritten. Without a session CA
        (`broker sessions setup` not run) no certificate was issued: nothing to do."""
        if not ca_paths(self._settings)[1].exists():
            return False
        if not crl_due(self._settings, self._store, now):
            return False
        path = write_crl(self._settings, self._store, now)
        log.info("wrote the session CA's CRL %s", path)
        return True
