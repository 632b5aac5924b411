"""system: the response records of /v1/system routes, read by the daemon and the client."""

from __future__ import annotations

from pydantic import Field

from broker.wire.base import Out


class HealthCheck(Out):
    """One check of /v1/health: `ok` false names a problem in `detail`; a check that does
    not apply to this configuration is ok with `skipped` set."""

    name: str
    ok: bool
    skipped: bool = False
    detail: str


class Health(Out):
    """ok is false (and the daemon answers HTTP 503) when any check failed; `failed` names
    them in check order."""

    ok: bool
    version: str
    checks: list[HealthCheck]
    failed: list[str]


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
