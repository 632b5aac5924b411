"""The node inventory: which nodes the broker may reach, at which address, with which host key.

A node is added (name and address), then enrolled (its host key pinned), and
only then a target: nothing is ever sent to a node whose key is not pinned
here. The known_hosts file SSH uses is rewritten from the pinned rows inside
the same write transaction, so file and table never disagree for long and
concurrent pins cannot interleave. Every change is an audit event in that
transaction.
"""

from __future__ import annotations

import ipaddress
import re
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from broker.audit import writer
from broker.core.errors import RefusedError, UsageError
from broker.core.hostlist import NODE_NAME, fold
from broker.core.timeutil import to_text, utcnow
from broker.fleet.hostkeys import HostKey, decode_key
from broker.fleet.ssh import NodeTarget
from broker.store.db import Store
from broker.store.files import write_private_file

NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_IPV6_CHARS = re.compile(r"^[0-9a-f:.]{2,45}$")
_COLUMNS = (
    "name, address, port, fingerprint, enrolled_at, bootstrapped_at, hook_version,"
    " sudo_flavour, sudo_version, io_logging, last_seen_at, last_skew_s"
)
_SELECT = f"SELECT {_COLUMNS} FROM nodes"  # noqa: S608 (fixed column names)
# grant_nodes states that mean something may still be on the node.
_LIVE_STATES = ("pending", "live", "removing")
_CHUNK = 500


@dataclass(frozen=True)
class NodeRecord:
    name: str
    address: str
    port: int
    fingerprint: str | None
    enrolled_at: str | None
    bootstrapped_at: str | None
    hook_version: str | None
    sudo_flavour: str | None
    sudo_version: str | None
    io_logging: bool | None
    last_seen_at: str | None
    last_skew_s: float | None

    @property
    def enrolled(self) -> bool:
        return self.fingerprint is not None

    @property
    def target(self) -> NodeTarget:
        return NodeTarget(self.name, self.address, self.port)


@dataclass(frozen=True)
class Observation:
    """What `broker node status` saw on a reachable node."""

    name: str
    hook_version: str | None
    sudo_flavour: str | None
    sudo_version: str | None
    io_logging: bool | None
    skew_s: float | None


# ---------------------------------------------------------------- validation


def check_name(name: str) -> str:
    """A node name as grants, file names and hostlists use it: `[a-z0-9][a-z0-9-]{0,62}`,
    with a letter, not ending in `-`."""
    if not (NAME.fullmatch(name) and NODE_NAME.fullmatch(name)):
        raise UsageError(
            f"bad node name {name[:80]!r}",
            fix="use lower-case letters, digits and '-' (at most 63, at least one letter,"
            " not starting or ending with '-')",
        )
    return name


def check_address(address: str) -> str:
    """A DNS host name or an IPv4/IPv6 literal, normalised (lower case, compressed IPv6)."""
    text = address.lower()
    if _IPV6_CHARS.fullmatch(text) and ":" in text:
        try:
            return str(ipaddress.IPv6Address(text))
        except ValueError:
            pass
    elif re.fullmatch(r"[0-9.]{7,15}", text):
        try:
            return str(ipaddress.IPv4Address(text))
        except ValueError:
            pass
    else:
        labels = text.split(".")
        if (
            len(text) <= 253
            and all(_LABEL.fullmatch(label) for label in labels)
            and not labels[-1].isdigit()
        ):
            return text
    raise UsageError(
        f"bad node address {address[:80]!r}",
        fix="give a host name (node01.cluster.example) or an IP address (10.1.2.3, fd00::12)",
    )


def check_port(port: int) -> int:
    if isinstance(port, bool) or not 1 <= port <= 65535:
        raise UsageError(f"bad SSH port {port!r}", fix="give 1 to 65535")
    return port


def split_host_port(text: str, default_port: int | None) -> tuple[str, int | None]:
    """`HOST`, `HOST:PORT`, `[IPV6]`, `[IPV6]:PORT` or a bare IPv6 literal, checked."""
    match = re.fullmatch(r"\[([^\]]+)\](?::([0-9]{1,5}))?", text)
    if match:
        host, port = match[1], match[2]
    elif text.count(":") == 1:
        host, port = text.split(":")
        if not port.isdigit() or len(port) > 5:
            raise UsageError(f"bad port in {text[:80]!r}", fix="give HOST:PORT, e.g. gpu01:2222")
    else:
        host, port = text, None
    return check_address(host), check_port(int(port)) if port else default_port


# ---------------------------------------------------------------- reads

Readable = Store | sqlite3.Connection


def _conn(source: Readable) -> sqlite3.Connection:
    return source.conn if isinstance(source, Store) else source


def _record(row: Sequence[object]) -> NodeRecord:
    values = list(row)
    io_logging = values[9]
    values[9] = None if io_logging is None else bool(io_logging)
    return NodeRecord(*values)  # type: ignore[arg-type]


def get(source: Readable, name: str) -> NodeRecord | None:
    row = _conn(source).execute(_SELECT + " WHERE name = ?", (name,)).fetchone()
    return None if row is None else _record(row)


