"""report: the response records of /v1/report routes (the signed controls report).

The report document itself is a record here so that its schema is in docs/openapi.json
for a GRC tool to read; `details` and `charts` are per-control tables and chart series,
described in docs/report.md. Numbers stay numbers: a value is an int, a float or text,
never coerced, because the signature covers them as the daemon wrote them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from broker.wire.base import Out


class EvidenceOut(Out):
    label: str
    value: int | float | str
    command: str  # the exact command that shows this figure in full


class AttentionOut(Out):
    item: str
    command: str


class ControlOut(Out):
    id: str
    title: str
    enforces: str  # the broker's one-sentence claim, from broker/report/catalogue.py
    status: Literal["ok", "attention", "not applicable"]
    evidence: list[EvidenceOut]
    attention: list[AttentionOut]
    details: dict[str, Any]


class PeriodOut(Out):
    since: str
    until: str


class HeadOut(Out):
    seq: int
    hash: str


class SignatureOut(Out):
    alg: Literal["ed25519"]
    key_id: str
    value: str  # base64 of the Ed25519 signature over the canonical JSON without `signature`


class ReportOut(Out):
    """A `broker-report/1` document, signed with the broker's audit checkpoint key."""

    schema_: Literal["broker-report/1"] = Field(alias="schema")
    generated_at: str
    broker: str
    period: PeriodOut
    zone: str | None
    audit_head: HeadOut
    controls: list[ControlOut]
    charts: dict[str, Any]
    signature: SignatureOut


class ReportVerifyOut(Out):
    ok: bool
    head_seq: int
    failed: Literal["signature", "head", "chain", "page"] | None  # which check failed
    message: str
