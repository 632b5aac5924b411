"""AD entries as plain records: raw LDAP attribute bytes in, validated values out. No I/O.

Every value is decoded from the raw bytes the DC sent (never from ldap3's
guesses, which turn a SID that happens to be valid UTF-8 into text), and
every identifier is checked against its syntax, so a hostile or corrupt
entry is refused here instead of travelling further.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from ldap3.protocol.formatters.formatters import format_sid, format_uuid_le

from broker.core.identity import ACCOUNT_NAME, fold_name

GROUP_TYPE_SECURITY = 0x80000000

RawAttributes = Mapping[str, Sequence[bytes]]

_SID = re.compile(r"^S-1-[0-9]{1,15}(?:-[0-9]{1,10}){1,15}$")
_GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_RANGE = re.compile(r"^([^;]+);range=([0-9]+)-([0-9]+|\*)$", re.IGNORECASE)


class RecordError(ValueError):
    """An entry the broker cannot use; the message names the entry and the attribute."""


@dataclass(frozen=True)
class UserRecord:
    """The attributes of one AD user that access decisions depend on."""

    guid: str
    sid: str
    name: str  # sAMAccountName, lower-cased
    upn: str | None
    dn: str
    uid_number: int | None
    gid_number: int | None
    primary_group_rid: int | None
    uac: int
    account_expires: int
    lockout_time: int
    last_logon: int  # lastLogonTimestamp, FILETIME ticks (0: never)
    created: datetime | None
    changed: datetime | None  # whenChanged (this DC's view; informational)
    usn_changed: int
    spns: tuple[str, ...]

    @property
    def problem(self) -> str | None:
        """Why this account can never be a cluster account, whatever its groups say."""
        if not ACCOUNT_NAME.fullmatch(self.name):
            return "sAMAccountName is not a valid Unix user name"
        return None


@dataclass(frozen=True)
class GroupRecord:
    guid: str
    sid: str
    name: str  # sAMAccountName as AD spells it
    dn: str
    gid_number: int | None
    usn_changed: int
    members: tuple[str, ...]  # member DNs, as the DC lists them
    security: bool = True  # a security group; distribution lists grant nothing


def _one(raw: RawAttributes, name: str, dn: str) -> bytes:
    values = raw.get(name.lower()) or []
    if len(values) != 1:
        raise RecordError(f"{dn}: expected exactly one {name}, got {len(values)}")
    return bytes(values[0])


def _maybe(raw: RawAttributes, name: str) -> bytes | None:
    values = raw.get(name.lower()) or []
    return bytes(values[0]) if values else None


def text(value: bytes) -> str:
    """LDAP strings are UTF-8; anything else is replaced, never trusted."""
    return value.decode("utf-8", errors="replace")


def integer(value: bytes | None, name: str, dn: str, default: int = 0) -> int:
    if value is None:
        return default
    try:
        return int(value.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise RecordError(f"{dn}: {name} is not an integer") from None


def sid_text(value: bytes, dn: str) -> str:
    sid = format_sid(value)
    if not isinstance(sid, str) or not _SID.fullmatch(sid):
        raise RecordError(f"{dn}: objectSid is not a valid SID")
    return sid


def guid_text(value: bytes, dn: str) -> str:
    guid = format_uuid_le(value)
    guid = guid.strip("{}").lower() if isinstance(guid, str) else ""
    if not _GUID.fullmatch(guid):
        raise RecordError(f"{dn}: objectGUID is not a valid GUID")
    return guid


def generalized_time(value: bytes | None) -> datetime | None:
    """`20261123093307.0Z` (whenCreated) as UTC (sliced by hand: strptime is slow at 20k)."""
    if value is None or len(value) < 14 or not value[:14].isdigit():
        return None
    v = value
    try:
        return datetime(
            int(v[0:4]), int(v[4:6]), int(v[6:8]), int(v[8:10]), int(v[10:12]), int(v[12:14]),
            tzinfo=UTC,
        )  # fmt: skip
    except ValueError:
        return None


def _posix_id(raw: RawAttributes, name: str, dn: str) -> int | None:
    value = _maybe(raw, name)
    if value is None:
        return None
    number = integer(value, name, dn)
    if not 1 <= number <= 0xFFFFFFFE:
        raise RecordError(f"{dn}: {name} {number} is outside 1..4294967294")
    return number


def plain(raw: RawAttributes) -> dict[str, Sequence[bytes]]:
    """ldap3's case-insensitive dict as a plain one with lower-case keys (much faster to read)."""
    return {key.lower(): values for key, values in raw.items()}


def user_record(dn: str, raw_attributes: RawAttributes) -> UserRecord:
    raw = plain(raw_attributes)
    return UserRecord(
        guid=guid_text(_one(raw, "objectGUID", dn), dn),
        sid=sid_text(_one(raw, "objectSid", dn), dn),
        name=fold_name(text(_one(raw, "sAMAccountName", dn))),
        upn=text(v) if (v := _maybe(raw, "userPrincipalName")) is not None else None,
        dn=dn,
        uid_number=_posix_id(raw, "uidNumber", dn),
        gid_number=_posix_id(raw, "gidNumber", dn),
        primary_group_rid=(
            integer(v, "primaryGroupID", dn) if (v := _maybe(raw, "primaryGroupID")) else None
        ),
        # Always present in AD: missing means the broker may not read it, and an account
        # whose state cannot be read must not look enabled.
        uac=integer(_one(raw, "userAccountControl", dn), "userAccountControl", dn),
        account_expires=integer(_maybe(raw, "accountExpires"), "accountExpires", dn),
        lockout_time=integer(_maybe(raw, "lockoutTime"), "lockoutTime", dn),
        last_logon=integer(_maybe(raw, "lastLogonTimestamp"), "lastLogonTimestamp", dn),
        created=generalized_time(_maybe(raw, "whenCreated")),
        changed=generalized_time(_maybe(raw, "whenChanged")),
        usn_changed=integer(_one(raw, "uSNChanged", dn), "uSNChanged", dn),
        spns=tuple(sorted(text(v) for v in raw.get("serviceprincipalname") or [])),
    )


def group_record(dn: str, raw_attributes: RawAttributes, members: Sequence[str]) -> GroupRecord:
    raw = plain(raw_attributes)
    return GroupRecord(
        guid=guid_text(_one(raw, "objectGUID", dn), dn),
        sid=sid_text(_one(raw, "objectSid", dn), dn),
        name=text(_one(raw, "sAMAccountName", dn)),
        dn=dn,
        gid_number=_posix_id(raw, "gidNumber", dn),
        usn_changed=integer(_one(raw, "uSNChanged", dn), "uSNChanged", dn),
        members=tuple(members),
        security=bool(integer(_maybe(raw, "groupType"), "groupType", dn) & GROUP_TYPE_SECURITY),
    )


def ranged_attribute(raw: RawAttributes, name: str) -> tuple[list[bytes], int | None]:
    """Values of `name` in an entry, and where the next range starts (None: all were sent).

    AD sends at most MaxValRange values of a large attribute, as `member;range=0-1499`;
    `member;range=1500-*` marks the last piece.
    """
    for key, values in raw.items():
        match = _RANGE.fullmatch(key)
        if match and match.group(1).lower() == name.lower():
            high = match.group(3)
            return [bytes(v) for v in values], None if high == "*" else int(high) + 1
    for key, values in raw.items():
        if key.lower() == name.lower():
            return [bytes(v) for v in values], None
    return [], None
