"""The controls report (issue 22): each fact under the right control with the right number,
the signature and the stated head, verification failing on tampering, the document's
strict parsing, and the CLI's exit codes against a real daemon."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.app import App
from broker.audit import writer
from broker.audit.checkpoint import load_signing_key
from broker.config.loader import load_settings
from broker.core.errors import BadRequestError, UsageError
from broker.core.timeutil import to_text, utcnow
from broker.report import evidence
from broker.report.catalogue import CATALOGUE
from broker.report.document import SCHEMA, parse, sign
from tests.helpers import run_broker
from tests.unit.policy_samples import LAB_POLICY
from tests.unit.test_policy_cli import seed_directory

REPO = Path(__file__).resolve().parents[2]
DAY = timedelta(days=1)


def _event(
    conn: sqlite3.Connection,
    at: datetime,
    actor: str,
    action: str,
    target: str,
    outcome: str = "ok",
    **details: Any,
) -> None:
    writer.record(conn, writer.EventInput(actor, action, target, outcome, details), at)


def _grant(conn: sqlite3.Connection, gid: str, user: str, start: datetime, **kw: Any) -> None:
    """A grant row and its nodes, as the grant service stores them (the report reads these)."""
    g: dict[str, Any] = {
        "runas": "root", "commands": "ALL", "nodes": ["cn01"], "hours": 1, "state": "expired",
        "ended_at": None, "end_reason": None, "request_id": None, "max_sessions": 1,
    } | kw  # fmt: skip
    end = start + timedelta(hours=g["hours"])
    ended = g["ended_at"] or (end + timedelta(seconds=20) if g["state"] == "expired" else None)
    conn.execute(
        "INSERT INTO grants (id, user, sid, role, runas, commands, command_lines, nodes,"
        " not_before, not_after, reason, approvers, policy_sha256, login, workloads,"
        " max_sessions, request_id, created_at, created_by, state, ended_at, ended_by,"
        " end_reason) VALUES (?, ?, ?, 'r', ?, ?, '[]', ?, ?, ?, 'test', '[]', 'x', 0, 0, ?,"
        " ?, ?, ?, ?, ?, 'broker', ?)",
        (
            gid, user, f"S-{user}", g["runas"], g["commands"], ",".join(g["nodes"]),
            to_text(start), to_text(end), g["max_sessions"], g["request_id"], to_text(start),
            f"unix:{user}", g["state"], None if ended is None else to_text(ended), g["end_reason"],
        ),
    )  # fmt: skip
    for node in g["nodes"]:
        conn.execute(
            "INSERT INTO grant_nodes (grant_id, node, state) VALUES (?, ?, ?)",
            (gid, node, "live" if g["state"] == "active" else "removed"),
        )


def _recording(
    conn: sqlite3.Connection, rid: str, at: datetime, argv: list[str], grant: str | None
) -> None:
    sha = f"{rid:0>64}"[-64:]
    conn.execute(
        "INSERT INTO recordings (id, path, state, node, user, runas, command, argv, started_at,"
        " grant_id, sha256, first_seen, indexed_at) VALUES (?, ?, 'complete', 'cn01', 'alice',"
        " 'root', ?, ?, ?, ?, ?, ?, ?)",
        (rid, f"/x/{rid}", "/usr/bin/" + argv[0], json.dumps(argv), to_text(at), grant, sha,
         to_text(at), to_text(at)),
    )  # fmt: skip
    _event(conn, at, "node:cn01", "session.recorded", rid, sha256=sha, grant=grant)


def seed_day(app: App, t0: datetime) -> None:
    """A day's activity: elevations with and without approval (with their TOTP), one without
    a TOTP, a refused job launch, a replayed code and a lockout, two sessions at once, a
    keytab rotation, a recorded apt-get install, an expired account losing its grant."""
    h = timedelta(hours=1)
    with app.ready_store().transaction() as conn:
        # The code is accepted a moment after the request began (the event's stamp).
        _event(conn, t0 + timedelta(seconds=1), "unix:alice", "mfa.verify", "alice",
               purpose="elevate")  # fmt: skip
        _event(conn, t0, "unix:alice", "grant.issue", "g1", user="alice", request=None)
        _grant(conn, "g1", "alice", t0)
        _event(conn, t0 + h, "unix:bob", "mfa.verify", "bob", purpose="elevate")
        _event(conn, t0 + h, "unix:bob", "grant.request", "q1", user="bob")
        _event(conn, t0 + 2 * h, "unix:carol", "mfa.verify", "carol", purpose="approve")
        _event(conn, t0 + 2 * h, "unix:carol", "grant.approve", "q1", requester="bob")
        _event(conn, t0 + 2 * h, "unix:carol", "grant.issue", "g2", user="bob", request="q1")
        _grant(conn, "g2", "bob", t0 + 2 * h, request_id="q1", runas="svc", commands="restart",
               nodes=["cn01", "cn02"], hours=2, state="revoked", ended_at=t0 + 3 * h,
               end_reason="directory: bob is expired")  # fmt: skip
        _event(conn, t0 + 3 * h - timedelta(seconds=30), "broker", "directory.user.state",
               "user:bob", before="enabled", after="expired")  # fmt: skip
        # An elevation whose code was accepted too long before it.
        _event(conn, t0 + 4 * h, "unix:dave", "mfa.verify", "dave", purpose="elevate")
        _event(conn, t0 + 5 * h, "unix:dave", "grant.issue", "g3", user="dave", request=None)
        _grant(conn, "g3", "dave", t0 + 5 * h, hours=4, max_sessions=2)
        _event(conn, t0 + 5 * h, "node:cn01", "session.deny", "g3", "refused", reason="workloads")
        for minute, kind in ((1, "open"), (2, "open"), (3, "close"), (4, "close")):
            conn.execute(
                "INSERT INTO session_events (node, event_id, kind, grant_id, user, runas,"
                " service, tty, pid, at, received_at) VALUES ('cn01', ?, ?, 'g3', 'dave',"
                " 'root', 'sudo', '-', ?, ?, ?)",
                (f"e{minute}", kind, minute % 2, to_text(t0 + 5 * h + minute * timedelta(minutes=1)),
                 to_text(t0)),
            )  # fmt: skip
        _event(
            conn, t0 + 6 * h, "unix:erin", "mfa.verify", "erin", "refused", reason="replayed code"
        )
        _event(conn, t0 + 6 * h, "unix:erin", "mfa.lock", "erin", sid="S-erin", failures=5)
        _recording(conn, "r1", t0 + h, ["apt-get", "install", "-y", "hello"], "g1")
        _recording(conn, "r2", t0 + h, ["ls", "/"], "g1")
        conn.execute(
            "INSERT INTO keytab_rotations (name, state, from_kvno, target_kvno, nodes, actor,"
            " started_at, updated_at) VALUES ('svc-web', 'done', 2, 3, '[]', 'broker', ?, ?)",
            (to_text(t0 + 7 * h), to_text(t0 + 7 * h)),
        )
        _event(conn, t0 + 7 * h, "broker", "keytab.verify", "svc-web", kvno=3, nodes="cn01")


@pytest.fixture
def seeded(broker_app: App) -> Iterator[tuple[App, dict[str, Any]]]:
    now = utcnow()
    seed_day(broker_app, now - DAY)
    yield (
        broker_app,
        broker_app.report().controls(
            since=now - 2 * DAY, until=now, zone=None, actor="unix:root", now=now
        ),
    )


def figures(doc: dict[str, Any], control_id: str) -> dict[str, Any]:
    (entry,) = [c for c in doc["controls"] if c["id"] == control_id]
    return {e["label"].strip(): e["value"] for e in entry["evidence"]}


def control(doc: dict[str, Any], control_id: str) -> dict[str, Any]:
    (entry,) = [c for c in doc["controls"] if c["id"] == control_id]
    found: dict[str, Any] = entry
    return found


def test_each_fact_lands_under_its_control(seeded: tuple[App, dict[str, Any]]) -> None:
    _app, doc = seeded
    assert doc["schema"] == SCHEMA and [c["id"] for c in doc["controls"]] == [
        c.id for c in CATALOGUE
    ]
    ac2 = figures(doc, "AC-2")
    assert ac2["accounts holding a role in the period"] == 3
    assert ac2["access changes read from AD"] == 1
    assert ac2["grants ended because AD or the policy no longer allowed them"] == 1
    assert ac2["slowest end after the AD change (s)"] == 30.0
    boxes = figures(doc, "AC-2(2)")
    assert (boxes["at their time box (expired)"], boxes["earlier (revoked)"]) == (2, 1)
    assert boxes["grants that outlived their time box"] == 0
    assert boxes["longest time box granted (s)"] == 4 * 3600.0
    ac6 = figures(doc, "AC-6")
    assert (ac6["grants issued"], ac6["root (every command)"], ac6["after approval"]) == (3, 2, 1)
    assert ac6["job launches refused while elevated"] == 1
    assert control(doc, "AC-6")["details"]["per_person_node"][0] == {
        "user": "alice", "node": "cn01", "elevations": 1, "root": 1
    }  # fmt: skip
    ac10 = figures(doc, "AC-10")
    assert ac10["most elevated sessions one user had open at once on a node"] == 2
    assert ac10["largest max_sessions of the grants in force"] == 2
    cm11 = figures(doc, "CM-11")
    assert cm11["software installs seen in recorded sessions"] == 1
    assert control(doc, "CM-11")["details"]["per_grant"][0]["grant"] == "g1"


def test_mfa_keytab_and_chain_evidence(seeded: tuple[App, dict[str, Any]]) -> None:
    _app, doc = seeded
    ia2 = figures(doc, "IA-2(1)")
    assert ia2["elevations without approval"] == 2 and ia2["approvals"] == 1
    assert ia2["of them without a fresh TOTP code"] == 1
    entry = control(doc, "IA-2(1)")
    assert entry["status"] == "attention"
    assert "g3 by unix:dave" in entry["attention"][0]["item"]
    ia28 = figures(doc, "IA-2(8)")
    assert (ia28["replayed codes refused"], ia28["lockouts"]) == (1, 1)
    assert figures(doc, "IA-5")["keytab rotations done"] == 1
    au10 = figures(doc, "AU-10")
    assert au10["finished recordings in the period"] == 2
    assert au10["recordings whose SHA-256 is in the audit chain"] == 2
    au9 = figures(doc, "AU-9(3)")
    assert au9["chain verified up to seq"] == doc["audit_head"]["seq"]
    assert control(doc, "AC-2")["status"] == "ok"


def test_verify_holds_then_fails_on_each_kind_of_tampering(
    seeded: tuple[App, dict[str, Any]],
) -> None:
    app, doc = seeded
    report = app.report()
    ok = report.verify(json.loads(json.dumps(doc)), actor="unix:root", now=utcnow())
    assert ok.ok and ok.head_seq == doc["audit_head"]["seq"]
    edited = json.loads(json.dumps(doc))
    edited["controls"][0]["evidence"][0]["value"] = 99
    assert report.verify(edited, actor="unix:root", now=utcnow()).failed == "signature"
    conn = app.ready_store().conn
    conn.execute("DROP TRIGGER audit_events_no_update")
    conn.execute("UPDATE audit_events SET target = 'g9' WHERE action = 'grant.issue'")
    broken = report.verify(doc, actor="unix:root", now=utcnow())
    assert broken.failed == "chain" and "edited" in broken.message
    last = conn.execute(
        "SELECT action, outcome FROM audit_events ORDER BY seq DESC LIMIT 1"
    ).fetchone()
    assert last == ("report.verify", "failed")


def test_a_head_not_in_the_chain_is_named(broker_app: App) -> None:
    now = utcnow()
    doc = broker_app.report().controls(
        since=now - DAY, until=now, zone=None, actor="unix:root", now=now
    )
    # Signed with the broker's own key, so only the head can be wrong (a report of
    # another broker sharing the key, or of a chain since rewritten).
    forged = dict(doc, audit_head={"seq": doc["audit_head"]["seq"], "hash": "ab" * 32})
    forged = sign(forged, load_signing_key(broker_app.settings.signing_key))
    outcome = broker_app.report().verify(forged, actor="unix:root", now=now)
    assert outcome.failed == "head" and "is not in the chain" in outcome.message


def test_an_unknown_zone_is_refused(broker_app: App) -> None:
    now = utcnow()
    with pytest.raises(BadRequestError, match="zone gpu is not in the active policy"):
        broker_app.report().controls(since=now - DAY, until=now, zone="gpu", actor="x", now=now)


def test_parse_takes_json_or_the_html_page_and_nothing_else() -> None:
    doc = {"schema": SCHEMA, "audit_head": {"seq": 1, "hash": "a"}, "signature": {}}
    text = json.dumps(doc)
    assert parse(text, "f") == doc
    page = f'<html><script type="application/json" id="broker-report">{text}</script></html>'
    assert parse(page, "f.html") == doc
    for bad in (
        '{"schema": "broker-report/1", "schema": "x"}',
        text.replace('"seq": 1', '"seq": NaN'),
        json.dumps({"schema": "other"}),
        "<html>no report</html>",
        page + page,
        page.replace("</script>", ""),
        json.dumps({k: v for k, v in doc.items() if k != "signature"}),
    ):
        with pytest.raises(UsageError):
            parse(bad, "f")


def test_catalogue_is_complete_and_documented() -> None:
    ids = [c.id for c in CATALOGUE]
    assert len(set(ids)) == len(ids)
    required = {"AC-2", "AC-2(2)", "AC-6", "AC-6(9)", "AC-10", "CM-11", "IA-2(1)", "IA-2(8)",
                "IA-5", "SC-8", "AU-2", "AU-9(3)", "AU-10"}  # fmt: skip
    assert required <= set(ids)
    for c in CATALOGUE:
        assert callable(getattr(evidence, c.evidence)), c.id
    docs = (REPO / "docs" / "report.md").read_text()
    for c in CATALOGUE:
        assert re.search(rf"^### {re.escape(c.id)} ", docs, re.M), f"docs/report.md lacks {c.id}"


def test_cli_verify_exit_codes(daemon: Path, tmp_path: Path) -> None:
    made = run_broker("report", "controls", "--since", "1d", "--json", config=daemon)
    assert made.returncode == 0, made.stderr
    good = tmp_path / "report.json"
    good.write_text(made.stdout)
    assert run_broker("report", "verify", str(good), config=daemon).returncode == 0
    tampered = tmp_path / "tampered.json"
    tampered.write_text(made.stdout.replace('"ok"', '"attention"', 1))
    bad = run_broker("report", "verify", str(tampered), config=daemon)
    assert bad.returncode == 1 and "signature" in bad.stderr
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    assert run_broker("report", "verify", str(junk), config=daemon).returncode == 2
    # Over the daemon's daemon.max_body (2 MiB) but under the file limit: not a report this
    # daemon could check, said as a usage error naming the file, not a refusal.
    huge = tmp_path / "huge.json"
    padded = json.loads(made.stdout)
    padded["controls"][0]["claim"] = "x" * 3_000_000
    huge.write_text(json.dumps(padded))
    over = run_broker("report", "verify", str(huge), config=daemon)
    assert over.returncode == 2 and "daemon.max_body" in over.stderr, over.stderr
    assert str(huge) in over.stderr
    page = tmp_path / "r.html"
    html = run_broker("report", "controls", "--html", str(page), config=daemon)
    assert html.returncode == 0, html.stderr
    assert (page.stat().st_mode & 0o777) == 0o600
    held = run_broker("report", "verify", str(page), config=daemon)
    assert held.returncode == 0 and "page unedited" in held.stdout, held.stderr
    # What a reader sees edited, the signed document left alone: the signature still holds,
    # the page does not.
    edited = tmp_path / "edited.html"
    edited.write_text(page.read_text().replace("</body>", "<p>IA-5 waived by the CISO</p></body>"))
    refused = run_broker("report", "verify", str(edited), config=daemon)
    assert refused.returncode == 1 and "(page)" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1


def test_a_zone_limits_node_facts_to_its_nodes(broker_config: Path) -> None:
    seed_directory(broker_config)
    app = App(load_settings(broker_config))
    try:
        app.policy().apply(LAB_POLICY, "policy.toml", "unix:root")
        now = utcnow()
        t0 = now - timedelta(hours=5)
        with app.ready_store().transaction() as conn:
            _grant(conn, "g1", "alice", t0, nodes=["gpu01"])
            _grant(conn, "g2", "dave", t0, nodes=["stor01"])
            for node in ("gpu01", "gpu01", "stor01"):
                _event(conn, t0, f"node:{node}", "session.deny", "-", "refused", reason="workloads")
        report = app.report()
        counts = {}
        for zone in ("compute", "storage", None):
            doc = report.controls(since=now - DAY, until=now, zone=zone, actor="t", now=now)
            ac6 = figures(doc, "AC-6")
            counts[zone] = (ac6["grants issued"], ac6["job launches refused while elevated"])
        assert counts == {"compute": (1, 2), "storage": (1, 1), None: (2, 3)}
        # Service accounts of the active policy never rotated are overdue (IA-5).
        ia5 = control(doc, "IA-5")
        assert ia5["status"] == "attention"
        assert any("has never been rotated" in a["item"] for a in ia5["attention"])
    finally:
        app.close()


@pytest.mark.parametrize(
    ("auth", "forward", "unpinned", "attention"),
    [
        ("gssapi", "tls", [], []),
        ("not configured", None, [], []),
        ("simple", None, [], ["simple bind"]),
        ("gssapi", "tcp", ["gpu07"], ["gpu07 has no pinned host key", "over tcp without TLS"]),
    ],
)
def test_transports_flag_what_is_not_protected(
    auth: str, forward: str | None, unpinned: list[str], attention: list[str]
) -> None:
    t = evidence.Transports(("ldaps",), auth, "mutual TLS", forward, False)
    scope = evidence.Scope("2026-12-01T00:00:00.000000Z", "2026-12-02T00:00:00.000000Z", None)
    result = evidence.transports({"pinned": 3, "unpinned": unpinned, "relayed": 0}, scope, t)
    items = [a["item"] for a in result.attention]
    assert len(items) == len(attention)
    for item, expected in zip(items, attention, strict=True):
        assert expected in item
    assert result.status == ("attention" if attention else "ok")
