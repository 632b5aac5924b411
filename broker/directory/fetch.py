"""Read users, groups, which objects still exist, and DC state from AD: paged, ranged, read-only.

Only fixed filters are sent; the one value ever placed in a filter is an
integer USN. Referrals are never followed. A failed search raises
UnavailableError naming the DC, so a sync stops before touching the store.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import ldap3
from ldap3.core import exceptions as ldap_errors

from broker.core.errors import UnavailableError
from broker.directory.records import (
    GroupRecord,
    RecordError,
    UserRecord,
    group_record,
    guid_text,
    integer,
    ranged_attribute,
    sid_text,
    text,
    user_record,
)

PAGED_RESULTS = "1.2.840.113556.1.4.319"
RANGE_STEP = 1500  # AD's default MaxValRange
USERS = "(&(objectCategory=person)(objectClass=user))"
GROUPS = "(objectClass=group)"
USER_ATTRIBUTES = (
    "objectGUID",
    "objectSid",
    "sAMAccountName",
    "userPrincipalName",
    "uidNumber",
    "gidNumber",
    "primaryGroupID",
    "userAccountControl",
    "accountExpires",
    "lockoutTime",
    "lastLogonTimestamp",
    "whenCreated",
    "whenChanged",
    "uSNChanged",
    "servicePrincipalName",
)
GROUP_ATTRIBUTES = (
    "objectGUID",
    "objectSid",
    "sAMAccountName",
    "gidNumber",
    "groupType",
    "uSNChanged",
)


@dataclass(frozen=True)
class DcState:
    """Which DC answered, and its highest committed USN (USNs are per DC)."""

    uri: str
    name: str  # dsServiceName#invocationId: this DC, and this incarnation of its database
    highest_usn: int


@dataclass(frozen=True)
class DomainInfo:
    sid: str
    lockout_duration: timedelta | None  # None: locked until an administrator unlocks


@dataclass
class Fetched:
    users: list[UserRecord] = field(default_factory=list)
    groups: list[GroupRecord] = field(default_factory=list)
    present: set[str] | None = None  # objectGUIDs of every user and group that exists
    skipped: list[str] = field(default_factory=list)  # entries refused, with the reason
    unreadable: set[str] = field(default_factory=set)  # GUIDs of refused entries

    def read_guids(self) -> set[str]:
        return {u.guid for u in self.users} | {g.guid for g in self.groups}


class Reader:
    """Searches on one bound connection."""

    def __init__(self, conn: ldap3.Connection, uri: str, base_dn: str, page_size: int) -> None:
        self._conn = conn
        self._uri = uri
        self._base = base_dn
        self._page = page_size

    def _search(
        self,
        base: str,
        query: str,
        scope: str,
        attributes: Sequence[str],
        controls: list[tuple[str, bool, Any]] | None = None,
        cookie: bytes | None = None,
    ) -> list[dict[str, Any]]:
        try:
            self._conn.search(
                base,
                query,
                scope,
                attributes=list(attributes),
                paged_size=self._page if scope == ldap3.SUBTREE else None,
                paged_cookie=cookie,
                controls=controls,
            )
        except ldap_errors.LDAPException as exc:
            raise UnavailableError(
                f"{self._uri}: search under {base} failed ({exc})",
                fix="check the DC is up; the snapshot was left unchanged",
            ) from exc
        result = self._conn.result
        if result.get("result") != 0:
            raise UnavailableError(
                f"{self._uri}: search under {base} failed "
                f"({result.get('description')}: {result.get('message', '').strip()})",
                fix="check directory.base_dn and that the broker account may read it",
            )
        return [e for e in self._conn.response or [] if e.get("type") == "searchResEntry"]

    def _paged(
        self, query: str, attributes: Sequence[str], controls: list[tuple[str, bool, Any]] | None
    ) -> Iterator[dict[str, Any]]:
        cookie: bytes | None = None
        while True:
            page = self._search(self._base, query, ldap3.SUBTREE, attributes, controls, cookie)
            # Read the cookie before handing the page out: the consumer may search on this
            # connection (ranged members), which replaces conn.result.
            paged = (self._conn.result.get("controls") or {}).get(PAGED_RESULTS) or {}
            cookie = (paged.get("value") or {}).get("cookie") or None
            yield from page
            if not cookie:
                return

    def dc_state(self) -> DcState:
        """The DC's identity (its NTDS Settings DN and invocationId, which changes when the
        DC is restored from backup) and its highest committed USN."""
        found = self._search(
            "", "(objectClass=*)", ldap3.BASE, ["dsServiceName", "highestCommittedUSN"]
        )
        raw = found[0]["raw_attributes"] if found else {}
        name = text((raw.get("dsServiceName") or [b""])[0])
        try:
            usn = integer(
                (raw.get("highestCommittedUSN") or [None])[0], "highestCommittedUSN", "rootDSE"
            )
            ntds = (
                self._search(name, "(objectClass=*)", ldap3.BASE, ["invocationId"]) if name else []
            )
            invocation = guid_text(
                (ntds[0]["raw_attributes"].get("invocationId") or [b""])[0], name
            )
        except (RecordError, IndexError):
            raise UnavailableError(
                f"{self._uri}: the DC does not publish dsServiceName, highestCommittedUSN and"
                " invocationId",
                fix="point directory.uris at Active Directory domain controllers",
            ) from None
        return DcState(self._uri, f"{name}#{invocation}", usn)

    def domain(self) -> DomainInfo:
        found = self._search(
            self._base, "(objectClass=*)", ldap3.BASE, ["objectSid", "lockoutDuration"]
        )
        if not found:
            raise UnavailableError(
                f"{self._uri}: cannot read the domain object {self._base}",
                fix="check directory.base_dn names the domain itself",
            )
        raw = found[0]["raw_attributes"]
        try:
            sid = sid_text((raw.get("objectSid") or [b""])[0], self._base)
            ticks = integer(
                (raw.get("lockoutDuration") or [None])[0], "lockoutDuration", self._base
            )
        except RecordError:
            raise UnavailableError(
                f"{self._uri}: {self._base} is not a domain (no objectSid or lockoutDuration)",
                fix="set directory.base_dn to the domain's DN, e.g. DC=hpc,DC=example,DC=org",
            ) from None
        # A negative interval in 100 ns ticks; the most negative value (and, failing
        # closed, zero) means locked until an administrator unlocks the account.
        forever = ticks == 0 or ticks <= -(2**63)
        return DomainInfo(sid, None if forever else timedelta(microseconds=abs(ticks) // 10))

    def users(self, usn_from: int | None, usn_below: int | None, out: Fetched) -> None:
        """Users whose uSNChanged is in [usn_from, usn_below) (open where None)."""
        for entry in self._paged(
            f"(&{USERS}{usn_range(usn_from, usn_below)})", USER_ATTRIBUTES, None
        ):
            try:
                out.users.append(user_record(entry["dn"], entry["raw_attributes"]))
            except RecordError as exc:
                _refused(entry, exc, out)

    def groups(self, usn_from: int | None, out: Fetched) -> None:
        first = f"member;range=0-{RANGE_STEP - 1}"
        query = f"(&{GROUPS}{usn_range(usn_from, None)})"
        for entry in self._paged(query, (*GROUP_ATTRIBUTES, first), None):
            try:
                members = self._members(entry["dn"], entry["raw_attributes"])
                out.groups.append(group_record(entry["dn"], entry["raw_attributes"], members))
            except RecordError as exc:
                _refused(entry, exc, out)

    def changed_since(self, usn_from: int, out: Fetched) -> None:
        """Users and groups with uSNChanged >= usn_from, in one search on the USN index alone
        (Samba answers that faster than with the class filters), sorted out here."""
        attributes = {*USER_ATTRIBUTES, *GROUP_ATTRIBUTES, "objectClass", "objectCategory"}
        first = f"member;range=0-{RANGE_STEP - 1}"
        query = usn_range(usn_from, None)
        for entry in self._paged(query, (*sorted(attributes), first), None):
            raw = entry["raw_attributes"]
            classes = {bytes(v).lower() for v in raw.get("objectClass") or []}
            category = bytes((raw.get("objectCategory") or [b""])[0]).lower()
            try:
                if b"group" in classes:
                    members = self._members(entry["dn"], raw)
                    out.groups.append(group_record(entry["dn"], raw, members))
                elif b"user" in classes and category.startswith(b"cn=person,"):
                    out.users.append(user_record(entry["dn"], raw))
            except RecordError as exc:
                _refused(entry, exc, out)

    def containers_changed(self, since_usn: int) -> bool:
        """Did any OU or container change since `since_usn` (a rename moves its members)?"""
        query = f"(&(|(objectClass=organizationalUnit)(objectClass=container)){usn_range(since_usn + 1, None)})"
        return any(True for _entry in self._paged(query, ("objectGUID",), None))

    def present(self, out: Fetched) -> None:
        """The objectGUID of every user and group that exists now (one small attribute each).

        Deletions are found by what is missing: reading tombstones needs rights on
        CN=Deleted Objects that a broker account should not have, and this also
        catches objects moved out of base_dn.
        """
        found: set[str] = set()
        for entry in self._paged(f"(|{USERS}{GROUPS})", ("objectGUID",), None):
            guid = (entry["raw_attributes"].get("objectGUID") or [b""])[0]
            try:
                found.add(guid_text(guid, entry["dn"]))
            except RecordError as exc:
                out.skipped.append(str(exc))
        out.present = found

    def _members(self, dn: str, raw: Any) -> list[str]:
        """All values of `member`, following AD's ranged retrieval to the last piece."""
        values, next_low = ranged_attribute(raw, "member")
        members = [text(v) for v in values]
        while next_low is not None:
            found = self._search(dn, "(objectClass=*)", ldap3.BASE, [f"member;range={next_low}-*"])
            if not found:
                raise UnavailableError(f"{self._uri}: {dn} vanished while reading its members")
            values, following = ranged_attribute(found[0]["raw_attributes"], "member")
            if following is not None and following <= next_low:
                raise UnavailableError(
                    f"{self._uri}: {dn}: the DC sent a member range that does not advance"
                )
            members += [text(v) for v in values]
            next_low = following
        return members