def require(source: Readable, name: str) -> NodeRecord:
    record = get(source, check_name(name))
    if record is None:
        raise RefusedError(
            f"node {name} is not in the inventory",
            fix=f"add it with `broker node add {name} --address HOST`",
        )
    return record


def list_nodes(source: Readable) -> list[NodeRecord]:
    rows = _conn(source).execute(_SELECT + " ORDER BY name").fetchall()
    return [_record(row) for row in rows]


def enrolled_names(source: Readable) -> list[str]:
    rows = _conn(source).execute(
        "SELECT name FROM nodes WHERE fingerprint IS NOT NULL ORDER BY name"
    )
    return [str(row[0]) for row in rows]


def _records(source: Readable, names: Sequence[str]) -> dict[str, NodeRecord]:
    """Rows for `names`, looked up in chunks (bound parameters, never text in SQL)."""
    wanted = sorted(set(names))
    found: dict[str, NodeRecord] = {}
    conn = _conn(source)
    for start in range(0, len(wanted), _CHUNK):
        chunk = wanted[start : start + _CHUNK]
        marks = ",".join("?" for _ in chunk)
        for row in conn.execute(f"{_SELECT} WHERE name IN ({marks})", chunk):
            record = _record(row)
            found[record.name] = record
    return found


def targets(source: Readable, names: Sequence[str]) -> list[NodeTarget]:
    """Targets for `names`, in order; refuses unknown and not enrolled nodes, naming them all."""
    found = _records(source, names)
    unknown = [n for n in names if n not in found]
    if unknown:
        raise RefusedError(
            f"not in the inventory: {fold(unknown)}",
            fix="add them with `broker node add NAME --address HOST`, then "
            "`broker node enroll NAME`",
        )
    unpinned = [n for n in names if not found[n].enrolled]
    if unpinned:
        raise RefusedError(
            f"host key not pinned yet: {fold(unpinned)}",
            fix="pin each with `broker node enroll NAME`",
        )
    return [found[n].target for n in names]


def targets_known(source: Readable, names: Sequence[str]) -> list[NodeTarget]:
    """Targets for those of `names` that are in the inventory and enrolled; others skipped."""
    found = _records(source, names)
    return [found[n].target for n in names if n in found and found[n].enrolled]


# ---------------------------------------------------------------- writes


def _event(actor: str, action: str, name: str, **details: object) -> writer.EventInput:
    return writer.EventInput(actor, action, f"node:{name}", details=details)


def add(
    store: Store, name: str, address: str, port: int, actor: str, now: datetime | None = None
) -> NodeRecord:
    """Add a node (not yet reachable: its host key is pinned by enroll)."""
    name, address, port = check_name(name), check_address(address), check_port(port)
    with store.transaction() as conn:
        if get(conn, name) is not None:
            raise RefusedError(
                f"node {name} is already in the inventory",
                fix=f"remove it first (`broker node remove {name}`) to change its address",
            )
        other = conn.execute(
            "SELECT name FROM nodes WHERE address = ? AND port = ?", (address, port)
        ).fetchone()
        if other is not None:
            raise RefusedError(
                f"{address} port {port} is already node {other[0]}",
                fix="one inventory entry per sshd; use that name",
            )
        stamp = to_text(now or utcnow())
        conn.execute(
            "INSERT INTO nodes (name, address, port, added_at, added_by) VALUES (?, ?, ?, ?, ?)",
            (name, address, port, stamp, actor),
        )
        writer.record(conn, _event(actor, "node.add", name, address=address, port=port), now)
        return require(conn, name)


def remove(
    store: Store,
    name: str,
    actor: str,
    *,
    known_hosts: Path,
    owner: tuple[int, int] | None,
    now: datetime | None = None,
    also: Callable[[sqlite3.Connection], None] | None = None,
) -> NodeRecord:
    """Forget a node and its pinned key; refused while a grant may still be on it. `also`
    runs in the same transaction (the node's tunnel certificates revoked with it)."""
    with store.transaction() as conn:
        record = require(conn, name)
        marks = ",".join("?" for _ in _LIVE_STATES)
        busy = conn.execute(
            f"SELECT grant_id FROM grant_nodes WHERE node = ? AND state IN ({marks}) LIMIT 1",  # noqa: S608
            (name, *_LIVE_STATES),
        ).fetchone()
        if busy is not None:
            raise RefusedError(
                f"node {name} still has grant {busy[0]} pending, live or being removed",
                fix="revoke the grant and let its removal finish (`broker grants list`), then "
                "remove the node",
            )
        conn.execute("DELETE FROM nodes WHERE name = ?", (name,))
        writer.record(
            conn,
            _event(
                actor,
                "node.remove",
                name,
                address=record.address,
                port=record.port,
                fingerprint=record.fingerprint,
            ),
            now,
        )
        if also is not None:
            also(conn)
        write_known_hosts(conn, known_hosts, owner)
    return record


