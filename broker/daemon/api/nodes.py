"""Nodes: the inventory, host-key enrollment, bootstrap, status and ping (operators only).

SSH work goes through the daemon's one shared pool, so connections stay warm
across requests and worker threads; a re-pinned or removed node's pooled
connection is dropped at once.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from broker.core.hostlist import expand
from broker.daemon.api.names import HostlistText
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Empty, Out
from broker.fleet import hostkeys, inventory
from broker.fleet import status as fleet_status
from broker.fleet.enroll import enroll as enroll_node
from broker.fleet.inventory import NodeRecord
from broker.fleet.pool import shared_pool
from broker.fleet.probe import probe_nodes
from broker.fleet.runner import SshRunner
from broker.fleet.ssh import NodeTarget
from broker.provision import bootstrap as provision
from broker.sessions import setup as sessions_setup

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


class ExpectedKey(Body):
    fingerprint: FingerprintText
    key_type: KeyType | None = None  # when known (a known_hosts line): fetch that type


class EnrollRequest(Body):
    name: NodeName
    expected: list[ExpectedKey] = Field(default_factory=list, max_length=16)
    confirm: bool = False  # pin when the key matches `expected`; False: only show the key
    replace: bool = False  # allow replacing a different pinned key


class EnrollOut(Out):
    node: str
    address: str
    port: int
    key_type: str
    fingerprint: str  # what the node presented now
    pinned: bool  # the node is pinned to this key now
    changed: bool  # this request pinned it
    previous: str | None  # the fingerprint pinned before this request


class NodesRequest(Body):
    nodes: HostlistText


class StatusRequest(Body):
    nodes: HostlistText | None = None  # None: every enrolled node


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


def _node_out(record: NodeRecord) -> NodeOut:
    if not record.enrolled:
        problem: str | None = f"host key not pinned: `broker node enroll {record.name}`"
    elif record.bootstrapped_at is None:
        problem = f"not bootstrapped: `broker node bootstrap {record.name}`"
    elif record.sudo_flavour is None:
        problem = f"not checked yet: `broker node status {record.name}`"
    else:
        problem = fleet_status.grant_blocker(record.sudo_flavour, record.io_logging)
    return NodeOut(**record.__dict__, problem=problem)


def _status_out(status: fleet_status.NodeStatus) -> StatusOut:
    return StatusOut(**status.__dict__)


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
    settings = ctx.app.settings
    port = ctx.params.port if ctx.params.port is not None else settings.ssh.port
    record = inventory.add(
        ctx.app.ready_store(), ctx.params.name, ctx.params.address, port, ctx.caller.actor
    )
    return _node_out(record)


@REGISTRY.add(
    "GET",
    "/v1/nodes",
    request=Empty,
    response=list[NodeOut],
    access=Access.OPERATOR,
    summary="The node inventory: address, pinned key, bootstrap, last status",
)
def list_nodes(ctx: Context[Empty]) -> list[NodeOut]:
    return [_node_out(r) for r in inventory.list_nodes(ctx.app.ready_store())]


@REGISTRY.add(
    "POST",
    "/v1/nodes/remove",
    request=NameRequest,
    response=NodeOut,
    access=Access.OPERATOR,
    summary="Remove a node and its pinned key (refused while a grant may be on it)",
)
def remove(ctx: Context[NameRequest]) -> NodeOut:
    settings = ctx.app.settings
    record = inventory.remove(
        ctx.app.ready_store(),
        ctx.params.name,
        ctx.caller.actor,
        known_hosts=settings.known_hosts,
        owner=ctx.app.owner,
    )
    shared_pool(settings).forget(record.name)
    return _node_out(record)


@REGISTRY.add(
    "POST",
    "/v1/nodes/enroll",
    request=EnrollRequest,
    response=EnrollOut,
    access=Access.OPERATOR,
    summary="Fetch a node's host key; pin it when it matches the expected fingerprint",
)
def enroll(ctx: Context[EnrollRequest]) -> EnrollOut:
    settings = ctx.app.settings
    params = ctx.params
    result = enroll_node(
        ctx.app.ready_store(),
        params.name,
        expected=[hostkeys.Expected(e.fingerprint, e.key_type) for e in params.expected],
        confirm=params.confirm,
        replace=params.replace,
        actor=ctx.caller.actor,
        known_hosts=settings.known_hosts,
        owner=ctx.app.owner,
        timeout=settings.ssh.connect_timeout.total_seconds(),
    )
    if result.changed:
        shared_pool(settings).forget(result.node)
    return EnrollOut(
        node=result.node,
        address=result.address,
        port=result.port,
        key_type=result.seen.key_type,
        fingerprint=result.seen.fingerprint,
        pinned=result.pinned,
        changed=result.changed,
        previous=result.previous,
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
    settings = ctx.app.settings
    policy = ctx.app.require_policy()
    key_line = ctx.app.grant_public_key_line()
    ca = sessions_setup.load_ca(settings)

    def tunnel(target: NodeTarget) -> sessions_setup.NodeTunnel:
        zone = policy.zone_of.get(target.name)
        return sessions_setup.node_tunnel(settings, ca, target.name, target.host, zone, ctx.now)

    results = provision.bootstrap(
        ctx.app.ready_store(),
        shared_pool(settings),
        expand(ctx.params.nodes),
        policy=policy,
        key_line=key_line,
        joblaunch_service=settings.ssh.joblaunch_service,
        max_skew=settings.ssh.max_skew.total_seconds(),
        actor=ctx.caller.actor,
        tunnels=tunnel,
    )
    return [
        BootstrapOut(
            node=r.node,
            ok=r.ok,
            changed=r.changed,
            error=r.error,
            status=None if r.status is None else _status_out(r.status),
            elapsed_ms=r.elapsed_ms,
        )
        for r in results
    ]


@REGISTRY.add(
    "POST",
    "/v1/nodes/status",
    request=StatusRequest,
    response=list[StatusOut],
    access=Access.OPERATOR,
    summary="Ask each node's program: hook version, sudo, I/O logging, grants, clock skew",
)
def status(ctx: Context[StatusRequest]) -> list[StatusOut]:
    settings = ctx.app.settings
    names = None if ctx.params.nodes is None else expand(ctx.params.nodes)
    statuses = fleet_status.check(
        ctx.app.ready_store(),
        shared_pool(settings),
        names,
        max_skew=settings.ssh.max_skew.total_seconds(),
        actor=ctx.caller.actor,
    )
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
    settings = ctx.app.settings
    targets = inventory.targets(ctx.app.ready_store(), expand(ctx.params.nodes))
    runner = SshRunner.over(shared_pool(settings))
    return [ProbeOut(**p.__dict__) for p in probe_nodes(runner, targets)]
