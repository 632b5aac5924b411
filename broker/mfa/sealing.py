"""TOTP secrets at rest: AES-256-GCM under a key file only the daemon can read.

The associated data binds each ciphertext to its row (the account's
objectSid), so a sealed secret copied onto another account fails to open
instead of letting one user's authenticator unlock another's factor.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from broker.core.errors import IntegrityError, RefusedError, UnavailableError
from broker.store.files import check_private_file, write_private_file

KEY_BYTES = 32
NONCE_BYTES = 12


def create_key(path: Path, owner: tuple[int, int] | None) -> bytes:
    """Write a new random key (0600); never replace one, which would orphan every secret."""
    if os.path.lexists(path):
        raise RefusedError(
            f"an MFA key already exists at {path}",
            fix="keep it: replacing it makes every enrolled secret unreadable",
        )
    key = AESGCM.generate_key(bit_length=KEY_BYTES * 8)
    write_private_file(path, key, owner, 0o600)
    return key


def load_key(path: Path) -> bytes:
    """The key, after refusing links and loose modes; exactly 32 bytes or refused."""
    try:
        check_private_file(path, 0o600)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise UnavailableError(f"no MFA key at {path}", fix="run `broker init`") from None
    try:
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise IntegrityError(
            f"the MFA key {path} is not {KEY_BYTES} bytes",
            fix="restore it from backup; without it enrolled secrets cannot be read",
        )
    return key


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """nonce (12 random bytes) || AES-GCM ciphertext and tag."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, aad)


def unseal(key: bytes, blob: bytes, aad: bytes) -> bytes:
    """The plaintext; IntegrityError when the blob, the key or the AAD do not match."""
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError):
        raise IntegrityError(
            "a sealed MFA secret failed its integrity check (changed, or not this account's)",
            fix="check `broker audit verify`; an operator can reset the account's MFA",
        ) from None
