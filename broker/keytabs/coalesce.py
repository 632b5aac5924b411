"""One node program run for the keytabs of several accounts at once (docs/keytabs.md,
"Many accounts at once").

Rotation workers each carry one account through the state machine, and each step asks
every node of that account for one thing: install this keytab, verify these tickets. On a
busy broker host most of a node's cost is starting the node program (a channel, a shell,
Python), not the work. So calls are grouped per node and command, the way a database
groups commits: a call made while another for the same node and command is running waits
for it, then goes with every other call that queued meanwhile in the next run (at most
`MAX_BATCH` keytabs and `MAX_BATCH_BYTES` of input). An uncontended call runs at once; nothing waits
on a timer.

Grouping changes how calls travel, never what is recorded: each caller gets its own
keytab's answer and its worker then writes its own journal transition, so every account's
state machine, write-ahead rows and crash safety are exactly those of one call per
account. The node program writes each keytab of a run atomically and independently
(pam/broker_keytab.py), so a crash mid-run leaves each file either as it was or as
written, as with separate runs; and a run that fails as a whole (node unreachable, bad
reply) is that failure for every caller in it. Two calls for the same keytab never share
a run: distribute.py holds the keytab's lock while its call waits.
"""

from __future__ import annotations

import json
import threading
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker.fleet.ssh import NodeTarget

MAX_BATCH = 16  # keytabs in one node program run: far below its 64 keytabs
# A run's items, JSON-encoded, stay below this, under the node program's 1 MiB of input
# (nodeprog.MAX_PAYLOAD) with room for the envelope; a larger item goes alone (and fails
# alone, as a result of its caller's, when it is too large even so).
MAX_BATCH_BYTES = 900 * 1024

# The runs of one node and command: the items, then one answer per item, in order.
Send = Callable[[NodeTarget, Sequence[dict[str, Any]]], Sequence[Any]]


@dataclass
class _Call:
    """One caller's item (it may hold base64 keys: never in a repr) and its answer."""

    item: dict[str, Any] = field(repr=False)
    size: int = 0  # the item's JSON bytes
    woken: threading.Event = field(default_factory=threading.Event)
    answered: bool = False
    answer: Any = field(default=None, repr=False)
    error: BaseException | None = None


@dataclass
class _Lane:
    """One node and command: the calls waiting, and whether a run is going."""

    queue: list[_Call] = field(default_factory=list)
    running: bool = False


class Coalescer:
    """Thread-safe; one per SSH pool (`for_pool`), shared by every rotation worker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lanes: dict[tuple[str, str], _Lane] = {}

    def call(self, target: NodeTarget, command: str, item: dict[str, Any], send: Send) -> Any:
        """`item`'s answer from a run of `send` that may carry other callers' items too."""
        mine = _Call(item, len(json.dumps(item, separators=(",", ":"))))
        with self._lock:
            lane = self._lanes.setdefault((target.name, command), _Lane())
            lane.queue.append(mine)
            lead = not lane.running
            lane.running = True
        if not lead:
            mine.woken.wait()  # answered, or handed the next run (at the queue's head)
        if not mine.answered:
            self._run(target, lane, send)
        if mine.error is not None:
            raise mine.error
        return mine.answer

    def _run(self, target: NodeTarget, lane: _Lane, send: Send) -> None:
        """Send the queue's head (this caller first), answer each, hand the rest on."""
        with self._lock:
            batch = _take(lane.queue)
        try:
            answers = list(send(target, [c.item for c in batch]))
            if len(answers) != len(batch):
                raise RuntimeError(f"{len(answers)} answers for {len(batch)} calls")
            for one, answer in zip(batch, answers, strict=True):
                one.answer = answer
        except BaseException as exc:  # noqa: BLE001  (each caller in the run re-raises it)
            for one in batch:
                one.error = exc
        finally:
            for one in batch:
                one.answered = True
                one.woken.set()
            with self._lock:
                if lane.queue:
                    lane.queue[0].woken.set()  # not answered: it runs the next batch
                else:
                    lane.running = False


def _take(queue: list[_Call]) -> list[_Call]:
    """The queue's head up to MAX_BATCH calls and MAX_BATCH_BYTES (the first call always)."""
    count, total = 0, 0
    for one in queue[:MAX_BATCH]:
        if count and total + one.size > MAX_BATCH_BYTES:
            break
        count, total = count + 1, total + one.size
    batch = queue[:count]
    del queue[:count]
    return batch


_BY_POOL: weakref.WeakKeyDictionary[Any, Coalescer] = weakref.WeakKeyDictionary()
_BY_POOL_LOCK = threading.Lock()


def for_pool(pool: object) -> Coalescer:
    """The coalescer of this pool's connections (the daemon's workers share one pool)."""
    with _BY_POOL_LOCK:
        found = _BY_POOL.get(pool)
        if found is None:
            found = _BY_POOL[pool] = Coalescer()
        return found
