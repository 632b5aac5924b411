"""Nodes, reached the way grants will reach them: the broker's key, pinned host keys."""

from __future__ import annotations

from broker.core.hostlist import expand
from broker.daemon.api.names import HostlistText
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Out
from broker.fleet.probe import probe_nodes
from broker.fleet.ssh import NodeTarget, SshRunner


class PingRequest(Body):
    nodes: HostlistText


class ProbeOut(Out):
    node: str
    reachable: bool
    hostname: str | None
    skew_s: float | None
    elapsed_ms: float
    error: str | None


@REGISTRY.add(
    "POST",
    "/v1/nodes/ping",
    request=PingRequest,
    response=list[ProbeOut],
    access=Access.OPERATOR,
    summary="SSH to each node: reachable, reported hostname, clock skew",
)
def ping(ctx: Context[PingRequest]) -> list[ProbeOut]:
    settings = ctx.app.settings
    names = expand(ctx.params.nodes)
    runner = SshRunner(
        key_path=settings.ssh_key,
        known_hosts=settings.known_hosts,
        user=settings.ssh.user,
        timeout=settings.ssh.connect_timeout,
    )
    targets = [NodeTarget(name, name, settings.ssh.port) for name in names]
    return [ProbeOut(**p.__dict__) for p in probe_nodes(runner, targets)]
