"""Sudo refused by its log server: spool the `deny` the PAM module could not.

pam_broker.so decides in PAM account, before sudo's I/O plugin connects to the log server
(docs/sessions.md, "Strict by default"). When that server cannot be reached, sudo prints
`unable to connect to log server` and exits without opening a PAM session: the module has
already allowed, so no refusal would ever reach the broker. What it leaves behind is its
session slot: `sessions/<grant>/<pid>` written at the account check, in its account form
(runas = the invoking user: sudo sets PAM_USER to the target user only for the session),
whose process is gone. A session that was opened rewrote it with the target user, and one
that closed removed it.

Each watcher pass looks for such records. When one is fresh (its sudo started within
FRESH seconds) and the log server its grant's drop-in names does not answer now, it spools
one `deny` event with reason `log_server` under that grant, so the broker collects it like
the module's own refusals. Every record so judged is removed (its process is gone; the
module would remove it at that user's next sudo anyway). `sudo -l` and `sudo -v` also run
the account check without a session, which is why the log server's state decides: such a
record while the server answers is removed without an event.
"""

from __future__ import annotations

import os
import socket

from .contract import Paths, is_grant_id, is_posix_name, parse_utc
from .files import read_secure, remove_if_present
from .procs import proc_table_entry
from .spool import spool_event, tty_name

FRESH = 120  # seconds: an older dead record says nothing about the log server now
PROBE_TIMEOUT = 2.0  # seconds for the connection and for the server's silence
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]")
_MARK = "log_servers="

TYPE_CHECKING = False  # never import typing at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable

    Probe = Callable[[str], bool]


def unlogged_refusals(paths: Paths, now: int, probe: Probe | None = None) -> int:
    """Spool a `log_server` deny for each fresh, dead, never-opened session record whose
    log server does not answer; remove every dead never-opened record. Returns the denies."""
    reachable = probe if probe is not None else log_server_answers
    verdicts: dict[str, bool] = {}  # one probe per address per pass
    spooled = 0
    for grant_id in _names(paths.sessions):
        if not is_grant_id(grant_id):
            continue
        directory = os.path.join(paths.sessions, grant_id)
        for name in _names(directory):
            if not (name.isascii() and name.isdigit() and len(name) <= 10):
                continue
            fields = _dead_account_record(paths, os.path.join(directory, name), int(name))
            if fields is None:
                continue
            started = parse_utc(fields[3])
            server = drop_in_log_server(paths, grant_id, fields[0])
            if started is not None and now - started <= FRESH and server is not None:
                if server not in verdicts:
                    verdicts[server] = reachable(server)
                if not verdicts[server]:
                    spool_event(
                        paths, "deny", grant_id, fields[0], "-", "sudo",
                        tty_name(fields[2]), int(name), now, extra={"reason": "log_server"},
                    )  # fmt: skip
                    spooled += 1
            remove_if_present(os.path.join(directory, name))
    return spooled


def _dead_account_record(paths: Paths, path: str, pid: int) -> list[str] | None:
    """The record's fields when its process is gone (exited, a zombie, or the pid reused)
    and it is still in its account form (`user` = `runas`); else None."""
    data = read_secure(path)
    if not isinstance(data, bytes):
        return None  # unreadable: not ours to judge (revoke reports it)
    fields = [*data.decode("ascii", "replace").split(), "-", "-", "-", "-", "-", "-"][:6]
    if not is_posix_name(fields[0]) or fields[1] != fields[0] or not fields[4].isdigit():
        return None
    entry = proc_table_entry(paths, pid)
    if entry is not None and entry[2] == int(fields[4]) and entry[3] != "Z":
        return None  # still running: sudo has not got to its session yet
    return fields


def drop_in_log_server(paths: Paths, grant_id: str, user: str) -> str | None:
    """The first `log_servers=` address of the grant's drop-in for USER (`host:port`), or
    None when the drop-in is gone or names none the probe can use."""
    data = read_secure(os.path.join(paths.sudoers, f"broker_{grant_id}"), forbidden=0o022)
    if not isinstance(data, bytes):
        return None
    prefix = f"Defaults:{user} "
    for line in data.decode("ascii", "replace").splitlines():
        if not line.startswith(prefix) or _MARK not in line:
            continue
        value = line.split(_MARK, 1)[1].split(",", 1)[0].strip()
        value = value.removesuffix("(tls)")
        host, _, port = value.rpartition(":")
        if host and set(host) <= _HOST_CHARS and port.isdigit() and 0 < int(port) <= 65535:
            return value
    return None


def log_server_answers(server: str) -> bool:
    """Does the log server at `host:port` take a connection and keep it open?

    sudo_logsrvd waits for the client's hello, so a working server (or tunnel to one) says
    nothing until PROBE_TIMEOUT: that counts as answering. A refused connection, or one the
    node's stunnel accepts and then closes because the far end is down, does not."""
    host, _, port = server.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=PROBE_TIMEOUT) as conn:
            conn.settimeout(PROBE_TIMEOUT)
            try:
                return conn.recv(1) != b""
            except socket.timeout:
                return True
    except OSError:
        return False


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []
