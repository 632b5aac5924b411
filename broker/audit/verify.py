"""Walk the chain and the signed checkpoints; name the first bad seq and why. No I/O.

Inside the table, a broken link or hash tells edited, deleted, inserted and
reordered rows apart. The checkpoints, sealed outside the table, catch what
the table alone cannot: deleted newest rows (truncated tail) and a chain
rewritten with recomputed hashes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from broker.audit.chain import GENESIS_HASH, event_hash

Row = tuple[int, str, str, str, str, str, str, str, str]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A signed statement that the chain head was `hash` at `seq` at `time`."""

    seq: int
    hash: str
    time: str
    key_id: str
    source: str
    broker: str = ""  # the broker that sealed it; "" in version 1 lines (before issue 24)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # edited, deleted, inserted, reordered, truncated, rewritten
    seq: int
    message: str


@dataclass(slots=True)
class VerifyReport:
    count: int = 0
    head_seq: int = 0
    head_hash: str = GENESIS_HASH
    sealed_seq: int = 0
    checkpoints: int = 0
    problem: Finding | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.problem is None


def verify_chain(
    rows: Iterable[Row],
    checkpoints: Sequence[Checkpoint],
    seq_of_hash: Callable[[str], int | None],
) -> VerifyReport:
    """Check `rows` (ascending seq) against each other and against `checkpoints`.

    `seq_of_hash` looks a stored hash up, so that a broken link can be told
    apart as a reorder (it points forward) or an insertion (it points back).
    """
    report = VerifyReport(checkpoints=len(checkpoints))
    by_seq = sorted(checkpoints, key=lambda c: c.seq)
    conflict = _conflicting(by_seq)
    if conflict is not None:
        report.problem = conflict
        return report
    seals = _Seals(by_seq)
    prev_seq, prev_hash = 0, GENESIS_HASH
    count = 0
    for seq, ts, actor, action, target, outcome, details, stored_prev, stored_hash in rows:
        problem = None
        if seq != prev_seq + 1 or stored_prev != prev_hash:
            problem = _link_problem(seq, prev_seq, prev_hash, stored_prev, seq_of_hash)
        if (
            problem is None
            and event_hash(seq, ts, actor, action, target, outcome, details, stored_prev)
            != stored_hash
        ):
            problem = Finding(
                "edited", seq, f"event {seq} does not match its hash: its content was edited"
            )
        if problem is None and stored_prev != prev_hash:
            problem = _broken_link(seq, prev_seq)
        if problem is None and seals.next_seq <= seq:
            problem = seals.passed(seq, stored_hash)
        if problem is not None:
            report.count = count
            report.problem = problem
            return report
        count += 1
        prev_seq, prev_hash = seq, stored_hash
    report.count = count
    report.head_seq, report.head_hash = prev_seq, prev_hash
    return _against_newest(report, by_seq)


class _Seals:
    """The signed checkpoints in seq order, consumed as the walk passes them."""

    def __init__(self, by_seq: Sequence[Checkpoint]) -> None:
        self._pending = iter(by_seq)
        self._next = next(self._pending, None)
        self.next_seq = self._next.seq if self._next is not None else -1
        self._last_matched = 0

    def passed(self, seq: int, stored_hash: str) -> Finding | None:
        """Check every checkpoint at or before `seq`; a mismatch at `seq` means every event
        since the last matching checkpoint was rewritten."""
        while self._next is not None and self.next_seq <= seq:
            if self.next_seq == seq and self._next.hash != stored_hash:
                start = self._last_matched + 1
                return Finding(
                    "rewritten",
                    start,
                    f"events {start}..{seq} do not match the signed checkpoint at seq {seq} "
                    f"({self._next.source}): the chain was rewritten",
                )
            if self.next_seq == seq:
                self._last_matched = seq
            self._next = next(self._pending, None)
            self.next_seq = self._next.seq if self._next is not None else -1
        return None


def _against_newest(report: VerifyReport, by_seq: Sequence[Checkpoint]) -> VerifyReport:
    """A chain that ends before the newest checkpoint was truncated; events after it are
    not sealed yet (a warning, not a problem)."""
    if by_seq:
        newest = by_seq[-1]
        if newest.seq > report.head_seq:
            start = report.head_seq + 1
            report.problem = Finding(
                "truncated",
                start,
                f"events {start}..{newest.seq} are missing: the signed checkpoint at seq "
                f"{newest.seq} ({newest.source}) is newer than the last stored event",
            )
            return report
        report.sealed_seq = newest.seq
    if report.head_seq > report.sealed_seq:
        report.warnings.append(
            f"events {report.sealed_seq + 1}..{report.head_seq} are not sealed by a checkpoint yet "
            "(run `broker audit seal`)"
        )
    return report


def _link_problem(
    seq: int,
    prev_seq: int,
    prev_hash: str,
    stored_prev: str,
    seq_of_hash: Callable[[str], int | None],
) -> Finding | None:
    """Structural damage: a seq gap (deleted rows) or a link to another row (reordered, inserted)."""
    if seq != prev_seq + 1:
        first = prev_seq + 1
        return Finding(
            "deleted", first, f"events {first}..{seq - 1} are missing: they were deleted"
        )
    if stored_prev == prev_hash:
        return None
    target = seq_of_hash(stored_prev)
    if target is not None and target > seq:
        return Finding(
            "reordered",
            seq,
            f"event {seq} links to event {target}, which comes after it: rows were reordered",
        )
    if target is not None and target < prev_seq:
        first = target + 1
        return Finding(
            "inserted",
            first,
            f"events {first}..{prev_seq} were inserted: event {seq} follows event {target} directly",
        )
    return None


def _broken_link(seq: int, prev_seq: int) -> Finding:
    """The row is self-consistent but links to a version of its predecessor that is gone."""
    return Finding(
        "edited",
        prev_seq,
        f"event {prev_seq} was edited and re-hashed: event {seq} links to a different version of it",
    )


def _conflicting(checkpoints: Sequence[Checkpoint]) -> Finding | None:
    """Two validly signed checkpoints that disagree mean the chain was forked or rewritten."""
    seen: dict[int, Checkpoint] = {}
    for cp in checkpoints:
        other = seen.setdefault(cp.seq, cp)
        if other.hash != cp.hash:
            return Finding(
                "rewritten",
                cp.seq,
                f"checkpoints disagree about seq {cp.seq} ({other.source} vs {cp.source})",
            )
    return None
