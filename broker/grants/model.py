"""Grants and elevation requests as the store holds them; plain frozen values."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

GrantState = Literal["active", "revoked", "expired"]
NodeState = Literal["pending", "live", "failed", "removing", "removed"]
RequestState = Literal["pending", "granted", "denied", "expired", "failed"]


@dataclass(frozen=True)
class Grant:
    id: str
    user: str
    sid: str
    role: str
    runas: str
    commands: str  # ALL, or command-set names joined by ','
    command_sets: tuple[tuple[str, tuple[str, ...]], ...]  # what the sudoers rule lists
    nodes: str  # folded hostlist, for people
    not_before: datetime
    not_after: datetime
    reason: str
    approvers: tuple[str, ...]
    policy_sha256: str
    login: bool
    workloads: bool
    max_sessions: int
    request_id: str | None
    created_at: datetime
    created_by: str
    state: GrantState
    ended_at: datetime | None = None
    ended_by: str | None = None
    end_reason: str | None = None

    def active_at(self, now: datetime) -> bool:
        return self.state == "active" and self.not_before <= now < self.not_after


@dataclass(frozen=True)
class GrantNode:
    grant_id: str
    node: str
    state: NodeState
    error: str | None
    attempts: int
    pushed_at: datetime | None
    removed_at: datetime | None
    drop_in_sha256: str | None = None  # what the last successful push sent
    drop_in_problem: str | None = None  # why the node's drop-in is not that (None: fine)

    @property
    def shown_state(self) -> str:
        """`broken` for a live row whose drop-in sudo does not read as pushed: not live."""
        return "broken" if self.state == "live" and self.drop_in_problem else self.state


@dataclass(frozen=True)
class Approval:
    approver: str
    decision: Literal["approve", "deny"]
    reason: str
    at: datetime


@dataclass(frozen=True)
class Request:
    id: str
    user: str
    sid: str
    nodes: str  # folded hostlist
    role: str
    runas: str
    commands: str
    duration_s: int
    reason: str
    policy_sha256: str
    approvals_needed: int
    approver_groups: tuple[str, ...]
    state: RequestState
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    decided_by: str | None
    decision_reason: str | None
    grant_id: str | None
    approvals: tuple[Approval, ...] = ()
