"""Drop-in integrity (docs/grants.md): the node reports each grant's drop-in, the broker
compares it with what it pushed, marks the grant broken there, audits, alerts and repairs.

The node side runs the real node program on a temporary root; the broker side runs the
grant service over a real store with the fake node pool of test_grants_service.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.app import App
from broker.detect.engine import AuditEvent, Detector, new_memory
from broker.fleet.dropins import DropIn, parse_report
from broker.grants import rows
from broker.grants.delivery import Delivery, GrantRules
from broker.grants.integrity import DropInCheck, IntegrityPolicy, judge
from broker.grants.reader import GrantReader
from broker.policy.detection_rules import DEFAULT
from tests.node_tree import NodeTree
from tests.unit.policy_samples import NOW
from tests.unit.test_grants_service import FRANK, World
from tests.unit.test_node_program import call, install_payload, sudo_lists_the_rule

SHA = hashlib.sha256(b"rule\n").hexdigest()

# ---------------------------------------------------------------- the node program


@pytest.fixture
def node(tmp_path: Path) -> NodeTree:
    return NodeTree(tmp_path / "node")


def _installed(node: NodeTree, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Path, str]:
    payload, grant = install_payload(node)
    sudo_lists_the_rule(monkeypatch, grant)
    assert call(node, "install-grant", payload)[1]["ok"] is True
    sent = hashlib.sha256(payload["sudoers"].encode("ascii")).hexdigest()
    return grant, node.root / "etc/sudoers.d" / f"broker_{grant.id}", sent


def _reported(node: NodeTree, grant_id: str) -> tuple[dict[str, Any], list[str]]:
    status = call(node, "status")[1]
    [entry] = [g for g in status["grants"] if g["id"] == grant_id]
    return entry["drop_in"], status["problems"]


def test_status_reports_the_installed_drop_in_as_pushed(
    node: NodeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant, _, sent = _installed(node, monkeypatch)
    drop_in, problems = _reported(node, grant.id)
    assert drop_in == {
        "present": True, "kind": "file", "uid": 0, "gid": 0, "mode": 0o440,
        "sha256": sent, "honoured": True, "problem": None,
    }  # fmt: skip
    assert not [p for p in problems if grant.id in p]


def test_status_says_sudo_ignores_a_world_writable_drop_in(
    node: NodeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant, path, sent = _installed(node, monkeypatch)
    path.chmod(0o666)
    drop_in, problems = _reported(node, grant.id)
    assert (drop_in["mode"], drop_in["honoured"], drop_in["sha256"]) == (0o666, False, sent)
    assert drop_in["problem"] == "drop-in mode 0666: sudo ignores it"
    assert f"grant {grant.id}: drop-in mode 0666: sudo ignores it" in problems


def test_status_reports_a_missing_changed_or_linked_drop_in(
    node: NodeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant, path, sent = _installed(node, monkeypatch)
    path.write_text("alice ALL = (ALL) NOPASSWD: ALL\n")  # same mode, other rule
    drop_in, _ = _reported(node, grant.id)
    assert drop_in["honoured"] is True and drop_in["sha256"] not in (None, sent)
    target = node.root / "rule"
    target.write_text("x\n")
    path.unlink()
    path.symlink_to(target)
    drop_in, _ = _reported(node, grant.id)
    assert (drop_in["kind"], drop_in["sha256"]) == ("symlink", None)
    path.unlink()
    drop_in, _ = _reported(node, grant.id)
    assert (drop_in["present"], drop_in["kind"], drop_in["honoured"]) == (False, "missing", False)


# ---------------------------------------------------------------- comparison (pure)


def _file(**changes: Any) -> DropIn:
    base: dict[str, Any] = {
        "present": True, "kind": "file", "uid": 0, "gid": 0, "mode": 0o440,
        "sha256": SHA, "honoured": True, "problem": None,
    }  # fmt: skip
    base.update(changes)
    return DropIn(**base)


@pytest.mark.parametrize(
    ("found", "problem"),
    [
        (_file(), None),
        (_file(mode=0o666, honoured=False), "drop-in mode 0666: sudo ignores it"),
        # the node's word is not taken: the numbers decide
        (_file(mode=0o666, honoured=True), "drop-in mode 0666: sudo ignores it"),
        (_file(uid=1000), "drop-in owned by uid 1000: sudo ignores it"),
        (_file(mode=0o460, gid=10), "drop-in mode 0460, group 10: sudo ignores it"),
        (
            _file(sha256="0" * 64),
            f"drop-in changed on the node (sha256 {'0' * 12}, pushed {SHA[:12]})",
        ),
        (_file(mode=0o640), "drop-in mode 0640, pushed 0440"),
        (_file(present=False, kind="missing", honoured=False), "drop-in missing: sudo has no rule"),
        (_file(kind="symlink", honoured=False), "drop-in replaced by a symbolic link"),
    ],
)
def test_judge_names_what_is_wrong(found: DropIn, problem: str | None) -> None:
    assert judge("g0123456789abcdef", SHA, {"g0123456789abcdef": found}) == problem


def test_judge_fails_closed_on_a_missing_grant_or_an_unusable_report() -> None:
    assert judge("g0123456789abcdef", SHA, {}) == (
        "grant file missing on the node: the hook refuses sudo (not re-pushed)"
    )
    assert "unusable: malformed" in str(judge("g0123456789abcdef", SHA, "malformed x"))
    # a grant pushed before the broker recorded hashes: owner and mode are still checked
    assert judge("g0123456789abcdef", None, {"g0123456789abcdef": _file(sha256="1" * 64)}) is None


@pytest.mark.parametrize(
    "drop_in",
    [
        "yes",
        {"present": "yes", "kind": "file", "honoured": True},
        {"present": True, "kind": "pipe", "honoured": True},
        {"present": True, "kind": "missing", "honoured": False},
        {"present": True, "kind": "file", "honoured": True, "sha256": "XYZ"},
        {"present": True, "kind": "file", "honoured": True, "mode": -1},
        {"present": True, "kind": "file", "honoured": True, "uid": True},
        {"present": True, "kind": "file", "honoured": True, "mode": 0o10000},
    ],
)
def test_a_malformed_report_is_an_error_never_fine(drop_in: object) -> None:
    report = parse_report({"grants": [{"id": "g0123456789abcdef", "drop_in": drop_in}]})
    assert isinstance(report, str) and report.startswith("malformed drop-in report")
    assert judge("g0123456789abcdef", SHA, report) is not None


def test_parse_report_reads_a_good_one_and_an_old_program() -> None:
    raw = {"present": True, "kind": "file", "uid": 0, "gid": 0, "mode": 0o440,
           "sha256": SHA, "honoured": True, "problem": "x\x1b[31m"}  # fmt: skip
    report = parse_report({"grants": [{"id": "g0123456789abcdef", "drop_in": raw}]})
    assert isinstance(report, dict)
    assert report["g0123456789abcdef"] == _file(problem="x?[31m")
    assert parse_report({"grants": [{"id": "g0123456789abcdef", "valid": True}]}) is None
    assert parse_report({"grants": "all fine"}) == "no list of grants"


# ---------------------------------------------------------------- the broker side


class NodeWorld(World):
    """A grant live on gpu01 and gpu01's status answers as `drop_in` says."""

    def __init__(self, app: App, tmp: Path) -> None:
        super().__init__(app, tmp)
        result = self.service.approve(self.request(), FRANK, code="1", actor="t", now=NOW)
        assert result.grant is not None
        self.grant_id = result.grant.id
        [self.sent] = [p["sudoers"] for _, c, p in self.nodes.calls if c == "install-grant"]
        self.key = self.service._delivery._key  # the same signing key for repairs

    def answer(self, *, grant_file: bool = True, **drop_in: Any) -> None:
        entry: dict[str, Any] = {
            "present": True, "kind": "file", "uid": 0, "gid": 0, "mode": 0o440,
            "sha256": hashlib.sha256(self.sent.encode()).hexdigest(), "honoured": True,
            "problem": None,
        }  # fmt: skip
        entry.update(drop_in)
        status = {
            "node": "gpu01", "time": time.time(), "hook_version": "2", "bootstrapped": True,
            "sudo": {"flavour": "sudo", "version": "1.9.13p3", "io_logging": True},
            "module": {"loads": True}, "containment": "cgroup", "problems": [],
            "grants": [{"id": self.grant_id, "valid": True, "drop_in": entry}] if grant_file else [],
        }  # fmt: skip
        self.nodes.replies[("gpu01", "status")] = json.dumps(status)

    def check(self, policy: IntegrityPolicy = "repair") -> DropInCheck:
        rules = GrantRules(max_skew=timedelta(seconds=60))
        return DropInCheck(
            store=self.store,
            pool=lambda: self.nodes,  # type: ignore[arg-type,return-value]
            delivery=lambda: Delivery(
                store=self.store,
                pool=self.nodes,  # type: ignore[arg-type]
                signing_key=self.key,
                rules=rules,
            ),
            policy=policy,
            max_skew=timedelta(seconds=60),
        )

    def events(self, action: str) -> list[tuple[str, str, dict[str, Any]]]:
        found = self.store.conn.execute(
            "SELECT actor, outcome, details FROM audit_events WHERE action = ? ORDER BY seq",
            (action,),
        ).fetchall()
        return [(a, o, json.loads(d)) for a, o, d in found]

    def node_state(self) -> tuple[str, str | None]:
        [row] = GrantReader(self.store).nodes_of(self.grant_id)
        return row.shown_state, row.drop_in_problem