def pin(
    store: Store,
    name: str,
    key_type: str,
    key_b64: str,
    fingerprint: str,
    actor: str,
    *,
    known_hosts: Path,
    owner: tuple[int, int] | None,
    expect_previous: str | None = None,
    now: datetime | None = None,
) -> NodeRecord:
    """Pin a host key and rewrite known_hosts from every pinned row, in one transaction.

    `expect_previous` is the fingerprint the caller saw pinned when it decided: if another
    enrollment changed it meanwhile, this one is refused rather than silently overriding it.
    """
    key = HostKey.from_blob(decode_key(key_type, key_b64))
    if key.fingerprint != fingerprint:
        raise RefusedError(f"fingerprint {fingerprint} does not belong to that key")
    with store.transaction() as conn:
        record = require(conn, name)
        if record.fingerprint != expect_previous:
            raise RefusedError(
                f"the pinned key of {name} changed while enrolling",
                fix="run the enrollment again",
            )
        stamp = to_text(now or utcnow())
        conn.execute(
            "UPDATE nodes SET host_key_type = ?, host_key = ?, fingerprint = ?,"
            " enrolled_at = ?, enrolled_by = ? WHERE name = ?",
            (key.key_type, key.key_b64, key.fingerprint, stamp, actor, name),
        )
        writer.record(
            conn,
            _event(
                actor,
                "node.enroll",
                name,
                key_type=key.key_type,
                fingerprint=key.fingerprint,
                previous=record.fingerprint,
            ),
            now,
        )
        write_known_hosts(conn, known_hosts, owner)
        return require(conn, name)


def known_hosts_text(rows: Sequence[tuple[str, int, str, str]]) -> str:
    """known_hosts lines for (address, port, key type, base64 key) rows, in that order."""
    lines = []
    for address, port, key_type, key_b64 in rows:
        host = address if port == 22 else f"[{address}]:{port}"
        lines.append(f"{host} {key_type} {key_b64}\n")
    return "".join(lines)


def write_known_hosts(conn: sqlite3.Connection, path: Path, owner: tuple[int, int] | None) -> None:
    """Rewrite the file from ALL pinned rows (atomically, 0600): nothing else is trusted."""
    rows = conn.execute(
        "SELECT address, port, host_key_type, host_key FROM nodes"
        " WHERE fingerprint IS NOT NULL ORDER BY name"
    ).fetchall()
    checked = []
    for address, port, key_type, key_b64 in rows:
        decode_key(str(key_type), str(key_b64))  # a row edited in the database is refused
        checked.append((check_address(str(address)), int(port), str(key_type), str(key_b64)))
    write_private_file(path, known_hosts_text(checked).encode("ascii"), owner, 0o600)


def mark_bootstrapped(
    store: Store,
    name: str,
    changed: Sequence[str],
    actor: str,
    *,
    ok: bool = True,
    error: str | None = None,
    now: datetime | None = None,
) -> None:
    """Audit a bootstrap that changed something on the node, or a first one that found all
    in place; only a successful one sets bootstrapped_at."""
    with store.transaction() as conn:
        record = require(conn, name)
        if ok and not changed and record.bootstrapped_at is not None:
            return
        if not ok and not changed:
            return
        if ok:
            conn.execute(
                "UPDATE nodes SET bootstrapped_at = ? WHERE name = ?",
                (to_text(now or utcnow()), name),
            )
        event = writer.EventInput(
            actor,
            "node.bootstrap",
            f"node:{name}",
            outcome="ok" if ok else "failed",
            details={"changed": list(changed), "error": error},
        )
        writer.record(conn, event, now)


def record_status(
    store: Store, observations: Sequence[Observation], actor: str, now: datetime | None = None
) -> None:
    """Store what status saw. Last-seen and skew are bookkeeping; a change of hook version,
    sudo or I/O logging is audited (`node.observe`): it decides whether grants may go there."""
    if not observations:
        return
    stamp = to_text(now or utcnow())
    with store.transaction() as conn:
        events = []
        for seen in observations:
            record = get(conn, seen.name)
            if record is None:
                continue
            before = (
                record.hook_version,
                record.sudo_flavour,
                record.sudo_version,
                record.io_logging,
            )
            after = (seen.hook_version, seen.sudo_flavour, seen.sudo_version, seen.io_logging)
            conn.execute(
                "UPDATE nodes SET hook_version = ?, sudo_flavour = ?, sudo_version = ?,"
                " io_logging = ?, last_seen_at = ?, last_skew_s = ? WHERE name = ?",
                (
                    seen.hook_version,
                    seen.sudo_flavour,
                    seen.sudo_version,
                    None if seen.io_logging is None else int(seen.io_logging),
                    stamp,
                    seen.skew_s,
                    seen.name,
                ),
            )
            if before != after:
                keys = ("hook_version", "sudo_flavour", "sudo_version", "io_logging")
                events.append(
                    _event(
                        actor,
                        "node.observe",
                        seen.name,
                        before=dict(zip(keys, before, strict=True)),
                        after=dict(zip(keys, after, strict=True)),
                    )
                )
        if events:
            writer.record_many(conn, events, now)
