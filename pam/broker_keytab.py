"""Node side of keytab rotation (docs/keytabs.md): install, list, sync and verify keytabs.

Standard library only, like the broker_node package, and run the same way: the broker
calls `/usr/bin/python3 -I -S /usr/libexec/broker/broker-keytab CMD` over SSH as root
with JSON on stdin and reads JSON on stdout. Exit 0 when the JSON says what happened (a
refusal included), 2 on bad usage. Keys reach it only on stdin (never argv), for
`keytab-install`; no reply carries a key.

- `keytab-install`: stage or prune in one run: merge, keep the listed versions, write
  atomically (owner and mode set before the rename), fsync, list what is on disk.
- `keytab-list`: versions and enctypes per principal, mode, owner, link count (with
  `owner` and `group`: their uid and gid here). `keytab-sync`: fsync, then the listing
  (for brokers that write over SFTP, as before keytab-install).
- `keytab-verify`: accept GSS-API tokens for each principal with the keytab (ctypes).

The format is MIT's (0x0502, docs/keytabs.md), as broker/keytabs/keytabfile.py reads it.
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
    if not isinstance(path, str) or not _PATH.fullmatch(path) or {".", ".."} & set(path.split("/")):
        raise Usage("path must be a plain absolute path")
    return path


def open_directory(directory: str) -> int:
    """An fd of `directory`, reached from / level by level never through a link, each root's
    and writable by root only (a parent may be root's and sticky, like /tmp: nobody else can
    rename its root-owned entries), so a user who can write a parent cannot swap what was
    checked for a link before the write: everything after this goes through the fd."""
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open("/", flags)
    parts = [p for p in directory.split("/") if p]
    try:
        for depth, part in enumerate(["", *parts]):
            if part:
                try:
                    nxt = os.open(part, flags, dir_fd=fd)
                except FileNotFoundError:
                    raise Refused(f"directory {directory} does not exist") from None
                except OSError:
                    raise Refused(f"{directory}: {part} is not a directory (or a link)") from None
                os.close(fd)
                fd = nxt
            info, last = os.fstat(fd), depth == len(parts)
            sticky = not last and info.st_mode & stat.S_ISVTX
            if info.st_uid != 0 or (info.st_mode & 0o022 and not sticky):
                where = directory if last else "/" + "/".join(parts[:depth])
                raise Refused(f"{where} must be owned by root and writable by root only")
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_no_link(path: str, dir_fd: int | None = None) -> int:
    """Open for reading, never through a symbolic link (nor block on a FIFO); with `dir_fd`,
    `path` is the file's name in that directory."""
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        return os.open(path if dir_fd is None else os.path.basename(path), flags, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise Refused(f"{path} is a symbolic link; replace it with the keytab itself") from None
        raise Refused(f"cannot open {path} ({exc.strerror})") from None


def read_keytab(path: str, dir_fd: int | None = None) -> tuple[list[Entry], os.stat_result | None]:
    """The entries of `path` (none when it does not exist); links and oversize refused.
    With `dir_fd` (open_directory), the file is opened in that directory, not by path."""
    try:
        fd = _open_no_link(path, dir_fd)
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


def _names(owner: object, group: object) -> tuple[str, str]:
    if not isinstance(owner, str) or not _NAME.fullmatch(owner):
        raise Usage("owner must be a POSIX user name")
    if not isinstance(group, str) or not _NAME.fullmatch(group):
        raise Usage("group must be a POSIX group name")
    return owner, group


def _ids(owner: object, group: object) -> tuple[int, int]:
    owner, group = _names(owner, group)
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
    if ids is not None:  # the broker writes over SFTP next, by path: every level root-only
        os.close(open_directory(os.path.dirname(path)))
    entries, info = read_keytab(path)
    reply = _describe(path, entries, info, principals)
    if ids is not None:
        # The owner's numbers here (NSS), for the broker's SFTP chown; not the file's own.
        reply["owner_uid"], reply["owner_gid"] = ids
    return reply


def sync_keytab(payload: dict[str, Any]) -> dict[str, Any]:
    """fsync the keytab (again: SFTP's came before the rename) and its directory, list it."""
    path = check_path(payload.get("path"))
    principals = _principals(payload.get("principals"))
    dfd = open_directory(os.path.dirname(path))
    try:
        fd = _open_no_link(path, dfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise Refused(f"{path} is not a regular file")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.fsync(dfd)
        entries, info = read_keytab(path, dfd)
    finally:
        os.close(dfd)
    return _describe(path, entries, info, principals)


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


def _write_atomic(dfd: int, base: str, data: bytes, uid: int, gid: int, mode: int) -> None:
    """A hidden file beside `base` in the directory `dfd` (never by path), created 0600 with
    O_EXCL, never through a link, owner and mode set before the first byte, fsync'd, renamed
    over `base`, the directory fsync'd (the rename survives a power cut); removed on failure."""
    temporary = f".{base}.broker-{os.urandom(8).hex()}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(temporary, flags, 0o600, dir_fd=dfd)
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
        os.rename(temporary, base, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary, dir_fd=dfd)
        raise
    os.fsync(dfd)


def _remove_stale(dfd: int, base: str) -> None:
    """Temporary files of `base` a killed run left: they hold keys (regular files only)."""
    stale = re.compile(r"\." + re.escape(base) + r"\.broker-[0-9a-f]{16}")
    for name in os.listdir(dfd):
        if stale.fullmatch(name):
            with contextlib.suppress(FileNotFoundError):
                if stat.S_ISREG(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode):
                    os.unlink(name, dir_fd=dfd)


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
    names = _names(item["owner"], item["group"])  # looked up (NSS) when installing
    return path, principals, mode, keep, add, names


def _install(path: str, principals: list[str], mode: int, keep: set[int], add: list[Entry],
             names: Any) -> dict[str, Any]:  # fmt: skip
    """Add `add`, keep only the `keep` versions of `principals` (others stay byte for byte),
    write only when anything differs, and list what is on disk then (what was merged)."""
    uid, gid = _ids(*names)
    dfd, base = open_directory(os.path.dirname(path)), os.path.basename(path)
    try:
        _remove_stale(dfd, base)
        existing, info = read_keytab(path, dfd)
        adding = {e.ident() for e in add}  # an added key replaces one of that version, enctype
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
            _write_atomic(dfd, base, data, uid, gid, mode)
        entries, now = read_keytab(path, dfd)
    finally:
        os.close(dfd)
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
    """One initiator token accepted with `keytab` (only verifying loads ctypes and GSS-API)."""
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
        except OSError as exc:  # one unreadable keytab never fails the others' answers
            results.append({"ok": False, "error": f"{item['path']}: {exc.strerror}"})  # checked
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
