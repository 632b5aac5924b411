"""Strict JSON for what crosses a trust boundary (a request body, a node's reply, a report file).

Python's json module takes the last of two equal keys and reads NaN and Infinity; another
reader of the same text may take the first key or refuse the constants, so the broker and
that reader would disagree about what the text says. These are refused instead.
"""

from __future__ import annotations

import json
from typing import Any


class StrictJsonError(ValueError):
    """The text is JSON to Python but not to every reader; the message says why."""


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise StrictJsonError(f"duplicate key {key!r}"[:80])
        result[key] = value
    return result


def _no_constant(name: str) -> Any:
    raise StrictJsonError(f"{name} is not JSON")


def loads(text: str) -> Any:
    """Parse `text`; ValueError (StrictJsonError for the cases above) or RecursionError."""
    return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
