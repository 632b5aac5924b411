"""Facts from nodes are labelled by how they were learned, and detection acts on them only
when corroborated: the pure rules, the sessions index's labels, and the responder.

A forged recording (root on one node sending sudo I/O naming another user and node) must
show as uncorroborated and must not revoke the named user's grants; a real session (the
node's hook event collected over SSH, and a grant) is corroborated and acted on.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest

from broker.core.timeutil import to_second_text
from broker.detect import alerts
from broker.detect.engine import Finding
from broker.detect.evidence import Basis, basis_of, withheld
from broker.detect.respond import Responder, ResponderParts
from broker.sessions import service
from broker.sessions.provenance import (
    GrantSpan,
    HookOpen,
    Provenance,
    judge_hook,
    judge_recording,
)
from broker.sessions.rows import SessionEvent, insert_event
from tests.unit.test_sessions_index import NOW, World, world  # noqa: F401 (fixture)
from tests.unit.test_sessions_iolog import START, log_json, write_recording

GID = "g0123456789abcdef"
FORGED = timedelta(minutes=30)
SPAN = GrantSpan(GID, START - timedelta(minutes=5), START + timedelta(hours=2))


# ---------------------------------------------------------------- the pure rules


def test_a_recording_is_corroborated_by_its_nodes_hook_event_and_its_grant() -> None:
    opened = [HookOpen("alice", GID, START - timedelta(seconds=1))]
    found = judge_recording("gpu01", "alice", START, SPAN, opened)
    assert found.corroborated and GID in found.reason


@pytest.mark.parametrize(
    ("opens", "grant", "reason"),
    [
        ([], SPAN, "no hook event from gpu01 for alice"),
        ([HookOpen("bob", GID, START)], SPAN, "no hook event from gpu01 for alice"),
        ([HookOpen("alice", GID, START - timedelta(minutes=5))], SPAN, "no hook event"),
        ([HookOpen("alice", "g1111111111111111", START)], SPAN, "under grant " + GID),
        ([HookOpen("alice", GID, START)], None, "no grant of alice on gpu01"),
        (
            [HookOpen("alice", GID, START)],
            GrantSpan(GID, START + timedelta(minutes=1), START + timedelta(hours=1)),
            "does not cover",
        ),
    ],
)
def test_a_recording_without_both_proofs_is_uncorroborated_and_says_why(
    opens: list[HookOpen], grant: GrantSpan | None, reason: str
) -> None:
    found = judge_recording("gpu01", "alice", START, grant, opens)
    assert not found.corroborated and reason in found.reason


def test_one_hook_event_never_vouches_for_two_recordings() -> None:
    """Review finding: recordings forged to start near a real session of the same user on
    the named node were all corroborated by its one hook event."""
    opened = [HookOpen("alice", GID, START - timedelta(seconds=1))]
    assert judge_recording("gpu01", "alice", START, SPAN, opened, recordings=1).corroborated
    crowded = judge_recording("gpu01", "alice", START, SPAN, opened, recordings=3)
    assert not crowded.corroborated
    assert "3 recordings of alice on gpu01" in crowded.reason and "1 hook event" in crowded.reason
    twice = [*opened, HookOpen("alice", GID, START + timedelta(seconds=4))]
    assert judge_recording("gpu01", "alice", START, SPAN, twice, recordings=2).corroborated


def test_break_glass_recorded_by_the_hook_needs_no_grant_and_a_missing_name_never_passes() -> None:
    assert judge_recording(
        "gpu01", "alice", START, None, [HookOpen("alice", "break-glass", START)]
    ).corroborated
    assert not judge_recording(None, "alice", START, SPAN, []).corroborated


def test_a_hook_events_user_is_corroborated_only_by_a_grant_covering_it() -> None:
    assert judge_hook("gpu01", "alice", GID, START, SPAN).corroborated
    assert "no grant" in judge_hook("gpu01", "alice", GID, START, None).reason
    assert "names no grant" in judge_hook("gpu01", "alice", None, START, None).reason
    assert not judge_hook("gpu01", "alice", "break-glass", START, None).corroborated
    late = START + timedelta(hours=3)
    assert "does not cover" in judge_hook("gpu01", "alice", GID, late, SPAN).reason


def test_which_actions_each_kind_of_evidence_allows() -> None:
    yes = Provenance("corroborated", "ok")
    no = Provenance("uncorroborated", "no hook event from gpu01 for alice")
    rec = basis_of("session:00002A:input:0", "00002A", None, None)
    assert rec == Basis("recording", "00002A")
    for kind, target in (("revoke_grants", "alice"), ("quarantine_node", "gpu01")):
        assert withheld(kind, target, rec, yes) is None
        assert "uncorroborated (no hook event" in (withheld(kind, target, rec, no) or "")
    hook = basis_of("audit:7", None, "node:gpu02", "session.open")
    assert hook == Basis("hook", reporter="gpu02")
    assert withheld("quarantine_node", "gpu02", hook, None) is None  # the reporting node
    assert withheld("end_session", "gpu02:" + GID, hook, None) is None
    assert "not the node that reported" in (withheld("quarantine_node", "gpu01", hook, None) or "")
    assert withheld("revoke_grants", "alice", hook, yes) is None
    assert withheld("lock_mfa", "alice", hook, no) is not None
    # The indexer's own event names the node sudo claimed: a recording's evidence, not a hook's.
    assert basis_of("audit:9", "00002A", "node:gpu01", "session.recorded").kind == "recording"
    assert (
        withheld("revoke_grants", "bob", basis_of("audit:3", None, "unix:x", "mfa.verify"), None)
        is None
    )


def test_a_nodes_drop_in_report_may_act_on_that_node_only() -> None:
    """Review finding: `grant.drop_in` is the broker's event but the node's verdict; root on
    a node could otherwise have every user holding a grant there locked or revoked."""
    yes = Provenance("corroborated", "ok")
    report = basis_of("audit:12", None, "broker", "grant.drop_in", {"node": "gpu01"})
    assert report == Basis("node-report", reporter="gpu01")
    assert withheld("quarantine_node", "gpu01", report, None) is None
    assert withheld("quarantine_node", "gpu02", report, None) is not None
    for kind in ("revoke_grants", "lock_mfa"):
        assert "only gpu01's report" in (withheld(kind, "alice", report, yes) or "")


# ---------------------------------------------------------------- the index and the responder


def hook_open(w: World, node: str, user: str, grant: str, at: datetime) -> None:
    event = SessionEvent(node, f"e-{node}-{user}-{at.timestamp()}", "open", grant, user,
                         "root", "sudo", "pts/1", 4242, to_second_text(at))  # fmt: skip
    with w.store.transaction() as conn:
        insert_event(conn, event, NOW)


def recording(w: World, rid: str, user: str, node: str, started: datetime = START) -> None:
    log = log_json(user=user, node=node, started=started, run_time=3.0, exit_value=0)
    write_recording(w.root, rid, [("ttyout", 0.1, b"$ ")], log=log)
    w.index()


@pytest.fixture
def two_sessions(world: World) -> Iterator[World]:  # noqa: F811
    """alice holds a grant on gpu01. 000001 is her real session there (gpu01's hook saw
    it open); 000002, half an hour later, is a forgery naming her on gpu01, sent by root on
    another node: gpu01's hook saw no such session."""
    world.grant(GID, "alice", ["gpu01"], START - timedelta(minutes=5), START + timedelta(hours=2))
    hook_open(world, "gpu01", "alice", GID, START)
    recording(world, "000001", "alice", "gpu01")
    recording(world, "000002", "alice", "gpu01", START + FORGED)
    yield world


