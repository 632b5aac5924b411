"""Signed checkpoints of the chain head, sealed outside the database.

After each committed write (or every `audit.checkpoint_interval`), the head
(seq, hash, time) is signed with the broker's Ed25519 key and appended to a
checkpoint log, to an optional second path (another disk, a WORM mount) and
to syslog, which a site ships off the host. Deleting the newest events or
rewriting the chain with recomputed hashes then contradicts a checkpoint.

Each line names the broker that sealed it and its key id; verification accepts this
broker's key and the keys of its peers (`audit.trusted_keys`), so a chain that two brokers
append to verifies on either (docs/audit.md).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.audit.verify import Checkpoint
from broker.core import syslog
from broker.core.errors import IntegrityError, UnavailableError
from broker.store.files import check_private_file, write_private_file

log = logging.getLogger("broker.audit")


@dataclass(frozen=True)
class SigningKey:
    """The broker's checkpoint key; the private half never leaves this object."""

    private: Ed25519PrivateKey

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id!r})"

    @property
    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    @property
    def key_id(self) -> str:
        return key_id(self.public)


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_path(private_path: Path) -> Path:
    return private_path.with_suffix(".pub")


def create_signing_key(path: Path, owner: tuple[int, int] | None) -> SigningKey:
    """Make a new key (0600) and its public half (0644) next to it; never overwrite."""
    if path.exists():
        return load_signing_key(path)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    write_private_file(path, pem, owner, 0o600)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    write_private_file(public_key_path(path), public_pem, owner, 0o644)
    return SigningKey(private)


def load_signing_key(path: Path) -> SigningKey:
    try:
        check_private_file(path, 0o600)
        private = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except FileNotFoundError:
        raise UnavailableError(
            f"no audit signing key at {path}", fix="run `broker init` to create it"
        ) from None
    if not isinstance(private, Ed25519PrivateKey):
        raise IntegrityError(f"{path} is not an Ed25519 private key")
    return SigningKey(private)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        public = serialization.load_pem_public_key(path.read_bytes())
    except FileNotFoundError:
        raise UnavailableError(
            f"no audit verification key at {path}", fix="run `broker init` to create the key pair"
        ) from None
    if not isinstance(public, Ed25519PublicKey):
        raise IntegrityError(f"{path} is not an Ed25519 public key")
    return public


# A checkpoint line says which broker sealed it from version 2 on; version 1 lines (no
# `broker`) are still read, so logs written before stay verifiable.
_BROKER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,62}$")
CheckpointKeys = Mapping[str, Ed25519PublicKey]


def checkpoint_keys(own: Ed25519PublicKey, peers: Sequence[Ed25519PublicKey]) -> CheckpointKeys:
    """Key id -> key: this broker's audit key and its peers' (`audit.trusted_keys`)."""
    return {key_id(public): public for public in (own, *peers)}


def _signed_body(seq: int, head: str, time: str, kid: str, broker: str | None) -> bytes:
    fields: dict[str, object] = {"v": 1, "seq": seq, "hash": head, "time": time, "key": kid}
    if broker is not None:
        fields.update(v=2, broker=broker)
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")


def checkpoint_line(key: SigningKey, seq: int, head: str, time: str, *, broker: str) -> str:
    """One JSON line: the statement, the broker that sealed it, and the signature."""
    if not _BROKER.fullmatch(broker):
        raise ValueError(f"{broker[:64]!r} cannot name a broker in a checkpoint")
    body = _signed_body(seq, head, time, key.key_id, broker)
    fields = json.loads(body)
    fields["sig"] = base64.b64encode(key.private.sign(body)).decode("ascii")
    return json.dumps(fields, sort_keys=True, separators=(",", ":"))


def _fields(line: str, source: str) -> tuple[int, str, str, str, str | None, bytes]:
    try:
        data = json.loads(line)
        version = data["v"]
        seq, head, time, kid = (
            int(data["seq"]),
            str(data["hash"]),
            str(data["time"]),
            str(data["key"]),
        )
        broker = None if version == 1 else str(data["broker"])
        sig = base64.b64decode(str(data["sig"]), validate=True)
    except (ValueError, KeyError, TypeError):
        raise IntegrityError(
            f"checkpoint {source} is malformed: the checkpoint log was edited"
        ) from None
    if (
        type(version) is not int
        or version not in (1, 2)
        or (broker is not None and not _BROKER.fullmatch(broker))
    ):
        raise IntegrityError(f"checkpoint {source} is malformed: the checkpoint log was edited")
    return seq, head, time, kid, broker, sig


def parse_checkpoint_line(line: str, keys: CheckpointKeys, source: str) -> Checkpoint:
    """Parse and check one line; anything unsigned, malformed or signed by a key that is
    neither this broker's nor a trusted peer's is refused, naming the key (and broker)."""
    seq, head, time, kid, broker, sig = _fields(line, source)
    public = keys.get(kid)
    if public is None:
        by = f" (sealed by {broker})" if broker else ""
        raise IntegrityError(
            f"checkpoint {source} is signed by unknown key {kid}{by}",
            fix="if that broker is this one's peer, list its audit key in audit.trusted_keys",
        )
    try:
        public.verify(sig, _signed_body(seq, head, time, kid, broker))
    except InvalidSignature:
        raise IntegrityError(
            f"checkpoint {source} has a bad signature: the checkpoint log was edited"
        ) from None
    return Checkpoint(seq=seq, hash=head, time=time, key_id=kid, source=source, broker=broker or "")


def read_checkpoints(paths: Sequence[Path], keys: CheckpointKeys) -> list[Checkpoint]:
    """All checkpoints from every copy that exists (a missing copy is skipped, a bad line is not)."""
    found: list[Checkpoint] = []
    for path in paths:
        try:
            text = path.read_text(encoding="ascii")
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise IntegrityError(f"cannot read checkpoint log {path}: {exc}") from None
        for number, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                found.append(parse_checkpoint_line(line, keys, f"{path}:{number}"))
    return found


def last_sealed_seq(path: Path) -> int:
    """The seq of the last line of a checkpoint log, read from its tail only."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 4096))
            tail = handle.read().splitlines()
    except FileNotFoundError:
        return 0
    for raw in reversed(tail):
        if raw.strip():
            try:
                return int(json.loads(raw)["seq"])
            except (ValueError, KeyError, TypeError):
                return 0
    return 0


def send_syslog(socket_path: Path, line: str) -> None:
    """Best effort: a copy in syslog for shipping off the host; never blocks a commit."""
    try:
        syslog.send(socket_path, "authpriv", "notice", "broker-audit", f"checkpoint {line}")
    except OSError as exc:
        log.warning(
            "audit checkpoint not sent to syslog at %s: %s", socket_path, exc.strerror or exc
        )
