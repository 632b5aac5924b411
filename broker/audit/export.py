"""Export formats for SIEMs: JSON lines and ArcSight CEF."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from broker import __version__
from broker.audit.chain import AuditEvent
from broker.core.timeutil import from_text

_SEVERITY = {"ok": 3, "refused": 6, "failed": 7}


def to_jsonl(events: Iterable[AuditEvent]) -> Iterator[str]:
    for event in events:
        yield json.dumps(event.as_dict(), sort_keys=True, separators=(",", ":"))


def _cef_header(value: str) -> str:
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _cef_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("\r", "\\r").replace("\n", "\\n")


def to_cef(events: Iterable[AuditEvent]) -> Iterator[str]:
    """One CEF:0 line per event; the chain hash travels along so a SIEM can re-verify."""
    for event in events:
        millis = int(from_text(event.ts).timestamp() * 1000)
        header = "|".join(
            _cef_header(part)
            for part in (
                "CEF:0",
                "HPC Access Broker",
                "broker",
                __version__,
                event.action,
                event.action,
                str(_SEVERITY.get(event.outcome, 5)),
            )
        )
        extension = {
            "rt": str(millis),
            "suser": event.actor,
            "act": event.action,
            "outcome": event.outcome,
            "cs1Label": "target",
            "cs1": event.target,
            "cn1Label": "seq",
            "cn1": str(event.seq),
            "cs2Label": "hash",
            "cs2": event.hash,
            "cs3Label": "prevHash",
            "cs3": event.prev_hash,
            "msg": event.details,
        }
        yield header + "|" + " ".join(f"{k}={_cef_value(v)}" for k, v in extension.items())