@pytest.fixture
def nodes_world(broker_app: App, tmp_path: Path) -> Iterator[NodeWorld]:
    yield NodeWorld(broker_app, tmp_path)


def test_the_push_records_the_sha256_of_the_drop_in_sent(nodes_world: NodeWorld) -> None:
    [row] = rows.grant_nodes(nodes_world.store.conn, nodes_world.grant_id)
    assert row.drop_in_sha256 == hashlib.sha256(nodes_world.sent.encode()).hexdigest()
    assert (row.state, row.shown_state) == ("live", "live")


def test_an_intact_drop_in_stays_live_and_writes_nothing(nodes_world: NodeWorld) -> None:
    nodes_world.answer()
    [status] = nodes_world.check().sweep(NOW)
    assert status.drop_in_problems == () and status.problem is None
    assert nodes_world.node_state() == ("live", None)
    assert nodes_world.events("grant.drop_in") == []


def test_a_world_writable_drop_in_is_broken_audited_alerted_and_repaired(
    nodes_world: NodeWorld,
) -> None:
    nodes_world.answer(mode=0o666, honoured=False, problem="drop-in mode 0666: sudo ignores it")
    check = nodes_world.check()
    [status] = check.sweep(NOW)
    why = "drop-in mode 0666: sudo ignores it"
    assert status.drop_in_problems == (f"{nodes_world.grant_id}: {why}",)
    assert status.problem == f"grant {nodes_world.grant_id}: {why}"
    assert nodes_world.node_state() == ("broken", why)
    check.sweep(NOW)  # the same verdict again: no second event
    [(actor, outcome, details)] = nodes_world.events("grant.drop_in")
    assert (actor, outcome) == ("broker", "failed")
    assert details == {"node": "gpu01", "problem": why, "response": "repair", "user": "alice"}
    seq = nodes_world.store.conn.execute(
        "SELECT seq FROM audit_events WHERE action = 'grant.drop_in'"
    ).fetchone()[0]
    event = AuditEvent(
        seq, time.time(), actor, "grant.drop_in", nodes_world.grant_id, outcome, details
    )
    [finding] = Detector(DEFAULT, new_memory()).audit(event)
    assert (finding.rule, finding.severity, finding.node) == ("drop-in-tampered", "high", "gpu01")
    assert why in finding.message and finding.user == "alice"
    pushes = len([c for c in nodes_world.nodes.calls if c[1] == "install-grant"])
    assert check.repair(NOW) == [f"{nodes_world.grant_id}@gpu01"]
    assert len([c for c in nodes_world.nodes.calls if c[1] == "install-grant"]) == pushes + 1
    assert nodes_world.node_state() == ("live", None)
    assert [o for _, o, _ in nodes_world.events("grant.repair")] == ["ok"]


