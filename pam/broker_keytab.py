"""Node side of keytab rotation (docs/keytabs.md): install, list, sync and verify keytabs.

Standard library only, like the broker_node package, and run the same way: the broker
calls `/usr/bin/python3 -I -S /usr/libexec/broker/broker-keytab CMD` over SSH as root
with JSON on stdin and reads JSON on stdout. Exit 0 when the JSON says what happened (a
refusal included), 2 on bad usage. Keys reach it only on stdin (never argv), for
`keytab-install`; no reply carries a key.

- `keytab-install`: stage or prune in one run (one SSH round trip per node instead of
  three): merge the new version's keys, keep the listed versions, write atomically with
  owner and mode set before the rename, fsync, and list what is on disk afterwards.
- `keytab-list`: versions and enctypes per principal, mode, owner and link count; with
  `owner` and `group`, also the uid and gid this node's NSS gives those names.
- `keytab-sync`: fsync of the keytab and its directory, then the listing (for brokers
  that write the keytab over SFTP themselves, as before keytab-install).
- `keytab-verify`: accept GSS-API (Kerberos) tokens the broker obtained for each
  principal with the keytab, through the system's MIT libgssapi_krb5 (ctypes).

The format is MIT's (0x0502, docs/keytabs.md); broker/keytabs/keytabfile.py reads and
writes the same bytes, and tests/unit/test_keytabfile.py holds the two to each other.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import grp
import json
import os
import pwd
import re
import stat
import struct
import sys
import time
from typing import Any, TextIO

VERSION = b"\x05\x02"
MAX_KEYTAB = 1 << 20
MAX_INPUT = 1 << 20
MAX_TOKENS = 64
MAX_ADD = 256  # keys added in one run: 64 principals x 4 enctypes
MAX_KEEP = 64
MAX_KVNO = 0xFFFFFFFF
MODES = (0o600, 0o400, 0o640, 0o440)
MAX_KEYTABS = 64  # keytabs in one keytab-install run
INSTALL_FIELDS = {"path", "principals", "owner", "group", "mode", "keep", "add"}
_PATH = re.compile(r"^/(?:[A-Za-z0-9._+-]+/)*[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,127}$")
_COMPONENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_REALM = re.compile(r"^[A-Z0-9][A-Z0-9.-]{0,254}$")
_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
NT_PRINCIPAL = 1


class Usage(Exception):
    """Bad input: exit 2."""


class Refused(Exception):
    """Understood, and refused (unsafe path, unknown owner, unreadable keytab)."""


# ---------------------------------------------------------------- the keytab format


class Entry:
    """One keytab entry; the key bytes never appear in repr."""

    __slots__ = ("enctype", "key", "kvno", "name_type", "principal", "raw", "timestamp")

    def __init__(
        self,
        principal: str,
        kvno: int,
        enctype: int,
        key: bytes,
        timestamp: int = 0,
        name_type: int = NT_PRINCIPAL,
        raw: bytes | None = None,
    ) -> None:
        self.principal = principal
        self.kvno = kvno
        self.enctype = enctype
        self.key = key
        self.timestamp = timestamp
        self.name_type = name_type
        self.raw = raw  # the entry's bytes as read: written back unchanged

    def ident(self) -> tuple[str, int, int]:
        return (self.principal, self.kvno, self.enctype)

    def __repr__(self) -> str:
        return f"Entry({self.principal!r}, kvno={self.kvno}, enctype={self.enctype})"

    def _compared(self) -> tuple[object, ...]:
        return (self.ident(), self.key, self.timestamp, self.name_type)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and self._compared() == other._compared()

    __hash__ = None  # type: ignore[assignment]


def split_principal(principal: str) -> tuple[list[str], str]:
    """`HTTP/gpu01.hpc.test@HPC.TEST` -> (["HTTP", "gpu01.hpc.test"], "HPC.TEST"), checked."""
    name, at, realm = principal.rpartition("@")
    if not at or not _REALM.fullmatch(realm):
        raise Usage(f"principal {_clean(principal)!r} needs an upper-case @REALM")
    parts = name.split("/")
    if not 1 <= len(parts) <= 2 or not all(_COMPONENT.fullmatch(p) for p in parts):
        raise Usage(f"principal {_clean(principal)!r} is not service/host@REALM or name@REALM")
    return parts, realm


def parse(data: bytes) -> list[Entry]:
    """Entries of a version 0x0502 keytab (holes skipped); anything malformed is refused,
    by the same rules as broker/keytabs/keytabfile.py."""
    if len(data) > MAX_KEYTAB:
        raise Refused(f"keytab larger than {MAX_KEYTAB} bytes")
    if not data:
        return []  # an empty file: no entries yet (MIT treats it the same way)
    if len(data) < 2 or data[:2] != VERSION:
        raise Refused("not a version 0x0502 keytab")
    entries: list[Entry] = []
    offset = 2
    while offset < len(data):
        if len(data) - offset < 4:
            raise Refused("truncated keytab: stray bytes at the end")
        (size,) = struct.unpack_from(">i", data, offset)
        offset += 4
        if size == 0:
            if any(data[offset:]):
                raise Refused("data after the keytab's end marker")
            break
        if abs(size) > len(data) - offset:
            raise Refused("truncated keytab entry")
        if size > 0:
            entries.append(_entry(data[offset : offset + size]))
        offset += abs(size)
    return entries


def _entry(record: bytes) -> Entry:
    at = 0

    def take(count: int) -> bytes:
        nonlocal at
        if count > len(record) - at:
            raise Refused("truncated keytab field")
        at += count
        return record[at - count : at]

    def number(fmt: str) -> int:
        value: int = struct.unpack(fmt, take(struct.calcsize(fmt)))[0]
        return value

    def counted() -> bytes:
        return take(number(">H"))

    count = number(">H")
    if count == 0:
        raise Refused("keytab entry without a principal")
    realm = counted()
    parts = [counted().decode("utf-8", "replace") for _ in range(count)]
    name_type, timestamp, kvno = number(">I"), number(">I"), number(">B")
    enctype = number(">H")
    key = counted()
    if len(record) - at >= 4:
        kvno = number(">I") or kvno
    principal = "/".join(parts) + "@" + realm.decode("utf-8", "replace")
    return Entry(principal, kvno, enctype, key, timestamp, name_type, record)


def versions(entries: list[Entry], principals: list[str]) -> dict[str, list[int]]:
    found: dict[str, set[int]] = {p: set() for p in principals}
    for entry in entries:
        if entry.principal in found:
            found[entry.principal].add(entry.kvno)
    return {p: sorted(v) for p, v in found.items()}


# ---------------------------------------------------------------- files


def _clean(text: object, limit: int = 80) -> str:
    return "".join(ch if ch.isprintable() else "?" for ch in str(text))[:limit]


def check_path(path: object) -> str:
    if not isinstance(path, str) or not _PATH.fullmatch(path) or "/../" in path + "/":
        raise Usage("path must be a plain absolute path")
    if "/./" in path or path.endswith("/."):
        raise Usage("path must be a plain absolute path")
    return path


def _safe_directory(directory: str) -> None:
    """The keytab's directory exists, is root's and nobody else can write it."""
    try:
        info = os.lstat(directory)
    except FileNotFoundError:
        raise Refused(f"directory {directory} does not exist") from None
    if not stat.S_ISDIR(info.st_mode):
        raise Refused(f"{directory} is not a directory")
    if info.st_uid != 0 or info.st_mode & 0o022:
        raise Refused(f"{directory} must be owned by root and writable by root only")


def _open_no_link(path: str) -> int:
    """Open for reading, never through a symbolic link (nor block on a FIFO)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{path} is a symbolic link; replace it with the keytab itself") from None
        raise Refused(f"cannot open {path} ({exc.strerror})") from None


