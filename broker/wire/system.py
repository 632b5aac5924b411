"""system: the response records of /v1/system routes, read by the daemon and the client."""

from __future__ import annotations

from pydantic import Field

from broker.wire.base import Out


class Health(Out):
    ok: bool
    version: str


class WhoAmI(Out):
    actor: str
    unix_name: str | None
    uid: int | None
    principal: str | None
    account: str | None
    sid: str | None
    operator: bool
    directory_user: bool
    problem: str | None


class DbStatus(Out):
    path: str
    schema_: int = Field(alias="schema")
    pending: list[int]
    journal_mode: str
    audit_events: int
