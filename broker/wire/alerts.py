"""alerts: the response records of /v1/alerts routes, read by the daemon and the client."""

from __future__ import annotations

from typing import Any

from broker.wire.base import Out


class ActionOut(Out):
    kind: str
    target: str
    state: str
    result: str | None


class AlertOut(Out):
    id: int
    created_at: str
    event_at: str | None
    rule: str
    severity: str
    user: str | None
    node: str | None
    grant_id: str | None
    recording_id: str | None
    message: str
    details: dict[str, Any]
    actions: list[ActionOut]
    source: str
    acked_at: str | None
    acked_by: str | None
    ack_note: str | None


class MarkOut(Out):
    node: str
    ok: bool
    error: str | None


class QuarantineOut(Out):
    nodes: list[str]
    revoked: list[str]
    sessions_ended: int
    marks: list[MarkOut]


class QuarantinedOut(Out):
    node: str
    state: str
    reason: str
    since: str
    by: str
    marker: str
    error: str | None
