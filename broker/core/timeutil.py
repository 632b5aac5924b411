"""UTC timestamps in one textual form, so stored times sort and compare as text."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.core.durations import parse_duration
from broker.core.errors import UsageError


def utcnow() -> datetime:
    """The current time, always timezone-aware UTC."""
    return datetime.now(UTC)


def to_text(moment: datetime) -> str:
    """ISO-8601 with microseconds and a trailing Z: `2026-11-22T13:45:01.000123Z`."""
    if moment.tzinfo is None:
        raise ValueError("naive datetime: the broker only handles timezone-aware UTC times")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_text(text: str) -> datetime:
    """Parse a timestamp written by `to_text` (or any ISO-8601 form with an offset)."""
    moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        raise ValueError(f"timestamp {text!r} has no timezone")
    return moment.astimezone(UTC)


def parse_moment(text: str, now: datetime) -> datetime:
    """`--since`/`--until` values: a duration ago (`2h`, `1d`) or an ISO-8601 time (UTC if no zone)."""
    value = text.strip()
    if value[:1] in tuple("0123456789") and not any(c in value for c in "-:T"):
        return now - parse_duration(value)
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(
            f"bad time {text!r}",
            fix="give a duration ago (30m, 2h, 7d) or an ISO time (2026-11-22T10:00Z)",
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