def test_sessions_list_and_show_label_each_recording(two_sessions: World) -> None:
    w = two_sessions
    listed = {r["id"]: r for r in service.listing(w.store.conn, service.Filters())}
    assert listed["000001"]["provenance"] == "corroborated"
    forged = w.row("000002")
    assert forged["provenance"] == "uncorroborated"
    assert forged["grant_id"] == GID  # a grant covers it: the hook event is what is missing
    assert forged["provenance_reason"] == (
        f"no hook event from gpu01 for alice at {to_second_text(START + FORGED)}"
    )


class FakeGrants:
    def __init__(self) -> None:
        self.revoked: list[str] = []

    def revoke(self, *, user: Any, **_: Any) -> Any:
        self.revoked.append(user.name)
        return type("R", (), {"pending": [], "revoked": [GID], "outcomes": []})()


class NoAccounts:
    def account(self, name: str) -> None:
        return None  # alice has left the directory: her grants are found by name


class FakeSpools:
    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def collect_nodes(self, names: list[str], now: datetime) -> int:
        self.asked.append(names)
        return 0


def respond(w: World, rid: str, node: str) -> tuple[FakeGrants, FakeSpools, list[Any]]:
    finding = Finding("exfiltration", "critical", ("alert", "revoke_grants"), "scp", START.timestamp(),
                      f"session:{rid}:input:0", user="alice", node=node, recording_id=rid)  # fmt: skip
    with w.store.transaction() as conn:
        alerts.raise_alert(conn, finding, NOW)
    grants, spools = FakeGrants(), FakeSpools()
    parts = ResponderParts(
        store=lambda: w.store, pool=lambda: pytest.fail("no SSH"), snapshot=lambda _: NoAccounts(),
        mfa_lockout=timedelta(minutes=15), grants=lambda: grants,  # type: ignore[arg-type,return-value]
        quarantines=lambda: pytest.fail(), policy=lambda: None, spools=lambda: spools,  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    Responder(parts).run_once(NOW)
    actions = w.store.conn.execute(
        "SELECT a.state, a.result, e.outcome FROM alert_actions a JOIN audit_events e"
        " ON e.action = 'alert.action.revoke_grants' AND e.target = a.target"
        " WHERE a.alert_id = (SELECT MAX(id) FROM alerts)"
    ).fetchall()
    return grants, spools, actions


def test_a_forged_recording_raises_its_alert_but_revokes_nobody(two_sessions: World) -> None:
    grants, spools, actions = respond(two_sessions, "000002", "gpu01")
    assert grants.revoked == []
    assert spools.asked == [["gpu01"]]  # its node was asked for its hook events first
    assert actions == [
        ("failed", "withheld: session 000002 is uncorroborated (no hook event from gpu01 for"
         f" alice at {to_second_text(START + FORGED)})", "refused"),
    ]  # fmt: skip


def test_a_corroborated_recording_revokes_as_the_rule_says(two_sessions: World) -> None:
    grants, spools, actions = respond(two_sessions, "000001", "gpu01")
    assert grants.revoked == ["alice"] and spools.asked == []
    assert [(a[0], a[2]) for a in actions] == [("done", "ok")]


def test_an_uncorroborated_session_is_never_drift_checked(two_sessions: World) -> None:
    w = two_sessions
    with w.store.transaction() as conn:
        alerts.queue_jobs(conn, [("drift_check", "000002")], NOW)
        alerts.put_baseline(conn, GID, "gpu01", NOW, '{"entries": []}')
    spools = FakeSpools()
    parts = ResponderParts(
        store=lambda: w.store, pool=lambda: pytest.fail("no scan"), snapshot=lambda _: pytest.fail(),
        mfa_lockout=timedelta(minutes=15), grants=lambda: pytest.fail(),
        quarantines=lambda: pytest.fail(), policy=lambda: None, spools=lambda: spools,  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    Responder(parts).run_once(NOW)
    error = w.store.conn.execute("SELECT error FROM session_drift").fetchone()[0]
    assert error.startswith("not compared: the recording is uncorroborated")
    assert alerts.baseline(w.store.conn, GID, "gpu01") == '{"entries": []}'  # not moved


def test_alerts_list_says_withheld_for_an_action_kept_from_acting() -> None:
    from broker.cli.alert_cmds import _actions
    from broker.wire.alerts import AlertOut

    alert = AlertOut.model_validate(
        {
            "id": 1, "created_at": "x", "event_at": None, "rule": "exfiltration",
            "severity": "critical", "user": "alice", "node": "gpu01", "grant_id": None,
            "recording_id": "000002", "message": "m", "details": {}, "source": "session:000002",
            "acked_at": None, "acked_by": None, "ack_note": None,
            "actions": [
                {"kind": "revoke_grants", "target": "alice", "state": "failed",
                 "result": "withheld: session 000002 is uncorroborated (no grant)"},
                {"kind": "end_session", "target": "gpu01:-", "state": "failed",
                 "result": "gpu01: unreachable"},
            ],
        }
    )  # fmt: skip
    assert _actions(alert) == "revoke_grants:withheld, end_session:failed"
