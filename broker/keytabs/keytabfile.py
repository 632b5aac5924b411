"""MIT keytab files (format 0x0502) in memory: parse, serialize, merge and prune.

The layout, big-endian (MIT's src/lib/krb5/keytab/kt_file.c):

    file    := 0x05 0x02 record*
    record  := int32 size, then
               size > 0: an entry of `size` bytes
               size < 0: a hole of -size bytes (an entry MIT deleted in place): skipped
               size = 0 or no more bytes: the end (only zero bytes may follow)
    An empty file is a keytab without entries.
    entry   := uint16 count, counted realm, count x counted component, uint32 name type,
               uint32 timestamp, uint8 kvno, uint16 enctype, counted key,
               [uint32 kvno], [bytes MIT ignores]
    counted := uint16 length, bytes

The 32-bit kvno, when present and not zero, replaces the 8-bit one (MIT's rule). Version
0x0501 (host byte order) is refused; nothing has written it for decades.

An entry read from a file keeps its exact bytes and is written back with them, so entries
of principals the broker does not manage (a shared host keytab) come out as they went in.
Holes are not written back. Keys are bytes in memory only: `Entry` hides them from repr,
and no error message here ever contains a key.

The node program's reader (pam/broker_keytab.py, standard library only, for
`keytab-list`) parses the same format; tests/unit/test_keytabs.py holds the two to each
other and to keytabs MIT Kerberos wrote.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

from broker.core.errors import RefusedError

VERSION = b"\x05\x02"
MAX_KEYTAB = 1 << 20  # bytes: far more than any real keytab (an entry is ~100 bytes)
MAX_KVNO = 0xFFFFFFFF
NT_PRINCIPAL = 1
NT_SRV_HST = 3
KEY_SIZES = range(8, 65)  # bytes of a key the broker adds (DES 8 ... AES-256/SHA-384 32)

_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_REALM = re.compile(r"[A-Z0-9][A-Z0-9.-]{0,254}")
# count + realm length + name type + timestamp + kvno8 + enctype + key length
_FIXED = 2 + 2 + 4 + 4 + 1 + 2 + 2


class MalformedKeytab(RefusedError):
    """Bytes that are not a keytab this module can read and write back faithfully."""


@dataclass(frozen=True)
class Principal:
    """A principal as the keytab holds it: components and realm, as bytes."""

    components: tuple[bytes, ...]
    realm: bytes

    @classmethod
    def parse(cls, text: str) -> Principal:
        """`HTTP/gpu01.hpc.test@HPC.TEST` or `svc-web@HPC.TEST`, checked as the node program
        checks them: one or two components of letters, digits and ._-, an upper-case realm."""
        name, at, realm = text.rpartition("@")
        parts = name.split("/")
        if (
            not at
            or not _REALM.fullmatch(realm)
            or not 1 <= len(parts) <= 2
            or not all(_COMPONENT.fullmatch(p) for p in parts)
        ):
            raise ValueError(f"{_shown(text)!r} is not name@REALM or service/host@REALM")
        return cls(tuple(p.encode("ascii") for p in parts), realm.encode("ascii"))

    def __str__(self) -> str:
        name = "/".join(c.decode("utf-8", "replace") for c in self.components)
        return _shown(f"{name}@{self.realm.decode('utf-8', 'replace')}", 300)


@dataclass(frozen=True)
class Entry:
    """One key of one principal at one version. `raw` is the entry's bytes as read from a
    file (None for a new entry); equality ignores it."""

    principal: Principal
    kvno: int
    enctype: int
    key: bytes = field(repr=False)
    timestamp: int = 0
    name_type: int = NT_PRINCIPAL
    raw: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def ident(self) -> tuple[Principal, int, int]:
        return (self.principal, self.kvno, self.enctype)


def new_entry(principal: str, kvno: int, enctype: int, key: bytes, timestamp: int) -> Entry:
    """An entry the broker adds: checked principal, version, enctype and key size; name type
    NT-SRV-HST for service/host, NT-PRINCIPAL otherwise (as the node program wrote them)."""
    name = Principal.parse(principal)
    if not 1 <= kvno <= MAX_KVNO:
        raise ValueError(f"kvno {kvno} out of range")
    if not 1 <= enctype <= 0xFFFF:
        raise ValueError(f"enctype {enctype} out of range")
    if len(key) not in KEY_SIZES:
        raise ValueError(f"a key of {len(key)} bytes is not a Kerberos key")
    kind = NT_SRV_HST if len(name.components) == 2 else NT_PRINCIPAL
    return Entry(name, kvno, enctype, bytes(key), timestamp & 0xFFFFFFFF, kind)


# ---------------------------------------------------------------- reading


def parse(data: bytes) -> list[Entry]:
    """The entries of a version 0x0502 keytab, in file order (holes skipped). Anything
    malformed, truncated or out of bounds is refused with the offset where it was found."""
    if len(data) > MAX_KEYTAB:
        raise MalformedKeytab(f"keytab of {len(data)} bytes is larger than {MAX_KEYTAB}")
    if not data:
        return []  # an empty file: no entries yet (MIT adds to it the same way)
    if len(data) < 2:
        raise MalformedKeytab("not a keytab: shorter than its version number")
    if data[:2] == b"\x05\x01":
        raise MalformedKeytab("keytab format 0x0501 (host byte order) is not supported")
    if data[:2] != VERSION:
        raise MalformedKeytab(f"not a keytab: version bytes {data[:2].hex()}, expected 0502")
    entries: list[Entry] = []
    offset = 2
    while offset < len(data):
        if len(data) - offset < 4:
            raise MalformedKeytab(
                f"truncated keytab: {len(data) - offset} stray byte(s) at {offset}"
            )
        (size,) = struct.unpack_from(">i", data, offset)
        offset += 4
        if size == 0:
            if any(data[offset:]):
                raise MalformedKeytab(f"data after the end marker at {offset - 4}")
            break
        length = abs(size)
        if length > len(data) - offset:
            what = "entry" if size > 0 else "hole"
            raise MalformedKeytab(
                f"truncated keytab: {what} of {length} bytes at {offset - 4} runs past the end "
                f"({len(data) - offset} bytes left)"
            )
        if size > 0:
            entries.append(_entry(data[offset : offset + length], offset - 4))
        offset += length
    return entries


class _Reader:
    """Bounds-checked reads inside one entry; every failure names the entry's offset."""

    def __init__(self, record: bytes, at: int) -> None:
        self.record = record
        self.pos = 0
        self.at = at

    def take(self, count: int, what: str) -> bytes:
        if count > len(self.record) - self.pos:
            raise MalformedKeytab(
                f"keytab entry at {self.at}: {what} of {count} bytes runs past the entry "
                f"({len(self.record) - self.pos} bytes left)"
            )
        piece = self.record[self.pos : self.pos + count]
        self.pos += count
        return piece

    def number(self, fmt: str, what: str) -> int:
        value: int = struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]
        return value

    def counted(self, what: str) -> bytes:
        return self.take(self.number(">H", f"length of {what}"), what)


