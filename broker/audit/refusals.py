"""Refusals as audit events, rate-limited per caller (AU-2, AC-6(9)).

A refused elevation, request or approval changes nothing, so no transaction of its own
would record it; probing which nodes one may reach would be invisible. Each refusal is
written in its own transaction (`grant.refused`, `request.refused`, `approve.refused`,
outcome `refused`, the one-line reason and the caller). A loop must not flood the
chain: a caller gets at most LIMIT refusal events per WINDOW; the excess is counted and
written as one summary event per action (details `suppressed`) when the caller's window
has closed, at the next refusal of anyone or the scheduler's next tick.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.audit import writer
from broker.core.timeutil import to_text
from broker.store.db import Store

log = logging.getLogger("broker.audit")

LIMIT = 10  # refusal events per caller per window, written one by one
WINDOW = timedelta(minutes=1)
# Callers tracked at once (authenticated callers with a refusal in the last window); past
# this, new callers share one window (OVERFLOW) with the same limit, so many principals
# (machine accounts, a trusted realm) cannot write without bound either.
MAX_CALLERS = 10_000
OVERFLOW = "daemon:refusals-of-many-callers"
REFUSAL_ACTIONS = ("grant.refused", "request.refused", "approve.refused")


@dataclass
class _Window:
    start: datetime
    written: int = 0
    suppressed: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Suppressed:
    """Refusals of one caller and action that were counted, not written, in one window."""

    actor: str
    action: str
    count: int
    start: datetime
    end: datetime

    def event(self) -> writer.EventInput:
        return writer.EventInput(
            self.actor,
            self.action,
            "-",
            outcome="refused",
            details={
                "reason": f"{self.count} more refusals within {int(WINDOW.total_seconds())} s"
                " were not written one by one (rate limit)",
                "suppressed": self.count,
                "from": to_text(self.start),
                "until": to_text(self.end),
            },
        )


class RefusalLimiter:
    """Per-caller fixed windows, shared by every thread of the process (one lock; state is
    one small record per caller with a refusal in the last window)."""

    def __init__(self, limit: int = LIMIT, window: timedelta = WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def admit(self, actor: str, action: str, now: datetime) -> tuple[bool, list[Suppressed]]:
        """Whether this refusal is written, and the summaries of windows closed by now."""
        with self._lock:
            due = self._closed(now)
            current = self._windows.get(actor)
            if current is None and len(self._windows) >= MAX_CALLERS:
                actor = OVERFLOW  # one shared window for every caller past the table's size
                current = self._windows.get(actor)
            if current is None:
                current = self._windows[actor] = _Window(now)
            if current.written < self.limit:
                current.written += 1
                return True, due
            current.suppressed[action] = current.suppressed.get(action, 0) + 1
            return False, due

    def due(self, now: datetime, *, everything: bool = False) -> list[Suppressed]:
        """Summaries of the windows closed by now (all of them with `everything`: shutdown)."""
        with self._lock:
            return self._closed(now, everything=everything)

    def _closed(self, now: datetime, *, everything: bool = False) -> list[Suppressed]:
        out: list[Suppressed] = []
        for actor in [
            a for a, w in self._windows.items() if everything or now - w.start >= self.window
        ]:
            closed = self._windows.pop(actor)
            end = closed.start + self.window
            out.extend(
                Suppressed(actor, action, count, closed.start, end)
                for action, count in sorted(closed.suppressed.items())
            )
        return out

    def tracked(self) -> int:
        with self._lock:
            return len(self._windows)


_SHARED: dict[str, RefusalLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(key: str) -> RefusalLimiter:
    """The process's limiter for one store (every worker thread of the daemon shares it)."""
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = RefusalLimiter()
        return found


class RefusalRecorder:
    """Writes refusals of one store, each in its own transaction, through the limiter."""

    def __init__(self, store: Store, limiter: RefusalLimiter) -> None:
        self._store = store
        self._limiter = limiter

    def record(
        self,
        *,
        actor: str,
        action: str,
        target: str,
        reason: str,
        now: datetime,
        details: Mapping[str, Any] | None = None,
    ) -> bool:
        """Record one refusal (or count it); True when its own event was written.

        Never raises: the caller is refusing anyway, and a store too busy to take the
        event must not turn the refusal's one line into another error (it is logged)."""
        admitted, due = self._limiter.admit(actor, action, now)
        events = [s.event() for s in due]
        if admitted:
            events.append(
                writer.EventInput(
                    actor,
                    action,
                    target,
                    outcome="refused",
                    details={"reason": reason, **(details or {})},
                )
            )
        return self._write(events, now) and admitted

    def flush(self, now: datetime, *, everything: bool = False) -> int:
        """Write the summaries of closed windows (all windows with `everything`)."""
        events = [s.event() for s in self._limiter.due(now, everything=everything)]
        return len(events) if self._write(events, now) else 0

    def _write(self, events: list[writer.EventInput], now: datetime) -> bool:
        if not events:
            return True
        try:
            with self._store.transaction() as conn:
                writer.record_many(conn, events, now)
        except Exception:
            log.exception("refusal events not written: %s", [e.action for e in events])
            return False
        return True