def read_keytab(path: str) -> tuple[list[Entry], os.stat_result | None]:
    """The entries of `path` (none when it does not exist); links and oversize refused."""
    try:
        fd = _open_no_link(path)
    except FileNotFoundError:
        return [], None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Refused(f"{path} is not a regular file")
        if info.st_size > MAX_KEYTAB:
            raise Refused(f"{path} is larger than {MAX_KEYTAB} bytes")
        data = b""
        while len(data) <= MAX_KEYTAB:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    try:
        return parse(data), info
    except Refused as exc:
        raise Refused(f"{path}: {exc}") from None


def _ids(owner: object, group: object) -> tuple[int, int]:
    if not isinstance(owner, str) or not _NAME.fullmatch(owner):
        raise Usage("owner must be a POSIX user name")
    if not isinstance(group, str) or not _NAME.fullmatch(group):
        raise Usage("group must be a POSIX group name")
    try:
        uid = pwd.getpwnam(owner).pw_uid
    except KeyError:
        raise Refused(f"user {owner} does not exist on this node") from None
    try:
        gid = grp.getgrnam(group).gr_gid
    except KeyError:
        raise Refused(f"group {group} does not exist on this node") from None
    return uid, gid


def _principals(value: object) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= 64:
        raise Usage("principals must be a list of 1 to 64 principals")
    for principal in value:
        if not isinstance(principal, str):
            raise Usage("principals must be strings")
        split_principal(principal)
    return list(value)


