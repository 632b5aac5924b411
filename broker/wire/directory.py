"""directory: the response records of /v1/directory routes, read by the daemon and the client."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from broker.wire.base import Out


class DcOut(Out):
    uri: str
    ok: bool
    detail: str
    elapsed_ms: float


class SnapshotStatus(Out):
    dc_uri: str
    dc_name: str
    highest_usn: int
    domain_sid: str
    users: int
    groups: int
    last_full_sync: datetime
    last_change: datetime
    last_checked: datetime


class ChangeOut(Out):
    action: str
    user: str
    sid: str
    group: str | None
    before: str | None
    after: str | None


class SyncOut(Out):
    kind: str
    reason: str
    dc: str
    usn: int
    users: int
    groups: int
    rows_written: int
    elapsed_s: float
    skipped: list[str]
    changes: list[ChangeOut]
    revoked: list[str] = Field(default_factory=list)  # grants revoked because of what changed
