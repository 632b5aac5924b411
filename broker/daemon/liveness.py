"""Heartbeats of the daemon's background threads: is each one alive, and when did it last
finish a pass without an exception?

Before this, a scheduler thread logged an exception and carried on, or died, and nothing
outside the log showed it: grants stopped expiring while `/v1/health` said ok. Each thread
now registers here and marks every successful pass; `/v1/health`, the metrics and the
systemd watchdog read the same record, so all three agree on what "stuck" means.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

# A thread is stale when it has not succeeded for this many of its intervals, and never
# sooner than its floor: one slow pass (a node timing out over SSH) is not an outage.
STALE_INTERVALS = 5


@dataclass(frozen=True)
class ThreadState:
    name: str
    alive: bool
    interval_s: float
    stale_after_s: float
    last_success: float | None  # wall-clock seconds (time.time) of the last good pass
    since_success_s: float  # since the last good pass, or since start when there was none

    @property
    def ok(self) -> bool:
        return self.alive and self.since_success_s <= self.stale_after_s

    def problem(self) -> str | None:
        """One line saying what is wrong with this thread, None when it is fine."""
        if not self.alive:
            return f"thread {self.name} is not running"
        if self.since_success_s > self.stale_after_s:
            what = "since start" if self.last_success is None else "in"
            return (
                f"thread {self.name} has not completed a pass {what} {self.since_success_s:.0f}s"
                f" (limit {self.stale_after_s:.0f}s)"
            )
        return None


@dataclass
class _Beat:
    thread: threading.Thread
    interval_s: float
    floor_s: float
    started: float  # monotonic
    success_mono: float | None = None
    success_wall: float | None = None


class Heartbeats:
    """The registered threads of one daemon; every method is safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._beats: dict[str, _Beat] = {}

    def register(self, thread: threading.Thread, interval_s: float, floor_s: float) -> None:
        with self._lock:
            self._beats[thread.name] = _Beat(thread, interval_s, floor_s, time.monotonic())

    def clear(self) -> None:
        with self._lock:
            self._beats.clear()

    def success(self) -> None:
        """Called by a registered thread after a pass that raised nothing."""
        name = threading.current_thread().name
        with self._lock:
            beat = self._beats.get(name)
            if beat is not None:
                beat.success_mono, beat.success_wall = time.monotonic(), time.time()

    def states(self) -> list[ThreadState]:
        now = time.monotonic()
        with self._lock:
            beats = list(self._beats.items())
        found = []
        for name, beat in beats:
            since = now - (beat.success_mono if beat.success_mono is not None else beat.started)
            found.append(
                ThreadState(
                    name=name,
                    alive=beat.thread.is_alive(),
                    interval_s=beat.interval_s,
                    stale_after_s=max(STALE_INTERVALS * beat.interval_s, beat.floor_s),
                    last_success=beat.success_wall,
                    since_success_s=since,
                )
            )
        return sorted(found, key=lambda s: s.name)


# The running daemon's threads (one daemon per process); the scheduler fills it at start
# and clears it at stop, the health check and the watchdog read it.
HEARTBEATS = Heartbeats()
