"""Probe nodes over pinned SSH: reachable, the hostname they report, their clock skew."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from broker.fleet.runner import SshRunner
from broker.fleet.ssh import CommandResult, NodeTarget

PROBE = ["sh", "-c", 'printf "%s %s\\n" "$(hostname)" "$(date +%s.%N)"']


@dataclass(frozen=True)
class NodeProbe:
    node: str
    reachable: bool
    hostname: str | None
    skew_s: float | None
    elapsed_ms: float
    error: str | None


def parse_probe(result: CommandResult, sent: float, received: float) -> NodeProbe:
    """Skew is the node's clock minus the midpoint of our send and receive times."""
    if not result.ok:
        error = result.error or f"probe exited {result.exit_status}: {result.stderr.strip()[:200]}"
        return NodeProbe(result.node, False, None, None, result.elapsed_ms, error)
    try:
        hostname, stamp = result.stdout.split()
        skew = float(stamp) - (sent + received) / 2
    except ValueError:
        return NodeProbe(
            result.node, True, None, None, result.elapsed_ms, "unexpected probe output"
        )
    return NodeProbe(result.node, True, hostname, skew, result.elapsed_ms, None)


def probe_nodes(
    runner: SshRunner,
    targets: Sequence[NodeTarget],
    on_done: Callable[[NodeProbe], None] | None = None,
) -> list[NodeProbe]:
    def one(target: NodeTarget) -> NodeProbe:
        sent = time.time()
        result = runner.run(target, PROBE)
        probe = parse_probe(result, sent, time.time())
        if on_done is not None:
            on_done(probe)
        return probe

    with ThreadPoolExecutor(max_workers=max(1, min(32, len(targets)))) as pool:
        return list(pool.map(one, targets))
