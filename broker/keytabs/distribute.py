"""Keytabs onto nodes: staged or pruned in one node program run per node (docs/keytabs.md,
"On the node").

For one keytab on one node, under this process's lock for that node and path, the node
program's `keytab-install` gets the keytab's path, principals, owner, group, mode, the
versions to keep and the keys to add, as JSON on its stdin (never argv); it checks every
field, merges, writes atomically (temporary file 0600 with O_EXCL, owner and mode before
the first byte, fsync, rename, directory fsync) and reads back. Here the read-back is
checked again: only kept versions, and the added one present. Runs for several accounts
on one node are grouped (coalesce.py); each keytab still gets its own answer.

A node program from before keytab-install is served as before, over SFTP
(`install_over_sftp`):

1. `keytab-list` (node program, no key crosses): the uid and gid the node's own NSS gives
   the policy's owner and group (an unknown name is refused there: nothing is written),
   and the keytab's link count.
2. SFTP, in memory: the keytab's directory must be root's and writable by root only; the
   keytab must be a regular file (a symbolic link or anything else is refused) of at most
   keytabfile.MAX_KEYTAB bytes. keytabfile parses it, adds the new version and prunes to
   the kept ones. When content, owner, group, mode and link count are already right,
   nothing is written; otherwise pool.put_atomic writes a temporary file beside it
   (created 0600 with O_EXCL, owner and mode set before the first byte, fsync'd with
   fsync@openssh.com) and renames it over the keytab (posix-rename).
3. `keytab-sync` (node program): fsync of the directory, which SFTP cannot do, so the
   rename survives a crash; then the versions the node reads back from disk, which are
   what gets recorded, and which must be the ones written.

The keytab never touches the broker's disk. No key is ever in argv, a log line, an error,
a reply or an audit event: errors name the node, the path and what was wrong, never
content.

One writer per keytab file: the policy gives every keytab path on a node to one service
account (policy/service_accounts.py), the account's claim in the store (claims.py) keeps
it on one rotation worker at a time, and the lock here serialises the writes of one file
in this process (so two calls for one keytab never share a run). The broker takes no lock
on the node: another program writing the same file at the same moment (ktutil by hand;
adcli or SSSD renewing a host keytab) could lose its change or ours. Ours is caught: the
read-back refuses a keytab without the versions written. Keep service keys in their own
keytab files.
"""

from __future__ import annotations

import base64
import logging
import posixpath
import re
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import paramiko

from broker.core.errors import BrokerError, RefusedError
from broker.fleet import nodeprog
from broker.fleet.pool import SshPool, put_atomic, read_regular, remote_stat
from broker.fleet.ssh import NodeTarget, explain
from broker.keytabs import coalesce, keytabfile
from broker.keytabs.keytabfile import Entry, Principal

NODE_TIMEOUT_S = 30.0
# What the node program accepts as a keytab path (pam/broker_keytab.py: check_path).
_PATH = re.compile(r"/(?:[A-Za-z0-9._+-]+/)*[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}")
_NAME = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_MODES = (0o600, 0o400, 0o640, 0o440)
_SSH_TROUBLE = (paramiko.SSHException, EOFError, TimeoutError, ConnectionError)
# The node program's limits for one keytab (pam/broker_keytab.py), checked here first so
# one account's keytab never makes a whole shared run a usage error.
MAX_PRINCIPALS, MAX_ADD, MAX_KEEP, MAX_KVNO = 64, 256, 64, 0xFFFFFFFF
log = logging.getLogger("broker.keytabs")

_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


@dataclass(frozen=True)
class NodeResult:
    node: str
    ok: bool
    error: str | None = None
    kvnos: tuple[int, ...] = ()
    unreachable: bool = False


