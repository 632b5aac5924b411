"""HPC hostlist expressions (`gpu[001-512]`, `mgmt[1-2],stor[01-08]`) through ClusterShell.

Node names end up in sudoers, file names and SSH targets, so every expanded
name is checked against a strict allow-list before anyone uses it.
"""

from __future__ import annotations

import re

from ClusterShell.NodeSet import NodeSet, NodeSetParseError

from broker.core.errors import UsageError

NODE_NAME = re.compile(
    r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*$"
)
MAX_NODES = 100_000


def expand(expression: str) -> list[str]:
    """Expand a hostlist into sorted, validated node names."""
    if not expression.strip() or not expression.isascii() or not expression.isprintable():
        raise UsageError(
            f"bad node list {expression!r}", fix="give a hostlist such as gpu[01-04],stor01"
        )
    try:
        nodes = NodeSet(expression)
    except NodeSetParseError as exc:
        raise UsageError(
            f"bad node list {expression!r}: {exc}", fix="e.g. gpu[001-512],mgmt[1-2]"
        ) from None
    if len(nodes) > MAX_NODES:
        raise UsageError(
            f"node list {expression!r} names {len(nodes)} nodes, more than {MAX_NODES}"
        )
    names = list(nodes)
    for name in names:
        if not NODE_NAME.fullmatch(name):
            raise UsageError(
                f"bad node name {name!r}",
                fix="node names are lower-case letters, digits, '-' and '.' (DNS host names)",
            )
    return names


def fold(names: list[str]) -> str:
    """The compact hostlist form of a list of names, for messages."""
    return str(NodeSet.fromlist(names))
