"""The node side of the broker: the PAM hook and the node program (docs/grants.md).

Stdlib only; run as `/usr/bin/python3 -I -S` on every sudo, so importing it
must stay cheap: json, re, hashlib, datetime, subprocess and dataclasses
(~12 ms of imports) are never loaded on the PAM path; the node program's
subcommands import what they need inside their functions.
"""

from __future__ import annotations

import binascii
import os
import stat
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping
    from typing import TextIO

    GroupCheck = Callable[[str, str], bool]

HOOK_VERSION = "1"
# Sessions of the break-glass group (no grant) are recorded under this pseudo grant id.
BREAK_GLASS = "break-glass"
GRANT_MAGIC = "broker-grant-v1"
KEY_MAGIC = "broker-grant-key-v1"
MAX_FILE = 8192
MAX_SESSIONS_LIMIT = 16
SUDO_SERVICES = ("sudo", "sudo-i")
SESSION_TYPES = ("open_session", "close_session")
TMP_PREFIX = ".broker-tmp-"

_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_HEX = "0123456789abcdef"
_UNRESERVED = frozenset(_LOWER + _LOWER.upper() + _DIGITS + "-._~")
_NAME_FIRST = frozenset(_LOWER + "_")
_NAME_REST = frozenset(_LOWER + _DIGITS + "_-")
_NODE_CHARS = frozenset(_LOWER + _DIGITS + "-")
_SET_REST = frozenset(_LOWER + _DIGITS + "-")
_GROUP_CHARS = frozenset(_LOWER + _LOWER.upper() + _DIGITS + "_.-")
_SERVICE_CHARS = frozenset(_LOWER + _DIGITS + "_.-")
_TTY_CHARS = frozenset(_LOWER + _LOWER.upper() + _DIGITS + "/._:-")
_GRANT_KEYS = (
    "id",
    "node",
    "user",
    "runas",
    "commands",
    "not_before",
    "not_after",
    "login",
    "workloads",
    "max_sessions",
    "policy_sha256",
    "approvers",
    "reason",
    "issued_at",
    "key_id",
    "signature",
)


# ---------------------------------------------------------------- small records


class _Record:
    """An immutable record: dataclasses would cost ~12 ms of imports on every sudo."""

    __slots__: tuple[str, ...] = ()

    def __init__(self, *values: object) -> None:
        if len(values) != len(self.__slots__):
            raise TypeError(f"{type(self).__name__} takes {len(self.__slots__)} values")
        for name, value in zip(self.__slots__, values):  # lengths checked just above
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values() == self._values()

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Grant(_Record):
    """A parsed grant file; `signed` is the byte range the signature covers."""

    __slots__ = (*_GRANT_KEYS, "signed")  # the order is the constructor's
    id: str
    node: str
    user: str
    runas: str
    commands: tuple[str, ...]
    not_before: int
    not_after: int
    login: bool
    workloads: bool
    max_sessions: int
    policy_sha256: str
    approvers: tuple[str, ...]
    reason: str
    issued_at: int
    key_id: str
    signature: bytes
    signed: bytes


class NodeConf(_Record):
    """/etc/broker/node.conf."""

    __slots__ = ("node", "login_gated", "break_glass_group", "joblaunch_service")  # noqa: RUF023
    node: str
    login_gated: bool
    break_glass_group: str
    joblaunch_service: str


class GrantKey(_Record):
    """The broker's verification key: 32 raw bytes and its 16-hex id."""

    __slots__ = ("raw", "key_id")  # noqa: RUF023 - the order is the constructor's
    raw: bytes
    key_id: str