@dataclass(frozen=True)
class KeytabSpec:
    """Where and how one service account's keytab lives on its nodes (from the policy)."""

    path: str
    owner: str
    group: str
    mode: int
    principals: tuple[str, ...]

    def __post_init__(self) -> None:
        parts = self.path.split("/")
        if not _PATH.fullmatch(self.path) or any(p in ("", ".", "..") for p in parts[1:]):
            raise RefusedError(f"keytab path {self.path[:80]!r} is not a plain absolute path")
        if not _NAME.fullmatch(self.owner) or not _NAME.fullmatch(self.group):
            raise RefusedError("keytab owner and group must be POSIX names")
        if self.mode not in _MODES:
            raise RefusedError(f"keytab mode {self.mode:04o} is not 0600, 0400, 0640 or 0440")
        if not 1 <= len(self.principals) <= MAX_PRINCIPALS:
            raise RefusedError(f"a keytab needs 1 to {MAX_PRINCIPALS} principals")
        for principal in self.principals:
            try:
                Principal.parse(principal)
            except ValueError as exc:
                raise RefusedError(f"keytab principal {exc}") from exc

    @property
    def managed(self) -> list[Principal]:
        return [Principal.parse(p) for p in self.principals]


@contextmanager
def _one_writer(node: str, path: str) -> Iterator[None]:
    with _LOCKS_GUARD:
        lock = _LOCKS.setdefault((node, path), threading.Lock())
    with lock:
        yield


# ---------------------------------------------------------------- the SFTP part


def check_directory(sftp: paramiko.SFTPClient, directory: str) -> None:
    """The keytab's directory exists, is a directory (not a link), root's, and writable by
    root only: nobody else can swap the keytab or our temporary file."""
    attrs = remote_stat(sftp, directory)
    if attrs is None:
        raise RefusedError(f"directory {directory} does not exist", fix="create it (root, 0755)")
    if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
        raise RefusedError(f"{directory} is not a directory")
    if attrs.st_uid != 0 or attrs.st_mode & 0o022:
        raise RefusedError(
            f"{directory} must be owned by root and writable by root only",
            fix=f"chown root {directory} && chmod go-w {directory}",
        )


def merge_into(
    sftp: paramiko.SFTPClient,
    spec: KeytabSpec,
    *,
    keep: set[int],
    add: Sequence[Entry],
    uid: int,
    gid: int,
    single_link: bool = True,
) -> tuple[bool, list[Entry]]:
    """Read the node's keytab into memory, merge `add` and keep only the `keep` versions of
    the managed principals, and write it back when anything differs. Returns whether it
    was written, and the entries it holds now."""
    check_directory(sftp, posixpath.dirname(spec.path))
    attrs = remote_stat(sftp, spec.path)
    current = read_regular(sftp, spec.path, keytabfile.MAX_KEYTAB)
    existing = keytabfile.parse(current) if current else []
    merged = keytabfile.merge(existing, spec.managed, add, keep)
    content = keytabfile.serialize(merged)
    unchanged = (
        current is not None
        and attrs is not None
        and content == current
        and attrs.st_uid == uid
        and attrs.st_gid == gid
        and attrs.st_mode is not None
        and stat.S_IMODE(attrs.st_mode) == spec.mode
        and single_link
    )
    if unchanged:
        return False, merged
    put_atomic(sftp, spec.path, content, spec.mode, uid=uid, gid=gid, fsync=True)
    return True, merged


# ---------------------------------------------------------------- one node, all nodes


def _owner_ids(data: Mapping[str, object]) -> tuple[int, int]:
    uid, gid = data.get("owner_uid"), data.get("owner_gid")
    for value in (uid, gid):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 0xFFFFFFFF:
            raise RefusedError("the node program sent no usable uid/gid for the keytab's owner")
    assert isinstance(uid, int) and isinstance(gid, int)
    return uid, gid


def install_one(
    pool: SshPool,
    target: NodeTarget,
    spec: KeytabSpec,
    *,
    keep: set[int],
    add: Sequence[Entry],
    timeout: float = NODE_TIMEOUT_S,
) -> NodeResult:
    """One node's keytab merged, pruned and written in ONE node program run
    (`keytab-install`: the new keys on its stdin, never argv), which may carry other
    accounts' keytabs for the same node too (coalesce.py); a node whose program predates
    it is served over SFTP as before (`install_over_sftp`). Every failure is a result,
    never raised, so a fan-out reports every node."""
    node = target.name
    try:
        with _one_writer(node, spec.path):
            item = install_item(spec, keep, add)
            send = _send_installs(pool, timeout)
            reply: nodeprog.NodeReply = coalesce.for_pool(pool).call(
                target, "keytab-install", item, send
            )
            del item
            if _predates_install(reply):
                log.warning(
                    "%s: node program without keytab-install: %s over SFTP", node, spec.path
                )
                return install_over_sftp(pool, target, spec, keep=keep, add=add, timeout=timeout)
            return installed(node, reply, spec, keep, add)
    except BrokerError as exc:
        return NodeResult(node, False, f"{node}: {exc.one_line()}")
    except _SSH_TROUBLE as exc:
        return NodeResult(node, False, explain(target, exc, pool.options.known_hosts), (), True)
    except OSError as exc:  # an SFTP status: permission denied, no space, ...
        return NodeResult(node, False, f"{node}: {spec.path}: {exc.strerror or type(exc).__name__}")
    except ValueError as exc:  # input over the node program's 1 MiB (nodeprog.encode_payload)
        return NodeResult(node, False, f"{node}: {spec.path}: {exc}")


