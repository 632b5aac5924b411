"""Collecting the hook's session events from node spools, as a service over one pool.

The scheduler asks for a collection; which nodes, and over which SSH pool, is decided
here, in collect.py and rows.py, never in the daemon.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from broker.fleet import inventory
from broker.fleet.pool import SshPool
from broker.sessions import collect, rows
from broker.store.db import Store


class SpoolCollector:
    def __init__(self, store: Store, pool: Callable[[], SshPool]) -> None:
        self._store = store
        self._pool = pool  # built only when there is a node to ask

    def collect_all(self, now: datetime) -> int:
        """Every enrolled node (break-glass sessions happen on nodes without grants)."""
        return self._collect(inventory.enrolled_names(self._store), now)

    def collect_recent(self, now: datetime) -> int:
        """Nodes that held a grant in the last day, and quarantined nodes."""
        return self._collect(rows.nodes_to_collect(self._store.conn, now), now)

    def collect_nodes(self, names: list[str], now: datetime) -> int:
        """These nodes now (detection, before it judges a recording that names one)."""
        return self._collect(names, now)

    def _collect(self, names: list[str], now: datetime) -> int:
        """Events newly stored."""
        if not names:
            return 0
        targets = inventory.targets_known(self._store, names)
        if not targets:
            return 0
        return sum(collect.collect(self._store, self._pool(), targets, now).values())
