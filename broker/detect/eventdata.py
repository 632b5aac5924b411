"""What the detector reads of an audit event: its details, and the nodes a hostlist names.

Events no rule looks into (session closes, successful MFA checks, directory syncs)
never leave SQLite (the runner's query names the actions rules read), so the details
of every event that does are parsed at once, by the scanner under `json.loads`
without its wrappers; only text that is not one whole JSON object is left to
`LazyDetails` and read (or refused) exactly as before. A hostlist (`gpu[0001-0003]`) is
expanded once per distinct expression, not once per event: users elevate on the
same few nodes again and again, and ClusterShell takes 10-20 µs per expansion,
a third of the detector's time before this cache (docs/benchmarks.md).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from broker.core.errors import UsageError
from broker.core.hostlist import expand

CACHE_NAMES_MAX = 1 << 18  # node names held in the cache at most (some tens of MB)
CACHE_NODES_MAX = 1024  # a larger expansion is never kept
_NODES: dict[str, tuple[str, ...]] = {}
_held = [0]  # node names in _NODES


def nodes_of(expression: str) -> tuple[str, ...]:
    """The nodes a hostlist names; none when it is not a valid one (as `expand` judges)."""
    hit = _NODES.get(expression)
    if hit is not None:
        return hit
    try:
        nodes = tuple(expand(expression))
    except UsageError:
        nodes = ()
    if len(nodes) <= CACHE_NODES_MAX:
        if _held[0] + len(nodes) + 1 > CACHE_NAMES_MAX:
            _NODES.clear()  # crude but bounded; a refill costs one expansion per entry
            _held[0] = 0
        _NODES[expression] = nodes
        _held[0] += len(nodes) + 1
    return nodes


# The scanner json.loads runs, without its wrappers (typeshed does not declare the attribute).
_SCAN: Callable[[str, int], tuple[Any, int]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def details_of(raw: str | None) -> Mapping[str, Any]:
    """An event's details (JSON text) as a mapping, parsed now: nearly every event the
    detector reads is one a rule looks into, and `json.loads` spends half its time in
    Python wrappers around this scanner. Only text the scanner reads whole as an object
    takes the fast way; anything else (empty, not an object, whitespace or garbage after
    it, not JSON at all) is a `LazyDetails`, which reads it exactly as before: empty, or
    the same error when a rule looks (and no error when none does)."""
    if raw and raw[0] == "{":
        try:
            value, end = _SCAN(raw, 0)
        except (StopIteration, ValueError, TypeError, RecursionError):
            return LazyDetails(raw)
        if end == len(raw) and type(value) is dict:
            return value
    return LazyDetails(raw or "")


class LazyDetails(Mapping[str, Any]):
    """An event's details as stored (JSON text), parsed on first look; details that are
    not a JSON object read as empty, as no rule could use them."""

    __slots__ = ("_data", "_raw")

    def __init__(self, raw: str | bytes) -> None:
        self._raw = raw
        self._data: dict[str, Any] | None = None

    def _parsed(self) -> dict[str, Any]:
        if self._data is None:
            value = json.loads(self._raw) if self._raw else {}
            self._data = value if isinstance(value, dict) else {}
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._parsed()[key]

    def get(self, key: str, default: Any = None) -> Any:
        data = self._data  # the common case without a call: parsed already
        return (data if data is not None else self._parsed()).get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._parsed())

    def __len__(self) -> int:
        return len(self._parsed())