class Paths:
    """Where the node's files live; `root` only moves the tree for tests (never from env)."""

    __slots__ = (  # noqa: RUF023 - the order is the constructor's
        "root",
        "node_conf",
        "grant_key",
        "broker_etc",
        "quarantine",
        "grants",
        "revoked",
        "sessions",
        "events",
        "sudoers",
        "pam_d",
        "proc",
    )
    root: str
    node_conf: str
    grant_key: str
    broker_etc: str
    quarantine: str
    grants: str
    revoked: str
    sessions: str
    events: str
    sudoers: str
    pam_d: str
    proc: str

    def __init__(self, root: str = "/") -> None:
        def under(path: str) -> str:
            return os.path.join(root, path)

        values = {
            "root": root,
            "broker_etc": under("etc/broker"),
            "node_conf": under("etc/broker/node.conf"),
            "grant_key": under("etc/broker/grant-key.pub"),
            "quarantine": under("etc/broker/quarantine"),
            "grants": under("var/lib/broker/grants"),
            "revoked": under("var/lib/broker/revoked"),
            "sessions": under("var/lib/broker/sessions"),
            "events": under("var/spool/broker/events"),
            "sudoers": under("etc/sudoers.d"),
            "pam_d": under("etc/pam.d"),
            "proc": "/proc",  # processes are real even when the tree is not
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Paths is immutable")

    def __repr__(self) -> str:
        return f"Paths(root={self.root!r})"


# ---------------------------------------------------------------- hashes (builtins only)


def _hash_module(name: str) -> object:
    """`_sha512`/`_sha256` (3.11), `_sha2` (3.12+), hashlib only as the slow last resort."""
    for module in (f"_{name}", "_sha2", "hashlib"):
        try:
            return __import__(module)
        except ImportError:
            continue
    raise ImportError(f"no {name} implementation")


def sha512(data: bytes) -> bytes:
    module = _hash_module("sha512")
    return bytes(module.sha512(data).digest())  # type: ignore[attr-defined]


def sha256(data: bytes) -> bytes:
    module = _hash_module("sha256")
    return bytes(module.sha256(data).digest())  # type: ignore[attr-defined]


# ---------------------------------------------------------------- Ed25519 verify (RFC 8032)

_P = 2**255 - 19
_L = 2**252 + 27742317777372353535851937790883648493
_D = -121665 * pow(121666, -1, _P) % _P
_D2 = 2 * _D % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
_B_Y = 4 * pow(5, -1, _P) % _P
_W = 5  # wNAF width: tables of the odd multiples 1..15
_B_TABLE: list[tuple[int, int, int]] = []


def _decode_point(data: bytes) -> tuple[int, int] | None:
    """RFC 8032 5.1.3, strictly: y < p, x recoverable, no negative zero."""
    if len(data) != 32:
        return None
    number = int.from_bytes(data, "little")
    sign = number >> 255
    y = number & ((1 << 255) - 1)
    if y >= _P:
        return None
    yy = y * y % _P
    u = (yy - 1) % _P
    v = (_D * yy + 1) % _P
    v3 = v * v % _P * v % _P
    x = u * v3 % _P * pow(u * v3 % _P * v3 % _P * v % _P, (_P - 5) // 8, _P) % _P
    vxx = v * x % _P * x % _P
    if vxx != u:
        if vxx != (_P - u) % _P:
            return None
        x = x * _SQRT_M1 % _P
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _add(p1: tuple[int, int, int, int], p2: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Extended-coordinate addition (RFC 8032 5.1.4); used for the small tables only."""
    x1, y1, z1, t1 = p1
    x2, y2, z2, t2 = p2
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * _D2 % _P * t2 % _P
    d = z1 * 2 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return e * f % _P, g * h % _P, f * g % _P, e * h % _P


def _odd_multiples(x: int, y: int) -> list[tuple[int, int, int, int]]:
    """1P, 3P, ..., 15P in extended coordinates."""
    point = (x, y, 1, x * y % _P)
    twice = _add(point, point)
    out = [point]
    for _ in range(2 ** (_W - 2) - 1):
        out.append(_add(out[-1], twice))
    return out


def _signed_table(points: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """Cached form (Y+X, Y-X, 2Z, 2dT) indexed by the signed digit (negative = from the end)."""
    size = 2**_W
    table: list[tuple[int, int, int, int]] = [(1, 1, 2, 0)] * size
    for index, (x, y, z, t) in enumerate(points):
        digit = 2 * index + 1
        t2d = t * _D2 % _P
        table[digit] = ((y + x) % _P, (y - x) % _P, 2 * z % _P, t2d)
        table[size - digit] = ((y - x) % _P, (y + x) % _P, 2 * z % _P, (_P - t2d) % _P)
    return table


def _base_table() -> list[tuple[int, int, int]]:
    """B's odd multiples in affine form (Y+X, Y-X, 2dXY), computed once per process."""
    if not _B_TABLE:
        base = _decode_point(_B_Y.to_bytes(32, "little"))
        assert base is not None
        size = 2**_W
        table: list[tuple[int, int, int]] = [(1, 1, 0)] * size
        for index, (x, y, z, _t) in enumerate(_odd_multiples(*base)):
            zi = pow(z, -1, _P)
            ax, ay = x * zi % _P, y * zi % _P
            xy2d = ax * ay % _P * _D2 % _P
            digit = 2 * index + 1
            table[digit] = ((ay + ax) % _P, (ay - ax) % _P, xy2d)
            table[size - digit] = ((ay - ax) % _P, (ay + ax) % _P, (_P - xy2d) % _P)
        _B_TABLE.extend(table)
    return _B_TABLE


def _wnaf(scalar: int) -> list[int]:
    """Width-5 non-adjacent form, least significant digit first."""
    digits: list[int] = []
    half, full = 2 ** (_W - 1), 2**_W
    while scalar:
        digit = 0
        if scalar & 1:
            digit = scalar & (full - 1)
            if digit >= half:
                digit -= full
            scalar -= digit
        digits.append(digit)
        scalar >>= 1
    return digits


def _straus(s: int, h: int, neg_a: tuple[int, int]) -> bytes:
    """Encode [s]B + [h](-A): one shared doubling chain (Straus/Shamir), then one inversion."""
    p = _P
    btab = _base_table()
    atab = _signed_table(_odd_multiples(*neg_a))
    ds, dh = _wnaf(s), _wnaf(h)
    n = max(len(ds), len(dh))
    ds += [0] * (n - len(ds))
    dh += [0] * (n - len(dh))
    x, y, z, t = 0, 1, 1, 0
    for i in range(n - 1, -1, -1):
        sd, hd = ds[i], dh[i]
        if i != n - 1:  # double; T only when an addition follows
            a = x * x % p
            b = y * y % p
            c = 2 * z * z % p
            hh = a + b
            e = hh - (x + y) * (x + y) % p
            g = a - b
            f = c + g
            x, y, z = e * f % p, g * hh % p, f * g % p
            if sd or hd:
                t = e * hh % p
        if sd:
            ypx, ymx, xy2d = btab[sd]
            a = (y - x) * ymx % p
            b = (y + x) * ypx % p
            c = t * xy2d % p
            d = 2 * z
            e, f, g, hh = b - a, d - c, d + c, b + a
            x, y, z = e * f % p, g * hh % p, f * g % p
            if hd:
                t = e * hh % p
        if hd:
            ypx, ymx, z2, t2d = atab[hd]
            a = (y - x) * ymx % p
            b = (y + x) * ypx % p
            c = t * t2d % p
            d = z * z2 % p
            e, f, g, hh = b - a, d - c, d + c, b + a
            x, y, z = e * f % p, g * hh % p, f * g % p
    zi = pow(z, -1, p)
    ax, ay = x * zi % p, y * zi % p
    return (ay | ((ax & 1) << 255)).to_bytes(32, "little")


def ed25519_verify(public: bytes, message: bytes, signature: bytes) -> bool:
    """RFC 8032 5.1.7, cofactorless: [S]B == R + [h]A, compared as encodings."""
    if len(public) != 32 or len(signature) != 64:
        return False
    point_a = _decode_point(public)
    if point_a is None or _decode_point(signature[:32]) is None:
        return False
    s = int.from_bytes(signature[32:], "little")
    if s >= _L:
        return False
    h = int.from_bytes(sha512(signature[:32] + public + message), "little") % _L
    neg_a = ((_P - point_a[0]) % _P, point_a[1])
    return _straus(s, h, neg_a) == signature[:32]


# ---------------------------------------------------------------- UTC time without time zones


def _days_from_civil(year: int, month: int, day: int) -> int:
    """Days since 1970-01-01 in the proleptic Gregorian calendar."""
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    return era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468


def _civil_from_days(days: int) -> tuple[int, int, int]:
    days += 719468
    era = days // 146097
    doe = days - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + (3 if mp < 10 else -9)
    return yoe + era * 400 + (month <= 2), month, day


def _month_days(year: int, month: int) -> int:
    if month == 2:
        return 29 if year % 4 == 0 and (year % 100 != 0 or year % 400 == 0) else 28
    return 30 if month in (4, 6, 9, 11) else 31


def parse_utc(text: str) -> int | None:
    """`YYYY-MM-DDTHH:MM:SSZ` -> seconds since the epoch, or None when not exactly that."""
    if len(text) != 20 or text[4] != "-" or text[7] != "-" or text[10] != "T":
        return None
    if text[13] != ":" or text[16] != ":" or text[19] != "Z":
        return None
    parts = (text[0:4], text[5:7], text[8:10], text[11:13], text[14:16], text[17:19])
    if not all(part.isascii() and part.isdigit() for part in parts):
        return None
    year, month, day, hour, minute, second = (int(part) for part in parts)
    if year < 1970 or not 1 <= month <= 12 or not 1 <= day <= _month_days(year, month):
        return None
    if hour > 23 or minute > 59 or second > 59:
        return None
    return _days_from_civil(year, month, day) * 86400 + hour * 3600 + minute * 60 + second


def format_utc(epoch: int, sudoers: bool = False) -> str:
    """Seconds since the epoch -> `YYYY-MM-DDTHH:MM:SSZ` (or sudoers' `YYYYMMDDHHMMSSZ`)."""
    days, rest = divmod(int(epoch), 86400)
    year, month, day = _civil_from_days(days)
    hour, rest = divmod(rest, 3600)
    minute, second = divmod(rest, 60)
    if sudoers:
        return f"{year:04d}{month:02d}{day:02d}{hour:02d}{minute:02d}{second:02d}Z"
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}Z"


# ---------------------------------------------------------------- allow-lists


def is_grant_id(text: str) -> bool:
    return len(text) == 17 and text[0] == "g" and all(c in _HEX for c in text[1:])


def is_posix_name(text: str) -> bool:
    return 0 < len(text) <= 32 and text[0] in _NAME_FIRST and all(c in _NAME_REST for c in text[1:])


def is_node_name(text: str) -> bool:
    return 0 < len(text) <= 63 and text[0] != "-" and all(c in _NODE_CHARS for c in text)


def _is_set_name(text: str) -> bool:
    return 0 < len(text) <= 48 and text[0] in _LOWER and all(c in _SET_REST for c in text[1:])


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in _HEX for c in text)


def _is_reason(text: str) -> bool:
    """Non-empty, canonical percent-encoding: only unreserved bytes stay literal."""
    if not text:
        return False
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%":
            code = text[i + 1 : i + 3]
            if len(code) != 2 or not all(c in "0123456789ABCDEF" for c in code):
                return False
            if chr(int(code, 16)) in _UNRESERVED:
                return False
            i += 3
        elif char in _UNRESERVED:
            i += 1
        else:
            return False
    return True


def _names(text: str, check: Callable[[str], bool]) -> tuple[str, ...] | None:
    if text == "":
        return ()
    items = tuple(text.split(","))
    return items if all(check(item) for item in items) else None


def _b64decode(text: str, size: int) -> bytes | None:
    """Standard, padded, canonical base64 of exactly `size` bytes.

    The lenient decoder (Python 3.9 has no strict_mode) may skip stray characters, but
    only the one canonical encoding of the decoded bytes survives the round trip below.
    """
    if len(text) != 4 * ((size + 2) // 3):
        return None
    try:
        raw = binascii.a2b_base64(text.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) != size or binascii.b2a_base64(raw, newline=False).decode("ascii") != text:
        return None
    return raw


def _clean(text: object, limit: int = 300) -> str:
    """A value fit for a log line: printable ASCII only, bounded."""
    out = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return out if len(out) <= limit else out[:limit] + "..."


# ---------------------------------------------------------------- the grant file


def parse_grant(data: bytes) -> Grant | str:
    """Parse a `broker-grant-v1` file exactly as docs/grants.md says; a problem string if not."""
    if len(data) > MAX_FILE:
        return f"larger than {MAX_FILE} bytes"
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return "not ASCII"
    if not text.endswith("\n"):
        return "does not end with a newline"
    if any(not " " <= c <= "~" for c in text.replace("\n", "")):
        return "control character in the file"
    lines = text[:-1].split("\n")
    if len(lines) != len(_GRANT_KEYS) + 1 or lines[0] != GRANT_MAGIC:
        return f"not a {GRANT_MAGIC} file (wrong magic or number of lines)"
    values: dict[str, str] = {}
    for key, line in zip(_GRANT_KEYS, lines[1:]):  # as many lines as keys, checked above
        name, sep, value = line.partition("=")
        if name != key or not sep:
            return f"line {len(values) + 2}: expected {key}="
        values[key] = value
    return _grant_from_values(values, data[: len(data) - len(lines[-1]) - 1])


def _grant_from_values(v: dict[str, str], signed: bytes) -> Grant | str:
    if not is_grant_id(v["id"]):
        return "bad id"
    if not is_node_name(v["node"]):
        return "bad node"
    for key in ("user", "runas"):
        if not is_posix_name(v[key]):
            return f"bad {key}"
    commands = ("ALL",) if v["commands"] == "ALL" else _names(v["commands"], _is_set_name)
    if not commands:
        return "bad commands"
    times = {key: parse_utc(v[key]) for key in ("not_before", "not_after", "issued_at")}
    for key, value in times.items():
        if value is None:
            return f"bad {key}"
    not_before, not_after, issued_at = (
        times["not_before"] or 0,
        times["not_after"] or 0,
        times["issued_at"] or 0,
    )
    if not_before >= not_after:
        return "not_before is not before not_after"
    for key in ("login", "workloads"):
        if v[key] not in ("0", "1"):
            return f"bad {key}"
    sessions = v["max_sessions"]
    if not (sessions.isdigit() and sessions.isascii() and sessions[0] != "0"):
        return "bad max_sessions"
    if not 1 <= int(sessions) <= MAX_SESSIONS_LIMIT:
        return "bad max_sessions"
    if not _is_hex(v["policy_sha256"], 64):
        return "bad policy_sha256"
    approvers = _names(v["approvers"], is_posix_name)
    if approvers is None:
        return "bad approvers"
    if not _is_reason(v["reason"]):
        return "bad reason"
    if not _is_hex(v["key_id"], 16):
        return "bad key_id"
    signature = _b64decode(v["signature"], 64)
    if signature is None:
        return "bad signature encoding"
    return Grant(
        v["id"],
        v["node"],
        v["user"],
        v["runas"],
        commands,
        not_before,
        not_after,
        v["login"] == "1",
        v["workloads"] == "1",
        int(sessions),
        v["policy_sha256"],
        approvers,
        v["reason"],
        issued_at,
        v["key_id"],
        signature,
        signed,
    )


def check_grant(
    grant: Grant,
    conf: NodeConf,
    key: GrantKey,
    now: int,
    *,
    paths: Paths,
    user: str | None = None,
    check_time: bool = True,
) -> str | None:
    """Everything the hook requires of a parsed grant but the file checks; None when valid.

    The signature is checked last: it is the only expensive step.
    """
    if grant.node != conf.node:
        return f"for node {grant.node}, this is {conf.node}"
    if user is not None and grant.user != user:
        return f"for user {grant.user}"
    if check_time and now < grant.not_before:
        return f"not valid before {format_utc(grant.not_before)}"
    if now >= grant.not_after:
        return f"expired at {format_utc(grant.not_after)}"
    if os.path.lexists(os.path.join(paths.revoked, grant.id)):
        return "revoked"
    if grant.key_id != key.key_id:
        return f"signed by key {grant.key_id}, this node trusts {key.key_id}"
    if not ed25519_verify(key.raw, grant.signed, grant.signature):
        return "bad signature"
    return None


# ---------------------------------------------------------------- safe file reads


def _open_dir(path: str, forbidden: int = 0o022) -> int:
    """Open a root-owned directory no one else can write (no symlink); raise otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & forbidden:
        os.close(fd)
        raise PermissionError(f"{path}: directory not root-owned or writable by others")
    return fd


def _read_at(dir_fd: int, name: str, forbidden: int, limit: int = MAX_FILE) -> bytes | str:
    """Read a regular, root-owned, single-link file without following links."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return "a symlink" if exc.errno == 40 else f"cannot open ({exc.strerror})"  # ELOOP
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_uid != 0:
            return f"owned by uid {info.st_uid}, not root"
        if info.st_mode & forbidden:
            return f"mode {stat.S_IMODE(info.st_mode):04o} is too open"
        if info.st_nlink != 1:
            return f"{info.st_nlink} hard links"
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            return f"larger than {limit} bytes"
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_secure(path: str, forbidden: int = 0o077, limit: int = MAX_FILE) -> bytes | str:
    """A file's bytes after the checks of docs/grants.md, or the problem."""
    directory, name = os.path.split(path)
    try:
        dir_fd = _open_dir(directory)
    except FileNotFoundError:
        return f"{directory} is missing"
    except OSError as exc:
        return str(exc) if isinstance(exc, PermissionError) else f"{directory}: {exc.strerror}"
    try:
        return _read_at(dir_fd, name, forbidden, limit)
    finally:
        os.close(dir_fd)


def read_grant_file(paths: Paths, name: str) -> Grant | str:
    """Read, check and parse grants/<name>; the name must be the grant's id."""
    data = read_secure(os.path.join(paths.grants, name))
    if isinstance(data, str):
        return data
    grant = parse_grant(data)
    if isinstance(grant, Grant) and grant.id != name:
        return f"holds grant {grant.id}"
    return grant


def key_values(data: bytes, known: tuple[str, ...]) -> dict[str, str] | str:
    """`key=value` lines (blank lines and `#` comments allowed), each known key at most
    once: node.conf and the quarantine marker."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return "not ASCII"
    values: dict[str, str] = {}
    for number, raw in enumerate(text.split("\n"), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in known or key in values:
            return f"line {number}: unknown or repeated setting"
        values[key] = value
    return values


def load_conf(paths: Paths) -> NodeConf | str:
    data = read_secure(paths.node_conf, forbidden=0o022)
    if isinstance(data, str):
        return f"node.conf: {data}"
    values = key_values(data, ("node", "login_gated", "break_glass_group", "joblaunch_service"))
    if isinstance(values, str):
        return f"node.conf: {values}"
    node, gated = values.get("node", ""), values.get("login_gated", "")
    group, service = values.get("break_glass_group", ""), values.get("joblaunch_service", "")
    if not is_node_name(node):
        return "node.conf: node is missing or not a node name"
    if gated not in ("0", "1"):
        return "node.conf: login_gated must be 0 or 1"
    if group and not (len(group) <= 64 and all(c in _GROUP_CHARS for c in group)):
        return "node.conf: bad break_glass_group"
    if service and not (
        len(service) <= 64
        and all(c in _SERVICE_CHARS for c in service)
        and service not in (*SUDO_SERVICES, "sshd")
    ):
        return "node.conf: bad joblaunch_service"
    return NodeConf(node, gated == "1", group, service)


def load_key(paths: Paths) -> GrantKey | str:
    data = read_secure(paths.grant_key, forbidden=0o022, limit=256)
    if isinstance(data, str):
        return f"grant-key.pub: {data}"
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        return "grant-key.pub: not ASCII"
    magic, _, encoded = text.removesuffix("\n").partition(" ")
    raw = _b64decode(encoded, 32) if magic == KEY_MAGIC and text.endswith("\n") else None
    if raw is None or _decode_point(raw) is None:
        return "grant-key.pub: not a broker-grant-key-v1 line"
    return GrantKey(raw, binascii.hexlify(sha256(raw)[:8]).decode("ascii"))


def grant_ids(paths: Paths) -> list[str]:
    """Names in the grants directory (sorted); temporary files left out."""
    try:
        names = os.listdir(paths.grants)
    except FileNotFoundError:
        return []
    return sorted(name for name in names if not name.startswith(TMP_PREFIX))


def valid_grants(
    paths: Paths, conf: NodeConf, key: GrantKey, user: str, now: int
) -> tuple[list[Grant], list[str]]:
    """The user's valid grants, and what was wrong with the files that could be theirs."""
    found: list[Grant] = []
    problems: list[str] = []
    if not is_posix_name(user):
        return found, problems
    for name in grant_ids(paths):
        label = _clean(name, 40)
        if not is_grant_id(name):
            problems.append(f"{label}: not a grant id")
            continue
        grant = read_grant_file(paths, name)
        if isinstance(grant, str):
            problems.append(f"{label}: {grant}")
            continue
        if grant.user != user:
            continue
        problem = check_grant(grant, conf, key, now, paths=paths, user=user)
        if problem is None:
            found.append(grant)
        else:
            problems.append(f"{label}: {problem}")
    return found, problems


# ---------------------------------------------------------------- sessions and events


def _pid_alive(paths: Paths, pid: int) -> bool:
    return os.path.exists(os.path.join(paths.proc, str(pid)))


def live_sessions(paths: Paths, grant_id: str) -> list[int]:
    """Pids with a session record of the grant that still run; stale records are removed."""
    directory = os.path.join(paths.sessions, grant_id)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    live: list[int] = []
    for name in names:
        if not (name.isascii() and name.isdigit() and len(name) <= 10):
            continue
        if _pid_alive(paths, int(name)):
            live.append(int(name))
        else:
            _unlink(os.path.join(directory, name))
    return sorted(live)


def _ensure_dir(path: str) -> None:
    """A root-owned 0700 directory (parents too, only as far as missing)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent != path:
            _ensure_dir(parent)
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700, follow_symlinks=False)
        except FileExistsError:
            pass
        info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise PermissionError(f"{path}: not a root-owned directory closed to others")


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _random_hex(nbytes: int = 4) -> str:
    return binascii.hexlify(os.urandom(nbytes)).decode("ascii")


def _write_temp(directory: str, final: str, data: bytes, mode: int) -> str:
    """A new file with its final mode, written and fsynced; returns its (temporary) path."""
    path = os.path.join(directory, f"{TMP_PREFIX}{final}.{_random_hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not change the intended mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def write_atomic(directory: str, name: str, data: bytes, mode: int = 0o600) -> None:
    """Temp file + fsync + rename + fsync of the directory: readers see all or nothing."""
    temp = _write_temp(directory, name, data, mode)
    try:
        os.rename(temp, os.path.join(directory, name))
    except BaseException:
        os.unlink(temp)
        raise
    _fsync_dir(directory)


def _json_string(text: str) -> str:
    """JSON string literal without importing json (everything outside printable ASCII escaped)."""
    out = ['"']
    for char in text:
        code = ord(char)
        if char in '"\\' or code < 0x20 or code > 0x7E:
            if code > 0xFFFF:
                code -= 0x10000
                out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
            else:
                out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def spool_event(
    paths: Paths,
    kind: str,
    grant_id: str,
    user: str,
    runas: str,
    service: str,
    tty: str,
    pid: int,
    now: int,
    event_id: str | None = None,
) -> str:
    """Write one event file for `collect`; returns its event id."""
    if event_id is None:
        event_id = f"{time.time_ns()}-{os.getpid()}-{_random_hex()}"
    fields = (
        ("event_id", _json_string(event_id)),
        ("kind", _json_string(kind)),
        ("grant_id", _json_string(grant_id)),
        ("user", _json_string(user)),
        ("runas", _json_string(runas)),
        ("service", _json_string(service)),
        ("tty", _json_string(tty)),
        ("pid", str(int(pid))),
        ("at", _json_string(format_utc(now))),
    )
    body = "{" + ", ".join(f'"{key}": {value}' for key, value in fields) + "}\n"
    _ensure_dir(paths.events)
    write_atomic(paths.events, f"{event_id}.json", body.encode("ascii"))
    return event_id


def _tty_name(tty: str) -> str:
    value = tty.removeprefix("/dev/")[:64]
    return value if value and all(c in _TTY_CHARS for c in value) else "-"


def _target_name(user: str) -> str:
    return user if is_posix_name(user) else "-"


DENY_SPOOL_LIMIT = 5000


def spool_deny(
    paths: Paths, service: str, ruser: str, user: str, tty: str, pid: int, now: int
) -> str | None:
    """Spool one `deny` event per refused sudo process; its event id, or None when skipped.

    sudo may run the hook in both its auth and account stacks for one attempt (and auth
    again per password try); the id's last two parts name the sudo process (pid and
    start time), so a second refusal of the same process finds its event and adds none.
    Refusals are not spooled past DENY_SPOOL_LIMIT waiting events (a user looping on sudo
    must not crowd out session events), nor without a spool directory (bootstrap makes
    it) or when it cannot be written: the refusal itself stands either way.
    """
    try:
        names = os.listdir(paths.events)
    except OSError:  # missing: not bootstrapped, nothing collects it
        return None
    if len(names) >= DENY_SPOOL_LIMIT:
        return None
    entry = _proc_table_entry(paths, pid)
    if entry is None:
        tag = _random_hex()
    else:
        seed = f"deny {pid} {entry[2]} {ruser}".encode("utf-8", "replace")
        tag = binascii.hexlify(sha256(seed)[:4]).decode("ascii")
        suffix = f"-{pid}-{tag}.json"
        if any(name.endswith(suffix) for name in names):
            return None
    event_id = f"{time.time_ns()}-{int(pid)}-{tag}"
    try:
        return spool_event(
            paths,
            "deny",
            "-",
            _target_name(ruser),
            _target_name(user),
            service,
            _tty_name(tty),
            pid,
            now,
            event_id=event_id,
        )
    except OSError:
        return None


# ---------------------------------------------------------------- quarantine

QUARANTINE_REASON_MAX = 200
_QUARANTINE_KEYS = ("node", "since", "group", "reason")


class Quarantine(_Record):
    """/etc/broker/quarantine: the node is closed to everyone but root and `group`."""

    __slots__ = _QUARANTINE_KEYS
    node: str
    since: int
    group: str
    reason: str  # decoded text (the file holds it percent-encoded, like a grant's reason)


def _percent_encode(text: str) -> str:
    """Every UTF-8 byte outside A-Za-z0-9-._~ as %XX: one safe line for any reason text."""
    return "".join(
        chr(byte) if chr(byte) in _UNRESERVED else f"%{byte:02X}" for byte in text.encode("utf-8")
    )


def _percent_decode(text: str) -> str | None:
    """The reverse of `_percent_encode` for canonical input only; None otherwise."""
    if not _is_reason(text):
        return None
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "%":
            out.append(int(text[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(text[i]))
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _is_group_name(text: str) -> bool:
    return len(text) <= 64 and all(c in _GROUP_CHARS for c in text)


def _is_quarantine_reason(text: str) -> bool:
    return 0 < len(text) <= QUARANTINE_REASON_MAX and text.isprintable() and bool(text.strip())


def parse_quarantine(data: bytes) -> Quarantine | str:
    """`key=value` lines like node.conf: node, since, group (may be empty), reason."""
    values = key_values(data, _QUARANTINE_KEYS)
    if isinstance(values, str):
        return values
    if set(values) != set(_QUARANTINE_KEYS):
        return "a setting is missing"
    since = parse_utc(values["since"])
    reason = _percent_decode(values["reason"])
    if not is_node_name(values["node"]):
        return "bad node"
    if since is None:
        return "bad since"
    if not _is_group_name(values["group"]):
        return "bad group"
    if reason is None or not _is_quarantine_reason(reason):
        return "bad reason"
    return Quarantine(values["node"], since, values["group"], reason)


def render_quarantine(marker: Quarantine) -> bytes:
    return (
        "# Written by the broker: this node is quarantined (only root and group pass the hook).\n"
        f"node={marker.node}\nsince={format_utc(marker.since)}\ngroup={marker.group}\n"
        f"reason={_percent_encode(marker.reason)}\n"
    ).encode("ascii")


def read_quarantine(paths: Paths) -> Quarantine | str | None:
    """None: no marker. A string: a marker that exists but cannot be trusted (bad owner,
    mode, link, content); the hook then treats the node as quarantined with nobody exempt."""
    try:
        os.lstat(paths.quarantine)
    except FileNotFoundError:
        return None
    except OSError as exc:  # cannot even look: fail closed
        return f"quarantine marker: {exc.strerror or exc}"
    data = read_secure(paths.quarantine, forbidden=0o022)
    marker = parse_quarantine(data) if isinstance(data, bytes) else data
    return f"quarantine marker: {marker}" if isinstance(marker, str) else marker


def _quarantine_refusal(paths: Paths, user: str, in_group: GroupCheck) -> str | None:
    """Why a quarantine keeps `user` (not root) out, or None when there is none or the user
    is in its incident-response group (who then still needs a grant or break-glass)."""
    marker = read_quarantine(paths)
    if marker is None:
        return None
    if isinstance(marker, str):
        return f"node quarantined ({marker}): only root may pass"
    if marker.group and in_group(user, marker.group):
        return None
    return f"node quarantined since {format_utc(marker.since)}: {_clean(marker.reason, 200)}"


# ---------------------------------------------------------------- the PAM decisions

Decision = tuple[bool, str]


def _grant_state(
    paths: Paths,
    user: str,
    now: int,
    conf: NodeConf | str | None = None,
    key: GrantKey | str | None = None,
) -> tuple[list[Grant], str]:
    """Valid grants of `user` on this node and, when none, the reason why."""
    conf = load_conf(paths) if conf is None else conf
    if isinstance(conf, str):
        return [], conf
    key = load_key(paths) if key is None else key
    if isinstance(key, str):
        return [], key
    grants, problems = valid_grants(paths, conf, key, user, now)
    if grants:
        return grants, ""
    reason = f"no valid grant for {_clean(user, 64)} on {conf.node}"
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        reason += ": " + "; ".join(problems[:3]) + more
    return [], reason


def _break_glass(conf: NodeConf | str, user: str, in_group: GroupCheck) -> bool:
    if isinstance(conf, str) or not conf.break_glass_group or not user:
        return False
    return in_group(user, conf.break_glass_group)


def _node_key(paths: Paths, conf: NodeConf | str) -> GrantKey | str:
    """The verification key, or why this node's own configuration cannot be trusted (then
    only root passes, not even break-glass: fail closed). Read once per hook run."""
    return conf if isinstance(conf, str) else load_key(paths)


def decide_sudo(paths: Paths, ruser: str, now: int, in_group: GroupCheck) -> Decision:
    """sudo auth/account: root, a valid grant with a free session slot, or break-glass.

    On a quarantined node only members of the marker's group get that far (break-glass
    members outside it are refused too). Grants are looked at before break-glass: the
    group lookup may go to the directory (SSSD).
    """
    if ruser == "root":
        return True, "root"
    if not ruser:
        return False, "no PAM_RUSER: the invoking user is unknown"
    quarantined = _quarantine_refusal(paths, ruser, in_group)
    if quarantined is not None:
        return False, quarantined
    conf = load_conf(paths)
    key = _node_key(paths, conf)
    if isinstance(key, str):
        return False, key
    grants, reason = _grant_state(paths, ruser, now, conf, key)
    if grants:
        limit = max(grant.max_sessions for grant in grants)
        # A session is recorded under every grant the user held when it opened: count pids.
        open_now = len({pid for grant in grants for pid in live_sessions(paths, grant.id)})
        if open_now < limit:
            return True, f"grant {grants[0].id}"
        reason = f"max_sessions reached: {open_now} open elevated sessions (limit {limit})"
    if _break_glass(conf, ruser, in_group):
        assert isinstance(conf, NodeConf)
        return True, f"break-glass: {_clean(ruser, 64)} is in {conf.break_glass_group}"
    return False, reason


def decide_sshd(paths: Paths, user: str, now: int, in_group: GroupCheck) -> Decision:
    """sshd account: when logins are gated, only root, login=1 grants and break-glass
    (and, on a quarantined node, only those of them in the marker's group)."""
    if user == "root":
        return True, "root"
    conf = load_conf(paths)
    key = _node_key(paths, conf)
    if isinstance(key, str):
        return False, key
    assert isinstance(conf, NodeConf)
    if not conf.login_gated:
        return True, "logins not gated"
    quarantined = _quarantine_refusal(paths, user, in_group)
    if quarantined is not None:
        return False, f"login gated: {quarantined}"
    grants, reason = _grant_state(paths, user, now, conf, key)
    login = [grant for grant in grants if grant.login]
    if login:
        return True, f"login grant {login[0].id}"
    if _break_glass(conf, user, in_group):
        return True, f"break-glass: {_clean(user, 64)} is in {conf.break_glass_group}"
    if grants:
        return False, f"login gated: grant {grants[0].id} has login=0"
    return False, f"login gated: {reason}"


def decide_joblaunch(
    paths: Paths, user: str, now: int, conf: NodeConf | str | None = None
) -> Decision:
    """Job launch (AC-6): no workloads while holding a root grant with workloads=0."""
    grants, _ = _grant_state(paths, user, now, conf)
    for grant in grants:
        if grant.runas == "root" and not grant.workloads:
            return False, f"holds root grant {grant.id} (workloads=0): no jobs while elevated"
    return True, "no root grant"


def open_session(
    paths: Paths,
    service: str,
    ruser: str,
    user: str,
    tty: str,
    pid: int,
    now: int,
    in_group: GroupCheck | None = None,
) -> Decision:
    """Record sessions/<id>/<pid> and spool an `open` event; never refuses.

    A break-glass session (no grant, the user in break_glass_group) is recorded too, under
    the pseudo-id `break-glass`: the emergency path is the one most worth a record."""
    grants, _ = _grant_state(paths, ruser, now) if ruser != "root" else ([], "")
    if not grants:
        if ruser and ruser != "root" and in_group is not None:
            conf = load_conf(paths)
            if _break_glass(conf, ruser, in_group):
                _record_session(paths, BREAK_GLASS, service, ruser, user, tty, pid, now)
                return True, f"break-glass session {pid} recorded"
        return True, "no grant: session not recorded"
    # Which of the user's grants sudo matched is not known here: the session belongs to
    # each of them, so revoking any one of them ends it.
    for grant in grants:
        _record_session(paths, grant.id, service, ruser, user, tty, pid, now)
    return True, f"session {','.join(g.id for g in grants)}/{pid} recorded"


def _record_session(
    paths: Paths, key: str, service: str, ruser: str, user: str, tty: str, pid: int, now: int
) -> None:
    runas, tty_name = _target_name(user), _tty_name(tty)
    directory = os.path.join(paths.sessions, key)
    _ensure_dir(directory)
    record = f"{ruser} {runas} {tty_name} {format_utc(now)}\n"
    write_atomic(directory, str(pid), record.encode("ascii"))
    spool_event(paths, "open", key, ruser, runas, service, tty_name, pid, now)


def close_session(
    paths: Paths, service: str, ruser: str, user: str, tty: str, pid: int, now: int
) -> Decision:
    """Remove sessions/*/<pid> and spool a `close` event; never refuses."""
    try:
        ids = [
            name for name in os.listdir(paths.sessions) if is_grant_id(name) or name == BREAK_GLASS
        ]
    except FileNotFoundError:
        ids = []
    closed: list[str] = []
    for grant_id in ids:
        path = os.path.join(paths.sessions, grant_id, str(pid))
        if not os.path.lexists(path):
            continue
        os.unlink(path)
        _fsync_dir(os.path.dirname(path))
        spool_event(
            paths, "close", grant_id, ruser, _target_name(user), service, _tty_name(tty), pid, now
        )
        closed.append(grant_id)
    if closed:
        return True, f"session {','.join(closed)}/{pid} closed"
    return True, "no session record"


def decide(
    paths: Paths,
    pam_type: str,
    service: str,
    user: str,
    ruser: str,
    tty: str,
    pid: int,
    now: int,
    in_group: GroupCheck,
) -> Decision:
    """One row of the hook table in docs/grants.md."""
    if service in SUDO_SERVICES:
        if pam_type in ("auth", "account"):
            allow, reason = decide_sudo(paths, ruser, now, in_group)
            if not allow and ruser and ruser != "root":
                spool_deny(paths, service, ruser, user, tty, pid, now)
            return allow, reason
        if pam_type == "open_session":
            return open_session(paths, service, ruser, user, tty, pid, now, in_group)
        if pam_type == "close_session":
            return close_session(paths, service, ruser, user, tty, pid, now)
        return True, "not gated"
    if pam_type != "account":
        return True, "not gated"
    if service == "sshd":
        return decide_sshd(paths, user, now, in_group)
    conf = load_conf(paths)
    if isinstance(conf, str):
        if user == "root":
            return True, "root"
        return False, conf  # the job-launch service cannot be told apart: fail closed
    if conf.joblaunch_service and service == conf.joblaunch_service:
        return decide_joblaunch(paths, user, now, conf)
    return True, "not gated"


def in_group(user: str, group: str) -> bool:
    """NSS membership, primary group included (the real lookup of pam_main)."""
    import grp
    import pwd

    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    if user in entry.gr_mem:
        return True
    try:
        return pwd.getpwnam(user).pw_gid == entry.gr_gid
    except KeyError:
        return False


def _syslog(priority_name: str, message: str) -> None:
    import syslog

    syslog.openlog("broker-pam", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(getattr(syslog, priority_name), _clean(message, 900))


def pam_main(argv: list[str], environ: Mapping[str, str], paths: Paths | None = None) -> int:
    """pam_exec entry point: exit 0 allows, 1 denies; any error denies (sessions: logged, 0)."""
    del argv  # pam_exec passes nothing the hook needs
    here = paths if paths is not None else Paths()
    pam_type = environ.get("PAM_TYPE", "")
    service = environ.get("PAM_SERVICE", "")
    user, ruser = environ.get("PAM_USER", ""), environ.get("PAM_RUSER", "")
    what = f"service={_clean(service, 40)} type={_clean(pam_type, 20)} user={_clean(user, 64)}"
    what += f" ruser={_clean(ruser, 64)}"
    try:
        allow, reason = decide(
            here,
            pam_type,
            service,
            user,
            ruser,
            environ.get("PAM_TTY", ""),
            os.getppid(),
            int(time.time()),
            in_group,
        )
    except Exception as exc:  # noqa: BLE001 - the hook must fail closed, never crash open
        reason = f"internal error: {type(exc).__name__}: {exc}"
        if pam_type in SESSION_TYPES:
            _log_quietly("LOG_ERR", f"session not recorded {what}: {reason}")
            return 0
        allow = False
    if not allow:
        _log_quietly("LOG_WARNING", f"deny {what}: {reason}")
        return 1
    if reason.startswith("break-glass"):
        _log_quietly("LOG_NOTICE", f"allow {what}: {reason}")
    return 0


def _log_quietly(priority: str, message: str) -> None:
    try:  # noqa: SIM105 - contextlib would cost an import on every sudo
        _syslog(priority, message)
    except Exception:  # noqa: BLE001, S110 - logging must not change the decision
        pass


# ---------------------------------------------------------------- the node program


class _Usage(Exception):
    """Bad input to the node program: exit 2."""


def _run(argv: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run a local program with a fixed minimal environment; (exit code, stdout+stderr)."""
    import subprocess

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, f"{argv[0]}: {exc}"
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    return done.returncode, output


def _sudo_info() -> dict[str, object]:
    code, output = _run(["sudo", "-V"])
    first = output.split("\n", 1)[0].strip()
    if code == 0 and first.startswith("Sudo version "):
        version = _clean(first.removeprefix("Sudo version "), 40)
        return {
            "flavour": "sudo",
            "version": version,
            "io_logging": "Sudoers I/O plugin version" in output,
        }
    if code == 0 and first.startswith("sudo-rs"):
        return {"flavour": "sudo-rs", "version": _clean(first[7:].strip(), 40), "io_logging": False}
    return {"flavour": "unknown", "version": "", "io_logging": False}


def _status(paths: Paths, now: int) -> dict[str, object]:
    conf, key = load_conf(paths), load_key(paths)
    grants: list[dict[str, object]] = []
    for name in grant_ids(paths):
        entry: dict[str, object] = {"id": _clean(name, 40), "user": None, "not_after": None}
        grant = read_grant_file(paths, name) if is_grant_id(name) else "not a grant id"
        if isinstance(grant, Grant):
            entry["user"], entry["not_after"] = grant.user, format_utc(grant.not_after)
            if isinstance(conf, str) or isinstance(key, str):
                problem: str | None = conf if isinstance(conf, str) else str(key)
            else:
                problem = check_grant(grant, conf, key, now, paths=paths)
        else:
            problem = grant
        entry["valid"], entry["problem"] = problem is None, problem
        grants.append(entry)
    unhooked = _unhooked_services(paths, conf)
    problems_extra = [
        f"/etc/pam.d/{name} does not start with the broker block" for name in unhooked
    ]
    hooked = not unhooked
    return {
        "node": conf.node if isinstance(conf, NodeConf) else None,
        "hook_version": HOOK_VERSION,
        "time": time.time(),
        "sudo": _sudo_info(),
        "grants": grants,
        "bootstrapped": isinstance(conf, NodeConf)
        and isinstance(key, GrantKey)
        and os.path.isdir(paths.grants)
        and hooked,
        "problems": [p for p in (conf, key) if isinstance(p, str)] + problems_extra,
        "quarantined": _quarantine_status(paths),
    }


def _quarantine_status(paths: Paths) -> dict[str, object] | None:
    """The marker as status shows it; an untrusted marker has since/group null and a problem."""
    marker = read_quarantine(paths)
    if marker is None:
        return None
    if isinstance(marker, str):
        return {"since": None, "reason": None, "group": None, "problem": marker}
    return {
        "since": format_utc(marker.since),
        "reason": marker.reason,
        "group": marker.group or None,
        "problem": None,
    }


def _unhooked_services(paths: Paths, conf: NodeConf | str) -> list[str]:
    """PAM services that exist without the broker block as their first rules: sudo always;
    sudo-i (Debian's `sudo -i`, which does not include sudo), sshd and the job launcher
    whenever their file exists. A package upgrade that adds one bare would bypass the hook."""
    names = ["sudo", "sudo-i", "sshd"]
    if isinstance(conf, NodeConf) and conf.joblaunch_service:
        names.append(conf.joblaunch_service)
    missing: list[str] = []
    for name in names:
        try:
            with open(os.path.join(paths.pam_d, name), encoding="utf-8", errors="replace") as f:
                text = f.read(65536)
        except FileNotFoundError:
            if name == "sudo":
                missing.append(name)
            continue
        except OSError:
            missing.append(name)
            continue
        rules = [
            ln.strip() for ln in text.split("\n") if ln.strip() and not ln.strip().startswith("#%")
        ]
        if not rules or rules[0] != "# BEGIN broker":
            missing.append(name)
    return missing


def _rule_listed(listing: str, grant: Grant) -> bool:
    """Whether `sudo -l` output shows a rule with the grant's runas and time window."""
    want = {f"NOTBEFORE={format_utc(grant.not_before, True)}"}
    want.add(f"NOTAFTER={format_utc(grant.not_after, True)}")
    entries: list[str] = []
    for line in listing.split("\n"):
        if line.startswith("    (") and not line.startswith("     "):
            entries.append(line.strip())
        elif line.startswith("        ") and entries:
            entries[-1] += " " + line.strip()
    return any(
        entry.startswith(f"({grant.runas})") and want <= set(entry.split()) for entry in entries
    )


def _text_field(payload: dict[str, object], key: str, limit: int) -> str:
    value = payload.get(key)
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > limit:
        raise _Usage(f"{key} must be a non-empty string of at most {limit} bytes")
    return value


def _skew_problem(payload: dict[str, object]) -> str | None:
    """The broker sends its clock and the limit; refuse here, before anything is written,
    when this node's clock differs by more (one round trip instead of a separate probe)."""
    sent, limit = payload.get("broker_time"), payload.get("max_skew")
    if not isinstance(sent, (int, float)) or isinstance(sent, bool):
        raise _Usage("broker_time must be seconds since the epoch")
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not 0 < limit <= 3600:
        raise _Usage("max_skew must be between 0 and 3600 seconds")
    skew = time.time() - float(sent)
    if abs(skew) <= float(limit):
        return None
    way = "ahead of" if skew > 0 else "behind"
    return (
        f"clock is {abs(skew):.1f} s {way} the broker's (limit {float(limit):.0f} s); "
        "fix time sync (chrony/NTP) on the node"
    )


def _install_grant(paths: Paths, payload: dict[str, object], now: int) -> dict[str, object]:
    if set(payload) != {"id", "user", "grant", "sudoers", "broker_time", "max_skew"}:
        raise _Usage("install-grant takes exactly id, user, grant, sudoers, broker_time, max_skew")
    skew = _skew_problem(payload)
    grant_id = _text_field(payload, "id", 17)
    user = _text_field(payload, "user", 32)
    if not is_grant_id(grant_id) or not is_posix_name(user):
        raise _Usage("bad id or user")
    grant_text = _text_field(payload, "grant", MAX_FILE)
    sudoers = _text_field(payload, "sudoers", 65536)
    if not sudoers.isascii() or any(c < " " and c not in "\n\t" for c in sudoers):
        raise _Usage("sudoers must be printable ASCII text")

    def refuse(error: str) -> dict[str, object]:
        return {"ok": False, "live": False, "error": error}

    if skew is not None:
        return refuse(skew)
    conf, key = load_conf(paths), load_key(paths)
    if isinstance(conf, str) or isinstance(key, str):
        return refuse(f"node not bootstrapped: {conf if isinstance(conf, str) else key}")
    if not grant_text.isascii():
        return refuse("grant file: not ASCII")
    grant = parse_grant(grant_text.encode("ascii"))
    if isinstance(grant, str):
        return refuse(f"grant file: {grant}")
    if grant.id != grant_id or grant.user != user:
        return refuse("grant file does not match id and user")
    problem = check_grant(grant, conf, key, now, paths=paths, user=user, check_time=False)
    if problem is not None:
        return refuse(f"grant {grant_id}: {problem}")
    try:
        _ensure_dir(paths.grants)
        os.close(_open_dir(paths.sudoers))
    except OSError as exc:
        return refuse(str(exc))
    drop_in = f"broker_{grant_id}"
    temps: list[str] = []
    try:
        temps.append(_write_temp(paths.grants, grant_id, grant_text.encode("ascii"), 0o600))
        temps.append(_write_temp(paths.sudoers, drop_in, sudoers.encode("ascii"), 0o440))
        code, output = _run(["visudo", "-cf", temps[1]])
        if code != 0:
            lines = [ln for ln in output.split("\n") if ln.strip() and "parsed OK" not in ln]
            message = _clean(" ".join(lines).replace(temps[1], drop_in), 400)
            return refuse(f"visudo refused the drop-in: {message}")
        os.rename(temps[0], os.path.join(paths.grants, grant_id))
        temps[0] = os.path.join(paths.grants, grant_id)
        os.rename(temps[1], os.path.join(paths.sudoers, drop_in))
        temps.clear()
        _fsync_dir(paths.grants)
        _fsync_dir(paths.sudoers)
    except OSError as exc:
        return refuse(f"cannot install: {exc.strerror or exc}")
    finally:
        for path in temps:
            _unlink(path)
    code, listing = _run(["sudo", "-n", "-l", "-U", user])
    live = code == 0 and _rule_listed(listing, grant)
    error = None if live else f"sudo -l -U {user} does not list the rule"
    if code != 0:
        error = f"sudo -l -U {user} failed: {_clean(listing.strip(), 300)}"
    return {"ok": True, "live": live, "error": error}


def _id_list(payload: dict[str, object], key: str, check: Callable[[str], bool]) -> list[str]:
    if set(payload) != {key}:
        raise _Usage(f"expected exactly {{{key!r}: [...]}}")
    values = payload[key]
    if not isinstance(values, list) or len(values) > 10000:
        raise _Usage(f"{key} must be a list of at most 10000 ids")
    for value in values:
        if not isinstance(value, str) or not check(value):
            raise _Usage(f"{key}: {_clean(value, 40)!r} is not a valid id")
    return list(dict.fromkeys(values))


def _proc_table(paths: Paths) -> dict[int, tuple[int, int, int, str]]:
    """pid -> (ppid, session id, start time, state) from /proc/*/stat."""
    table: dict[int, tuple[int, int, int, str]] = {}
    for name in os.listdir(paths.proc):
        if not name.isdigit():
            continue
        entry = _proc_table_entry(paths, int(name))
        if entry is not None:
            table[int(name)] = entry
    return table


def _process_tree(paths: Paths, roots: list[int], known: Iterable[int] = ()) -> dict[int, int]:
    """The roots, their descendants, and the sessions their descendants lead: pid -> start time.

    `known` pids (found earlier) are walked too. The roots' own session (the user's login
    shell), this program and its ancestors are never included.
    """
    table = _proc_table(paths)
    protected = {0, 1, 2, os.getpid()}
    pid = os.getpid()
    while pid in table and pid not in (0, 1):
        pid = table[pid][0]
        protected.add(pid)
    roots = [r for r in roots if r in table and r not in protected]
    own_sessions = {table[p][1] for p in (*roots, *protected) if p in table}
    children: dict[int, list[int]] = {}
    for child, entry in table.items():
        children.setdefault(entry[0], []).append(child)
    tree: set[int] = set()
    todo = [*roots, *(p for p in known if p in table)]
    while todo:
        current = todo.pop()
        if current not in tree and current not in protected:
            tree.add(current)
            todo.extend(children.get(current, ()))
    sessions = {table[p][1] for p in tree} - own_sessions - {0}
    tree |= {p for p, entry in table.items() if entry[1] in sessions} - protected
    return {p: table[p][2] for p in tree}


def _signal_all(paths: Paths, targets: dict[int, int], signal: int) -> set[int]:
    """Signal the targets that are still the same processes (start time) and not zombies."""
    table = _proc_table(paths)
    hit: set[int] = set()
    for pid, start in targets.items():
        entry = table.get(pid)
        if entry is None or entry[2] != start or entry[3] == "Z":
            continue
        try:
            os.kill(pid, signal)
            hit.add(pid)
        except ProcessLookupError:
            pass
    return hit


def kill_trees(paths: Paths, roots: list[int]) -> list[int]:
    """Stop the trees (so nothing forks away), SIGTERM + SIGCONT, SIGKILL survivors after 2 s."""
    import signal

    targets: dict[int, int] = {}
    for _ in range(10):
        new = {p: s for p, s in _process_tree(paths, roots, targets).items() if p not in targets}
        if not new:
            break
        targets.update(new)
        _signal_all(paths, new, signal.SIGSTOP)
    killed = _signal_all(paths, targets, signal.SIGTERM)
    _signal_all(paths, targets, signal.SIGCONT)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and _signal_all(paths, targets, 0):
        time.sleep(0.05)
    for pid, start in _process_tree(paths, roots, targets).items():
        targets.setdefault(pid, start)
    killed |= _signal_all(paths, targets, signal.SIGKILL)
    return sorted(killed)


def _unlink(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _revoke(paths: Paths, payload: dict[str, object], now: int) -> dict[str, object]:
    ids = _id_list(payload, "ids", is_grant_id)
    revoked: list[str] = []
    killed: list[int] = []
    errors: list[str] = []
    for grant_id in ids:
        try:
            grant = read_grant_file(paths, grant_id)
            not_after = grant.not_after if isinstance(grant, Grant) else now + 366 * 86400
            _ensure_dir(paths.revoked)
            marker = format_utc(max(not_after, now)) + "\n"
            write_atomic(paths.revoked, grant_id, marker.encode("ascii"))
            _unlink(os.path.join(paths.sudoers, f"broker_{grant_id}"))
            _unlink(os.path.join(paths.grants, grant_id))
            for directory in (paths.sudoers, paths.grants):
                if os.path.isdir(directory):
                    _fsync_dir(directory)
            revoked.append(grant_id)
            ended, problems = _end_sessions(paths, grant_id, now)
            killed += ended
            errors += problems
        except OSError as exc:
            errors.append(f"{grant_id}: {_clean(exc, 200)}")
    return {"revoked": revoked, "killed": sorted(set(killed)), "errors": errors}


def _process_started(paths: Paths, pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc/<pid>/stat and the boot time."""
    entry = _proc_table_entry(paths, pid)
    try:
        with open(os.path.join(paths.proc, "stat"), "rb") as file:
            lines = file.read().decode("ascii", "replace").split("\n")
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return None if entry is None else boot + entry[2] / os.sysconf("SC_CLK_TCK")


def _proc_table_entry(paths: Paths, pid: int) -> tuple[int, int, int, str] | None:
    try:
        with open(os.path.join(paths.proc, str(pid), "stat"), "rb") as file:
            fields = file.read().decode("ascii", "replace").rpartition(")")[2].split()
    except OSError:
        return None
    return (
        (int(fields[1]), int(fields[3]), int(fields[19]), fields[0]) if len(fields) > 19 else None
    )


def _end_sessions(
    paths: Paths, grant_id: str, now: int, service: str = "revoke"
) -> tuple[list[int], list[str]]:
    """Kill every recorded session of the grant with its tree; spool their `close` events
    (their `service` says who ended them).

    A pid is only trusted while its process started before the session was recorded:
    a pid reused by an unrelated process later is left alone.
    """
    directory = os.path.join(paths.sessions, grant_id)
    try:
        names = [n for n in os.listdir(directory) if n.isascii() and n.isdigit() and len(n) <= 10]
    except FileNotFoundError:
        return [], []
    records: dict[str, list[str]] = {}
    roots: list[int] = []
    errors: list[str] = []
    for name in names:
        data = read_secure(os.path.join(directory, name))
        fields = data.decode("ascii", "replace").split() if isinstance(data, bytes) else []
        records[name] = [*fields, "-", "-", "-", "-"][:4]
        recorded = parse_utc(records[name][3])
        started = _process_started(paths, int(name))
        if started is None:
            continue  # already gone
        if recorded is None or started > recorded + 2:
            errors.append(f"{grant_id}: pid {name} is not the recorded session; not killed")
            continue
        roots.append(int(name))
    killed = kill_trees(paths, roots) if roots else []
    for name, (user, runas, tty, _started) in records.items():
        if _unlink(os.path.join(directory, name)):
            user = user if is_posix_name(user) else "-"
            runas = runas if is_posix_name(runas) else "-"
            spool_event(
                paths, "close", grant_id, user, runas, service, _tty_name(tty), int(name), now
            )
    if not os.listdir(directory):
        os.rmdir(directory)
    return killed, errors


def _marker_expired(path: str, now: int) -> bool:
    data = read_secure(path)
    until = parse_utc(data.decode("ascii", "replace").strip()) if isinstance(data, bytes) else None
    return until is not None and until <= now


def _reap(paths: Paths, now: int) -> dict[str, object]:
    """Drop expired grants, drop-ins without a grant, spent markers, stale temporary files."""
    removed: dict[str, list[str]] = {"grants": [], "drop_ins": [], "markers": [], "temp": []}
    errors: list[str] = []
    for name in grant_ids(paths):
        grant = read_grant_file(paths, name) if is_grant_id(name) else "not a grant id"
        if isinstance(grant, str):
            errors.append(f"{_clean(name, 40)}: {grant}")
        elif grant.not_after <= now and _unlink(os.path.join(paths.grants, name)):
            removed["grants"].append(name)
    present = set(grant_ids(paths))
    for name in _listdir(paths.sudoers):
        if not (name.startswith("broker_") and is_grant_id(name[7:])) or name[7:] in present:
            continue
        if _unlink(os.path.join(paths.sudoers, name)):
            removed["drop_ins"].append(name)
    for name in _listdir(paths.revoked):
        path = os.path.join(paths.revoked, name)
        if is_grant_id(name) and _marker_expired(path, now) and _unlink(path):
            removed["markers"].append(name)
    for directory in (paths.grants, paths.sudoers, paths.revoked, paths.events):
        for name in _listdir(directory):
            path = os.path.join(directory, name)
            old = name.startswith(TMP_PREFIX) and now - os.lstat(path).st_mtime > 600
            if old and _unlink(path):
                removed["temp"].append(name)
    for directory in (paths.grants, paths.sudoers, paths.revoked):
        if os.path.isdir(directory):
            _fsync_dir(directory)
    return {**removed, "errors": errors}


def _listdir(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


def is_event_id(text: str) -> bool:
    parts = text.split("-")
    return (
        len(parts) == 3
        and 0 < len(parts[0]) <= 20
        and parts[0].isascii()
        and parts[0].isdigit()
        and 0 < len(parts[1]) <= 10
        and parts[1].isascii()
        and parts[1].isdigit()
        and _is_hex(parts[2], 8)
    )


def _event_names(paths: Paths) -> list[str]:
    try:
        names = os.listdir(paths.events)
    except FileNotFoundError:
        return []
    ids = [n[:-5] for n in names if n.endswith(".json") and is_event_id(n[:-5])]
    return sorted(ids, key=lambda e: (int(e.split("-")[0]), e))


def _collect(paths: Paths) -> dict[str, object]:
    import json

    events: list[object] = []
    errors: list[str] = []
    for event_id in _event_names(paths)[:1000]:
        data = read_secure(os.path.join(paths.events, f"{event_id}.json"))
        try:
            event = json.loads(data) if isinstance(data, bytes) else None
        except ValueError:
            event = None
        if isinstance(event, dict) and event.get("event_id") == event_id:
            events.append(event)
        else:
            errors.append(f"{event_id}: {data if isinstance(data, str) else 'not an event'}")
    return {"events": events, "errors": errors}


def _ack(paths: Paths, payload: dict[str, object]) -> dict[str, object]:
    ids = _id_list(payload, "event_ids", is_event_id)
    acked = [e for e in ids if _unlink(os.path.join(paths.events, f"{e}.json"))]
    if acked:
        _fsync_dir(paths.events)
    return {"acked": acked, "missing": [e for e in ids if e not in set(acked)]}


def _quarantine(paths: Paths, payload: dict[str, object]) -> dict[str, object]:
    """Place (or replace) the quarantine marker; from then on the hook admits only root and
    members of `group` (docs/grants.md)."""
    keys = set(payload)
    if not {"reason", "since"} <= keys <= {"reason", "since", "group"}:
        raise _Usage("quarantine takes reason, since and optionally group")
    reason, since, group = payload["reason"], payload["since"], payload.get("group")
    if not isinstance(reason, str) or not _is_quarantine_reason(reason):
        raise _Usage(f"reason must be printable text of 1 to {QUARANTINE_REASON_MAX} characters")
    when = parse_utc(since) if isinstance(since, str) else None
    if when is None:
        raise _Usage("since must be YYYY-MM-DDTHH:MM:SSZ")
    if group is None:
        group = ""
    if not isinstance(group, str) or not _is_group_name(group):
        raise _Usage("group must be a group name or null")

    def refuse(error: str) -> dict[str, object]:
        return {"quarantined": False, "node": None, "error": error}

    conf = load_conf(paths)
    if isinstance(conf, str):
        return refuse(f"node not bootstrapped: {conf}")
    data = render_quarantine(Quarantine(conf.node, when, group, reason))
    try:
        os.close(_open_dir(paths.broker_etc))
        write_atomic(paths.broker_etc, os.path.basename(paths.quarantine), data, 0o644)
    except OSError as exc:
        return refuse(f"cannot write the marker: {_clean(exc.strerror or exc, 200)}")
    return {"quarantined": True, "node": conf.node, "error": None}


def _release(paths: Paths, payload: dict[str, object]) -> dict[str, object]:
    """Remove the quarantine marker; `released` is false when there was none."""
    if payload:
        raise _Usage("release takes {}")
    try:
        released = _unlink(paths.quarantine)
        if released:
            _fsync_dir(paths.broker_etc)
    except OSError as exc:
        return {"released": False, "error": f"cannot remove the marker: {_clean(exc, 200)}"}
    return {"released": released, "error": None}


def _end_sessions_command(paths: Paths, payload: dict[str, object], now: int) -> dict[str, object]:
    """End the running elevated sessions recorded under these grant ids (or `break-glass`),
    without revoking anything: the response to an alert, not a revocation."""
    ids = _id_list(payload, "grant_ids", lambda text: is_grant_id(text) or text == BREAK_GLASS)
    killed: list[int] = []
    errors: list[str] = []
    for grant_id in ids:
        try:
            ended, problems = _end_sessions(paths, grant_id, now, service="end-sessions")
        except OSError as exc:
            errors.append(f"{grant_id}: {_clean(exc, 200)}")
            continue
        killed += ended
        errors += problems
    return {"killed": sorted(set(killed)), "errors": errors}


# ---------------------------------------------------------------- drift-scan

DRIFT_MAX_ENTRIES = 50_000
DRIFT_MAX_ENTRY_BYTES = 16 << 20  # the entries' share of the reply, JSON-encoded
DRIFT_MAX_TEXTS = 8 << 20  # the texts' share, JSON-encoded
DRIFT_MAX_TEXT = 64 << 10
DRIFT_MAX_HASH = 64 << 20
DRIFT_MAX_PATH = 4096
DRIFT_MAX_ERRORS = 100
DRIFT_SECONDS = 20.0  # then the setuid walk stops (truncated): the broker waits 60 s
DRIFT_TEXT_CATEGORIES = frozenset({"sudoers", "cron", "authorized_keys", "accounts"})
# What root can leave behind, walked whole (no symlink followed, no mount point crossed).
DRIFT_TREES = (
    ("accounts", "/etc/passwd"),
    ("accounts", "/etc/group"),
    ("sudoers", "/etc/sudoers"),
    ("sudoers", "/etc/sudoers.d"),
    ("pam", "/etc/pam.d"),
    ("pam", "/etc/security"),
    ("polkit", "/etc/polkit-1/rules.d"),
    ("polkit", "/usr/share/polkit-1/rules.d"),
    ("polkit", "/etc/polkit-1/localauthority"),
    ("systemd", "/etc/systemd/system"),
    ("systemd", "/run/systemd/system"),
    ("systemd", "/usr/lib/systemd/system"),
    ("systemd", "/lib/systemd/system"),
    ("systemd", "/etc/systemd/user"),
    ("cron", "/etc/crontab"),
    ("cron", "/etc/cron.d"),
    ("cron", "/etc/cron.hourly"),
    ("cron", "/etc/cron.daily"),
    ("cron", "/etc/cron.weekly"),
    ("cron", "/etc/cron.monthly"),
    ("cron", "/var/spool/cron/crontabs"),
    ("authorized_keys", "/etc/ssh/authorized_keys"),
)
# Walked for setuid/setgid regular files only (-xdev from each; a nosuid mount is skipped:
# the kernel ignores the bits there).
DRIFT_SETUID_ROOTS = ("/usr", "/bin", "/sbin", "/opt", "/etc", "/var/lib", "/srv", "/root", "/home")
_AUTHORIZED_KEYS = ("authorized_keys", "authorized_keys2")


def _path_text(path: str) -> str:
    """A node path as printable text: backslash, control and undecodable characters escaped
    (a file name may hold any byte but `/` and NUL), so the broker can refuse anything else."""
    if path.isprintable() and "\\" not in path:
        return path
    out: list[str] = []
    for char in path:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


class _DriftScan:
    """One drift-scan: the manifest under construction and its budgets."""

    def __init__(self, paths: Paths) -> None:
        import hashlib
        import json.encoder

        self.base = paths.root.rstrip("/")
        self.sha256 = hashlib.sha256
        self.encode = json.encoder.encode_basestring_ascii
        self.entries: dict[str, dict[str, object]] = {}
        self.texts: dict[str, str] = {}
        self.entry_bytes = 0
        self.text_bytes = 0
        self.truncated = False
        self.full = False  # no room for more entries: walking on is pointless
        self.errors: list[str] = []
        self.dropped_errors = 0
        self.seen: set[tuple[int, int]] = set()
        self.deadline = time.monotonic() + DRIFT_SECONDS
        noatime = getattr(os, "O_NOATIME", 0)
        self.flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        self.flags_noatime = self.flags | noatime

    def real(self, node_path: str) -> str:
        return self.base + node_path

    def error(self, node_path: str, problem: object) -> None:
        if len(self.errors) < DRIFT_MAX_ERRORS:
            self.errors.append(_clean(f"{_path_text(node_path)}: {problem}", 400))
        else:
            self.dropped_errors += 1

    def reply(self) -> dict[str, object]:
        errors = list(self.errors)
        if self.dropped_errors:
            errors.append(f"... and {self.dropped_errors} more errors")
        return {
            "entries": self.entries,
            "texts": self.texts,
            "truncated": self.truncated,
            "errors": errors,
        }

    def add(
        self,
        node_path: str,
        name: str,
        info: os.stat_result,
        category: str,
        dir_fd: int | None = None,
    ) -> None:
        """One entry; `name` is opened relative to `dir_fd` (or is the real path)."""
        key = _path_text(node_path)
        if key in self.entries:
            return  # first category wins (a setuid file in /etc/cron.d stays `cron`)
        if len(key) > DRIFT_MAX_PATH:
            self.error(node_path[:200], "path too long; not listed")
            return
        cost = len(self.encode(key)) + 256
        if (
            len(self.entries) >= DRIFT_MAX_ENTRIES
            or self.entry_bytes + cost > DRIFT_MAX_ENTRY_BYTES
        ):
            self.truncated = self.full = True
            return
        mode = info.st_mode
        kind = "f" if stat.S_ISREG(mode) else "d" if stat.S_ISDIR(mode) else "o"
        target: str | None = None
        digest: str | None = None
        data: bytes | None = None
        if stat.S_ISLNK(mode):
            kind = "l"
            try:
                target = _path_text(os.readlink(name, dir_fd=dir_fd))[:DRIFT_MAX_PATH]
            except OSError as exc:
                self.error(node_path, f"readlink: {exc.strerror}")
        elif kind == "f":
            want_text = category in DRIFT_TEXT_CATEGORIES and info.st_size <= DRIFT_MAX_TEXT
            if category == "authorized_keys" and info.st_nlink != 1:
                want_text = False  # a hard link a user made to someone else's file
            digest, data = self.read(node_path, name, info, want_text, dir_fd)
        self.entry_bytes += cost
        self.entries[key] = {
            "type": kind,
            "mode": stat.S_IMODE(mode),
            "uid": info.st_uid,
            "gid": info.st_gid,
            "size": info.st_size,
            "sha256": digest,
            "target": target,
            "category": category,
        }
        if data is not None:
            text = data.decode("utf-8", "replace")
            cost = len(self.encode(text)) + len(self.encode(key))
            if self.text_bytes + cost > DRIFT_MAX_TEXTS:
                self.truncated = True
            else:
                self.text_bytes += cost
                self.texts[key] = text

    def read(
        self, node_path: str, name: str, info: os.stat_result, want_text: bool, dir_fd: int | None
    ) -> tuple[str | None, bytes | None]:
        """sha256 of a regular file (and its bytes when wanted), never blocking on a FIFO or
        device and never following a link: the file opened must be the one listed."""
        if info.st_size > DRIFT_MAX_HASH:
            return None, None
        try:
            try:
                fd = os.open(name, self.flags_noatime, dir_fd=dir_fd)
            except PermissionError:  # O_NOATIME needs the owner or CAP_FOWNER
                fd = os.open(name, self.flags, dir_fd=dir_fd)
        except OSError as exc:
            self.error(node_path, f"open: {exc.strerror}")
            return None, None
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
                info.st_dev,
                info.st_ino,
            ):
                self.error(node_path, "replaced while scanned; not hashed")
                return None, None
            digest = self.sha256()
            chunks: list[bytes] | None = [] if want_text else None
            total = 0
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > DRIFT_MAX_HASH:
                    return None, None
                digest.update(chunk)
                if chunks is not None:
                    chunks.append(chunk)
                    if total > DRIFT_MAX_TEXT:
                        chunks = None
            return digest.hexdigest(), b"".join(chunks) if chunks is not None else None
        except OSError as exc:
            self.error(node_path, f"read: {exc.strerror}")
            return None, None
        finally:
            os.close(fd)

    def tree(self, category: str, node_top: str, setuid_only: bool = False) -> None:
        """The top and, when it is a directory seen for the first time, everything below it
        on its own file system (symlinks listed, never followed)."""
        real_top = self.real(node_top)
        try:
            info = os.lstat(real_top)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            self.error(node_top, exc.strerror)
            return
        if not stat.S_ISDIR(info.st_mode):
            if not setuid_only:
                self.add(node_top, real_top, info, category)
            return
        if (info.st_dev, info.st_ino) in self.seen:
            return  # /lib/systemd/system is /usr/lib/systemd/system on merged-/usr systems
        self.seen.add((info.st_dev, info.st_ino))
        if setuid_only:
            try:
                if os.statvfs(real_top).f_flag & os.ST_NOSUID:
                    return
            except OSError as exc:
                self.error(node_top, exc.strerror)
                return
        else:
            self.add(node_top, real_top, info, category)
        self.walk(category, node_top, real_top, info.st_dev, setuid_only)

    def walk(self, category: str, node_top: str, real_top: str, dev: int, setuid: bool) -> None:
        stack = [(node_top, real_top)]
        visited: set[tuple[int, int]] = set()  # a bind mount of the same file system
        while stack:
            if self.full:
                return
            node_dir, real_dir = stack.pop()
            if time.monotonic() > self.deadline:
                self.truncated = True
                self.error(node_dir, f"scan stopped after {DRIFT_SECONDS:.0f} s")
                return
            try:
                with os.scandir(real_dir) as listing:
                    items = sorted(listing, key=lambda entry: entry.name)
            except OSError as exc:
                self.error(node_dir, exc.strerror)
                continue
            below: list[tuple[str, str]] = []
            prefix = node_dir.rstrip("/") + "/"
            for item in items:
                if setuid and item.is_symlink():
                    continue
                node_path = prefix + item.name
                try:
                    info = item.stat(follow_symlinks=False)
                except OSError as exc:
                    self.error(node_path, exc.strerror)
                    continue
                mode = info.st_mode
                inode = (info.st_dev, info.st_ino)
                if stat.S_ISDIR(mode) and info.st_dev == dev and inode not in visited:
                    visited.add(inode)
                    below.append((node_path, item.path))
                if not setuid or (stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID)):
                    self.add(node_path, item.path, info, category)
            stack.extend(reversed(below))

    def homes(self) -> list[str]:
        """Home directories of the local accounts (/etc/passwd of this tree; not NSS)."""
        try:
            with open(self.real("/etc/passwd"), "rb") as file:
                text = file.read(16 << 20).decode("utf-8", "replace")
        except OSError as exc:
            self.error("/etc/passwd", exc.strerror)
            return []
        homes: dict[str, None] = {}
        for line in text.split("\n"):
            fields = line.split(":")
            if len(fields) >= 7 and fields[5].startswith("/") and "\0" not in fields[5]:
                homes[os.path.normpath(fields[5]).replace("//", "/")] = None
        return list(homes)

    def authorized_keys(self) -> None:
        """HOME/.ssh/authorized_keys{,2} of every local account. A symlinked ~/.ssh is listed
        as the link it is and not followed (its files could be anyone's)."""
        for home in self.homes():
            ssh = home.rstrip("/") + "/.ssh"
            real = self.real(ssh)
            try:
                info = os.lstat(real)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                self.error(ssh, exc.strerror)
                continue
            if stat.S_ISLNK(info.st_mode):
                self.add(ssh, real, info, "authorized_keys")
                continue
            if not stat.S_ISDIR(info.st_mode):
                continue
            try:
                fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                self.error(ssh, exc.strerror)
                continue
            try:
                for name in _AUTHORIZED_KEYS:
                    try:
                        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        self.error(f"{ssh}/{name}", exc.strerror)
                        continue
                    self.add(f"{ssh}/{name}", name, info, "authorized_keys", dir_fd=fd)
            finally:
                os.close(fd)


def _drift_scan(paths: Paths, payload: dict[str, object]) -> dict[str, object]:
    """The manifest of what root can leave behind (docs/grants.md): listed entries with
    owner, mode and sha256, and the text of account, sudoers, cron and key files."""
    if payload:
        raise _Usage("drift-scan takes {}")
    scan = _DriftScan(paths)
    for category, node_path in DRIFT_TREES:
        scan.tree(category, node_path)
    scan.authorized_keys()
    for node_path in DRIFT_SETUID_ROOTS:
        scan.tree("setuid", node_path, setuid_only=True)
    return scan.reply()


def node_main(argv: list[str], stdin: TextIO, stdout: TextIO, paths: Paths | None = None) -> int:
    """`broker-node CMD`: JSON in on stdin, JSON out on stdout; 0 answered, 2 bad usage."""
    import json

    here = paths if paths is not None else Paths()
    now = int(time.time())
    try:
        if len(argv) != 1:
            raise _Usage(
                "usage: broker-node status|install-grant|revoke|reap|collect|ack|"
                "quarantine|release|end-sessions|drift-scan"
            )
        text = stdin.read((1 << 20) + 1)
        if len(text) > 1 << 20:
            raise _Usage("input larger than 1 MiB")
        try:
            payload = json.loads(text) if text.strip() else {}
        except ValueError:
            raise _Usage("stdin is not JSON") from None
        if not isinstance(payload, dict):
            raise _Usage("stdin must be a JSON object")
        command = argv[0]
        if command == "status":
            reply = _status(here, now)
        elif command == "install-grant":
            reply = _install_grant(here, payload, now)
        elif command == "revoke":
            reply = _revoke(here, payload, now)
        elif command == "reap":
            reply = _reap(here, now)
        elif command == "collect":
            reply = _collect(here)
        elif command == "ack":
            reply = _ack(here, payload)
        elif command == "quarantine":
            reply = _quarantine(here, payload)
        elif command == "release":
            reply = _release(here, payload)
        elif command == "end-sessions":
            reply = _end_sessions_command(here, payload, now)
        elif command == "drift-scan":
            reply = _drift_scan(here, payload)
        else:
            raise _Usage(f"unknown command {_clean(command, 40)!r}")
    except _Usage as exc:
        stdout.write(json.dumps({"error": str(exc)}) + "\n")
        return 2
    stdout.write(json.dumps(reply, sort_keys=True) + "\n")
    return 0
