"""audit: the response records of /v1/audit routes, read by the daemon and the client."""

from __future__ import annotations

from typing import Any

from broker.wire.base import Out


class ProblemOut(Out):
    kind: str
    seq: int
    message: str


class VerifyOut(Out):
    ok: bool
    count: int
    head_seq: int
    head_hash: str
    sealed_seq: int
    checkpoints: int
    problem: ProblemOut | None
    warnings: list[str]


class EventOut(Out):
    """One event as stored; `details` is the parsed form of the hashed canonical JSON text."""

    seq: int
    ts: str
    actor: str
    action: str
    target: str
    outcome: str
    details: dict[str, Any]
    prev_hash: str
    hash: str


class SealOut(Out):
    sealed_seq: int | None  # None: nothing new since the last checkpoint
