"""Storing the hook's spooled events (broker/sessions/collect.py): session open/close and
refused sudo attempts, each with its audit event, each stored once."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from broker.app import App
from broker.sessions.collect import parse_event, store_events


def raw(kind: str, event_id: str, grant_id: str = "g" + "1" * 16) -> dict[str, Any]:
    """An event as the hook writes it (pam/broker_node/spool.py spool_event)."""
    return {
        "event_id": event_id,
        "kind": kind,
        "grant_id": grant_id,
        "user": "alice",
        "runas": "root",
        "service": "sudo",
        "tty": "pts/4",
        "pid": 4242,
        "at": "2026-11-23T10:00:00Z",
    }


def test_a_refused_sudo_is_stored_and_audited_as_refused(broker_app: App) -> None:
    store = broker_app.ready_store()
    now = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
    deny = parse_event("gpu01", raw("deny", "1-4242-0000000a", grant_id="-"))
    opened = parse_event("gpu01", raw("open", "2-4243-0000000b"))
    assert deny is not None and opened is not None
    assert (deny.kind, deny.grant_id) == ("deny", None)
    assert store_events(store, "gpu01", [deny, opened], [], now) == 2
    assert store_events(store, "gpu01", [deny], [], now) == 0, "a second delivery is a no-op"
    rows = store.conn.execute(
        "SELECT kind, grant_id, user FROM session_events ORDER BY event_id"
    ).fetchall()
    assert [tuple(r) for r in rows] == [("deny", None, "alice"), ("open", "g" + "1" * 16, "alice")]
    audit = store.conn.execute(
        "SELECT action, target, outcome, details FROM audit_events"
        " WHERE action LIKE 'session.%' ORDER BY seq"
    ).fetchall()
    assert [(a[0], a[1], a[2]) for a in audit] == [
        ("session.deny", "-", "refused"),
        ("session.open", "g" + "1" * 16, "ok"),
    ]
    assert json.loads(audit[0][3])["user"] == "alice"


def test_parse_event_refuses_unknown_kinds_and_empty_grants() -> None:
    assert parse_event("gpu01", raw("elevate", "1-1-0000000a")) is None
    assert parse_event("gpu01", raw("deny", "1-1-0000000a", grant_id="")) is None
    assert parse_event("gpu01", raw("close", "1-1-0000000a", grant_id="-")) is not None


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("pid", 1e30),  # SQLite cannot store it: the whole batch used to roll back
        ("pid", json.loads("1e400")),  # inf: int() raised OverflowError
        ("pid", 2**63),
        ("pid", True),
        ("pid", "4242"),
        ("pid", 0),
        ("at", "yesterday"),
        ("at", "2026-11-23 10:00:00"),
    ],
)
def test_a_forged_number_or_time_is_malformed_and_the_rest_of_the_spool_is_stored(
    broker_app: App, field: str, value: object
) -> None:
    bad = {**raw("open", "1-4242-0000000a"), field: value}
    assert parse_event("gpu01", bad) is None
    good = parse_event("gpu01", raw("open", "2-4243-0000000b"))
    assert good is not None
    store = broker_app.ready_store()
    now = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
    assert store_events(store, "gpu01", [good], ["1-4242-0000000a"], now) == 1
    malformed = store.conn.execute(
        "SELECT details FROM audit_events WHERE action = 'session.malformed'"
    ).fetchone()
    assert json.loads(malformed[0])["event_ids"] == ["1-4242-0000000a"]


def test_a_deny_keeps_the_nodes_reason_and_anything_unknown_is_other(broker_app: App) -> None:
    store = broker_app.ready_store()
    now = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
    events = []
    for number, reason in enumerate(["max_sessions", "quarantined", "made-up", ["x"]]):
        event = {**raw("deny", f"{number}-4242-0000000a", grant_id="-"), "reason": reason}
        parsed = parse_event("gpu01", event)
        assert parsed is not None
        events.append(parsed)
    assert [e.reason for e in events] == ["max_sessions", "quarantined", "other", "other"]
    opened = parse_event("gpu01", {**raw("open", "9-1-0000000b"), "reason": "no_grant"})
    assert opened is not None and opened.reason is None, "only denies carry a reason"
    assert store_events(store, "gpu01", [*events, opened], [], now) == 5
    details = [
        json.loads(r[0])
        for r in store.conn.execute(
            "SELECT details FROM audit_events WHERE action LIKE 'session.%' ORDER BY seq"
        )
    ]
    assert [d.get("reason") for d in details] == [
        "max_sessions",
        "quarantined",
        "other",
        "other",
        None,
    ]