def _describe(path: str, entries: list[Entry], info: os.stat_result | None, principals: list[str]):
    reply: dict[str, Any] = {
        "path": path,
        "exists": info is not None,
        "kvnos": versions(entries, principals),
        "enctypes": sorted({e.enctype for e in entries if e.principal in principals}),
    }
    if info is not None:
        reply.update(mode=stat.S_IMODE(info.st_mode), uid=info.st_uid, gid=info.st_gid)
        reply.update(nlink=info.st_nlink, owner=_name_of(pwd.getpwuid, info.st_uid))
        reply["group"] = _name_of(grp.getgrgid, info.st_gid)
    return reply


def _name_of(lookup: Any, number: int) -> str:
    """The name NSS gives a uid or gid, else the number."""
    try:
        return str(lookup(number)[0])
    except KeyError:
        return str(number)


def list_keytab(payload: dict[str, Any]) -> dict[str, Any]:
    path = check_path(payload.get("path"))
    principals = _principals(payload.get("principals"))
    owner, group = payload.get("owner"), payload.get("group")
    ids = None if owner is None and group is None else _ids(owner, group)
    entries, info = read_keytab(path)
    reply = _describe(path, entries, info, principals)
    if ids is not None:
        # The owner's numbers on this node (its NSS: local files, SSSD, LDAP), for the
        # broker's SFTP chown; "owner_uid" so they are never confused with the file's own.
        reply["owner_uid"], reply["owner_gid"] = ids
    return reply


def sync_keytab(payload: dict[str, Any]) -> dict[str, Any]:
    """fsync the keytab (again: the broker's fsync@openssh.com came before the rename) and
    its directory (the rename itself), then list it: what is on disk now."""
    path = check_path(payload.get("path"))
    principals = _principals(payload.get("principals"))
    directory = os.path.dirname(path)
    _safe_directory(directory)
    fd = _open_no_link(path)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Refused(f"{path} is not a regular file")
        os.fsync(fd)
    finally:
        os.close(fd)
    _fsync_directory(directory)
    entries, info = read_keytab(path)
    return _describe(path, entries, info, principals)


def _fsync_directory(directory: str) -> None:
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


# ---------------------------------------------------------------- install (stage, prune)


def _base64(value: object, what: str) -> bytes:
    try:
        return base64.b64decode(str(value), validate=True)
    except (binascii.Error, ValueError):
        raise Usage(f"{what} must be base64") from None


