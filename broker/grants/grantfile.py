"""Write and sign `broker-grant-v1` files (docs/grants.md), the broker's half of the contract.

The node side (pam/broker_node/contract.py) parses with plain string methods and
refuses anything not byte-for-byte in this form, so every field is checked
here against the same allow-lists before a file is produced: a grant the
broker signs is one the node will accept, and nothing else can be signed.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.core.errors import UsageError
from broker.core.timeutil import to_second_text
from broker.policy.names import POSIX_NAME

MAGIC = "broker-grant-v1"
KEY_MAGIC = "broker-grant-key-v1"
MAX_BYTES = 8192
MAX_KEYS = 8  # grant-key.pub lines a node accepts (pam/src/bk_contract.h BK_MAX_KEYS)
MAX_SESSIONS = 16
REASON_MAX = 200
GRANT_ID = re.compile(r"g[0-9a-f]{16}")
NODE_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
COMMAND_SET = re.compile(r"[a-z][a-z0-9-]{0,47}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# Unicode categories a reason may never contain: controls, format (bidi overrides,
# zero-width joiners), line and paragraph separators.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def _refuse(field: str, value: object, fix: str) -> UsageError:
    return UsageError(f"grant {field} {value!r} is not accepted", fix=fix)


def _check_name(field: str, value: object) -> None:
    if not isinstance(value, str) or not POSIX_NAME.fullmatch(value):
        raise _refuse(field, value, "use a POSIX user name: [a-z_][a-z0-9_-]{0,31}")


def _check_time(field: str, value: object) -> None:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise _refuse(field, value, "give a timezone-aware UTC datetime")
    if value.microsecond or value.year < 1970 or value.year > 9999:
        raise _refuse(field, value, "use whole seconds between 1970 and 9999")


def validate_reason(text: str) -> str:
    """The stated reason, stripped: 1..200 printable characters, no control/bidi/format ones."""
    if not isinstance(text, str):
        raise UsageError("the reason must be text", fix='give --reason "INC-4711 what and why"')
    value = text.strip()
    if not 1 <= len(value) <= REASON_MAX:
        raise UsageError(
            f"the reason must be 1 to {REASON_MAX} characters (got {len(value)})",
            fix="state the ticket and the work in one short line",
        )
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES or not char.isprintable():
            raise UsageError(
                f"the reason contains the non-printable character U+{ord(char):04X}",
                fix="use plain printable text on one line",
            )
    return value


def encode_reason(reason: str) -> str:
    """Percent-encode the UTF-8 reason: every byte outside A-Za-z0-9-._~ becomes %XX."""
    return "".join(
        chr(byte) if byte in _UNRESERVED else f"%{byte:02X}" for byte in reason.encode("utf-8")
    )


@dataclass(frozen=True)
class GrantFile:
    """One grant as written to `/var/lib/broker/grants/<id>` on one node, field by field.

    `commands` is `ALL` or command-set names joined by `,`; `reason` is the plain
    text (validate_reason's output), percent-encoded only when written.
    """

    id: str
    node: str
    user: str
    runas: str
    commands: str
    not_before: datetime
    not_after: datetime
    login: bool
    workloads: bool
    max_sessions: int
    policy_sha256: str
    approvers: tuple[str, ...]
    reason: str
    issued_at: datetime

    def __post_init__(self) -> None:
        if not isinstance(self.id, str) or not GRANT_ID.fullmatch(self.id):
            raise _refuse("id", self.id, "use new_grant_id(): g followed by 16 lower-case hex")
        if not isinstance(self.node, str) or not NODE_NAME.fullmatch(self.node):
            raise _refuse("node", self.node, "use the inventory name: [a-z0-9][a-z0-9-]{0,62}")
        _check_name("user", self.user)
        _check_name("runas", self.runas)
        for field in ("not_before", "not_after", "issued_at"):
            _check_time(field, getattr(self, field))
        if self.not_before >= self.not_after:
            raise _refuse("not_after", self.not_after, "end the grant after it starts")
        if not isinstance(self.commands, str) or not (
            self.commands == "ALL"
            or all(COMMAND_SET.fullmatch(name) for name in self.commands.split(","))
        ):
            raise _refuse(
                "commands", self.commands, "give ALL or set names [a-z][a-z0-9-]{0,47} joined by ,"
            )
        for field in ("login", "workloads"):
            if not isinstance(getattr(self, field), bool):
                raise _refuse(field, getattr(self, field), "give True or False")
        sessions = self.max_sessions
        if type(sessions) is not int or not 1 <= sessions <= MAX_SESSIONS:
            raise _refuse("max_sessions", sessions, f"give a number from 1 to {MAX_SESSIONS}")
        if not isinstance(self.policy_sha256, str) or not SHA256_HEX.fullmatch(self.policy_sha256):
            raise _refuse("policy_sha256", self.policy_sha256, "give 64 lower-case hex digits")
        if not isinstance(self.approvers, tuple):
            raise _refuse("approvers", self.approvers, "give a tuple of user names")
        for approver in self.approvers:
            _check_name("approvers", approver)
        if validate_reason(self.reason) != self.reason:
            raise _refuse("reason", self.reason, "strip the reason (validate_reason does)")

    def body(self, signing_key_id: str) -> str:
        """Every line the signature covers, the `key_id` line and its newline included."""
        fields = (
            ("id", self.id),
            ("node", self.node),
            ("user", self.user),
            ("runas", self.runas),
            ("commands", self.commands),
            ("not_before", to_second_text(self.not_before)),
            ("not_after", to_second_text(self.not_after)),
            ("login", "1" if self.login else "0"),
            ("workloads", "1" if self.workloads else "0"),
            ("max_sessions", str(self.max_sessions)),
            ("policy_sha256", self.policy_sha256),
            ("approvers", ",".join(self.approvers)),
            ("reason", encode_reason(self.reason)),
            ("issued_at", to_second_text(self.issued_at)),
            ("key_id", signing_key_id),
        )
        return MAGIC + "\n" + "".join(f"{key}={value}\n" for key, value in fields)


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """The first 8 bytes of sha256(raw public key), as 16 lower-case hex digits."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


def public_key_line(public: Ed25519PublicKey) -> str:
    """One key's line of a node's /etc/broker/grant-key.pub."""
    return f"{KEY_MAGIC} {base64.b64encode(_raw(public)).decode('ascii')}\n"


def public_key_lines(publics: Sequence[Ed25519PublicKey]) -> str:
    """A node's whole /etc/broker/grant-key.pub: this broker's key first, then its peers'
    (`grants.trusted_keys`); a grant verifies on the node if any listed key signed it. One
    key gives the same file as before, which old nodes and old brokers read unchanged."""
    if not 1 <= len(publics) <= MAX_KEYS:
        raise UsageError(f"a node trusts 1 to {MAX_KEYS} grant keys, not {len(publics)}")
    if len({_raw(p) for p in publics}) != len(publics):
        raise UsageError("a grant key is listed twice", fix="list each broker's key once")
    return "".join(public_key_line(p) for p in publics)


def encode_signed(grant: GrantFile, key: Ed25519PrivateKey) -> str:
    """The complete grant file: the body, then the Ed25519 signature over all of it."""
    body = grant.body(key_id(key.public_key()))
    signature = base64.b64encode(key.sign(body.encode("ascii"))).decode("ascii")
    text = f"{body}signature={signature}\n"
    if len(text) > MAX_BYTES:
        raise UsageError(
            f"grant {grant.id} would be {len(text)} bytes, over the {MAX_BYTES} nodes accept",
            fix="shorten the reason or the list of approvers or command sets",
        )
    return text


def new_grant_id() -> str:
    """A fresh random grant id (`g` + 16 hex): unguessable and unique across the fleet."""
    return "g" + secrets.token_hex(8)
