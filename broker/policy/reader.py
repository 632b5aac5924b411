"""Typed reads from parsed TOML tables that collect every problem instead of stopping at the first.

A problem is a key path, the offending value (when there is one) and what
was expected; the loader turns the path into file:line. Reading never
raises for bad input: a bad value is recorded and the read returns None,
so one pass reports every mistake in the file.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Final

from broker.core.durations import format_duration, parse_duration
from broker.core.errors import UsageError
from broker.core.hostlist import count, expand, fold_lists
from broker.policy.positions import Path

_BARE = re.compile(r"[A-Za-z0-9_-]+")


@dataclass(frozen=True)
class Hosts:
    """The nodes a key's hostlists name, and their folded form for people."""

    names: set[str]
    text: str  # folded from the expressions, not from the names (fast for big lists)


class _NoValue:
    def __repr__(self) -> str:
        return "<no value>"


NO_VALUE: Final = _NoValue()


@dataclass(frozen=True)
class RawProblem:
    path: Path
    reason: str
    value: object = NO_VALUE


@dataclass
class Problems:
    """Problems found so far, in the order they were found."""

    items: list[RawProblem] = field(default_factory=list)

    def add(self, path: Path, reason: str, value: object = NO_VALUE) -> None:
        self.items.append(RawProblem(path, reason, value))

    def __len__(self) -> int:
        return len(self.items)


def key_text(path: Path) -> str:
    """`roles.gpu-root.zones[1]`; keys that are not bare are JSON-quoted (escapes shown)."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        shown = part if _BARE.fullmatch(part) else json.dumps(part)
        out += f".{shown}" if out else shown
    return out


def value_text(value: object) -> str:
    shown = repr(value)
    return shown if len(shown) <= 80 else shown[:77] + "..."


def suggest(word: str, choices: Iterable[str]) -> str:
    """`; did you mean X?` when a choice is close, else the list of choices."""
    options = sorted(choices)
    close = difflib.get_close_matches(word, options, n=1, cutoff=0.6)
    if close:
        return f"did you mean {close[0]}?"
    if not options:
        return "none are defined"
    listed = ", ".join(options[:12]) + (", ..." if len(options) > 12 else "")
    return f"defined: {listed}"


_TYPE_NAMES = {
    str: "a string",
    bool: "true or false",
    int: "a whole number",
    list: "an array",
    dict: "a table",
}


class Table:
    """One TOML table under `path`; unknown keys are reported as soon as it is opened."""

    def __init__(
        self, problems: Problems, path: Path, data: dict[str, Any], allowed: Sequence[str]
    ) -> None:
        self.problems = problems
        self.path = path
        self.data = data
        for key in data:
            if key not in allowed:
                problems.add(
                    (*path, key), f"unknown key; {suggest(key, allowed)} (see docs/policy.md)"
                )

    def has(self, key: str) -> bool:
        return key in self.data

    def _typed(self, key: str, kind: type, required: bool) -> Any:
        if key not in self.data:
            if required:
                self.problems.add((*self.path, key), "required key is missing")
            return None
        value = self.data[key]
        # bool is an int in Python; TOML keeps them apart, so do we.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            self.problems.add((*self.path, key), f"expected {_TYPE_NAMES[kind]}", value)
            return None
        return value

    def text(
        self,
        key: str,
        *,
        required: bool = False,
        check: Callable[[str], str | None] | None = None,
    ) -> str | None:
        value = self._typed(key, str, required)
        if value is None:
            return None
        reason = check(value) if check is not None else None
        if reason is not None:
            self.problems.add((*self.path, key), reason, value)
            return None
        return str(value)

    def flag(self, key: str, default: bool) -> bool:
        value = self._typed(key, bool, False)
        return default if value is None else bool(value)

    def integer(self, key: str, default: int, low: int, high: int) -> int | None:
        if key not in self.data:
            return default
        value = self._typed(key, int, False)
        if value is None:
            return None
        if not low <= value <= high:
            self.problems.add((*self.path, key), f"expected {low} to {high}", value)
            return None
        return int(value)

    def duration(
        self, key: str, default: timedelta | None, *, low: timedelta, high: timedelta
    ) -> timedelta | None:
        if key not in self.data:
            return default
        value = self._typed(key, str, False)
        if value is None:
            return None
        try:
            parsed = parse_duration(value)
        except UsageError as exc:
            self.problems.add((*self.path, key), exc.one_line(), value)
            return None
        if not low <= parsed <= high:
            self.problems.add(
                (*self.path, key),
                f"expected from {format_duration(low)} to {format_duration(high)}",
                value,
            )
            return None
        return parsed

    def strings(
        self,
        key: str,
        *,
        required: bool = False,
        single: bool = False,
        check: Callable[[str], str | None] | None = None,
    ) -> list[tuple[Path, str]] | None:
        """An array of strings (or one string when `single`), each with its own path."""
        path = (*self.path, key)
        if key not in self.data:
            if required:
                self.problems.add(path, "required key is missing")
            return None
        value = self.data[key]
        if single and isinstance(value, str):
            items: list[tuple[Path, object]] = [(path, value)]
        elif isinstance(value, list):
            items = [((*path, i), item) for i, item in enumerate(value)]
        else:
            expected = "a string or an array of strings" if single else "an array of strings"
            self.problems.add(path, f"expected {expected}", value)
            return None
        if not items:
            self.problems.add(path, "must not be empty", value)
            return None
        good: list[tuple[Path, str]] = []
        seen: set[str] = set()
        for item_path, item in items:
            if not isinstance(item, str):
                self.problems.add(item_path, "expected a string", item)
                continue
            reason = check(item) if check is not None else None
            if reason is not None:
                self.problems.add(item_path, reason, item)
            elif item in seen:
                self.problems.add(item_path, "listed twice", item)
            else:
                seen.add(item)
                good.append((item_path, item))
        return good if len(good) == len(items) else None

    def hostlist(self, key: str, *, required: bool, expand_names: bool = True) -> Hosts | None:
        """Hostlist expressions (one string or an array), expanded and validated.

        With `expand_names` False (the policy names too many nodes in all) each
        expression is only checked and counted, and None is returned.
        """
        expressions = self.strings(key, required=required, single=True)
        if expressions is None:
            return None
        nodes: set[str] = set()
        ok = True
        for item_path, expression in expressions:
            try:
                if expand_names:
                    nodes.update(expand(expression))
                else:
                    count(expression)
            except UsageError as exc:
                self.problems.add(item_path, exc.one_line(), expression)
                ok = False
        if not ok or not expand_names:
            return None
        return Hosts(nodes, fold_lists([e for _, e in expressions]))

    def table(self, key: str, *, hint: str) -> dict[str, Any] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.problems.add((*self.path, key), f"expected a table ({hint})", value)
            return None
        return value
