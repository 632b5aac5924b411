"""The detector's fast way of reading audit events judges them as the careful way did.

Events are read by `alerts.audit_between` (timestamps, details parsed by json's scanner)
and judged by the rules; these tests feed it events whose text is not what the writer
writes (other time forms, details with whitespace, garbage or no object) and check that
the rules still decide as before: the same times, the same details, the same errors.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from broker.core.timeutil import from_text, to_text
from broker.detect import alerts
from broker.detect.engine import Detector, new_memory, tty_kind
from broker.detect.eventdata import LazyDetails, details_of
from broker.policy.detection_rules import DEFAULT

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
WRONG = json.dumps({"purpose": "elevate", "reason": "wrong code"})


@pytest.fixture
def conn() -> Iterator[sqlite3.Connection]:
    db = sqlite3.connect(":memory:")
    db.execute(
        "CREATE TABLE audit_events (seq INTEGER PRIMARY KEY, ts TEXT, actor TEXT, action TEXT,"
        " target TEXT, outcome TEXT, details TEXT)"
    )
    yield db
    db.close()


def put(db: sqlite3.Connection, rows: list[tuple[str, str, str, str, str, str]]) -> None:
    db.executemany(
        "INSERT INTO audit_events (ts, actor, action, target, outcome, details)"
        " VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )


def judge(db: sqlite3.Connection, detector: Detector) -> list[tuple[int, str]]:
    actions, refused = detector.actions()
    return [
        (event.seq, finding.rule)
        for event in alerts.audit_between(db, 0, 10**9, actions, refused)
        for finding in detector.audit(event)
    ]


@pytest.mark.parametrize(
    "raw",
    [
        '{"user":"alice","nodes":"gpu[01-02]"}',
        ' {"user": "alice"}',  # leading whitespace
        '{"user": "alice"}\n',  # trailing whitespace
        '{"user": "a", "user": "b"}',  # the last of a repeated key, as json.loads has it
        '{"n": NaN, "x": [1, {"y": null}]}',
        '{"s": "\\u00e9\\ud83d\\ude00"}',
        "{}",
    ],
)
def test_details_that_are_one_json_object_read_as_json_loads_reads_them(raw: str) -> None:
    got = details_of(raw)
    want = json.loads(raw)
    assert json.dumps(dict(got), sort_keys=True) == json.dumps(want, sort_keys=True)
    assert got.get("user") == want.get("user")


@pytest.mark.parametrize("raw", ["", "[1, 2]", '"text"', "null", "3"])
def test_details_that_are_no_object_read_as_empty(raw: str) -> None:
    got = details_of(raw)
    assert dict(got) == {} and got.get("user") is None


@pytest.mark.parametrize(
    "raw", ['{"user": "alice"} trailing', '{"user": ', "not json", '\ufeff{"user": "x"}']
)
def test_broken_details_fail_only_when_a_rule_looks(raw: str) -> None:
    got = details_of(raw)  # no error yet: most events are never looked into
    assert isinstance(got, LazyDetails)
    with pytest.raises(ValueError):
        got.get("user")


def test_details_stored_as_bytes_are_read_like_text() -> None:
    assert details_of(b'{"user": "alice"}').get("user") == "alice"  # type: ignore[arg-type]


def test_times_in_any_iso_form_give_the_same_moment(conn: sqlite3.Connection) -> None:
    forms = [
        to_text(T0),  # the writer's: microseconds and Z
        "2026-11-23T10:00:01Z",  # whole seconds
        "2026-11-23T11:00:02.5+01:00",  # an offset
        "2026-11-23T10:00:03.000001+00:00",
        "2026-11-23T05:00:04-05:00",
    ]
    put(conn, [(ts, "unix:bob", "mfa.verify", "bob", "refused", WRONG) for ts in forms])
    events = list(alerts.audit_between(conn, 0, 100, ("mfa.verify",)))
    assert [e.at for e in events] == [from_text(ts).timestamp() for ts in forms]
    assert [round(e.at - T0.timestamp(), 6) for e in events] == [0.0, 1.0, 2.5, 3.000001, 4.0]
    # Five wrong codes within the window, whatever form their times take: one alert.
    assert judge(conn, Detector(DEFAULT, new_memory())) == [(5, "mfa-failures")]


def test_a_broken_event_no_rule_reads_into_is_passed(conn: sqlite3.Connection) -> None:
    at = to_text(T0)
    put(
        conn,
        [(at, "unix:ir", "node.quarantine", "gpu07", "ok", "not json")]
        + [(at, "unix:bob", "mfa.verify", "bob", "refused", WRONG)] * 5,
    )
    detector = Detector(DEFAULT, new_memory())
    assert judge(conn, detector) == [(6, "mfa-failures")]
    assert "gpu07" in detector.quarantined
    # One a rule must read stops the pass, as it always did (fail closed, not skipped).
    put(conn, [(at, "node:gpu01", "session.open", "g1", "ok", '{"user": ')])
    actions, refused = detector.actions()
    last = list(alerts.audit_between(conn, 6, 7, actions, refused))
    with pytest.raises(ValueError):
        detector.audit(last[0])


def test_many_nodes_counts_distinct_nodes_not_elevations(conn: sqlite3.Connection) -> None:
    """The rule skips counting below its threshold of elevations; the same nodes again and
    again are many elevations but few nodes, and still no alert."""
    rows = [
        (to_text(T0 + timedelta(seconds=i)), "unix:dave", "grant.issue", f"g{i}", "ok",
         json.dumps({"user": "dave", "nodes": "gpu[01-04]"}))
        for i in range(10)
    ]  # fmt: skip
    put(conn, rows)
    assert judge(conn, Detector(DEFAULT, new_memory())) == []  # 40 elevations, 4 nodes
    put(conn, [(to_text(T0 + timedelta(minutes=1)), "unix:dave", "grant.issue", "gz", "ok",
                json.dumps({"user": "dave", "nodes": "gpu[05-16]"}))])  # fmt: skip
    assert judge(conn, Detector(DEFAULT, new_memory())) == [(11, "many-nodes")]


def test_terminal_kinds_are_the_same_from_the_cache() -> None:
    assert [tty_kind(t) for t in ("pts/7", "pts/12", "-", "", "tty1", "pts/7")] == [
        "pts/N",
        "pts/N",
        "none",
        "none",
        "ttyN",
        "pts/N",
    ]
