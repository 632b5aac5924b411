"""policy: the response records of /v1/policy routes, read by the daemon and the client."""

from __future__ import annotations

from pydantic import Field

from broker.wire.base import Out


class CountsOut(Out):
    zones: int
    nodes: int
    roles: int
    bindings: int
    service_accounts: int


class CheckFindingOut(Out):
    line: int
    severity: str
    control: str | None
    rule: str
    key: str
    message: str


class CheckOut(Out):
    file: str
    valid: bool
    sha256: str | None
    errors: int
    warnings: int
    notes: int
    findings: list[CheckFindingOut]
    groups_checked: bool
    counts: CountsOut | None  # the policy's size, when it is valid enough to have one
    note: str | None  # why group names were not checked, when they were not


class SettingChangeOut(Out):
    subject: str
    what: str


class RightOut(Out):
    holder: str
    role: str
    nodes: str
    count: int


class PlanSummaryOut(Out):
    old_sha256: str | None
    new_sha256: str | None
    eligible_accounts: int
    users_gaining: int
    users_losing: int
    groups_gaining: int
    groups_losing: int
    changes: list[SettingChangeOut]
    user_gains: list[RightOut]
    user_losses: list[RightOut]
    group_gains: list[RightOut]
    group_losses: list[RightOut]
    truncated: bool


class PlanOut(PlanSummaryOut):
    warnings: list[str]  # lint warnings, each `file:line: warning CONTROL: message`


class ApplyOut(Out):
    applied: bool  # False: this text was already the active policy
    sha256: str
    version: int
    previous_sha256: str | None
    plan: PlanSummaryOut | None
    warnings: list[str]
    applied_at: str  # of `version`: now, or when the already active policy was applied
    actor: str  # who applied `version`
    revoked: list[str] = Field(
        default_factory=list
    )  # active grants the new policy no longer allows


class VersionOut(Out):
    sha256: str
    version: int
    applied_at: str
    actor: str
    source: str


class ZoneOut(Out):
    kind: str
    nodes: str
    count: int


class PolicyRoleOut(Out):
    zones: list[str]
    runas: str
    commands: str
    default_duration: str
    max_duration: str
    mfa: bool
    record_sessions: bool
    approvals: int
    groups: list[str]
    where: str  # zones and extra nodes, for people
    approval_groups: list[str]


class ShowOut(Out):
    active: VersionOut | None  # None: no policy has been applied; the rest is then empty
    zones: dict[str, ZoneOut] | None = None
    roles: dict[str, PolicyRoleOut] | None = None
    bindings: int | None = None
    service_accounts: list[str] | None = None
    break_glass_group: str | None = None
    incident_response_group: str | None = None
    text: str | None = None  # only when asked for


class CheckStepOut(Out):
    rule: str
    role: str | None
    outcome: str
    detail: str


class ExplainOut(Out):
    user: str
    node: str
    verdict: str
    role: str | None
    allowed_by: list[str]
    duration: str | None
    reason: str
    policy_sha256: str | None
    checks: list[CheckStepOut]
