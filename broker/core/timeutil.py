"""UTC times as text: every form the broker writes, in one module.

`to_text` is the stored form (sorts and compares as text); the others are the forms other
programs or people read: grant files and the API (whole seconds), sudoers' NOTBEFORE and
NOTAFTER (Generalized Time), tables and messages.
"""

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


def _utc(moment: datetime) -> datetime:
    if moment.tzinfo is None:
        raise ValueError("naive datetime: the broker only handles timezone-aware UTC times")
    return moment.astimezone(UTC)


def to_second_text(moment: datetime) -> str:
    """Whole seconds, ISO-8601 with a trailing Z: `2026-11-22T13:45:01Z` (grant files, the
    sudoers drop-in's comments, the API); the node program parses this form."""
    m = _utc(moment)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def to_generalized(moment: datetime) -> str:
    """RFC 4517 Generalized Time, as sudoers' NOTBEFORE/NOTAFTER take it: `20261123100000Z`."""
    m = _utc(moment)
    return f"{m.year:04d}{m.month:02d}{m.day:02d}{m.hour:02d}{m.minute:02d}{m.second:02d}Z"


def to_display(moment: datetime) -> str:
    """For a table cell: `2026-11-23 17:38:45Z`."""
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%SZ")


def to_sentence(moment: datetime) -> str:
    """For a message people read: `2026-11-23 17:38:45 UTC`."""
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC")


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