def _refused(entry: dict[str, Any], exc: RecordError, out: Fetched) -> None:
    """An entry that cannot be used never keeps an older, usable version in the snapshot."""
    out.skipped.append(str(exc))
    guid = (entry["raw_attributes"].get("objectGUID") or [b""])[0]
    with contextlib.suppress(RecordError):
        out.unreadable.add(guid_text(guid, entry["dn"]))


def usn_range(usn_from: int | None, usn_below: int | None) -> str:
    """A filter for uSNChanged in [usn_from, usn_below); integers only, never text."""
    low = f"(uSNChanged>={int(usn_from)})" if usn_from is not None else ""
    high = f"(!(uSNChanged>={int(usn_below)}))" if usn_below is not None else ""
    return low + high


def usn_slices(usn_from: int, highest: int, count: int) -> list[tuple[int | None, int | None]]:
    """`count` disjoint ranges covering every USN from `usn_from` up, the last one open.

    Splitting by USN lets several connections read users at once (the DC works on
    one page while the broker decodes another); an uneven split costs speed, never
    completeness, because the ranges always cover everything.
    """
    if count <= 1 or highest - usn_from < count:
        return [(usn_from if usn_from > 1 else None, None)]
    step = (highest - usn_from) // count
    bounds = [usn_from + step * i for i in range(1, count)]
    lows: list[int | None] = [usn_from if usn_from > 1 else None, *bounds]
    highs: list[int | None] = [*bounds, None]
    return list(zip(lows, highs, strict=True))


