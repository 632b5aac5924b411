"""The node's own file formats (docs/grants.md): node.conf and the quarantine marker; the
allow-lists values must pass; UTC time text; where the files live. Grant files and the key
are broker-grant-check's to parse (grants.py): one implementation of the contract, in C.

Parsing only, no file I/O: store.py reads the files, files.py does the safe reads.
"""

from __future__ import annotations

import os

HOOK_VERSION = "2"  # 1: the hook of old (status.py tells it by its PAM block); 2: pam_broker.so
# Sessions of the break-glass group (no grant) are recorded under this pseudo grant id.
BREAK_GLASS = "break-glass"
MAX_FILE = 8192
SUDO_SERVICES = ("sudo", "sudo-i")
TMP_PREFIX = ".broker-tmp-"
QUARANTINE_REASON_MAX = 200


_LOWER = "abcdefghijklmnopqrstuvwxyz"
_DIGITS = "0123456789"
_HEX = "0123456789abcdef"
_UNRESERVED = frozenset(_LOWER + _LOWER.upper() + _DIGITS + "-._~")
_NAME_FIRST = frozenset(_LOWER + "_")
_NAME_REST = frozenset(_LOWER + _DIGITS + "_-")
_NODE_CHARS = frozenset(_LOWER + _DIGITS + "-")
_GROUP_CHARS = frozenset(_LOWER + _LOWER.upper() + _DIGITS + "_.-")
_SERVICE_CHARS = frozenset(_LOWER + _DIGITS + "_.-")
TTY_CHARS = frozenset(_LOWER + _LOWER.upper() + _DIGITS + "/._:-")
_QUARANTINE_KEYS = ("node", "since", "group", "reason")


# ---------------------------------------------------------------- small records


class _Record:
    """An immutable record, small and without dataclasses' import cost."""

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


class NodeConf(_Record):
    """/etc/broker/node.conf."""

    __slots__ = ("node", "login_gated", "break_glass_group", "joblaunch_service")  # noqa: RUF023
    node: str
    login_gated: bool
    break_glass_group: str
    joblaunch_service: str


class Quarantine(_Record):
    """/etc/broker/quarantine: the node is closed to everyone but root and `group`."""

    __slots__ = _QUARANTINE_KEYS
    node: str
    since: int
    group: str
    reason: str  # decoded text (the file holds it percent-encoded, like a grant's reason)


class Paths:
    """Where the node's files live; `root` only moves the tree for tests (never from env), as
    `checker` (broker-grant-check) does: a test runs the one `make -C pam` built."""

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
        "checker",
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
    checker: str

    def __init__(self, root: str = "/", checker: str | None = None) -> None:
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
            "sessions": under("run/broker-sessions"),  # tmpfs: the module's records
            "events": under("var/spool/broker/events"),
            "sudoers": under("etc/sudoers.d"),
            "pam_d": under("etc/pam.d"),
            "proc": "/proc",  # processes are real even when the tree is not
            "checker": checker or under("usr/libexec/broker/broker-grant-check"),
        }
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Paths is immutable")

    def __repr__(self) -> str:
        return f"Paths(root={self.root!r})"


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


def is_hex(text: str, length: int) -> bool:
    return len(text) == length and all(c in _HEX for c in text)


def is_group_name(text: str) -> bool:
    return len(text) <= 64 and all(c in _GROUP_CHARS for c in text)


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


def is_quarantine_reason(text: str) -> bool:
    return 0 < len(text) <= QUARANTINE_REASON_MAX and text.isprintable() and bool(text.strip())


def clean(text: object, limit: int = 300) -> str:
    """A value fit for a log line: printable ASCII only, bounded."""
    out = "".join(c if " " <= c <= "~" else "?" for c in str(text))
    return out if len(out) <= limit else out[:limit] + "..."


# ---------------------------------------------------------------- node.conf


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


def parse_conf(data: bytes) -> NodeConf | str:
    """node.conf's settings, or what is wrong with them (store.load_conf reads the file)."""
    values = key_values(data, ("node", "login_gated", "break_glass_group", "joblaunch_service"))
    if isinstance(values, str):
        return values
    node, gated = values.get("node", ""), values.get("login_gated", "")
    group, service = values.get("break_glass_group", ""), values.get("joblaunch_service", "")
    if not is_node_name(node):
        return "node is missing or not a node name"
    if gated not in ("0", "1"):
        return "login_gated must be 0 or 1"
    if group and not is_group_name(group):
        return "bad break_glass_group"
    if service and not (
        len(service) <= 64
        and all(c in _SERVICE_CHARS for c in service)
        and service not in (*SUDO_SERVICES, "sshd")
    ):
        return "bad joblaunch_service"
    return NodeConf(node, gated == "1", group, service)


# ---------------------------------------------------------------- the quarantine marker


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
    if not is_group_name(values["group"]):
        return "bad group"
    if reason is None or not is_quarantine_reason(reason):
        return "bad reason"
    return Quarantine(values["node"], since, values["group"], reason)


def render_quarantine(marker: Quarantine) -> bytes:
    return (
        "# Written by the broker: this node is quarantined (only root and group pass the hook).\n"
        f"node={marker.node}\nsince={format_utc(marker.since)}\ngroup={marker.group}\n"
        f"reason={_percent_encode(marker.reason)}\n"
    ).encode("ascii")


def host_mismatch(node: str, hostname: str) -> str | None:
    """Why sudo here would not apply a drop-in whose host field is `node` (None: it would).
    sudo compares a host name without a dot with the short host name, one with a dot with
    the whole name, ignoring case (sudoers(5), without the `fqdn` option)."""
    seen = hostname if "." in node else hostname.split(".", 1)[0]
    if seen.lower() == node.lower():
        return None
    return (
        f"this host is named {clean(hostname, 64)!r} but node.conf says node={node}: sudo will"
        " not apply its grants (each drop-in names the node as its host); set the hostname"
        " or enrol the node under that name"
    )
