"""The audit hash chain: canonical serialisation and hashing, no I/O.

An event's hash is SHA-256 over the compact JSON array
`[seq, ts, actor, action, target, outcome, details, prev_hash]` (ASCII,
separators "," and ":", `details` being the stored canonical JSON text).
Any SIEM can recompute it with one line of code; see docs/audit.md.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GENESIS_HASH = "0" * 64
OUTCOMES = ("ok", "refused", "failed")
_ACTION = re.compile(r"^[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*){1,4}$")
_MAX_FIELD = 1024
# json's C string escaper: the same bytes as json.dumps(..., separators=(",", ":")) for a
# str, without building an encoder per call (verify hashes a million events in seconds).
_q = json.encoder.encode_basestring_ascii
_sha256 = hashlib.sha256
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One stored event, exactly as hashed."""

    seq: int
    ts: str
    actor: str
    action: str
    target: str
    outcome: str
    details: str
    prev_hash: str
    hash: str

    def details_obj(self) -> dict[str, Any]:
        value = json.loads(self.details)
        return value if isinstance(value, dict) else {"value": value}

    def as_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "ts": self.ts,
            "actor": self.actor,
            "action": self.action,
            "target": self.target,
            "outcome": self.outcome,
            "details": self.details_obj(),
            "prev_hash": self.prev_hash,
            "hash": self.hash,
        }


def canonical_details(details: Mapping[str, Any]) -> str:
    """Sorted, compact, ASCII JSON: the one textual form that gets hashed and stored."""
    return _canonical(dict(details))


def event_hash(
    seq: int,
    ts: str,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    details: str,
    prev_hash: str,
) -> str:
    """SHA-256 (hex) of the canonical serialisation of one event."""
    body = (
        f"[{int(seq)},{_q(ts)},{_q(actor)},{_q(action)},{_q(target)},"
        f"{_q(outcome)},{_q(details)},{_q(prev_hash)}]"
    )
    return _sha256(body.encode("ascii")).hexdigest()


def check_fields(actor: str, action: str, target: str, outcome: str) -> None:
    """Reject malformed events before they enter the chain (programming errors, not user input)."""
    if not _ACTION.fullmatch(action):
        raise ValueError(f"audit action {action!r} is not a dotted lower-case name")
    if outcome not in OUTCOMES:
        raise ValueError(f"audit outcome {outcome!r} is not one of {OUTCOMES}")
    for name, value in (("actor", actor), ("target", target)):
        if not value or len(value) > _MAX_FIELD or not value.isprintable():
            raise ValueError(f"audit {name} must be 1-{_MAX_FIELD} printable characters")


def make_event(
    *,
    seq: int,
    ts: str,
    actor: str,
    action: str,
    target: str,
    outcome: str,
    details: Mapping[str, Any],
    prev_hash: str,
) -> AuditEvent:
    """Build the next event of the chain, hash included."""
    check_fields(actor, action, target, outcome)
    text = canonical_details(details)
    digest = event_hash(seq, ts, actor, action, target, outcome, text, prev_hash)
    return AuditEvent(seq, ts, actor, action, target, outcome, text, prev_hash, digest)
