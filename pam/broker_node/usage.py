"""What every node command shares about its JSON input: `Usage` (bad input, exit 2) and
the field checks."""

from __future__ import annotations

from .contract import clean

TYPE_CHECKING = False  # never import typing at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable


class Usage(Exception):
    """Bad input to the node program: exit 2."""


def text_field(payload: dict[str, object], key: str, limit: int) -> str:
    """A required string field of bounded size; Usage otherwise."""
    value = payload.get(key)
    if not isinstance(value, str) or not value or len(value.encode("utf-8")) > limit:
        raise Usage(f"{key} must be a non-empty string of at most {limit} bytes")
    return value


def id_list(payload: dict[str, object], key: str, check: Callable[[str], bool]) -> list[str]:
    """The one field of `payload`: a bounded list of valid ids, duplicates dropped."""
    if set(payload) != {key}:
        raise Usage(f"expected exactly {{{key!r}: [...]}}")
    values = payload[key]
    if not isinstance(values, list) or len(values) > 10000:
        raise Usage(f"{key} must be a list of at most 10000 ids")
    for value in values:
        if not isinstance(value, str) or not check(value):
            raise Usage(f"{key}: {clean(value, 40)!r} is not a valid id")
    return list(dict.fromkeys(values))
