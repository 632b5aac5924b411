"""The scheduler lease: one broker runs the scheduler's duties, another takes over when it
dies, a clean stop hands over at once, and every change of holder is in the audit chain."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.app import App
from broker.config.loader import load_settings
from broker.daemon.leader import Leadership, Lease, next_lease
from broker.daemon.liveness import Heartbeats
from broker.daemon.scheduler import Scheduler
from tests.helpers import daemon_socket_of, run_broker, serving

T0 = datetime(2026, 12, 7, 12, 0, 0, tzinfo=UTC)
TTL = timedelta(seconds=6)


def test_next_lease_renews_waits_and_takes_over_with_a_new_term() -> None:
    first = next_lease(None, "a", T0, TTL, 0.0)
    assert first == Lease("a", 1, T0, T0 + TTL)
    later = T0 + timedelta(seconds=2)
    assert next_lease(first, "a", later, TTL, 0.0) == Lease("a", 1, later, later + TTL)
    assert next_lease(first, "b", later, TTL, 5.9) is None  # seen unchanged < one lease
    assert next_lease(first, "b", later, TTL, 6.0) == Lease("b", 2, later, later + TTL)
    released = Lease("a", 1, T0, T0)
    assert next_lease(released, "b", later, TTL, 0.0) == Lease("b", 2, later, later + TTL)


def test_wall_clocks_decide_nothing() -> None:
    """A lease written by a broker whose clock ran hours ahead is taken over after one lease
    of observation, and one whose expiry has passed by the wall clock is not taken early."""
    future = Lease("a", 3, T0 + timedelta(hours=3), T0 + timedelta(hours=3) + TTL)
    assert next_lease(future, "b", T0, TTL, 6.0) == Lease("b", 4, T0, T0 + TTL)
    past = Lease("a", 3, T0 - timedelta(hours=1), T0 - timedelta(hours=1) + TTL)
    assert next_lease(past, "b", T0, TTL, 1.0) is None


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
    ttl = timedelta(seconds=1.5)
    a, b = Leadership(ttl, me="h1:1:aa"), Leadership(ttl, me="h2:2:bb")
    assert a.attempt(store) and a.is_leader()
    assert not b.attempt(store) and not b.is_leader()
    assert "h1:1:aa runs the scheduler, term 1" in b.describe()[1]
    time.sleep(0.5)
    assert a.attempt(store)  # renewed: b's observation starts again
    assert not b.attempt(store)
    # a stops renewing (killed). a stops leading by its own clock before b may take over.
    time.sleep(1.0)
    assert not a.is_leader()
    assert not b.attempt(store)  # 1.0 s of the 1.5 s seen unchanged
    time.sleep(0.6)
    assert b.attempt(store) and b.is_leader() and b.took_over and b.term == 2
    # a comes back (a paused process): it is refused, and does not act as leader.
    assert not a.attempt(store) and not a.is_leader()
    assert _leader_events(app) == [("h2:2:bb", {"term": 2, "previous": "h1:1:aa"})]
    assert app.audit().verify().ok


def test_a_clean_stop_hands_over_at_once(app: App) -> None:
    store = app.store()
    a, b = Leadership(TTL, me="h1:1:aa"), Leadership(TTL, me="h2:2:bb")
    assert a.attempt(store)
    a.release(store)
    assert not a.is_leader()
    assert b.attempt(store) and b.term == 2


def test_a_standby_runs_no_duty_and_starts_at_once_on_takeover(broker_config: Path) -> None:
    """The gate every duty thread passes before a pass: closed on a standby (however long
    it waits), open within a second when this broker takes the lease over."""
    settings = load_settings(broker_config)
    leadership = Leadership(TTL, me="h2:2:bb")
    scheduler = Scheduler(settings, beats=Heartbeats(), leadership=leadership)
    turns: list[float] = []
    started = time.monotonic()

    def duty() -> None:
        while scheduler._turn(0.2):
            turns.append(time.monotonic() - started)

    thread = threading.Thread(target=duty)
    thread.start()
    time.sleep(1.5)
    assert turns == []  # a standby: no pass, though its interval passed many times
    leadership.took_over = True
    with leadership._lock:
        leadership._until = time.monotonic() + 60
    time.sleep(1.5)
    scheduler._stop.set()
    thread.join()
    assert turns and turns[0] < 1.5 + 1.2  # went at once on takeover, then at its pace
    assert len(turns) >= 3


def test_health_fails_when_nobody_renews_and_this_broker_cannot_take_over() -> None:
    leadership = Leadership(timedelta(seconds=3), me="h2:2:bb")
    stuck = Lease("h1:1:aa", 5, T0, T0 + TTL)
    leadership._follow(stuck)
    leadership._seen = (stuck, time.monotonic() - 7)
    ok, detail = leadership.describe()
    assert not ok and "nobody runs the scheduler" in detail
    leadership._seen = (stuck, time.monotonic() - 1)
    assert leadership.describe()[0]


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
            assert took <= 3 * 4 / 3 + 3  # one and a third leases, polling, a busy machine
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


def test_every_duty_thread_passes_the_leadership_gate() -> None:
    """Each duty loop waits through `_turn` (a loop on `_stop.wait` would run on standbys)."""
    import inspect

    for name in ("_run", "_index", "_detect", "_respond", "_notify", "_forward"):
        source = inspect.getsource(getattr(Scheduler, name))
        assert "while self._turn(" in source, name
        assert "_stop.wait" not in source, name
