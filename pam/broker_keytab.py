"""Node side of keytab rotation (docs/keytabs.md): list, sync and verify keytabs.

Standard library only, like the broker_node package, and run the same way: the broker
calls `/usr/bin/python3 -I -S /usr/libexec/broker/broker-keytab CMD` over SSH
as root with JSON on stdin and reads JSON on stdout. Exit 0 when the JSON says
what happened (a refusal included), 2 on bad usage. No key ever reaches this
program: the broker reads and writes the keytab itself over SFTP
(broker/keytabs/distribute.py) and only asks here what needs the node's own
view (its NSS, fsync, GSS-API).

- `keytab-list`: the key versions and enctypes per principal, mode, owner and
  link count of the keytab; with `owner` and `group`, also the uid and gid this
  node's NSS gives those names (the broker sets them over SFTP); never a key.
- `keytab-sync`: fsync the keytab and its directory after the broker renamed a
  new one into place (SFTP has no directory fsync), then list it as above.
- `keytab-verify`: accept GSS-API (Kerberos) tokens the broker obtained for
  each principal with the keytab, through the system's MIT libgssapi_krb5 (ctypes).

The keytab format is MIT's (version 0x0502), documented in docs/keytabs.md;
broker/keytabs/keytabfile.py reads and writes the same bytes, and
tests/unit/test_keytabs.py holds this reader to it and to files MIT Kerberos wrote.
"""

from __future__ import annotations

import base64
import binascii
import ctypes
import ctypes.util
import errno
import grp
import json
import os
import pwd
import re
import stat
import struct
import sys
from typing import Any, TextIO

VERSION = b"\x05\x02"
MAX_KEYTAB = 1 << 20
MAX_INPUT = 1 << 20
MAX_TOKENS = 64
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

    __slots__ = ("enctype", "key", "kvno", "name_type", "principal", "timestamp")

    def __init__(
        self,
        principal: str,
        kvno: int,
        enctype: int,
        key: bytes,
        timestamp: int = 0,
        name_type: int = NT_PRINCIPAL,
    ) -> None:
        self.principal = principal
        self.kvno = kvno
        self.enctype = enctype
        self.key = key
        self.timestamp = timestamp
        self.name_type = name_type

    def ident(self) -> tuple[str, int, int]:
        return (self.principal, self.kvno, self.enctype)

    def __repr__(self) -> str:
        return f"Entry({self.principal!r}, kvno={self.kvno}, enctype={self.enctype})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Entry) and (
            self.ident(),
            self.key,
            self.timestamp,
            self.name_type,
        ) == (other.ident(), other.key, other.timestamp, other.name_type)

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
    return Entry(principal, kvno, enctype, key, timestamp, name_type)


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
        reply.update(
            mode=stat.S_IMODE(info.st_mode),
            uid=info.st_uid,
            gid=info.st_gid,
            nlink=info.st_nlink,
        )
        try:
            reply["owner"] = pwd.getpwuid(info.st_uid).pw_name
        except KeyError:
            reply["owner"] = str(info.st_uid)
        try:
            reply["group"] = grp.getgrgid(info.st_gid).gr_name
        except KeyError:
            reply["group"] = str(info.st_gid)
    return reply


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
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    entries, info = read_keytab(path)
    return _describe(path, entries, info, principals)


# ---------------------------------------------------------------- GSS-API acceptance


class _Buffer(ctypes.Structure):
    _fields_ = [("length", ctypes.c_size_t), ("value", ctypes.c_void_p)]


_GSS: Any = None


