"""One audit event as an RFC 5424 syslog message, and RFC 6587 octet-counting framing.

Pure: no I/O. The message carries every field the chain hashes, so the SIEM can
re-verify each event and the links between them without asking the broker:

    <PRI>1 TS HOST APP PID ACTION [audit@32473 seq="" ts="" actor="" action=""
        target="" outcome="" hash="" prev="" (truncated="true")] DETAILS-JSON

`details` is the stored canonical JSON text itself (ASCII), so
`sha256([seq, ts, actor, action, target, outcome, details, prev])` recomputes the hash
(docs/audit.md). 32473 is the private enterprise number RFC 5612 reserves for
documentation and examples: the SD-ID says "not a registered vendor's element".
"""

from __future__ import annotations

import re
from typing import Final

from broker.audit.chain import AuditEvent
from broker.core.syslog import priority

SD_ID: Final = "audit@32473"
# A SIEM tells an event's severity from its outcome.
SEVERITY: Final = {"ok": "info", "refused": "warning", "failed": "err"}
# Control characters (C0, DEL, C1) and Unicode line/paragraph separators: none may reach a
# receiver, where they could end a record early or rewrite a terminal.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_HEADER_FIELD = re.compile(r"[^\x21-\x7e]")
_TRUNCATED_NOTE = "..."


def param_value(text: str) -> str:
    """An SD PARAM-VALUE: `"`, `\\` and `]` escaped as RFC 5424 requires, control
    characters replaced by `?` (an event whose actor or target held one no longer
    re-hashes, which the SIEM then notices rather than a forged record)."""
    flat = _CONTROL.sub("?", text)
    return flat.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def header_field(text: str, limit: int) -> str:
    """A header field (HOSTNAME, APP-NAME, MSGID): printable US-ASCII without spaces,
    at most `limit` characters, `-` when empty."""
    flat = _HEADER_FIELD.sub("_", text)[:limit]
    return flat or "-"


def message(
    event: AuditEvent,
    *,
    facility: str,
    app_name: str,
    hostname: str,
    procid: int,
    max_bytes: int,
) -> bytes:
    """The whole message for `event`, at most `max_bytes` long: when the details do not
    fit, the MSG is cut and `truncated="true"` says so (the SIEM still has seq and hash,
    and `broker audit export` the whole event)."""
    pri = priority(facility, SEVERITY.get(event.outcome, "notice"))
    head = (
        f"<{pri}>1 {header_field(event.ts, 64)} {header_field(hostname, 255)}"
        f" {header_field(app_name, 48)} {procid} {header_field(event.action, 32)} "
    )
    params = [
        ("seq", str(event.seq)),
        ("ts", event.ts),
        ("actor", event.actor),
        ("action", event.action),
        ("target", event.target),
        ("outcome", event.outcome),
        ("hash", event.hash),
        ("prev", event.prev_hash),
    ]
    body = event.details.encode("ascii", "replace")
    sd = _sd(params)
    whole = (head + sd + " ").encode("utf-8") + body
    if len(whole) <= max_bytes:
        return whole
    start = (head + _sd([*params, ("truncated", "true")]) + " ").encode("utf-8")
    room = max_bytes - len(start) - len(_TRUNCATED_NOTE)
    if room < 0:  # actor and target are bounded by the chain (1 KiB each); keep the SD whole
        return start.rstrip(b" ")
    return start + body[:room] + _TRUNCATED_NOTE.encode("ascii")


def _sd(params: list[tuple[str, str]]) -> str:
    inner = " ".join(f'{name}="{param_value(value)}"' for name, value in params)
    return f"[{SD_ID} {inner}]"


def octet_counted(frame: bytes) -> bytes:
    """RFC 6587 section 3.4.1: `LENGTH SP MESSAGE`, what rsyslog's imtcp and most
    SIEM collectors take on a TCP or TLS stream (a message may then hold newlines)."""
    return str(len(frame)).encode("ascii") + b" " + frame