def _number(value: object, low: int, high: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise Usage(f"{what} must be a whole number from {low} to {high}")
    return value


def _added(value: object, principals: list[str], keep: set[int]) -> list[Entry]:
    """The keys to add, each of a listed principal and a kept version: the only place a key
    reaches this program (stdin, never argv), checked before anything is read or written."""
    if not isinstance(value, list) or len(value) > MAX_ADD:
        raise Usage(f"add must be a list of at most {MAX_ADD} keys")
    added, stamp = [], int(time.time()) & 0xFFFFFFFF
    for item in value:
        if not isinstance(item, dict) or set(item) != {"principal", "kvno", "enctype", "key"}:
            raise Usage("each added key has exactly principal, kvno, enctype and key")
        if item["principal"] not in principals:
            raise Usage("an added key's principal is not one of principals")
        kvno = _number(item["kvno"], 1, MAX_KVNO, "kvno")
        if kvno not in keep:
            raise Usage("an added key's kvno is not one of keep")
        key = _base64(item["key"], "key")
        if not 8 <= len(key) <= 64:
            raise Usage("a key must be 8 to 64 bytes")
        kind = 3 if "/" in item["principal"] else NT_PRINCIPAL  # NT-SRV-HST for service/host
        enctype = _number(item["enctype"], 1, 0xFFFF, "enctype")
        added.append(Entry(item["principal"], kvno, enctype, key, stamp, kind))
    return added


def serialize(entries: list[Entry]) -> bytes:
    """Version 0x0502 bytes of `entries`: read ones as read, new ones with the 32-bit kvno."""
    out = bytearray(VERSION)
    for e in entries:
        if e.raw is None:  # count, realm, components, type, time, kvno8, enctype, key, kvno32
            parts, realm = split_principal(e.principal)
            record = b"".join(_counted(x.encode()) for x in [realm, *parts])
            fixed = struct.pack(">IIBH", e.name_type, e.timestamp, e.kvno & 0xFF, e.enctype)
            key = _counted(e.key) + struct.pack(">I", e.kvno)
            e.raw = struct.pack(">H", len(parts)) + record + fixed + key
        out += struct.pack(">i", len(e.raw)) + e.raw
    if len(out) > MAX_KEYTAB:
        raise Refused(f"the keytab would be larger than {MAX_KEYTAB} bytes")
    return bytes(out)


def _counted(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _write_atomic(path: str, data: bytes, uid: int, gid: int, mode: int) -> None:
    """A new hidden file beside `path`, created 0600 with O_EXCL (never through a link),
    owner and mode set before the first byte, fsync'd, renamed over `path`; the directory
    fsync'd so the rename survives a power cut. The temporary file goes on any failure."""
    directory, base = os.path.split(path)
    temporary = os.path.join(directory, f".{base}.broker-{os.urandom(8).hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600)
    try:
        try:
            os.fchown(fd, uid, gid)
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _install_request(item: object) -> tuple[str, list[str], int, set[int], list[Entry], Any]:
    """One keytab of a keytab-install run, every field checked before anything is touched."""
    if not isinstance(item, dict) or set(item) != INSTALL_FIELDS:
        raise Usage(f"each keytab has exactly {', '.join(sorted(INSTALL_FIELDS))}")
    path, principals = check_path(item["path"]), _principals(item["principals"])
    mode, kept = item["mode"], item["keep"]
    if type(mode) is not int or mode not in MODES:  # not 384.0, not True
        raise Usage("mode must be 0600, 0400, 0640 or 0440 (as a number)")
    if not isinstance(kept, list) or not 1 <= len(kept) <= MAX_KEEP:
        raise Usage(f"keep must be a list of 1 to {MAX_KEEP} versions")
    keep = {_number(k, 1, MAX_KVNO, "keep") for k in kept}
    add = _added(item["add"], principals, keep)
    owner, group = item["owner"], item["group"]
    if not isinstance(owner, str) or not _NAME.fullmatch(owner):
        raise Usage("owner must be a POSIX user name")  # looked up (NSS) when installing
    if not isinstance(group, str) or not _NAME.fullmatch(group):
        raise Usage("group must be a POSIX group name")
    return path, principals, mode, keep, add, (owner, group)


def _install(path: str, principals: list[str], mode: int, keep: set[int], add: list[Entry],
             names: Any) -> dict[str, Any]:  # fmt: skip
    """Add `add`, keep only the `keep` versions of `principals` (other principals' entries
    stay byte for byte), write only when anything differs, and list what is on disk then,
    which must be what was merged."""
    uid, gid = _ids(*names)
    _safe_directory(os.path.dirname(path))
    existing, info = read_keytab(path)
    adding = {e.ident() for e in add}  # an added key replaces one of the same version, enctype
    stays = [e for e in existing if e.principal not in principals or e.kvno in keep]
    merged = [e for e in stays if e.ident() not in adding] + add
    data = serialize(merged)
    same = (
        info is not None
        and (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode), info.st_nlink)
        == (uid, gid, mode, 1)
        and serialize(existing) == data
    )
    if not same:
        _write_atomic(path, data, uid, gid, mode)
    entries, now = read_keytab(path)
    if versions(entries, principals) != versions(merged, principals):
        raise Refused(f"{path} changed while it was written (another program writes it?)")
    return {**_describe(path, entries, now, principals), "ok": True, "written": not same}


def install_keytabs(payload: dict[str, Any]) -> dict[str, Any]:
    """Stage or prune in one run, for one keytab or several (one SSH round trip per node
    instead of three). All input is checked first; then each keytab gets its own result,
    a refusal of one never stopping the others."""
    items = payload.get("keytabs")
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_KEYTABS:
        raise Usage(f"keytabs must be a list of 1 to {MAX_KEYTABS}")
    requests = [_install_request(item) for item in items]
    if len({request[0] for request in requests}) != len(requests):
        raise Usage("a keytab path appears twice")
    results = []
    for request in requests:
        try:
            results.append(_install(*request))
        except Refused as exc:
            results.append({"ok": False, "error": str(exc)})
        except OSError as exc:
            results.append({"ok": False, "error": f"{request[0]}: {exc.strerror or 'I/O error'}"})
    return {"results": results}


# ---------------------------------------------------------------- GSS-API acceptance


def accept(token: bytes, keytab: str) -> tuple[bool, str]:
    """Accept one initiator token with the keys in `keytab` (broker_keytab_gss.py, loaded
    only here: installing and listing never load ctypes or libgssapi_krb5)."""
    import broker_keytab_gss

    try:
        return broker_keytab_gss.accept(token, keytab)
    except broker_keytab_gss.Missing as exc:
        raise Refused(str(exc)) from None


def verify(payload: dict[str, Any]) -> dict[str, Any]:
    """One keytab's tokens (`path`, `tokens`), or several keytabs' in one run (`keytabs`:
    a list of those, each answered on its own, as keytab-install does)."""
    if "keytabs" not in payload:
        return _verify_one(payload)
    items = payload["keytabs"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_KEYTABS:
        raise Usage(f"keytabs must be a list of 1 to {MAX_KEYTABS}")
    if not all(isinstance(item, dict) and set(item) == {"path", "tokens"} for item in items):
        raise Usage("each keytab has exactly path and tokens")
    results = []
    for item in items:
        try:
            results.append({**_verify_one(item), "ok": True})
        except Refused as exc:
            results.append({"ok": False, "error": str(exc)})
    return {"results": results}


def _verify_one(payload: dict[str, Any]) -> dict[str, Any]:
    path = check_path(payload.get("path"))
    tokens = payload.get("tokens")
    if not isinstance(tokens, list) or not 1 <= len(tokens) <= MAX_TOKENS:
        raise Usage(f"tokens must be a list of 1 to {MAX_TOKENS}")
    _entries, info = read_keytab(path)  # refuses links and non-files before GSS-API opens it
    results = []
    for item in tokens:
        if not isinstance(item, dict) or set(item) != {"principal", "token"}:
            raise Usage("each token has exactly principal and token")
        split_principal(str(item["principal"]))
        token = _base64(item["token"], "token")
        if info is None:
            ok, why = False, f"{path} does not exist"
        else:
            ok, why = accept(token, path)
        answer = {"principal": item["principal"], "ok": ok}
        results.append({**answer, "client": why if ok else "", "error": "" if ok else why})
    return {"path": path, "results": results}


# ---------------------------------------------------------------- entry point


def main(argv: list[str], stdin: TextIO, stdout: TextIO) -> int:
    try:
        if len(argv) != 1:
            raise Usage("usage: broker-keytab keytab-list|keytab-sync|keytab-install|keytab-verify")
        text = stdin.read(MAX_INPUT + 1)
        if len(text) > MAX_INPUT:
            raise Usage("input larger than 1 MiB")
        try:
            payload = json.loads(text) if text.strip() else {}
        except ValueError:
            raise Usage("stdin is not JSON") from None
        if not isinstance(payload, dict):
            raise Usage("stdin must be a JSON object")
        command = argv[0]
        try:
            if command == "keytab-list":
                reply = list_keytab(payload)
            elif command == "keytab-sync":
                reply = sync_keytab(payload)
            elif command == "keytab-install":
                reply = install_keytabs(payload)
            elif command == "keytab-verify":
                reply = verify(payload)
            else:
                raise Usage(f"unknown command {_clean(command, 40)!r}")
            reply["ok"] = True
        except Refused as exc:
            reply = {"ok": False, "error": str(exc)}
        except OSError as exc:
            reply = {"ok": False, "error": f"{exc.strerror or 'I/O error'}"}
    except Usage as exc:
        stdout.write(json.dumps({"error": str(exc)}) + "\n")
        return 2
    stdout.write(json.dumps(reply, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], sys.stdin, sys.stdout))
