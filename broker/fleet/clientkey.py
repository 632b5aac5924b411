"""The broker's own SSH key (`broker init`), in OpenSSH format, without loading paramiko."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.store.files import write_private_file


def create_client_key(path: Path, owner: tuple[int, int] | None) -> None:
    """Write a new Ed25519 key at `path` (0600) and its public half beside it (0644)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.OpenSSH,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_private_file(path, private, owner, 0o600)
    write_private_file(path.with_name(path.name + ".pub"), public + b" broker\n", owner, 0o644)