def _entry(record: bytes, at: int) -> Entry:
    if len(record) < _FIXED:
        raise MalformedKeytab(f"keytab entry at {at} is {len(record)} bytes, too short")
    read = _Reader(record, at)
    count = read.number(">H", "component count")
    if count == 0:
        raise MalformedKeytab(f"keytab entry at {at} has a principal without components")
    realm = read.counted("realm")
    components = tuple(read.counted(f"component {i + 1}") for i in range(count))
    name_type = read.number(">I", "name type")
    timestamp = read.number(">I", "timestamp")
    kvno = read.number(">B", "kvno")
    enctype = read.number(">H", "enctype")
    key = read.counted("key")
    if len(record) - read.pos >= 4:
        kvno = read.number(">I", "32-bit kvno") or kvno
    return Entry(Principal(components, realm), kvno, enctype, key, timestamp, name_type, record)


# ---------------------------------------------------------------- writing


def _counted(data: bytes, what: str) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError(f"{what} of {len(data)} bytes does not fit a keytab")
    return struct.pack(">H", len(data)) + data


def encode(entry: Entry) -> bytes:
    """An entry's bytes: as read when it came from a file, else MIT's layout with the 32-bit
    kvno (the 8-bit field holds its low byte, as MIT writes it)."""
    if entry.raw is not None:
        return entry.raw
    principal = entry.principal
    if not 1 <= len(principal.components) <= 0xFFFF:
        raise ValueError("a principal needs 1 to 65535 components")
    if not 0 <= entry.kvno <= MAX_KVNO or not 0 <= entry.enctype <= 0xFFFF:
        raise ValueError("kvno or enctype out of range")
    out = bytearray(struct.pack(">H", len(principal.components)))
    out += _counted(principal.realm, "realm")
    for component in principal.components:
        out += _counted(component, "component")
    out += struct.pack(">IIBH", entry.name_type, entry.timestamp, entry.kvno & 0xFF, entry.enctype)
    out += _counted(entry.key, "key")
    out += struct.pack(">I", entry.kvno)
    return bytes(out)


def serialize(entries: Iterable[Entry]) -> bytes:
    """A version 0x0502 keytab holding `entries` in order, without holes."""
    out = bytearray(VERSION)
    for entry in entries:
        record = encode(entry)
        out += struct.pack(">i", len(record)) + record
    if len(out) > MAX_KEYTAB:
        raise ValueError(f"keytab of {len(out)} bytes would be larger than {MAX_KEYTAB}")
    return bytes(out)


# ---------------------------------------------------------------- merging


def merge(
    existing: Sequence[Entry],
    managed: Collection[Principal],
    add: Sequence[Entry],
    keep: Collection[int],
) -> list[Entry]:
    """The keytab after a stage or a prune (the rules the node program's keytab-install had):
    entries of other principals stay as they are; a managed principal keeps only the `keep`
    versions; `add` replaces any entry with the same principal, version and enctype, and is
    appended after what stays. An added entry must be of a managed principal and a kept
    version."""
    for entry in add:
        if entry.principal not in managed:
            raise ValueError(f"added key of {entry.principal}, which is not managed here")
        if entry.kvno not in keep:
            raise ValueError(f"added key version {entry.kvno} is not one of the kept versions")
    adding = {e.ident for e in add}
    kept = [
        e
        for e in existing
        if e.ident not in adding and (e.principal not in managed or e.kvno in keep)
    ]
    return kept + list(add)


def versions(entries: Iterable[Entry], principals: Sequence[Principal]) -> dict[str, list[int]]:
    """Key versions per principal (text form), sorted; never a key."""
    found: dict[Principal, set[int]] = {p: set() for p in principals}
    for entry in entries:
        if entry.principal in found:
            found[entry.principal].add(entry.kvno)
    return {str(p): sorted(v) for p, v in found.items()}


def common_versions(entries: Iterable[Entry], principals: Sequence[Principal]) -> tuple[int, ...]:
    """The versions every one of `principals` has (what a node "holds" for an account)."""
    per = versions(entries, principals)
    sets = [set(v) for v in per.values()]
    if not sets:
        return ()
    return tuple(sorted(set.intersection(*sets)))


def _shown(text: str, limit: int = 80) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in text)[:limit]