def install_item(spec: KeytabSpec, keep: set[int], add: Sequence[Entry]) -> dict[str, object]:
    """One keytab of a `keytab-install` run, as the node program checks it (every field
    allow-listed there again: pam/broker_keytab.py, _install_request)."""
    if not 1 <= len(keep) <= MAX_KEEP or not all(1 <= k <= MAX_KVNO for k in keep):
        raise RefusedError(f"{spec.path}: 1 to {MAX_KEEP} versions to keep, each 1 to {MAX_KVNO}")
    if len(add) > MAX_ADD or not all(8 <= len(e.key) <= 64 for e in add):
        raise RefusedError(f"{spec.path}: at most {MAX_ADD} keys to add, each 8 to 64 bytes")
    return {
        "path": spec.path,
        "principals": list(spec.principals),
        "owner": spec.owner,
        "group": spec.group,
        "mode": spec.mode,
        "keep": sorted(keep),
        "add": [
            {
                "principal": str(e.principal),
                "kvno": e.kvno,
                "enctype": e.enctype,
                "key": base64.b64encode(e.key).decode("ascii"),
            }
            for e in add
        ],
    }


def _predates_install(reply: nodeprog.NodeReply) -> bool:
    """A node program older than keytab-install says so as a usage error, and nothing else."""
    said = reply.data.get("error") if reply.data is not None else None
    return not reply.ok and isinstance(said, str) and said.startswith("unknown command")


def _send_installs(pool: SshPool, timeout: float) -> coalesce.Send:
    def send(target: NodeTarget, items: Sequence[dict[str, Any]]) -> list[nodeprog.NodeReply]:
        payload = {"keytabs": list(items)}
        reply = nodeprog.call(pool, target, "keytab-install", payload, timeout=timeout)
        if len(items) > 1 and not reply.ok and reply.data is not None:  # a usage error
            if _predates_install(reply):
                return [reply] * len(items)
            # One keytab the node refused as usage: each alone, so it fails only its own.
            return [send(target, [item])[0] for item in items]
        return split_reply(reply, len(items))

    return send


def send_verifies(pool: SshPool, timeout: float) -> coalesce.Send:
    """keytab-verify runs for coalesce.py: one keytab in the form every node program takes,
    several in one run (`keytabs`), or one run each for a program without that form."""

    def send(target: NodeTarget, items: Sequence[dict[str, Any]]) -> list[nodeprog.NodeReply]:
        def alone(item: dict[str, Any]) -> nodeprog.NodeReply:
            return nodeprog.call(pool, target, "keytab-verify", item, timeout=timeout)

        if len(items) == 1:
            return [alone(items[0])]
        payload = {"keytabs": list(items)}
        reply = nodeprog.call(pool, target, "keytab-verify", payload, timeout=timeout)
        if not reply.ok and reply.data is not None:  # a usage error: an older node program
            return [alone(item) for item in items]
        return split_reply(reply, len(items))

    return send


def split_reply(reply: nodeprog.NodeReply, count: int) -> list[nodeprog.NodeReply]:
    """A run's reply as one reply per keytab asked (`results`, in order); a run that failed
    as a whole, or a reply without exactly one object per keytab, fails every one."""
    if not reply.ok or reply.data is None:
        return [reply] * count
    results = reply.data.get("results")
    if not isinstance(results, list) or len(results) != count:
        results = [None] * count
    node, took = reply.node, reply.elapsed_ms
    return [
        nodeprog.NodeReply(node, True, one, None, took)
        if isinstance(one, dict)
        else nodeprog.NodeReply(node, False, None, f"{node}: unreadable reply", took)
        for one in results
    ]


