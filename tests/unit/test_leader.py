"""The scheduler lease: one broker runs the scheduler's duties, another takes over when it
dies, a clean stop hands over at once, and every change of holder is in the audit chain."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.app import App
from broker.config.loader import load_settings
from broker.daemon.leader import Leadership, Lease, next_lease
from tests.helpers import daemon_socket_of, run_broker, serving

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
TTL = timedelta(seconds=6)


def test_next_lease_renews_waits_and_takes_over_with_a_new_term() -> None:
    first = next_lease(None, "a", T0, TTL)
    assert first == Lease("a", 1, T0 + TTL)
    assert next_lease(first, "a", T0 + timedelta(seconds=2), TTL) == Lease(
        "a", 1, T0 + timedelta(seconds=8)
    )
    assert next_lease(first, "b", T0 + timedelta(seconds=5), TTL) is None  # still a's
    taken = next_lease(first, "b", T0 + TTL, TTL)
    assert taken == Lease("b", 2, T0 + TTL + TTL)


@pytest.fixture
def app(broker_config: Path) -> Iterator[App]:
    made = App(load_settings(broker_config))
    made.setup().migrate("unix:test")
    yield made
    made.close()


def _leader_events(app: App) -> list[tuple[str, dict[str, object]]]:
    rows = (
        app.store()
        .conn.execute(
            "SELECT target, details FROM audit_events WHERE action = 'scheduler.leader' ORDER BY seq"
        )
        .fetchall()
    )
    return [(str(r[0]), json.loads(r[1])) for r in rows]


def test_one_leader_at_a_time_and_a_takeover_after_the_lease(app: App) -> None:
    store = app.store()
    a, b = Leadership(TTL, me="h1:1:aa"), Leadership(TTL, me="h2:2:bb")
    assert a.attempt(store, T0) and a.is_leader()
    assert not b.attempt(store, T0 + timedelta(seconds=1)) and not b.is_leader()
    assert "h1:1:aa runs the scheduler, term 1" in b.describe()
    assert a.attempt(store, T0 + timedelta(seconds=2))  # renewed: no new term
    # a stops renewing (killed): b waits until the lease written at +2 s has run out.
    assert not b.attempt(store, T0 + timedelta(seconds=7))
    assert b.attempt(store, T0 + timedelta(seconds=8)) and b.is_leader() and b.took_over
    assert b.term == 2
    # a comes back (a paused process): it is refused, and stops acting as leader.
    assert not a.attempt(store, T0 + timedelta(seconds=9)) and not a.is_leader()
    assert _leader_events(app) == [("h2:2:bb", {"term": 2, "previous": "h1:1:aa"})]
    assert app.audit().verify().ok


def test_a_clean_stop_hands_over_at_once(app: App) -> None:
    store = app.store()
    a, b = Leadership(TTL, me="h1:1:aa"), Leadership(TTL, me="h2:2:bb")
    assert a.attempt(store)
    a.release(store)
    assert not a.is_leader()
    assert b.attempt(store) and b.term == 2


def test_leadership_ends_by_its_own_clock_without_renewal(app: App) -> None:
    a = Leadership(timedelta(seconds=3), me="h1:1:aa")
    assert a.attempt(app.store()) and a.is_leader()
    time.sleep(2.1)  # two thirds of the lease
    assert not a.is_leader()


def _second_config(config: Path) -> Path:
    """Another daemon on the same state directory (same SQLite store), its own socket."""
    text = config.read_text().replace(
        str(daemon_socket_of(config)), str(config.parent / "run2" / "broker.sock")
    )
    other = config.with_name("broker2.toml")
    other.write_text(text.replace("[daemon]\n", '[daemon]\nleader_lease = "3s"\n', 1))
    config.write_text(
        config.read_text().replace("[daemon]\n", '[daemon]\nleader_lease = "3s"\n', 1)
    )
    return other


def _scheduler_line(config: Path) -> str:
    result = run_broker("health", "--json", config=config)
    checks = json.loads(result.stdout)["checks"]
    return next(str(c["detail"]) for c in checks if c["name"] == "scheduler")


def _wait_for(predicate: object, seconds: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if predicate():  # type: ignore[operator]
            return time.monotonic() - start
        time.sleep(0.2)
    raise AssertionError(f"not within {seconds} s")


def test_two_daemons_one_store_the_survivor_takes_over_after_kill_9(
    broker_config: Path,
) -> None:
    second = _second_config(broker_config)
    with serving(broker_config) as first:
        _wait_for(lambda: "this broker" in _scheduler_line(broker_config), 10)
        with serving(second):
            assert "standby" in _scheduler_line(second)
            os.kill(first.pid, signal.SIGKILL)
            first.wait()
            took = _wait_for(lambda: "this broker" in _scheduler_line(second), 10)
            assert took <= 3 * 4 / 3 + 1.5  # one and a third leases, plus polling
            events = run_broker(
                "audit", "tail", "--action", "scheduler.leader", "--json", config=second
            )
            assert events.returncode == 0, events.stderr
            terms = [e["details"]["term"] for e in json.loads(events.stdout)]
            assert terms == [2]
    after = App(load_settings(broker_config))
    try:
        assert after.audit().verify().ok
    finally:
        after.close()
