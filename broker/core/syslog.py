"""One datagram per message to the local syslog socket (/dev/log), in the classic
`<PRI>tag[pid]: text` form every syslog daemon and journald accept.

Syslog is how a site ships what the broker saw off the host, so the text is
reduced to printable ASCII on one line: nothing a user typed can forge a
second record or smuggle control sequences into a terminal reading the log.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
from pathlib import Path
from typing import Final

FACILITIES: Final = {
    "auth": 4,
    "daemon": 3,
    "authpriv": 10,
    **{f"local{n}": 16 + n for n in range(8)},
}
SEVERITIES: Final = {
    "emerg": 0,
    "alert": 1,
    "crit": 2,
    "err": 3,
    "warning": 4,
    "notice": 5,
    "info": 6,
    "debug": 7,
}
_TAG = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
# Far below the 8 KiB rsyslog takes by default, and below any datagram limit.
MAX_TEXT = 2048


def clean(text: str, limit: int = MAX_TEXT) -> str:
    """Printable ASCII on one line: every other character becomes `?`; cut at `limit`."""
    flat = _UNPRINTABLE.sub("?", text)
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def failure(exc: BaseException, limit: int = 300) -> str:
    """A short, printable, one-line reason for a failed send (never a payload or secret);
    shared by the SIEM forwarder and the notification transports."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"TLS certificate not accepted: {exc.verify_message or exc.reason}"
    elif isinstance(exc, ConnectionRefusedError):
        text = "connection refused"
    elif isinstance(exc, TimeoutError):
        text = "timed out"
    elif isinstance(exc, FileNotFoundError):
        text = "no socket there"
    elif isinstance(exc, OSError) and exc.strerror:
        text = exc.strerror
    else:
        text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return clean(text, limit)


def priority(facility: str, severity: str) -> int:
    """The PRI value; unknown names are a programming error (KeyError)."""
    return FACILITIES[facility] * 8 + SEVERITIES[severity]


def message(facility: str, severity: str, tag: str, text: str) -> bytes:
    """The datagram: `<PRI>tag[pid]: text`, text cleaned."""
    if not _TAG.fullmatch(tag):
        raise ValueError(f"bad syslog tag {tag!r}")
    line = f"<{priority(facility, severity)}>{tag}[{os.getpid()}]: {clean(text)}"
    return line.encode("ascii")


def send(socket_path: Path, facility: str, severity: str, tag: str, text: str) -> None:
    """Send one message; raises OSError when the socket is missing or does not take it
    within a second (the caller decides whether that is worth a retry)."""
    data = message(facility, severity, tag, text)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.settimeout(1.0)
        sock.sendto(data, str(socket_path))
