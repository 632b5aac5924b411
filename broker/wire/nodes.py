"""nodes: the response records of /v1/nodes routes, read by the daemon and the client."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from broker.wire.base import Out


class NodeOut(Out):
    name: str
    address: str
    port: int
    fingerprint: str | None
    enrolled_at: str | None
    bootstrapped_at: str | None
    hook_version: str | None
    sudo_flavour: str | None
    sudo_version: str | None
    io_logging: bool | None
    last_seen_at: str | None
    last_skew_s: float | None
    problem: str | None  # from what the inventory knows: not enrolled, not bootstrapped, sudo


class RemovedOut(NodeOut):
    revoked_serials: list[str]  # the node's tunnel certificates now on the session CA's CRL


class EnrollOut(Out):
    node: str
    address: str
    port: int
    key_type: str
    fingerprint: str  # what the node presented now
    pinned: bool  # the node is pinned to this key now
    changed: bool  # this request pinned it
    previous: str | None  # the fingerprint pinned before this request


class StatusOut(Out):
    node: str
    reachable: bool
    skew_s: float | None
    hook_version: str | None
    sudo_flavour: str | None
    sudo_version: str | None
    io_logging: bool | None
    bootstrapped: bool | None
    active_grants: int | None
    can_grant: bool
    problem: str | None
    elapsed_ms: float
    module_problem: str | None = None  # why pam_broker.so does not load there (None: it does)
    # How elevated sessions end there: cgroup (contained) or process-tree (weaker)
    containment: Literal["cgroup", "process-tree"] | None = None
    # Grants whose drop-in is missing, changed or ignored by sudo there: "g...: why"
    drop_in_problems: list[str] = Field(default_factory=list)
    # Who installed the node program: "push" (bootstrap), "package <version>" (the
    # hpc-access-broker-node package), "package" (its marker unreadable); None: not reported
    installed_by: str | None = None


class BootstrapOut(Out):
    node: str
    ok: bool
    changed: list[str]
    error: str | None
    status: StatusOut | None  # the node program's answer after installing
    elapsed_ms: float


class ProbeOut(Out):
    node: str
    reachable: bool
    hostname: str | None
    skew_s: float | None
    elapsed_ms: float
    error: str | None
