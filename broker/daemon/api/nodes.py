"""Nodes: the inventory, host-key enrollment, bootstrap, status and ping (operators only).

Every handler calls the node service (provision/nodes.py), which holds the daemon's one
shared SSH pool, so connections stay warm across requests and worker threads.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from broker.daemon.api.names import HostlistText
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Empty
from broker.fleet import hostkeys
from broker.fleet import status as fleet_status
from broker.fleet.inventory import NodeRecord
from broker.wire.base import from_domain
from broker.wire.nodes import (
    BootstrapOut,
    EnrollOut,
    NodeOut,
    ProbeOut,
    RemovedOut,
    StatusOut,
)

NodeName = Annotated[str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9][a-z0-9-]*$")]
AddressText = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:-]+$")]
FingerprintText = Annotated[str, Field(pattern=r"^SHA256:[A-Za-z0-9+/]{43}$")]
KeyType = Literal[
    "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521", "ssh-rsa"
]


# ---------------------------------------------------------------- models


class AddRequest(Body):
    name: NodeName
    address: AddressText  # host name or IP address literal
    port: int | None = Field(default=None, ge=1, le=65535)  # None: ssh.port


class NameRequest(Body):
    name: NodeName


class ExpectedKey(Body):
    fingerprint: FingerprintText
    key_type: KeyType | None = None  # when known (a known_hosts line): fetch that type


class EnrollRequest(Body):
    name: NodeName
    expected: list[ExpectedKey] = Field(default_factory=list, max_length=16)
    confirm: bool = False  # pin when the key matches `expected`; False: only show the key
    replace: bool = False  # allow replacing a different pinned key


class NodesRequest(Body):
    nodes: HostlistText


class StatusRequest(Body):
    nodes: HostlistText | None = None  # None: every enrolled node


def _node_out(record: NodeRecord) -> NodeOut:
    if not record.enrolled:
        problem: str | None = f"host key not pinned: `broker node enroll {record.name}`"
    elif record.bootstrapped_at is None:
        problem = f"not bootstrapped: `broker node bootstrap {record.name}`"
    elif record.sudo_flavour is None:
        problem = f"not checked yet: `broker node status {record.name}`"
    else:
        problem = fleet_status.grant_blocker(record.sudo_flavour, record.io_logging)
    return from_domain(NodeOut, record, problem=problem)


def _status_out(status: fleet_status.NodeStatus) -> StatusOut:
    return from_domain(StatusOut, status)


# ---------------------------------------------------------------- inventory


@REGISTRY.add(
    "POST",
    "/v1/nodes",
    request=AddRequest,
    response=NodeOut,
    access=Access.OPERATOR,
    summary="Add a node to the inventory (reachable once its host key is enrolled)",
)
def add(ctx: Context[AddRequest]) -> NodeOut:
    p = ctx.params
    return _node_out(ctx.app.nodes().add(p.name, p.address, p.port, ctx.caller.actor))


@REGISTRY.add(
    "GET",
    "/v1/nodes",
    request=Empty,
    response=list[NodeOut],
    access=Access.OPERATOR,
    summary="The node inventory: address, pinned key, bootstrap, last status",
)
def list_nodes(ctx: Context[Empty]) -> list[NodeOut]:
    return [_node_out(r) for r in ctx.app.nodes().listed()]


@REGISTRY.add(
    "POST",
    "/v1/nodes/remove",
    request=NameRequest,
    response=RemovedOut,
    access=Access.OPERATOR,
    summary="Remove a node and its pinned key, revoke its recording tunnel certificates "
    "(refused while a grant may be on it)",
)
def remove(ctx: Context[NameRequest]) -> RemovedOut:
    removed = ctx.app.nodes().remove(ctx.params.name, ctx.caller.actor, ctx.now)
    node = _node_out(removed.record)
    return RemovedOut(**node.model_dump(), revoked_serials=removed.revoked)


@REGISTRY.add(
    "POST",
    "/v1/nodes/enroll",
    request=EnrollRequest,
    response=EnrollOut,
    access=Access.OPERATOR,
    summary="Fetch a node's host key; pin it when it matches the expected fingerprint",
)
def enroll(ctx: Context[EnrollRequest]) -> EnrollOut:
    params = ctx.params
    result = ctx.app.nodes().enroll(
        params.name,
        [hostkeys.Expected(e.fingerprint, e.key_type) for e in params.expected],
        confirm=params.confirm,
        replace=params.replace,
        actor=ctx.caller.actor,
    )
    return from_domain(
        EnrollOut, result, key_type=result.seen.key_type, fingerprint=result.seen.fingerprint
    )


# ---------------------------------------------------------------- on the nodes


@REGISTRY.add(
    "POST",
    "/v1/nodes/bootstrap",
    request=NodesRequest,
    response=list[BootstrapOut],
    access=Access.OPERATOR,
    summary="Install the node program, node.conf, the grant key and the PAM blocks",
)
def bootstrap(ctx: Context[NodesRequest]) -> list[BootstrapOut]:
    results = ctx.app.nodes().bootstrap(ctx.params.nodes, actor=ctx.caller.actor, now=ctx.now)
    return [from_domain(BootstrapOut, r) for r in results]


@REGISTRY.add(
    "POST",
    "/v1/nodes/status",
    request=StatusRequest,
    response=list[StatusOut],
    access=Access.OPERATOR,
    summary="Ask each node's program: hook version, sudo, I/O logging, grants and their"
    " drop-ins (checked against what was pushed), clock skew",
)
def status(ctx: Context[StatusRequest]) -> list[StatusOut]:
    statuses = ctx.app.nodes().status(ctx.params.nodes, actor=ctx.caller.actor, now=ctx.now)
    return [_status_out(s) for s in statuses]


@REGISTRY.add(
    "POST",
    "/v1/nodes/ping",
    request=NodesRequest,
    response=list[ProbeOut],
    access=Access.OPERATOR,
    summary="SSH to each enrolled node: reachable, reported hostname, clock skew",
)
def ping(ctx: Context[NodesRequest]) -> list[ProbeOut]:
    return [from_domain(ProbeOut, p) for p in ctx.app.nodes().ping(ctx.params.nodes)]
