"""Passwords and keys of a rotation: made in memory, derived by MIT Kerberos, never shown.

The password is random (160 bits from `secrets`, plus one character of each class AD's
complexity rule counts); keys are derived with `krb5.c_string_to_key` using the salt
the KDC itself reports for the account (ETYPE-INFO2 of an AS-REQ without
pre-authentication), never a salt guessed from the account name. Nothing here is
printable: `Secret` and `Key` hide their bytes from repr and str.
"""

from __future__ import annotations

import base64
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import krb5

from broker.core.errors import RefusedError, UnavailableError

# Default string-to-key parameters (RFC 3962: 4096 iterations; RFC 8009: 32768).
_DEFAULT_S2K = {
    17: b"\x00\x00\x10\x00",
    18: b"\x00\x00\x10\x00",
    19: b"\x00\x00\x80\x00",
    20: b"\x00\x00\x80\x00",
}
PASSWORD_CHARS = string.ascii_letters + string.digits
PASSWORD_BITS = 160


class Secret:
    """A password held in memory only; it never prints."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<hidden>)"

    __str__ = __repr__


def new_password() -> Secret:
    """27 random alphanumerics (>= 160 bits) plus a lower, an upper, a digit and a symbol in
    random places: long and complex enough for AD's default and stricter policies."""
    length = 27  # 62**27 > 2**160
    chars = [secrets.choice(PASSWORD_CHARS) for _ in range(length)]
    for pool in (string.ascii_lowercase, string.ascii_uppercase, string.digits, "-_.+=!"):
        chars.insert(secrets.randbelow(len(chars) + 1), secrets.choice(pool))
    return Secret("".join(chars))


@dataclass(frozen=True)
class Key:
    """One derived key: enctype number and bytes (hidden from repr)."""

    enctype: int
    data: bytes = field(repr=False)

    def b64(self) -> str:
        return base64.b64encode(self.data).decode("ascii")


@dataclass(frozen=True)
class SaltInfo:
    enctype: int
    salt: bytes
    params: bytes


def _context() -> krb5.Context:
    try:
        return krb5.init_context()
    except krb5.Krb5Error as exc:
        raise UnavailableError(
            f"Kerberos is not usable here ({_krb5_text(exc)})", fix="check kerberos.krb5_conf"
        ) from None


def _krb5_text(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc)
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return " ".join(str(message).split())[:160]


def enctype_number(name: str) -> int:
    """MIT's number for an enctype name (e.g. aes256-cts-hmac-sha1-96 -> 18)."""
    try:
        return int(krb5.string_to_enctype(_context(), name))
    except (krb5.Krb5Error, UnicodeEncodeError):
        raise RefusedError(f"unknown enctype {name[:60]!r}") from None


def salt_of(principal: str, enctypes: Sequence[int]) -> dict[int, SaltInfo]:
    """The salt and string-to-key parameters the KDC reports for each enctype of `principal`.

    Refuses an enctype the KDC does not offer for the account, and non-default
    parameters (MIT's c_string_to_key cannot take them; guessing would make keys
    that never match)."""
    ctx = _context()
    try:
        name = krb5.parse_name_flags(ctx, principal.encode("utf-8"))
    except krb5.Krb5Error as exc:
        raise RefusedError(f"bad principal {principal!r} ({_krb5_text(exc)})") from None
    found: dict[int, SaltInfo] = {}
    for enctype in enctypes:
        opt = krb5.get_init_creds_opt_alloc(ctx)
        krb5.get_init_creds_opt_set_etype_list(opt, [enctype])
        try:
            info = krb5.get_etype_info(ctx, name, opt)
        except krb5.Krb5Error as exc:
            text = _krb5_text(exc)
            if "not found" in text.lower():
                raise RefusedError(
                    f"the KDC does not know {principal}",
                    fix="create the account: broker keytab create NAME --create-account",
                ) from None
            if "no support for encryption type" in text.lower() or "enctype" in text.lower():
                raise RefusedError(
                    f"the KDC has no enctype {enctype} key for {principal} ({text})",
                    fix="allow it in msDS-SupportedEncryptionTypes or remove it from the policy",
                ) from None
            raise UnavailableError(f"KDC unreachable for {principal} ({text})") from None
        if int(info.etype) != enctype:
            raise RefusedError(
                f"the KDC offers enctype {info.etype}, not {enctype}, for {principal}",
                fix="allow it in msDS-SupportedEncryptionTypes or remove it from the policy",
            )
        params = bytes(info.s2kparams or b"")
        if params and params != _DEFAULT_S2K.get(enctype, params):
            raise RefusedError(
                f"the KDC reports non-default string-to-key parameters for {principal} "
                f"enctype {enctype}; keys cannot be derived safely"
            )
        found[enctype] = SaltInfo(enctype, bytes(info.salt or b""), params)
    return found


def derive(password: Secret, salts: dict[int, SaltInfo]) -> tuple[Key, ...]:
    """One key per enctype, by MIT Kerberos (krb5_c_string_to_key), with the KDC's salt."""
    ctx = _context()
    keys = []
    for enctype, info in sorted(salts.items(), reverse=True):
        try:
            block = krb5.c_string_to_key(ctx, enctype, password.reveal().encode(), info.salt)
        except krb5.Krb5Error as exc:
            raise RefusedError(
                f"cannot derive enctype {enctype} keys ({_krb5_text(exc)})"
            ) from None
        keys.append(Key(enctype, bytes(block.data)))
    return tuple(keys)


def salts_differ(a: Mapping[int, SaltInfo], b: Mapping[int, SaltInfo]) -> bool:
    return {k: (v.salt, v.params) for k, v in a.items()} != {
        k: (v.salt, v.params) for k, v in b.items()
    }
