"""The node service: inventory, host-key enrollment, bootstrap, status and ping.

The daemon's nodes API calls only this; it owns the SSH pool it was given, so a re-pinned
or removed node's pooled connection is dropped here, at once, and no handler reaches for
the process's shared pool.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from broker.audit import writer
from broker.config.settings import Settings
from broker.core.errors import BrokerError, UnavailableError
from broker.core.hostlist import expand
from broker.fleet import hostkeys, inventory
from broker.fleet import status as fleet_status
from broker.fleet.enroll import EnrollResult, enroll
from broker.fleet.inventory import NodeRecord
from broker.fleet.pool import SshPool
from broker.fleet.probe import NodeProbe, probe_nodes
from broker.fleet.runner import SshRunner
from broker.fleet.ssh import NodeTarget
from broker.grants.integrity import DropInCheck
from broker.policy.model import Policy
from broker.provision import bootstrap
from broker.sessions import certs
from broker.sessions import setup as sessions_setup
from broker.store.db import Store

log = logging.getLogger("broker.nodes")


@dataclass(frozen=True)
class Removed:
    """A removed node, and the serials of the tunnel certificates revoked with it."""

    record: NodeRecord
    revoked: list[str]


class NodeService:
    def __init__(
        self,
        *,
        store: Store,
        pool: Callable[[], SshPool],
        settings: Settings,
        owner: tuple[int, int] | None,
        policy: Callable[[], Policy],
        grant_key_file: Callable[[], str],
        drop_ins: Callable[[], DropInCheck],
    ) -> None:
        self._store = store
        self._pool = pool  # built on first use: listing and adding need no SSH
        self._settings = settings
        self._owner = owner
        self._policy = policy  # the active one, refusing when there is none
        self._grant_key_file = grant_key_file
        self._drop_ins = drop_ins

    def add(self, name: str, address: str, port: int | None, actor: str) -> NodeRecord:
        port = port if port is not None else self._settings.ssh.port
        return inventory.add(self._store, name, address, port, actor)

    def listed(self) -> list[NodeRecord]:
        return inventory.list_nodes(self._store)

    def remove(self, name: str, actor: str, now: datetime) -> Removed:
        """Forget a node and revoke its tunnel certificates in one transaction, then write
        the CRL the log server's stunnel reads (docs/sessions.md: it reloads on change)."""
        revoked: list[str] = []

        def revoke(conn: sqlite3.Connection) -> None:
            revoked.extend(certs.revoke_node(conn, name, actor, now))

        record = inventory.remove(
            self._store,
            name,
            actor,
            known_hosts=self._settings.known_hosts,
            owner=self._owner,
            now=now,
            also=revoke,
        )
        self._pool().forget(record.name)
        if revoked:
            self._write_crl(record.name, revoked, actor, now)
        return Removed(record, revoked)

    def _write_crl(self, node: str, revoked: list[str], actor: str, now: datetime) -> None:
        """The revocation is committed; a CRL that cannot be written is said and audited
        (the daemon's scheduler writes it again within a minute)."""
        try:
            certs.write_crl(self._settings, self._store, now)
        except (BrokerError, OSError, ValueError) as exc:
            reason = exc.one_line() if isinstance(exc, BrokerError) else str(exc)
            with self._store.transaction() as conn:
                event = writer.EventInput(
                    actor, "session.crl.write", f"node:{node}", "failed",
                    {"serials": revoked, "error": reason[:300]},
                )  # fmt: skip
                writer.record(conn, event, now)
            raise UnavailableError(
                f"node {node} is removed and its certificates {', '.join(revoked)} are revoked "
                f"in the store, but the CRL could not be written: {reason}",
                fix="the daemon retries every minute; check the state directory's keys/",
            ) from None

    def enroll(
        self,
        name: str,
        expected: Sequence[hostkeys.Expected],
        *,
        confirm: bool,
        replace: bool,
        actor: str,
    ) -> EnrollResult:
        result = enroll(
            self._store,
            name,
            expected=expected,
            confirm=confirm,
            replace=replace,
            actor=actor,
            known_hosts=self._settings.known_hosts,
            owner=self._owner,
            timeout=self._settings.ssh.connect_timeout.total_seconds(),
        )
        if result.changed:
            self._pool().forget(result.node)
        return result

    def bootstrap(
        self, nodes: str, *, actor: str, now: datetime
    ) -> list[bootstrap.BootstrapResult]:
        """Install the node side: node program, node.conf, grant key, PAM blocks, tunnel."""
        settings = self._settings
        policy = self._policy()
        key_line = self._grant_key_file()  # all the lines of grant-key.pub
        ca = sessions_setup.load_ca(settings)

        lock = threading.Lock()  # nodes are bootstrapped in parallel over one connection

        def tunnel(target: NodeTarget) -> sessions_setup.NodeTunnel:
            zone = policy.zone_of.get(target.name)
            base = sessions_setup.node_tunnel(
                settings, ca, target.name, target.host, zone, now, policy.break_glass_group
            )
            return self._with_store(base, target.name, lock, actor, now)

        results = bootstrap.bootstrap(
            self._store,
            self._pool(),
            expand(nodes),
            policy=policy,
            key_line=key_line,
            joblaunch_service=settings.ssh.joblaunch_service,
            max_skew=settings.ssh.max_skew.total_seconds(),
            actor=actor,
            tunnels=tunnel,
        )
        try:  # certificates bootstrap replaced were revoked: the CRL says so now
            certs.TunnelCerts(settings, self._store).refresh_crl(now)
        except (BrokerError, OSError, ValueError):
            log.exception("the CRL could not be written after bootstrap; the scheduler retries")
        return results

    def _with_store(
        self,
        tunnel: sessions_setup.NodeTunnel,
        node: str,
        lock: threading.Lock,
        actor: str,
        now: datetime,
    ) -> sessions_setup.NodeTunnel:
        """The serials `node` may keep; a new certificate's serial stored (and audited)
        before the node receives it, one it replaces revoked."""
        store = self._store

        def record(leaf: sessions_setup.Leaf, cert_pem: bytes) -> None:
            with lock, store.transaction() as conn:
                certs.record_issued(conn, node, leaf.cert, cert_pem, actor, now)

        def revoke(leaf: sessions_setup.Leaf, serial: int) -> None:
            with lock, store.transaction() as conn:
                certs.revoke_replaced(conn, node, leaf.cert, serial, actor, now)

        with lock:
            current = certs.current(store.conn, node)
        return sessions_setup.with_store(tunnel, current, record, revoke)

    def status(
        self, nodes: str | None, *, actor: str, now: datetime
    ) -> list[fleet_status.NodeStatus]:
        """Each node's program asked (every enrolled node when `nodes` is None), recorded;
        the drop-ins of the live grants there checked against what was pushed."""
        statuses = fleet_status.check(
            self._store,
            self._pool(),
            None if nodes is None else expand(nodes),
            max_skew=self._settings.ssh.max_skew.total_seconds(),
            actor=actor,
        )
        return self._drop_ins().observe(statuses, actor=actor, now=now)

    def ping(self, nodes: str) -> list[NodeProbe]:
        targets = inventory.targets(self._store, expand(nodes))
        return probe_nodes(SshRunner.over(self._pool()), targets)
