"""Session records (sessions/<grant id>/<pid>) and the event spool `collect` drains."""

from __future__ import annotations

import os
import time

from .contract import TTY_CHARS, Paths, format_utc, is_hex, is_posix_name
from .files import ensure_dir, random_hex, remove_if_present, write_atomic
from .procs import pid_alive

# ---------------------------------------------------------------- events


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
    extra: dict[str, object] | None = None,
) -> str:
    """Write one event file for `collect`; returns its event id. `extra`: more fields, each
    a number, a boolean, null or allow-listed text (how a session ended, what it used)."""
    if event_id is None:
        event_id = f"{time.time_ns()}-{os.getpid()}-{random_hex()}"
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
        *((key, _json_value(value)) for key, value in (extra or {}).items()),
    )
    body = "{" + ", ".join(f'"{key}": {value}' for key, value in fields) + "}\n"
    ensure_dir(paths.events)
    write_atomic(paths.events, f"{event_id}.json", body.encode("ascii"))
    return event_id


def _json_value(value: object) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, int):
        return str(int(value))
    return _json_string(str(value))


def tty_name(tty: str) -> str:
    """PAM_TTY without /dev/, as an allow-listed word (`-` when none or odd)."""
    value = tty.removeprefix("/dev/")[:64]
    return value if value and all(c in TTY_CHARS for c in value) else "-"


def target_name(user: str) -> str:
    """A user name fit for an event, or `-`."""
    return user if is_posix_name(user) else "-"


def is_event_id(text: str) -> bool:
    """`<ns>-<pid>-<8 hex>`: the only names `collect` and `ack` touch."""
    parts = text.split("-")
    return (
        len(parts) == 3
        and 0 < len(parts[0]) <= 20
        and parts[0].isascii()
        and parts[0].isdigit()
        and 0 < len(parts[1]) <= 10
        and parts[1].isascii()
        and parts[1].isdigit()
        and is_hex(parts[2], 8)
    )


def event_names(paths: Paths) -> list[str]:
    """Spooled event ids, oldest first (by their nanosecond time)."""
    try:
        names = os.listdir(paths.events)
    except FileNotFoundError:
        return []
    ids = [n[:-5] for n in names if n.endswith(".json") and is_event_id(n[:-5])]
    return sorted(ids, key=lambda e: (int(e.split("-")[0]), e))


# ---------------------------------------------------------------- session records


def record_session(
    paths: Paths, key: str, service: str, ruser: str, user: str, tty: str, pid: int, now: int
) -> None:
    """sessions/<key>/<pid> (`ruser runas tty opened-at`) and its `open` event."""
    runas, tty_text = target_name(user), tty_name(tty)
    directory = os.path.join(paths.sessions, key)
    ensure_dir(directory)
    record = f"{ruser} {runas} {tty_text} {format_utc(now)}\n"
    write_atomic(directory, str(pid), record.encode("ascii"))
    spool_event(paths, "open", key, ruser, runas, service, tty_text, pid, now)


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
        if pid_alive(paths, int(name)):
            live.append(int(name))
        else:
            remove_if_present(os.path.join(directory, name))
    return sorted(live)
