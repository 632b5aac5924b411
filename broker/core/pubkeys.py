"""Other brokers' public keys, read from files an operator copied to this host.

A broker trusts its peers' grant keys (nodes accept grants either signed) and their audit
keys (checkpoints either sealed verify). Such a file is a trust root: it is read only if it
is a regular file (no symlink), at most 4 KiB, not writable by group or others and owned by
root or this process's user, and it holds exactly one Ed25519 public key as PEM
(SubjectPublicKeyInfo, what `broker init` writes beside each private key). A key that is
this broker's own, or listed twice, is refused too: a list that says less than it seems to
is a configuration mistake, and each refusal names the file and how to fix it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.core.errors import IntegrityError, UnavailableError

MAX_FILE = 4096
# Nodes accept at most 8 grant keys (pam/src/bk_contract.h BK_MAX_KEYS): this broker and 7.
MAX_PEERS = 7


def raw(public: Ed25519PublicKey) -> bytes:
    """The 32 bytes of the key, what key ids and duplicate checks are made of."""
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _read(path: Path, what: str) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        raise UnavailableError(
            f"no {what} at {path}", fix=f"copy the other broker's {path.name} there"
        ) from None
    except OSError as exc:
        why = "is a symlink" if exc.errno == errno.ELOOP else f"cannot be read ({exc.strerror})"
        raise IntegrityError(f"{what} {path} {why}", fix="use a regular file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise IntegrityError(f"{what} {path} is not a regular file")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o022:
            raise IntegrityError(
                f"{what} {path} has mode {mode:04o}: others could replace the key",
                fix=f"chmod 644 {path}",
            )
        if info.st_uid not in (0, os.geteuid()):
            raise IntegrityError(
                f"{what} {path} is owned by uid {info.st_uid}, not root or this broker",
                fix=f"chown root {path}",
            )
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_FILE:
        raise IntegrityError(f"{what} {path} is larger than {MAX_FILE} bytes")
    return data


def load_public_key_file(path: Path, what: str) -> Ed25519PublicKey:
    """One peer's public key; refused unless the file is exactly as the module doc says."""
    data = _read(path, what)
    try:
        public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        public = None
    if not isinstance(public, Ed25519PublicKey):
        raise IntegrityError(
            f"{what} {path} is not an Ed25519 public key in PEM",
            fix="copy the other broker's .pub file as `broker init` wrote it",
        )
    return public


def load_peer_keys(
    own: Ed25519PublicKey, paths: Sequence[Path], what: str
) -> list[Ed25519PublicKey]:
    """The peers' keys in the configured order; never this broker's own key, none twice."""
    if len(paths) > MAX_PEERS:
        raise IntegrityError(f"at most {MAX_PEERS} {what}s may be trusted, {len(paths)} are set")
    seen = {raw(own): "this broker's own key"}
    keys = []
    for path in paths:
        public = load_public_key_file(path, what)
        earlier = seen.get(raw(public))
        if earlier is not None:
            raise IntegrityError(
                f"{what} {path} is the same key as {earlier}",
                fix="list each other broker's key once, and not this broker's own",
            )
        seen[raw(public)] = str(path)
        keys.append(public)
    return keys
