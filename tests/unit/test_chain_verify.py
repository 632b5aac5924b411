"""The pure chain: documented hash formula, and each kind of tampering told apart."""

from __future__ import annotations

import hashlib
import json

import pytest

from broker.audit.chain import GENESIS_HASH, AuditEvent, make_event
from broker.audit.verify import Checkpoint, Row, verify_chain


def build(n: int) -> list[AuditEvent]:
    events: list[AuditEvent] = []
    prev = GENESIS_HASH
    for seq in range(1, n + 1):
        event = make_event(
            seq=seq,
            ts=f"2026-11-22T10:00:{seq:02d}.000000Z",
            actor="unix:root",
            action="test.step",
            target=f"t{seq}",
            outcome="ok",
            details={"n": seq, "note": 'ünïcode "quoted"\n'},
            prev_hash=prev,
        )
        events.append(event)
        prev = event.hash
    return events


def rows(events: list[AuditEvent]) -> list[Row]:
    return [
        (e.seq, e.ts, e.actor, e.action, e.target, e.outcome, e.details, e.prev_hash, e.hash)
        for e in events
    ]


def cps(events: list[AuditEvent], *seqs: int) -> list[Checkpoint]:
    by_seq = {e.seq: e for e in events}
    return [Checkpoint(s, by_seq[s].hash, "t", "k", f"log:{s}") for s in seqs]


def run(table: list[Row], checkpoints: list[Checkpoint] | None = None):  # type: ignore[no-untyped-def]
    index = {r[8]: r[0] for r in table}
    return verify_chain(table, checkpoints or [], index.get)


def test_hash_is_the_documented_formula() -> None:
    event = build(1)[0]
    body = json.dumps(
        [1, event.ts, "unix:root", "test.step", "t1", "ok", event.details, GENESIS_HASH],
        separators=(",", ":"),
    )
    assert event.hash == hashlib.sha256(body.encode()).hexdigest()
    assert json.loads(event.details) == {"n": 1, "note": 'ünïcode "quoted"\n'}
    assert event.details.isascii()


@pytest.mark.parametrize("field", ["actor", "target"])
@pytest.mark.parametrize("value", ["", "a\nb", "x\x1b[31m", "y" * 2000])
def test_malformed_fields_never_enter_the_chain(field: str, value: str) -> None:
    kwargs = {"actor": "unix:root", "target": "t"} | {field: value}
    with pytest.raises(ValueError, match=field):
        make_event(
            seq=1, ts="t", action="a.b", outcome="ok", details={}, prev_hash=GENESIS_HASH, **kwargs
        )


def test_bad_action_and_outcome_are_refused() -> None:
    with pytest.raises(ValueError, match="action"):
        make_event(
            seq=1,
            ts="t",
            actor="a",
            action="Grant Issue",
            target="t",
            outcome="ok",
            details={},
            prev_hash=GENESIS_HASH,
        )
    with pytest.raises(ValueError, match="outcome"):
        make_event(
            seq=1,
            ts="t",
            actor="a",
            action="a.b",
            target="t",
            outcome="maybe",
            details={},
            prev_hash=GENESIS_HASH,
        )


def test_intact_chain_with_checkpoints_is_ok() -> None:
    events = build(10)
    report = run(rows(events), cps(events, 3, 10))
    assert report.ok and report.count == 10 and report.sealed_seq == 10 and not report.warnings


def test_events_after_the_last_checkpoint_are_a_warning_not_a_failure() -> None:
    events = build(10)
    report = run(rows(events), cps(events, 7))
    assert report.ok and report.warnings == [
        "events 8..10 are not sealed by a checkpoint yet (run `broker audit seal`)"
    ]


def test_edited_content_names_the_edited_seq() -> None:
    table = rows(build(10))
    table[4] = (*table[4][:4], "edited-target", *table[4][5:])
    report = run(table)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("edited", 5)


def test_edited_and_rehashed_event_is_still_caught_by_its_successor() -> None:
    events = build(10)
    table = rows(events)
    forged = make_event(
        seq=5,
        ts=events[4].ts,
        actor="unix:root",
        action="test.step",
        target="forged",
        outcome="ok",
        details={},
        prev_hash=events[3].hash,
    )
    table[4] = rows([forged])[0]
    report = run(table)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("edited", 5)


def test_deleted_middle_rows_are_named() -> None:
    table = rows(build(10))
    del table[3:5]
    report = run(table)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("deleted", 4)
    assert "4..5" in report.problem.message


def test_deleted_first_row_is_named() -> None:
    report = run(rows(build(3))[1:])
    assert report.problem is not None and (report.problem.kind, report.problem.seq) == (
        "deleted",
        1,
    )


def test_deleted_newest_rows_are_caught_by_the_checkpoint() -> None:
    events = build(10)
    table = rows(events)[:7]
    assert run(table).ok  # the table alone cannot tell
    report = run(table, cps(events, 5, 10))
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("truncated", 8)


def test_swapped_rows_are_reported_as_reordered() -> None:
    events = build(10)
    swapped = rows(events)
    a, b = swapped[4], swapped[5]
    swapped[4] = (5, *b[1:])
    swapped[5] = (6, *a[1:])
    report = run(swapped)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("reordered", 5)


def test_inserted_rows_with_forged_hashes_are_reported_as_inserted() -> None:
    events = build(6)
    forged = make_event(
        seq=4,
        ts="t",
        actor="evil",
        action="test.step",
        target="x",
        outcome="ok",
        details={},
        prev_hash=events[2].hash,
    )
    shifted = [(r[0] + 1, *r[1:]) for r in rows(events[3:])]
    table = [*rows(events[:3]), *rows([forged]), *shifted]
    report = run(table)
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("inserted", 4)


def test_a_rewritten_chain_is_caught_by_the_checkpoints() -> None:
    events = build(10)
    rewritten: list[AuditEvent] = list(events[:6])
    prev = events[5].hash
    for seq in range(7, 11):
        event = make_event(
            seq=seq,
            ts="t",
            actor="evil",
            action="test.step",
            target="x",
            outcome="ok",
            details={},
            prev_hash=prev,
        )
        rewritten.append(event)
        prev = event.hash
    assert run(rows(rewritten)).ok  # internally consistent
    report = run(rows(rewritten), cps(events, 3, 6, 8, 10))
    assert report.problem is not None
    assert (report.problem.kind, report.problem.seq) == ("rewritten", 7)


def test_checkpoints_that_disagree_are_a_failure() -> None:
    events = build(4)
    bad = [*cps(events, 4), Checkpoint(4, "f" * 64, "t", "k", "copy:1")]
    report = run(rows(events), bad)
    assert report.problem is not None and report.problem.kind == "rewritten"


def test_empty_chain_is_ok() -> None:
    report = run([])
    assert report.ok and report.count == 0
