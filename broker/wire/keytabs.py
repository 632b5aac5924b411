"""keytabs: the response records of /v1/keytabs routes, read by the daemon and the client."""

from __future__ import annotations

from broker.wire.base import Out


class KeytabNodeOut(Out):
    node: str
    ok: bool
    error: str | None
    kvnos: list[int]


class RotationOut(Out):
    name: str
    outcome: str
    from_kvno: int | None
    kvno: int | None
    message: str
    nodes: list[KeytabNodeOut]


class KeytabNodeStatusOut(Out):
    node: str
    kvnos: list[int]
    verified_kvno: int | None
    checked_at: str | None
    error: str | None
    stale: bool


class AccountStatusOut(Out):
    name: str
    account: str
    ad_kvno: int | None
    ad_error: str | None
    last_rotated_at: str | None
    next_due_at: str | None
    last_verified_at: str | None
    rotation_state: str | None
    last_error: str | None
    retry_after: str | None
    nodes: list[KeytabNodeStatusOut]
