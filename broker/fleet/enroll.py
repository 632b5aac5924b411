"""Enrolling a node: fetch the host key it shows, decide, and pin it in the inventory.

Apart from hostkeys.py (key checks, no state) and inventory.py (the rows, which use those
checks), so neither of them needs the other's caller.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.fleet import hostkeys, inventory
from broker.store.db import Store


@dataclass(frozen=True)
class EnrollResult:
    node: str
    address: str
    port: int
    seen: hostkeys.HostKey
    pinned: bool  # the node is pinned to `seen` now
    changed: bool  # this call pinned it
    previous: str | None  # the fingerprint it was pinned to before, if any


def enroll(
    store: Store,
    name: str,
    *,
    expected: Sequence[hostkeys.Expected],
    confirm: bool,
    replace: bool,
    actor: str,
    known_hosts: Path,
    owner: tuple[int, int] | None,
    timeout: float,
) -> EnrollResult:
    """Fetch the node's key and pin it when `decide` says so (inventory.pin audits it)."""
    record = inventory.require(store, name)
    types = [e.key_type for e in expected]
    key_types = None if not types or None in types else [t for t in types if t is not None]
    seen = hostkeys.fetch(record.address, record.port, timeout=timeout, key_types=key_types)
    action = hostkeys.decide(
        name, record.fingerprint, seen, expected, confirm=confirm, replace=replace
    )
    if action == "pin":
        inventory.pin(
            store,
            name,
            seen.key_type,
            seen.key_b64,
            seen.fingerprint,
            actor,
            known_hosts=known_hosts,
            owner=owner,
            expect_previous=record.fingerprint,
        )
    return EnrollResult(
        name,
        record.address,
        record.port,
        seen,
        pinned=action != "show",
        changed=action == "pin",
        previous=record.fingerprint,
    )
