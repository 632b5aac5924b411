"""This node's trusted state on disk: node.conf, the verification key, the grant files
and the quarantine marker, each read with the checks of docs/grants.md; and the check of
a parsed grant against them."""

from __future__ import annotations

import binascii
import os

from .contract import (
    TMP_PREFIX,
    Grant,
    GrantKey,
    NodeConf,
    Paths,
    Quarantine,
    format_utc,
    parse_conf,
    parse_grant,
    parse_key_line,
    parse_quarantine,
    sha256,
)
from .ed25519 import decode_point, ed25519_verify
from .files import read_secure


def load_conf(paths: Paths) -> NodeConf | str:
    """/etc/broker/node.conf, read with the checks of docs/grants.md; or the problem."""
    data = read_secure(paths.node_conf, forbidden=0o022)
    conf = parse_conf(data) if isinstance(data, bytes) else data
    return f"node.conf: {conf}" if isinstance(conf, str) else conf


def load_key(paths: Paths) -> GrantKey | str:
    """The broker's verification key and its id; or the problem."""
    data = read_secure(paths.grant_key, forbidden=0o022, limit=256)
    raw = parse_key_line(data) if isinstance(data, bytes) else data
    if isinstance(raw, bytes) and decode_point(raw) is None:
        raw = "not a broker-grant-key-v1 line"
    if isinstance(raw, str):
        return f"grant-key.pub: {raw}"
    return GrantKey(raw, binascii.hexlify(sha256(raw)[:8]).decode("ascii"))


def grant_ids(paths: Paths) -> list[str]:
    """Names in the grants directory (sorted); temporary files left out."""
    try:
        names = os.listdir(paths.grants)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if not name.startswith(TMP_PREFIX))


def read_grant_file(paths: Paths, name: str) -> Grant | str:
    """Read, check and parse grants/<name>; the name must be the grant's id."""
    data = read_secure(os.path.join(paths.grants, name))
    if isinstance(data, str):
        return data
    grant = parse_grant(data)
    if isinstance(grant, Grant) and grant.id != name:
        return f"holds grant {grant.id}"
    return grant


def check_grant(
    grant: Grant,
    conf: NodeConf,
    key: GrantKey,
    now: int,
    *,
    paths: Paths,
    user: str | None = None,
    check_time: bool = True,
) -> str | None:
    """Everything the hook requires of a parsed grant but the file checks; None when valid.

    The signature is checked last: it is the only expensive step.
    """
    if grant.node != conf.node:
        return f"for node {grant.node}, this is {conf.node}"
    if user is not None and grant.user != user:
        return f"for user {grant.user}"
    if check_time and now < grant.not_before:
        return f"not valid before {format_utc(grant.not_before)}"
    if now >= grant.not_after:
        return f"expired at {format_utc(grant.not_after)}"
    if os.path.lexists(os.path.join(paths.revoked, grant.id)):
        return "revoked"
    if grant.key_id != key.key_id:
        return f"signed by key {grant.key_id}, this node trusts {key.key_id}"
    if not ed25519_verify(key.raw, grant.signed, grant.signature):
        return "bad signature"
    return None


def read_quarantine(paths: Paths) -> Quarantine | str | None:
    """None: no marker. A string: a marker that exists but cannot be trusted (bad owner,
    mode, link, content); the hook then treats the node as quarantined with nobody exempt."""
    try:
        os.lstat(paths.quarantine)
    except FileNotFoundError:
        return None
    except OSError as exc:  # cannot even look: fail closed
        return f"quarantine marker: {exc.strerror or exc}"
    data = read_secure(paths.quarantine, forbidden=0o022)
    marker = parse_quarantine(data) if isinstance(data, bytes) else data
    return f"quarantine marker: {marker}" if isinstance(marker, str) else marker
