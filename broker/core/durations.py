"""Durations written the way operators write them: 30m, 2h, 1h30m, 7d, 45s."""

from __future__ import annotations

import re
from datetime import timedelta

from broker.core.errors import UsageError

_DURATION = re.compile(
    r"^(?:([0-9]{1,6})d)?(?:([0-9]{1,6})h)?(?:([0-9]{1,6})m)?(?:([0-9]{1,9})s)?$"
)


def parse_duration(text: str) -> timedelta:
    """Parse `1h30m`-style text; anything else (`90x`, `-5m`, `1.5h`) is refused."""
    candidate = text.strip() if isinstance(text, str) else ""
    match = _DURATION.fullmatch(candidate)
    if not candidate or match is None:
        raise UsageError(
            f"bad duration {text!r}",
            fix="write it as a number with units d, h, m, s in that order, e.g. 30m, 2h, 1h30m",
        )
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)


def format_duration(value: timedelta) -> str:
    """The shortest `1h30m`-style text for a duration (whole seconds)."""
    total = int(value.total_seconds())
    if total <= 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        count, total = divmod(total, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
