"""HPC hostlist expressions (`gpu[001-512]`, `mgmt[1-2],stor[01-08]`) through ClusterShell.

Node names end up in sudoers, file names and SSH targets, so an expression
must match a strict grammar before ClusterShell sees it (no `@group`, which
ClusterShell would resolve by running the host's groups.conf upcalls through
a shell, no set operators, no wildcards), its size is counted before it is
expanded, and every expanded name is checked against a DNS host-name
allow-list that also refuses all-digit names (which resolve as addresses).
"""

from __future__ import annotations

import re

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

from broker.core.errors import UsageError

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
NODE_NAME = re.compile(rf"^(?=[a-z0-9.-]*[a-z])(?:{_LABEL})(?:\.{_LABEL})*$")
MAX_NODES = 100_000
# One item: name characters with bracketed ranges `[1-4,07,10-12]` among them.
_RANGE = r"[0-9]+(?:-[0-9]+)?"
_ITEM = re.compile(rf"^(?:[a-z0-9.-]+|\[{_RANGE}(?:,{_RANGE})*\])+$")
_BRACKETS = re.compile(r"\[([^\]]*)\]")
_FIX = "give a hostlist such as gpu[01-04],stor01 (lower-case names, numeric ranges)"


def _items(expression: str) -> list[str]:
    """Split on the commas that separate items (not those inside brackets)."""
    items, depth, current = [], 0, ""
    for char in expression:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return items


def _size(item: str) -> int:
    """How many names an item expands to, counted without expanding it."""
    total = 1
    for ranges in _BRACKETS.findall(item):
        count = 0
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if int(high or low) < int(low):
                raise UsageError(f"bad node range [{ranges}] in {item!r}", fix=_FIX)
            count += int(high or low) - int(low) + 1
        total *= count
    return total


def expand(expression: str) -> list[str]:
    """Expand a hostlist into sorted, validated node names."""
    items = _items(expression) if expression.isascii() else [""]
    if not all(_ITEM.fullmatch(item) for item in items):
        raise UsageError(f"bad node list {expression!r}", fix=_FIX)
    size = sum(_size(item) for item in items)
    if size > MAX_NODES:
        raise UsageError(f"node list {expression!r} names {size} nodes, more than {MAX_NODES}")
    try:
        nodes = NodeSet(expression, resolver=RESOLVER_NOGROUP)
    except NodeSetException as exc:
        raise UsageError(f"bad node list {expression!r}: {exc}", fix=_FIX) from None
    names = list(nodes)
    for name in names:
        if not NODE_NAME.fullmatch(name):
            raise UsageError(
                f"bad node name {name!r}",
                fix="node names are DNS host names: lower-case letters, digits, '-' and '.',"
                " with at least one letter",
            )
    if not names:
        raise UsageError(f"node list {expression!r} names no node", fix=_FIX)
    return names


def fold(names: list[str]) -> str:
    """The compact hostlist form of a list of names, for messages."""
    return str(NodeSet.fromlist(names, resolver=RESOLVER_NOGROUP))
