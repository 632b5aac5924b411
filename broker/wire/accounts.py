"""accounts: the response records of /v1/accounts routes, read by the daemon and the client."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from broker.wire.base import Out


class RoleOut(Out):
    role: str
    via: str


class ScopeOut(Out):
    role: str
    nodes: str
    max_duration: str


class AccountOut(Out):
    name: str
    upn: str | None
    sid: str
    dn: str
    uid: int | None
    gid: int | None
    state: str
    eligible: bool
    problem: str | None
    stale: bool
    last_logon: datetime | None
    expires_at: datetime | None
    locked_until: datetime | None
    groups: list[str]
    direct_groups: list[str]
    service_principals: list[str]
    roles: list[RoleOut]
    may_elevate: list[ScopeOut]
    no_roles_reason: str


class FindingOut(Out):
    control: str
    kind: str
    subject: str
    message: str


class AccountList(Out):
    stale_after: str
    accounts: list[AccountOut] = Field(default_factory=list)
