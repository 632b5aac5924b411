"""The node service: inventory, host-key enrollment, bootstrap, status and ping.

The daemon's nodes API calls only this; it owns the SSH pool it was given, so a re-pinned
or removed node's pooled connection is dropped here, at once, and no handler reaches for
the process's shared pool.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from broker.config.settings import Settings
from broker.core.hostlist import expand
from broker.fleet import hostkeys, inventory
from broker.fleet import status as fleet_status
from broker.fleet.enroll import EnrollResult, enroll
from broker.fleet.inventory import NodeRecord
from broker.fleet.pool import SshPool
from broker.fleet.probe import NodeProbe, probe_nodes
from broker.fleet.runner import SshRunner
from broker.fleet.ssh import NodeTarget
from broker.policy.model import Policy
from broker.provision import bootstrap
from broker.sessions import setup as sessions_setup
from broker.store.db import Store


class NodeService:
    def __init__(
        self,
        *,
        store: Store,
        pool: Callable[[], SshPool],
        settings: Settings,
        owner: tuple[int, int] | None,
        policy: Callable[[], Policy],
        grant_key_line: Callable[[], str],
    ) -> None:
        self._store = store
        self._pool = pool  # built on first use: listing and adding need no SSH
        self._settings = settings
        self._owner = owner
        self._policy = policy  # the active one, refusing when there is none
        self._grant_key_line = grant_key_line

    def add(self, name: str, address: str, port: int | None, actor: str) -> NodeRecord:
        port = port if port is not None else self._settings.ssh.port
        return inventory.add(self._store, name, address, port, actor)

    def listed(self) -> list[NodeRecord]:
        return inventory.list_nodes(self._store)

    def remove(self, name: str, actor: str) -> NodeRecord:
        record = inventory.remove(
            self._store, name, actor, known_hosts=self._settings.known_hosts, owner=self._owner
        )
        self._pool().forget(record.name)
        return record

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
        key_line = self._grant_key_line()
        ca = sessions_setup.load_ca(settings)

        def tunnel(target: NodeTarget) -> sessions_setup.NodeTunnel:
            zone = policy.zone_of.get(target.name)
            return sessions_setup.node_tunnel(
                settings, ca, target.name, target.host, zone, now, policy.break_glass_group
            )

        return bootstrap.bootstrap(
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

    def status(self, nodes: str | None, *, actor: str) -> list[fleet_status.NodeStatus]:
        """Each node's program asked (every enrolled node when `nodes` is None), recorded."""
        return fleet_status.check(
            self._store,
            self._pool(),
            None if nodes is None else expand(nodes),
            max_skew=self._settings.ssh.max_skew.total_seconds(),
            actor=actor,
        )

    def ping(self, nodes: str) -> list[NodeProbe]:
        targets = inventory.targets(self._store, expand(nodes))
        return probe_nodes(SshRunner.over(self._pool()), targets)