def test_alert_only_leaves_the_node_as_found(nodes_world: NodeWorld) -> None:
    nodes_world.answer(sha256="0" * 64)
    check = nodes_world.check("alert")
    check.sweep(NOW)
    state, why = nodes_world.node_state()
    assert state == "broken" and why is not None and why.startswith("drop-in changed on the node")
    assert check.repair(NOW) == []
    assert nodes_world.events("grant.drop_in")[0][2]["response"] == "alert"
    nodes_world.answer()  # put back by hand: the verdict clears, and that is audited too
    check.sweep(NOW)
    assert nodes_world.node_state() == ("live", None)
    assert [o for _, o, _ in nodes_world.events("grant.drop_in")] == ["failed", "ok"]


def test_a_malformed_status_marks_the_grant_broken(nodes_world: NodeWorld) -> None:
    nodes_world.answer(mode="0440")
    nodes_world.check("alert").sweep(NOW)
    state, why = nodes_world.node_state()
    assert state == "broken" and why is not None and "malformed" in why


def test_an_unreachable_node_is_not_judged_and_others_go_on(nodes_world: NodeWorld) -> None:
    nodes_world.nodes.replies[("gpu01", "status")] = "not json"
    [status] = nodes_world.check().sweep(NOW)
    assert status.drop_in_problems == ()
    assert nodes_world.node_state() == ("live", None)