def fetch(
    open_reader: Callable[[], tuple[Reader, Callable[[], None]]],
    since_usn: int | None,
    highest_usn: int,
    user_connections: int,
    main: Reader,
) -> Fetched:
    """Every user and group (or those changed since `since_usn`, and which still exist),
    read over several connections to the same DC at once."""
    usn_from = 1 if since_usn is None else since_usn + 1

    def users_between(low: int | None, high: int | None) -> Callable[[Reader, Fetched], None]:
        return lambda reader, out: reader.users(low, high, out)

    jobs = [users_between(lo, hi) for lo, hi in usn_slices(usn_from, highest_usn, user_connections)]
    group_from = None if since_usn is None else usn_from
    jobs.append(lambda reader, out: reader.groups(group_from, out))
    if since_usn is not None:
        # An incremental read finds deletions by what is missing.
        jobs.append(lambda reader, out: reader.present(out))

    def run(job: Callable[[Reader, Fetched], None]) -> Fetched:
        part = Fetched()
        reader, close = open_reader()
        try:
            job(reader, part)
        finally:
            close()
        return part

    out = Fetched()
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        for part in pool.map(run, jobs):
            out.users += part.users
            out.groups += part.groups
            out.skipped += part.skipped
            out.unreadable |= part.unreadable
            if part.present is not None:
                out.present = part.present

    # An object changed while the slices were read has moved past `highest_usn` and may
    # have been missed by every slice: read whatever changed since the read began (on the
    # main connection, idle meanwhile).
    later = Fetched()
    main.changed_since(highest_usn + 1, later)
    return _merged(out, later)


def _merged(first: Fetched, later: Fetched) -> Fetched:
    """`first` with `later`'s newer versions of the same objects (by GUID) winning."""
    unreadable = (first.unreadable - later.read_guids()) | later.unreadable
    users = {u.guid: u for u in first.users} | {u.guid: u for u in later.users}
    groups = {g.guid: g for g in first.groups} | {g.guid: g for g in later.groups}
    return Fetched(
        users=[u for guid, u in users.items() if guid not in unreadable],
        groups=[g for guid, g in groups.items() if guid not in unreadable],
        present=None if first.present is None else first.present | {*users, *groups},
        skipped=first.skipped + later.skipped,
        unreadable=unreadable,
    )
