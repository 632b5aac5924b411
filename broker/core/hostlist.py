"""HPC hostlist expressions (`gpu[001-512]`, `mgmt[1-2],stor[01-08]`) through ClusterShell.

Node names end up in sudoers, file names and SSH targets, so an expression
must match a strict grammar before ClusterShell sees it (no `@group`, which
ClusterShell would resolve by running the host's groups.conf upcalls through
a shell, no set operators, no wildcards), its size is counted before it is
expanded, and every expanded name is checked against a DNS host-name
allow-list that also refuses all-digit names (which resolve as addresses).
"""

from __future__ import annotations

import heapq
import re
from collections.abc import Collection

from ClusterShell.NodeSet import RESOLVER_NOGROUP, NodeSet, NodeSetException

from broker.core.errors import UsageError

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
NODE_NAME = re.compile(rf"^(?=[a-z0-9.-]*[a-z])(?:{_LABEL})(?:\.{_LABEL})*$")
MAX_NODES = 100_000
# One item: name characters with bracketed ranges `[1-4,07,10-12]` among them.
_RANGE = r"[0-9]+(?:-[0-9]+)?"
_ITEM = re.compile(rf"^(?:[a-z0-9.-]+|\[{_RANGE}(?:,{_RANGE})*\])+$")
_BRACKETS = re.compile(r"\[([^\]]*)\]")
_DIGITS = re.compile(r"([0-9]+)")
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


def _checked_items(expression: str) -> list[str]:
    """The items of an expression that matches the grammar; else refused."""
    items = _items(expression) if expression.isascii() else [""]
    if not all(_ITEM.fullmatch(item) for item in items):
        raise UsageError(f"bad node list {expression!r}", fix=_FIX)
    return items


def _size(item: str) -> int:
    """How many names an item expands to, counted without expanding it."""
    total = 1
    for ranges in _BRACKETS.findall(item):
        width = 0
        for part in ranges.split(","):
            low, _, high = part.partition("-")
            if int(high or low) < int(low):
                raise UsageError(f"bad node range [{ranges}] in {item!r}", fix=_FIX)
            width += int(high or low) - int(low) + 1
        total *= width
    return total


def count(expression: str) -> int:
    """How many names a hostlist expands to, checked against the grammar, without expanding it.

    Refused like `expand` refuses: a bad expression, or one naming more than
    MAX_NODES. Names are only counted (a name listed twice counts twice).
    """
    size = sum(_size(item) for item in _checked_items(expression))
    if size > MAX_NODES:
        raise UsageError(f"node list {expression!r} names {size} nodes, more than {MAX_NODES}")
    return size


def expand(expression: str) -> list[str]:
    """Expand a hostlist into sorted, validated node names."""
    count(expression)
    try:
        nodes = NodeSet(expression, resolver=RESOLVER_NOGROUP)
    except NodeSetException as exc:
        raise UsageError(f"bad node list {expression!r}: {exc}", fix=_FIX) from exc
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


def fold_some(names: Collection[str], limit: int = 1000) -> str:
    """`fold` of at most `limit` names (the first in node order) and how many more.

    For messages about sets that may be huge: folding costs per name.
    """
    if len(names) <= limit:
        return fold(list(names))
    first = heapq.nsmallest(limit, names, key=_node_order)
    return f"{fold(first)} and {len(names) - limit} more nodes"


def _node_order(name: str) -> list[str | int]:
    """Sort key: digit runs as numbers (n2 before n10); text and numbers alternate."""
    return [int(part) if i % 2 else part for i, part in enumerate(_DIGITS.split(name))]


def fold_lists(expressions: list[str]) -> str:
    """The compact form of the union of hostlists that `expand` accepted, without expanding them.

    The same text as `fold` of their expanded names, at the cost of parsing the
    ranges rather than one name at a time (a 100,000-name list in ms, not seconds).
    """
    nodes = NodeSet(resolver=RESOLVER_NOGROUP)
    for expression in expressions:
        if expression:
            _checked_items(expression)  # never an @group or operator, even from a caller's bug
            nodes.update(NodeSet(expression, resolver=RESOLVER_NOGROUP))
    return str(nodes)
