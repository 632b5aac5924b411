"""grants: the response records of /v1/grants routes, read by the daemon and the client."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from broker.wire.base import Out


class PlanOut(Out):
    user: str
    role: str
    nodes: str
    runas: str
    commands: str
    duration_s: int
    mfa: bool
    approvals_needed: int
    approver_groups: list[str]


class NodeResultOut(Out):
    node: str
    ok: bool
    error: str | None
    elapsed_ms: float
    killed: int = 0


class GrantNodeOut(Out):
    node: str
    state: str  # pending, live, broken (live, but its drop-in is not what sudo should read),
    # failed, removing, removed
    error: str | None
    attempts: int
    drop_in_problem: str | None = None  # why broken: "drop-in mode 0666: sudo ignores it"

    def as_result(self) -> NodeResultOut:
        """Where a push stands, as a push result (a client watching a deferred push)."""
        return NodeResultOut(
            node=self.node,
            ok=self.state == "live",
            error=(self.drop_in_problem or self.error)
            if self.state != "pending"
            else "still being pushed",
            elapsed_ms=0.0,
        )


class GrantOut(Out):
    id: str
    user: str
    role: str
    runas: str
    commands: str
    nodes: str
    not_before: datetime
    not_after: datetime
    reason: str
    approvers: list[str]
    policy_sha256: str
    state: str
    active: bool
    request_id: str | None
    created_by: str
    ended_at: datetime | None
    ended_by: str | None
    end_reason: str | None
    node_states: list[GrantNodeOut]

    @property
    def live_on(self) -> list[str]:
        return [n.node for n in self.node_states if n.state == "live"]

    @property
    def shown_state(self) -> str:
        """`active` only while in force (`active` says so); a stored `active` past its
        window is `expired` until the reaper records it."""
        if self.active:
            return "active"
        return "expired" if self.state == "active" else self.state


class ApprovalOut(Out):
    approver: str
    decision: str
    reason: str
    at: datetime


class RequestOut(Out):
    id: str
    user: str
    nodes: str
    role: str
    runas: str
    commands: str
    duration_s: int
    reason: str
    approvals_needed: int
    approver_groups: list[str]
    state: str
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_reason: str | None
    grant_id: str | None
    approvals: list[ApprovalOut]

    @property
    def approved(self) -> int:
        return sum(a.decision == "approve" for a in self.approvals)


class ElevationOut(Out):
    grant: GrantOut | None
    request: RequestOut | None
    results: list[NodeResultOut]


class RevokeOut(Out):
    revoked: list[str]
    results: list[NodeResultOut]
    pending: list[str]  # grant@node still to be removed (the reaper retries)


class ReapOut(Out):
    requests_expired: list[str]
    grants_expired: list[str]
    grants_revoked: list[str]
    removed: list[str]
    still_pending: list[str]
    events: int
    # grant@node pushed again (grants.drop_in_integrity)
    drop_ins_repaired: list[str] = Field(default_factory=list)