def _gss() -> Any:
    global _GSS
    if _GSS is None:
        name = ctypes.util.find_library("gssapi_krb5") or "libgssapi_krb5.so.2"
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            raise Refused("libgssapi_krb5 is not installed (Debian: libgssapi-krb5-2)") from None
        u32p, vp = ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p
        lib.gss_accept_sec_context.restype = ctypes.c_uint32
        lib.gss_accept_sec_context.argtypes = [
            u32p,
            ctypes.POINTER(vp),
            vp,
            ctypes.POINTER(_Buffer),
            vp,
            ctypes.POINTER(vp),
            ctypes.POINTER(vp),
            ctypes.POINTER(_Buffer),
            u32p,
            u32p,
            ctypes.POINTER(vp),
        ]
        lib.gss_delete_sec_context.argtypes = [u32p, ctypes.POINTER(vp), vp]
        lib.gss_release_buffer.argtypes = [u32p, ctypes.POINTER(_Buffer)]
        lib.gss_release_name.argtypes = [u32p, ctypes.POINTER(vp)]
        lib.gss_display_name.argtypes = [u32p, vp, ctypes.POINTER(_Buffer), ctypes.POINTER(vp)]
        lib.gss_display_status.argtypes = [
            u32p,
            ctypes.c_uint32,
            ctypes.c_int,
            vp,
            u32p,
            ctypes.POINTER(_Buffer),
        ]
        lib.krb5_gss_register_acceptor_identity.argtypes = [ctypes.c_char_p]
        _GSS = lib
    return _GSS


def _status_text(lib: Any, code: int, kind: int) -> str:
    minor, context = ctypes.c_uint32(0), ctypes.c_uint32(0)
    parts = []
    for _ in range(4):
        buffer = _Buffer()
        lib.gss_display_status(
            ctypes.byref(minor), code, kind, None, ctypes.byref(context), ctypes.byref(buffer)
        )
        if buffer.value:
            parts.append(ctypes.string_at(buffer.value, buffer.length).decode("utf-8", "replace"))
        lib.gss_release_buffer(ctypes.byref(minor), ctypes.byref(buffer))
        if context.value == 0:
            break
    return "; ".join(parts)


def accept(token: bytes, keytab: str) -> tuple[bool, str]:
    """Accept one initiator token with the keys in `keytab`: (True, client) or (False, why)."""
    os.environ["KRB5RCACHETYPE"] = "none"  # verification tokens are fresh; no replay cache file
    lib = _gss()
    if lib.krb5_gss_register_acceptor_identity(keytab.encode()) != 0:
        return False, "cannot use the keytab"
    minor = ctypes.c_uint32(0)
    context, name = ctypes.c_void_p(None), ctypes.c_void_p(None)
    raw = ctypes.create_string_buffer(token, len(token))
    given = _Buffer(len(token), ctypes.cast(raw, ctypes.c_void_p))
    output, flags, lifetime = _Buffer(), ctypes.c_uint32(0), ctypes.c_uint32(0)
    try:
        major = lib.gss_accept_sec_context(
            ctypes.byref(minor),
            ctypes.byref(context),
            None,
            ctypes.byref(given),
            None,
            ctypes.byref(name),
            None,
            ctypes.byref(output),
            ctypes.byref(flags),
            ctypes.byref(lifetime),
            None,
        )
        if major & 0xFFFF0000:
            why = _status_text(lib, minor.value, 2) or _status_text(lib, major, 1)
            return False, _clean(why, 200)
        shown, kind = _Buffer(), ctypes.c_void_p(None)
        client = ""
        if (
            lib.gss_display_name(ctypes.byref(minor), name, ctypes.byref(shown), ctypes.byref(kind))
            == 0
        ):
            client = ctypes.string_at(shown.value, shown.length).decode("utf-8", "replace")
            lib.gss_release_buffer(ctypes.byref(minor), ctypes.byref(shown))
        return True, _clean(client, 200)
    finally:
        lib.gss_release_buffer(ctypes.byref(minor), ctypes.byref(output))
        if name.value:
            lib.gss_release_name(ctypes.byref(minor), ctypes.byref(name))
        if context.value:
            lib.gss_delete_sec_context(ctypes.byref(minor), ctypes.byref(context), None)


def verify(payload: dict[str, Any]) -> dict[str, Any]:
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
        try:
            token = base64.b64decode(str(item["token"]), validate=True)
        except (binascii.Error, ValueError):
            raise Usage("token must be base64") from None
        if info is None:
            ok, why = False, f"{path} does not exist"
        else:
            ok, why = accept(token, path)
        results.append(
            {
                "principal": item["principal"],
                "ok": ok,
                "client": why if ok else "",
                "error": "" if ok else why,
            }
        )
    return {"path": path, "results": results}


# ---------------------------------------------------------------- entry point


def main(argv: list[str], stdin: TextIO, stdout: TextIO) -> int:
    try:
        if len(argv) != 1:
            raise Usage("usage: broker-keytab keytab-list|keytab-sync|keytab-verify")
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