def installed(
    node: str, reply: nodeprog.NodeReply, spec: KeytabSpec, keep: set[int], add: Sequence[Entry]
) -> NodeResult:
    """The node's answer for this keytab: the versions it reads back, which must all be
    kept ones and include the added version (the node is not trusted to have done what it
    was asked)."""
    result = node_result(node, reply, spec.principals)
    found = reply.data.get("kvnos") if result.ok and reply.data is not None else None
    if not isinstance(found, dict):
        return result
    for principal in spec.principals:
        held = set(found[principal])  # node_result checked: a list of ints for each
        added = {e.kvno for e in add if str(e.principal) == principal}
        if not held <= keep or not added <= held:
            return NodeResult(
                node,
                False,
                f"{node}: {spec.path} holds versions {sorted(held)} of {principal} after the "
                f"write, not the kept {sorted(keep)}",
            )
    return result


def install_over_sftp(
    pool: SshPool,
    target: NodeTarget,
    spec: KeytabSpec,
    *,
    keep: set[int],
    add: Sequence[Entry],
    timeout: float = NODE_TIMEOUT_S,
) -> NodeResult:
    """Steps 1-3 of the module docstring on one node, for a node program without
    keytab-install (installed before it; `broker node bootstrap` updates it); the caller
    holds the writer's lock and turns failures into results."""
    node = target.name
    query = {"path": spec.path, "principals": list(spec.principals)}
    listed = nodeprog.call(
        pool,
        target,
        "keytab-list",
        {**query, "owner": spec.owner, "group": spec.group},
        timeout=timeout,
    )
    if not listed.ok or listed.data is None or not listed.data.get("ok"):
        return node_result(node, listed, spec.principals)
    uid, gid = _owner_ids(listed.data)
    single_link = listed.data.get("nlink") in (None, 1)
    with pool.sftp(target, timeout=timeout) as sftp:
        written, merged = merge_into(
            sftp, spec, keep=keep, add=add, uid=uid, gid=gid, single_link=single_link
        )
    expected = keytabfile.common_versions(merged, spec.managed)
    if not written:
        return NodeResult(node, True, None, expected)
    synced = nodeprog.call(pool, target, "keytab-sync", query, timeout=timeout)
    result = node_result(node, synced, spec.principals)
    if result.ok and result.kvnos != expected:
        return NodeResult(
            node,
            False,
            f"{node}: {spec.path} holds versions {list(result.kvnos)} after the write, "
            f"not {list(expected)} (another program changed it?)",
        )
    return result


def install(
    pool: SshPool,
    targets: Sequence[NodeTarget],
    spec: KeytabSpec,
    *,
    keep: Mapping[str, set[int]],
    add: Sequence[Entry] = (),
    timeout: float = NODE_TIMEOUT_S,
) -> list[NodeResult]:
    """install_one on every target in parallel (the pool's bounded map); results in order.
    The pinned host keys are checked once first: that is configuration, raised, not a
    per-node failure."""
    pool.check_known_hosts()
    managed = spec.managed
    for entry in add:
        if entry.principal not in managed:
            raise ValueError(f"added key of {entry.principal}, which this keytab does not manage")

    def one(target: NodeTarget) -> NodeResult:
        return install_one(pool, target, spec, keep=keep[target.name], add=add, timeout=timeout)

    results: list[NodeResult] = pool.map(one, list(targets))
    return results


def node_result(node: str, reply: nodeprog.NodeReply, principals: Sequence[str]) -> NodeResult:
    """A `keytab-list`/`keytab-sync` reply as a result: the versions every principal has."""
    if not reply.ok or reply.data is None:
        return NodeResult(node, False, reply.error or "no reply", unreachable=True)
    data = reply.data
    if not data.get("ok"):
        return NodeResult(node, False, f"{node}: {_text(data.get('error'))}")
    found = data.get("kvnos")
    if not isinstance(found, dict):
        return NodeResult(node, False, f"{node}: unreadable reply")
    versions: set[int] | None = None
    for principal in principals:
        listed = found.get(principal)
        if not isinstance(listed, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) for k in listed
        ):
            return NodeResult(node, False, f"{node}: unreadable reply")
        here = set(listed)
        versions = here if versions is None else versions & here
    return NodeResult(node, True, None, tuple(sorted(versions or ())))


def _text(value: object) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(value))[:200]
