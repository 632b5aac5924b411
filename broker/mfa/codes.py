"""TOTP codes: strict parsing, time steps, constant-time matching. Pure; pyotp generates.

Parsing is deliberately narrow (six ASCII digits, nothing stripped or
normalised) so that what is checked is exactly what the user typed, and a
refusal never echoes the input: it may be a password typed at the wrong prompt.
"""

from __future__ import annotations

import hmac
import re
from datetime import datetime

import pyotp

from broker.core.errors import RefusedError

PERIOD_S = 30
_CODE = re.compile(r"[0-9]{6}")  # a literal range: ASCII digits only, unlike \d


def parse_code(text: str) -> str:
    """The code itself when `text` is exactly six ASCII digits; refused otherwise."""
    if not (len(text) == 6 and text.isascii() and _CODE.fullmatch(text)):
        raise RefusedError(
            "a TOTP code is exactly six digits 0-9",
            fix="type the six digits your authenticator app shows, nothing else",
        )
    return text


def time_step(now: datetime) -> int:
    """The RFC 6238 step (30 s) that `now` falls in."""
    if now.tzinfo is None:
        raise ValueError("naive datetime: the broker only handles timezone-aware UTC times")
    return int(now.timestamp()) // PERIOD_S


def code_at(secret_b32: str, step: int) -> str:
    """The code a secret shows during `step`."""
    return str(pyotp.TOTP(secret_b32).at(step * PERIOD_S))


def matching_step(secret_b32: str, code: str, now: datetime, window: int) -> int | None:
    """The newest step within `window` steps of now whose code is `code`, else None.

    Every candidate is computed and compared (hmac.compare_digest, no early exit),
    so the time taken does not say which step, if any, matched.
    """
    wanted = parse_code(code).encode("ascii")
    current = time_step(now)
    found: int | None = None
    for step in range(current - window, current + window + 1):
        if hmac.compare_digest(code_at(secret_b32, step).encode("ascii"), wanted):
            found = step
    return found


def shown_at(secret_b32: str, code: str, step: int) -> bool:
    """Whether the secret showed `code` during `step` (a replay of an older code is named
    as such, not as a wrong one)."""
    wanted = parse_code(code).encode("ascii")
    return hmac.compare_digest(code_at(secret_b32, step).encode("ascii"), wanted)


def provisioning_uri(secret_b32: str, account_name: str, issuer: str) -> str:
    """The otpauth:// URI an authenticator app imports (shown once, as a QR code)."""
    return str(pyotp.TOTP(secret_b32).provisioning_uri(name=account_name, issuer_name=issuer))
