"""Every refusal is an audit event (grant.refused, request.refused, approve.refused),
written in its own transaction, rate-limited per caller; the refusal itself is unchanged."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.app import App
from broker.audit import refusals as refusal_limits
from broker.audit.query import EventFilter, iter_events
from broker.audit.refusals import LIMIT, WINDOW, RefusalLimiter, RefusalRecorder
from broker.config.loader import load_settings
from broker.core.errors import RefusedError
from broker.core.timeutil import utcnow
from broker.daemon.api import grants as grants_api
from broker.daemon.caller import Caller
from broker.daemon.routing import Context
from broker.fleet import quarantine
from tests.helpers import BROKER, daemon_socket_of, run_broker, serving, write_config
from tests.unit.policy_samples import LAB_POLICY, NOW, account
from tests.unit.test_daemon import post_json
from tests.unit.test_grants_service import ALICE, CAROL, World, world  # noqa: F401 (fixture)
from tests.unit.test_policy_cli import seed_directory

BOB = account("bob")


def refusals(w: World, action: str = "*refused") -> list[dict[str, Any]]:
    """The refusal events in the chain, as dicts with details parsed."""
    found = iter_events(w.store.conn, EventFilter(action=action))
    return [{**asdict(e), "details": e.details_obj()} for e in found]


def elevate(w: World, who: Any, **kw: Any) -> None:
    args: dict[str, Any] = {
        "nodes": "gpu01", "duration": timedelta(minutes=30), "reason": "INC-1",
        "role": None, "commands": None, "code": "1", "actor": f"unix:{who.name}", "now": NOW,
    }  # fmt: skip
    args.update(kw)
    w.service.elevate(who, **args)


def test_no_role_is_refused_as_before_and_audited(world: World) -> None:  # noqa: F811
    with pytest.raises(RefusedError) as caught:
        elevate(world, BOB)
    line = caught.value.one_line()
    assert line == (
        "bob may not elevate on gpu01: bob is in no group bound to any role; "
        "see `broker policy explain bob gpu01`"
    )
    assert caught.value.exit_code == 1
    (event,) = refusals(world)
    assert event["action"] == "grant.refused" and event["outcome"] == "refused"
    assert event["actor"] == "unix:bob" and event["target"] == "gpu01"
    assert event["details"]["reason"] == line
    assert event["details"]["user"] == "bob" and event["details"]["step"] == "elevate"
    assert world.app.audit().verify().ok


def test_a_duration_over_the_maximum_is_audited_with_its_rule(world: World) -> None:  # noqa: F811
    with pytest.raises(RefusedError, match="alice may not elevate on gpu01") as caught:
        elevate(world, ALICE, role="gpu-root", duration=timedelta(hours=9))
    (event,) = refusals(world)
    # gpu-root waits for approvals: what could not be opened is a request.
    assert event["action"] == "request.refused"
    assert event["details"]["reason"] == caught.value.one_line()
    assert caught.value.one_line() == (
        "alice may not elevate on gpu01: 9h exceeds the maximum 4h of gpu-root; "
        "see `broker policy explain alice gpu01`"
    )
    assert event["details"]["duration_s"] == 9 * 3600


def test_a_preview_probe_is_audited_too(world: World) -> None:  # noqa: F811
    with pytest.raises(RefusedError):
        world.service.preview(
            BOB, nodes="gpu[01-02]", duration=None, role=None, commands=None,
            actor="unix:bob", now=NOW,
        )  # fmt: skip
    (event,) = refusals(world)
    assert event["action"] == "grant.refused" and event["details"]["step"] == "preview"
    assert event["target"] == "gpu[01-02]"


def test_a_quarantined_node_refuses_the_request_and_says_so(world: World) -> None:  # noqa: F811
    with world.store.transaction() as conn:
        quarantine.hold(conn, "gpu01", reason="INC-9", actor="unix:root", now=NOW)
    with pytest.raises(RefusedError, match="quarantined"):
        elevate(world, ALICE, role="gpu-root")
    (event,) = refusals(world)
    assert event["action"] == "request.refused" and "quarantined" in event["details"]["reason"]


def test_self_approval_and_outsiders_are_audited(world: World) -> None:  # noqa: F811
    request_id = world.request()
    with pytest.raises(RefusedError, match=r"alice requested .* may not approve") as own:
        world.service.approve(request_id, ALICE, code="1", actor="unix:alice", now=NOW)
    with pytest.raises(RefusedError, match="carol is not in an approver group") as outsider:
        world.service.deny(request_id, CAROL, reason="no", code="1", actor="unix:carol", now=NOW)
    first, second = refusals(world)
    assert (first["action"], first["actor"], first["target"]) == (
        "approve.refused", "unix:alice", request_id,
    )  # fmt: skip
    assert first["details"]["reason"] == own.value.one_line()
    assert first["details"]["decision"] == "approve"
    assert second["details"]["reason"] == outsider.value.one_line()
    assert second["details"]["decision"] == "deny" and second["outcome"] == "refused"
    assert world.service.request(request_id).state == "pending"
    assert world.app.audit().verify().ok


def test_a_refused_mfa_code_leaves_its_own_event_only(world: World) -> None:  # noqa: F811
    def wrong(*_: Any) -> None:
        raise RefusedError("wrong code")

    world.service._mfa = wrong
    with pytest.raises(RefusedError, match="wrong code"):
        elevate(world, ALICE, role="node-diag")
    assert refusals(world) == []  # the MFA service audits mfa.verify itself


def test_a_loop_of_refusals_is_capped_and_summed_up(world: World) -> None:  # noqa: F811
    for _ in range(100):
        with pytest.raises(RefusedError, match="bob may not elevate"):
            elevate(world, BOB)
    assert len(refusals(world)) == LIMIT
    # The next refusal after the window (or the scheduler's flush) writes the summary.
    later = NOW + WINDOW
    with pytest.raises(RefusedError):
        elevate(world, BOB, now=later)
    events = refusals(world)
    assert len(events) == LIMIT + 2
    summary = events[LIMIT]
    assert summary["action"] == "grant.refused" and summary["actor"] == "unix:bob"
    assert summary["details"]["suppressed"] == 100 - LIMIT
    assert summary["outcome"] == "refused" and "rate limit" in summary["details"]["reason"]
    assert events[-1]["details"]["reason"].startswith("bob may not elevate")
    assert world.app.audit().verify().ok


def test_callers_are_limited_apart_and_flush_sums_up_closed_windows(tmp_path: Path) -> None:
    limiter = RefusalLimiter(limit=2, window=timedelta(seconds=60))
    for actor in ("unix:a", "unix:b"):
        assert [limiter.admit(actor, "grant.refused", NOW)[0] for _ in range(3)] == [
            True, True, False,
        ]  # fmt: skip
    assert limiter.due(NOW + timedelta(seconds=59)) == []
    closed = limiter.due(NOW + timedelta(seconds=60))
    assert sorted((s.actor, s.count) for s in closed) == [("unix:a", 1), ("unix:b", 1)]
    assert limiter.tracked() == 0  # nothing kept once summed up


def test_callers_past_the_tables_size_share_one_limited_window(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Found in review: past MAX_CALLERS every new caller was written without a limit, so
    # many principals (machine accounts, a trusted realm) could grow the chain at will.
    monkeypatch.setattr(refusal_limits, "MAX_CALLERS", 3)
    limiter = RefusalLimiter(limit=2, window=timedelta(seconds=60))
    for actor in ("krb:a@X", "krb:b@X", "krb:c@X"):
        assert limiter.admit(actor, "grant.refused", NOW)[0]
    newcomers = [limiter.admit(f"krb:m{i}@X", "grant.refused", NOW)[0] for i in range(50)]
    assert newcomers.count(True) == 2  # the shared window's limit, not 50
    closed = limiter.due(NOW + timedelta(seconds=60))
    assert (refusal_limits.OVERFLOW, 48) in {(s.actor, s.count) for s in closed}


def test_the_limiter_counts_exactly_across_threads() -> None:
    limiter = RefusalLimiter(limit=7)
    admitted: list[bool] = []
    lock = threading.Lock()

    def loop() -> None:
        for _ in range(250):
            ok, _due = limiter.admit("unix:loop", "approve.refused", NOW)
            with lock:
                admitted.append(ok)

    threads = [threading.Thread(target=loop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert admitted.count(True) == 7
    (summary,) = limiter.due(NOW, everything=True)
    assert summary.count == 8 * 250 - 7
    assert json.loads(json.dumps(summary.event().details))["suppressed"] == summary.count


def test_a_store_that_cannot_write_never_hides_the_refusal(world: World) -> None:  # noqa: F811
    recorder = RefusalRecorder(world.store, RefusalLimiter())
    with world.store.transaction():  # a write already open: the event cannot be written
        assert not recorder.record(
            actor="unix:bob", action="grant.refused", target="gpu01", reason="x", now=NOW
        )


# ---------------------------------------------------------------- through the daemon


@pytest.fixture
def shared_config() -> Iterator[Path]:
    """An initialised broker in a directory other users can traverse (for `nobody`)."""
    path = Path(tempfile.mkdtemp(prefix="broker-refusals-test-", dir="/tmp"))
    path.chmod(0o755)
    config = write_config(path)
    config.chmod(0o644)
    result = run_broker("init", config=config)
    assert result.returncode == 0, result.stderr
    yield config
    shutil.rmtree(path)


def test_a_caller_refused_at_the_door_is_audited_and_a_loop_is_capped(
    shared_config: Path,
) -> None:
    as_nobody = ["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups"]
    with serving(shared_config):
        refused = subprocess.run(
            [*as_nobody, BROKER, "--config", str(shared_config), "elevate", "gpu01",
             "--reason", "INC-1"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert refused.returncode == 1
        assert refused.stderr.strip() == (
            "broker: error: nobody is not a usable directory account: no account 'nobody' in"
            " the directory snapshot; callers must be enabled Active Directory accounts known"
            " to `broker sync`"
        )
        sock = daemon_socket_of(shared_config)
        for _ in range(100):  # root has no directory account either
            status, body = post_json(sock, "/v1/elevate", {"nodes": "gpu01", "reason": "x"})
            assert status == 403 and "root is not a usable directory account" in str(body)
        shown = run_broker(
            "audit", "tail", "--action", "grant.refused", "-n", "200", "--json",
            config=shared_config,
        )  # fmt: skip
        assert shown.returncode == 0, shown.stderr
        events = json.loads(shown.stdout)
        mine = [e for e in events if e["actor"] == "unix:nobody"]
        assert len(mine) == 1 and mine[0]["outcome"] == "refused"
        details = mine[0]["details"]
        assert details["reason"] == refused.stderr.strip().removeprefix("broker: error: ")
        assert details["route"] == "POST /v1/elevate/preview"  # the CLI asks for a preview first
        assert len([e for e in events if e["actor"] == "unix:root"]) == LIMIT
        verified = run_broker("audit", "verify", config=shared_config)
        assert verified.returncode == 0, verified.stdout + verified.stderr
    # Stopping the daemon sums up what the open window suppressed.
    app = App(load_settings(shared_config))
    try:
        found = [
            e.details_obj()
            for e in iter_events(app.store().conn, EventFilter(action="grant.refused"))
            if e.actor == "unix:root"
        ]
        assert len(found) == LIMIT + 1 and found[-1]["suppressed"] == 100 - LIMIT
        assert app.audit().verify().ok
    finally:
        app.close()


def test_the_daemon_handlers_audit_through_the_app_wiring(broker_config: Path) -> None:
    seed_directory(broker_config)
    app = App(load_settings(broker_config))
    try:
        app.policy().apply(LAB_POLICY, "policy.toml", "unix:root")
        bob = app.directory().snapshot().account("bob")
        assert bob is not None
        caller = Caller("unix:bob", "bob", bob.uid, None, bob, False, None)
        params = grants_api.ElevateIn.model_validate({"nodes": "gpu01"})
        with pytest.raises(RefusedError, match="bob may not elevate on gpu01"):
            grants_api.preview(Context(caller, app, params, utcnow()))
        (event,) = iter_events(app.store().conn, EventFilter(action="grant.refused"))
        assert event.actor == "unix:bob" and event.outcome == "refused"
        assert event.details_obj()["step"] == "preview"
        assert app.audit().verify().ok
    finally:
        app.close()
