from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.core.durations import format_duration, parse_duration
from broker.core.errors import UsageError
from broker.core.timeutil import from_text, parse_moment, to_text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", timedelta(minutes=30)),
        ("2h", timedelta(hours=2)),
        ("1h30m", timedelta(minutes=90)),
        ("7d", timedelta(days=7)),
        ("45s", timedelta(seconds=45)),
        ("1d2h3m4s", timedelta(days=1, hours=2, minutes=3, seconds=4)),
    ],
)
def test_parse_accepts_operator_forms(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["90x", "", "-5m", "1.5h", "m", "30 m", "30m1h", "h1", "1e3s", "３０m"]
)
def test_parse_refuses_anything_else_with_a_fix(text: str) -> None:
    with pytest.raises(UsageError) as info:
        parse_duration(text)
    assert "30m" in info.value.one_line()


@given(st.integers(min_value=1, max_value=10**7))
def test_format_then_parse_round_trips(seconds: int) -> None:
    value = timedelta(seconds=seconds)
    assert parse_duration(format_duration(value)) == value


def test_timestamps_are_utc_with_z_and_round_trip() -> None:
    moment = datetime(2026, 11, 22, 13, 45, 1, 123, tzinfo=UTC)
    text = to_text(moment)
    assert text == "2026-11-22T13:45:01.000123Z"
    assert from_text(text) == moment


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_text(datetime(2026, 1, 1))


def test_since_accepts_durations_ago_and_iso_times() -> None:
    now = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
    assert parse_moment("2h", now) == datetime(2026, 11, 22, 10, 0, tzinfo=UTC)
    assert parse_moment("2026-11-22T08:00Z", now) == datetime(2026, 11, 22, 8, 0, tzinfo=UTC)
    assert parse_moment("2026-11-22", now) == datetime(2026, 11, 22, tzinfo=UTC)
    with pytest.raises(UsageError):
        parse_moment("yesterday", now)
