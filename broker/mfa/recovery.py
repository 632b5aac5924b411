"""One-time recovery codes: readable to type, stored only as salted scrypt hashes.

The alphabet leaves out 0/o/1/l/i so a code read off paper is typed right;
12 characters of 31 give about 59 bits, and scrypt makes each guess at a
stolen database cost real work.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets

from broker.core.errors import IntegrityError, RefusedError

ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
GROUPS = 3
GROUP_LEN = 4
COUNT = 10
_GROUP = f"[{ALPHABET}]{{{GROUP_LEN}}}"
_FORM = re.compile("-?".join([_GROUP] * GROUPS))
_SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}
_SALT_BYTES = 16


def generate(count: int = COUNT) -> list[str]:
    """`count` fresh codes `xxxx-xxxx-xxxx`."""
    return [
        "-".join("".join(secrets.choice(ALPHABET) for _ in range(GROUP_LEN)) for _ in range(GROUPS))
        for _ in range(count)
    ]


def normalise(text: str) -> str:
    """The canonical `xxxx-xxxx-xxxx` form: ASCII, any case, hyphens optional; else refused."""
    # isascii first: lower() and case-insensitive regexes map some non-ASCII letters
    # (the Kelvin sign, the long s) onto ASCII ones.
    lowered = text.lower() if text.isascii() else ""
    if not _FORM.fullmatch(lowered):
        raise RefusedError(
            "a recovery code is twelve letters and digits: xxxx-xxxx-xxxx",
            fix="type one of the codes you were given at enrollment",
        )
    plain = lowered.replace("-", "")
    return "-".join(plain[i : i + GROUP_LEN] for i in range(0, len(plain), GROUP_LEN))


def _derive(code: str, salt: bytes) -> bytes:
    return hashlib.scrypt(normalise(code).encode("ascii"), salt=salt, **_SCRYPT)


def hash_code(code: str) -> str:
    """`scrypt$<salt hex>$<hash hex>` of the canonical form, with a fresh random salt."""
    salt = os.urandom(_SALT_BYTES)
    return f"scrypt${salt.hex()}${_derive(code, salt).hex()}"


def matches(code: str, stored: str) -> bool:
    """Whether `code` is the one `stored` was made from (constant-time compare)."""
    try:
        scheme, salt_hex, digest_hex = stored.split("$")
        salt, digest = bytes.fromhex(salt_hex), bytes.fromhex(digest_hex)
    except ValueError:
        scheme, salt, digest = "", b"", b""
    if scheme != "scrypt" or len(salt) != _SALT_BYTES or not digest:
        raise IntegrityError(
            "a stored recovery code hash is malformed",
            fix="check `broker audit verify`; an operator can reset the account's MFA",
        )
    return hmac.compare_digest(_derive(code, salt), digest)