def test_a_revoked_grant_is_not_checked_nor_repaired(nodes_world: NodeWorld) -> None:
    nodes_world.service.revoke(ids=[nodes_world.grant_id], actor="t", reason="done", now=NOW)
    nodes_world.answer(mode=0o666, honoured=False)
    check = nodes_world.check()
    assert check.sweep(NOW) == [] and check.repair(NOW) == []
    assert not [c for c in nodes_world.nodes.calls if c[1] == "status"]


def test_a_grant_file_removed_by_the_nodes_root_is_reported_not_pushed_back(
    nodes_world: NodeWorld,
) -> None:
    """Review finding: repair put back a grant file the node's root had removed (local
    incident response), restoring the root it took away."""
    nodes_world.answer(grant_file=False)
    check = nodes_world.check("repair")
    check.sweep(NOW)
    assert nodes_world.node_state()[0] == "broken"
    assert check.repair(NOW) == []
    assert not nodes_world.events("grant.repair")


def test_grants_retry_pushes_a_broken_drop_in_again_under_alert_only(
    nodes_world: NodeWorld,
) -> None:
    nodes_world.answer(present=False, kind="missing", honoured=False, sha256=None, mode=None)
    nodes_world.check("alert").sweep(NOW)
    assert nodes_world.node_state() == ("broken", "drop-in missing: sudo has no rule")
    outcomes = nodes_world.service.retry(nodes_world.grant_id, actor="t", now=NOW)
    assert [(o.node, o.ok) for o in outcomes] == [("gpu01", True)]
    assert nodes_world.node_state() == ("live", None)


def test_the_setting_is_an_allow_list_and_the_interval_has_a_floor() -> None:
    from broker.config.loader import settings_from_dict
    from broker.core.errors import ConfigError

    settings = settings_from_dict({}, source="x")
    assert settings.grants.drop_in_integrity == "repair"
    assert settings.grants.drop_in_check_interval == timedelta(minutes=5)
    assert (
        settings_from_dict(
            {"grants": {"drop_in_integrity": "alert"}}, source="x"
        ).grants.drop_in_integrity
        == "alert"
    )
    for bad in ({"drop_in_integrity": "ignore"}, {"drop_in_check_interval": "5s"}):
        with pytest.raises(ConfigError) as info:
            settings_from_dict({"grants": bad}, source="broker.toml")
        assert info.value.message.startswith(f"broker.toml: grants.{next(iter(bad))}")


def test_the_daemon_and_the_cli_show_a_broken_drop_in_as_not_live(daemon: Path) -> None:
    from broker.config.loader import load_settings
    from tests.helpers import run_broker
    from tests.unit.test_user_resolution import ALICE_SID, _grant

    grant = _grant("g" + "c" * 16, "alice", ALICE_SID)
    app = App(load_settings(daemon))
    with app.ready_store().transaction() as conn:
        rows.insert_grant(conn, grant, ["gpu01", "gpu02"])
        for name in ("gpu01", "gpu02"):
            rows.set_node_state(conn, grant.id, name, "live", error=None, now=NOW)
            rows.record_drop_in(conn, grant.id, name, SHA)
        [row] = [n for n in rows.grant_nodes(conn, grant.id) if n.node == "gpu01"]
        rows.set_drop_in_problem(conn, row, "drop-in mode 0666: sudo ignores it", NOW)
    app.close()
    shown = run_broker("grants", "show", grant.id, "--json", config=daemon)
    assert shown.returncode == 0, shown.stderr
    states = {n["node"]: n for n in json.loads(shown.stdout)["node_states"]}
    assert (states["gpu01"]["state"], states["gpu01"]["drop_in_problem"]) == (
        "broken",
        "drop-in mode 0666: sudo ignores it",
    )
    assert (states["gpu02"]["state"], states["gpu02"]["drop_in_problem"]) == ("live", None)
    table = run_broker("grants", "show", grant.id, config=daemon).stdout
    assert "broken" in table and "drop-in mode 0666: sudo ignores it" in table
