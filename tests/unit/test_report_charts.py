"""The report's chart data (broker/report/charts.py) from a store the services' rows wrote:
what each chart counts, what a zone keeps, what falls outside the period."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.core.errors import UsageError
from broker.report.charts import CHART_KEYS, NO_ZONE, chart_series
from broker.store.db import Store
from tests.unit import report_samples as samples


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    opened = samples.open_store(tmp_path_factory.mktemp("report") / "broker.db")
    samples.seed(opened)
    yield opened
    opened.close()


def series(store: Store, zone: str | None = None) -> dict[str, Any]:
    return chart_series(store.conn, samples.SINCE, samples.UNTIL, zone, zone_of=samples.ZONE_OF)


def counts(chart: dict[str, Any]) -> dict[str, int]:
    return {b["label"]: b["count"] for b in chart["buckets"] if b["count"]}


def test_elevations_are_grants_per_day_per_zone_reached(store: Store) -> None:
    elevations = series(store)["elevations"]
    # g1 (cn01+cn02) and g2 (cn01+st01) on one day: compute counts each grant once, storage
    # counts g2; g3 on an unzoned node; g4 was issued before the period.
    assert elevations == {
        "days": ["2026-11-10", "2026-11-20"],
        "zones": {"compute": [2, 0], "storage": [1, 0], NO_ZONE: [0, 1]},
        "total": 3,
    }


def test_approval_wait_counts_granted_requests_decided_in_the_period(store: Store) -> None:
    wait = series(store)["approval_wait"]
    assert counts(wait) == {"5-15 min": 1, "1-4 h": 1}  # r3 denied, r4 before the period
    assert (wait["count"], wait["median_s"], wait["p90_s"]) == (2, 420.0, 7200.0)


def test_session_length_counts_finished_recordings(store: Store) -> None:
    sessions = series(store)["session_length"]
    assert counts(sessions) == {"< 1 min": 1, "10-30 min": 1}  # the running one is left out
    assert (sessions["median_s"], sessions["p90_s"]) == (30.0, 1200.0)


def test_mfa_failures_are_refused_codes_lockouts_and_tries_while_locked(store: Store) -> None:
    # "not enrolled" is a refusal but no failed factor: its day does not appear.
    assert series(store)["mfa_failures"] == {
        "zone": None,
        "days": ["2026-11-25"],
        "failed_codes": [5],
        "while_locked": [1],
        "lockouts": [1],
    }


def test_keytab_age_is_the_last_rotation_finished_before_the_period_ended(store: Store) -> None:
    # svc-a rotated 3 days before the end and again after it: the report says 3 days.
    assert series(store)["keytab_age"] == {
        "accounts": [{"name": "svc-a", "age_days": 3.0}, {"name": "svc-b", "age_days": None}]
    }


def test_a_zone_keeps_only_what_touched_its_nodes(store: Store) -> None:
    compute = series(store, "compute")
    assert compute["elevations"] == {"days": ["2026-11-10"], "zones": {"compute": [2]}, "total": 2}
    assert counts(compute["approval_wait"]) == {"5-15 min": 1}
    assert counts(compute["session_length"]) == {"< 1 min": 1}
    assert compute["keytab_age"]["accounts"] == [{"name": "svc-b", "age_days": None}]
    assert compute["mfa_failures"] == series(store)["mfa_failures"]  # account-wide


def test_an_empty_period_or_zone_gives_empty_charts_not_errors(store: Store) -> None:
    quiet = chart_series(
        store.conn,
        samples.UNTIL + timedelta(days=10),
        samples.UNTIL + timedelta(days=20),
        "management",
        zone_of=samples.ZONE_OF,
    )
    assert list(quiet) == list(CHART_KEYS)
    assert quiet["elevations"] == {"days": [], "zones": {}, "total": 0}
    assert quiet["approval_wait"]["count"] == 0 and quiet["approval_wait"]["median_s"] is None
    assert quiet["mfa_failures"]["days"] == []
    assert quiet["keytab_age"] == {"accounts": []}


def test_a_period_that_ends_before_it_starts_is_refused(store: Store) -> None:
    with pytest.raises(UsageError, match="period is empty"):
        chart_series(store.conn, samples.UNTIL, samples.SINCE, None, zone_of=samples.ZONE_OF)


def test_charts_are_aggregated_in_sql_not_walked_in_python(tmp_path: Path) -> None:
    """Ten thousand MFA refusals on one day come back as one row: the query groups, so the
    report's cost follows the days shown, not the events behind them."""
    opened = samples.open_store(tmp_path / "many.db")
    with opened.transaction() as conn:
        conn.executemany(
            "INSERT INTO audit_events (ts, actor, action, target, outcome, details, prev_hash,"
            " hash) VALUES (?, 'x', 'mfa.verify', 'x', 'refused', ?, '', '')",
            [(f"2026-11-20T10:{i // 600:02d}:{i % 60:02d}.000000Z", '{"reason": "wrong code"}')
             for i in range(10000)],
        )  # fmt: skip
    traced: list[str] = []
    opened.conn.set_trace_callback(traced.append)
    mfa = series(opened)["mfa_failures"]
    opened.conn.set_trace_callback(None)
    opened.close()
    assert mfa["failed_codes"] == [10000]
    assert any("GROUP BY day" in sql and "audit_events" in sql for sql in traced)
