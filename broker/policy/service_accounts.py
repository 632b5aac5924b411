"""Reading `[service_accounts.NAME]`: principals, keytab path, owner, mode and enctypes.

A keytab is a password in a file: its mode is never world-accessible or
executable, its path is a plain absolute one, two accounts never share one
keytab on one node, and DES/RC4 keys need an explicit opt-in.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Any, Protocol

from broker.core.hostlist import fold_some
from broker.policy import names
from broker.policy.model import ServiceAccount
from broker.policy.positions import Path as KeyPath
from broker.policy.reader import Hosts, Problems, Table


class Loader(Protocol):
    """What reading service accounts needs of the policy loader (sections.py), which calls
    this module: named as a protocol so neither module imports the other's type."""

    problems: Problems

    def entries(
        self, section: str, data: Mapping[str, Any], what: str
    ) -> Iterable[tuple[str, KeyPath, dict[str, Any]]]: ...

    def hostlist(self, table: Table, key: str, *, required: bool) -> Hosts | None: ...

    def zoned(self, path: KeyPath, nodes: set[str]) -> bool: ...

    def group(self, table: Table, key: str, *, required: bool = False) -> str | None: ...


_SERVICE_KEYS = (
    "description",
    "account",
    "principals",
    "nodes",
    "keytab",
    "owner",
    "group",
    "mode",
    "enctypes",
    "allow_weak_enctypes",
    "rotate_every",
    "keep_old_kvnos",
    "managed_by",
)


def read(loader: Loader, data: Mapping[str, Any]) -> dict[str, ServiceAccount]:
    """Every service account, then the checks across them: an AD account, a principal and
    a keytab file on a node each belong to one service account only."""
    services: dict[str, ServiceAccount] = {}
    principals: dict[str, str] = {}
    accounts: dict[str, str] = {}
    keytabs: dict[tuple[str, str], str] = {}
    for name, path, raw in loader.entries("service_accounts", data, "service account"):
        table = Table(loader.problems, path, raw, _SERVICE_KEYS)
        before = len(loader.problems)
        service = _service(loader, name, table)
        if len(loader.problems) != before:
            continue
        other = accounts.setdefault(service.account, name)
        if other != name:
            loader.problems.add(
                (*path, "account"),
                f"already managed as service_accounts.{other}",
                service.account,
            )
        for index, principal in enumerate(service.principals):
            other = principals.setdefault(principal.lower(), name)
            if other != name:
                loader.problems.add(
                    (*path, "principals", index),
                    f"already a principal of service_accounts.{other}",
                    principal,
                )
        shared = []
        for node in sorted(service.nodes):
            other = keytabs.setdefault((node, str(service.keytab)), name)
            if other != name:
                shared.append(node)
        if shared:
            loader.problems.add(
                (*path, "keytab"),
                f"service_accounts.{other} writes the same keytab on {fold_some(shared)}; give "
                "each service account its own keytab file",
                str(service.keytab),
            )
        services[name] = service
    return services


def _service(loader: Loader, name: str, table: Table) -> ServiceAccount:
    """One account's keys; bad values are recorded in `loader.problems`, defaults stand in."""
    account = table.text("account", check=names.account_name) or name
    principals = table.strings("principals", required=True, check=names.principal)
    hosts = loader.hostlist(table, "nodes", required=True)
    nodes = hosts.names if hosts is not None else None
    if nodes is not None:
        loader.zoned((*table.path, "nodes"), nodes)
    keytab = table.text("keytab", required=True, check=names.absolute_path)
    mode = _mode(table)
    allow_weak = table.flag("allow_weak_enctypes", False)
    enctypes = table.strings("enctypes", check=lambda e: _enctype(e, allow_weak))
    managed_by = loader.group(table, "managed_by")
    return ServiceAccount(
        name=name,
        account=account,
        principals=tuple(p for _, p in principals or ()),
        nodes=frozenset(nodes or ()),
        keytab=PurePosixPath(keytab or "/"),
        owner=table.text("owner", check=names.posix_name) or "root",
        group=table.text("group", check=names.posix_name) or "root",
        mode=mode if mode is not None else 0o600,
        enctypes=tuple(e for _, e in enctypes) if enctypes else names.STRONG_ENCTYPES,
        allow_weak_enctypes=allow_weak,
        rotate_every=table.duration(
            "rotate_every",
            timedelta(days=30),
            low=timedelta(hours=1),
            high=timedelta(days=3650),
        )
        or timedelta(days=30),
        keep_old_kvnos=table.integer("keep_old_kvnos", 1, 0, 10) or 0,
        managed_by=managed_by,
        description=table.text("description", check=names.description) or "",
    )


def _enctype(value: str, allow_weak: bool) -> str | None:
    if value in names.STRONG_ENCTYPES:
        return None
    if value in names.ENCTYPE_ALIASES:
        return f"write the full name {names.ENCTYPE_ALIASES[value]}"
    if value in names.WEAK_ENCTYPES:
        if allow_weak:
            return None
        return (
            "weak enctype (DES/RC4) refused; use aes256-cts-hmac-sha1-96, or set "
            "allow_weak_enctypes = true for a service that cannot do AES"
        )
    return (
        f"unknown enctype; expected one of {', '.join(names.STRONG_ENCTYPES + names.WEAK_ENCTYPES)}"
    )


_KEYTAB_MODES = 0o640


def _mode(table: Table) -> int | None:
    """The keytab's mode: `"0600"` or `0o600`; never world-accessible, never executable."""
    if not table.has("mode"):
        return None
    value = table.data["mode"]
    mode: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        mode = value
    elif isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3,4}", value):
        mode = int(value.replace("o", ""), 8)
    path = (*table.path, "mode")
    if mode is None or not 0 <= mode <= 0o7777:
        table.problems.add(path, 'expected an octal mode such as "0600"', value)
        return None
    if mode & 0o007:
        table.problems.add(
            path, "a keytab must never be readable or writable by everyone; use 0600 or 0640", value
        )
        return None
    if mode & ~_KEYTAB_MODES or not mode & 0o400:
        table.problems.add(
            path,
            "expected 0600, 0400, 0640 or 0440: owner-readable, at most group-readable, "
            "no execute or special bits",
            value,
        )
        return None
    return mode
