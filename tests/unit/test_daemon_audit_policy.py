"""The audit and policy routes of the daemon: request validation, who may call what, paging."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from broker.app import App
from broker.audit import writer
from broker.audit.query import PAGE_MAX
from broker.client.client import Client
from broker.client.transport import Target
from broker.config.loader import load_settings
from broker.core.errors import BadRequestError, RefusedError, UsageError
from broker.core.timeutil import utcnow
from broker.daemon import api  # noqa: F401 (registers the routes)
from broker.daemon.api import policy as policy_api
from broker.daemon.api.audit import EventsQuery
from broker.daemon.api.names import POLICY_TEXT_MAX
from broker.daemon.caller import Access, Caller
from broker.daemon.routing import REGISTRY, Context
from broker.wire.audit import VerifyOut
from broker.wire.policy import ExplainOut
from tests.helpers import INIT_EVENTS, daemon_socket_of, run_broker
from tests.unit.policy_samples import LAB_POLICY
from tests.unit.test_policy_cli import seed_directory

# ---------------------------------------------------------------- request models


def test_event_filters_are_validated_and_normalised() -> None:
    q = EventsQuery.model_validate(
        {"since": "2026-11-22T08:00:00Z", "action": "store.*", "actor": "krb:alice@HPC.TEST"}
    )
    # The store's own text form, so that comparing text compares time.
    assert q.since == "2026-11-22T08:00:00.000000Z"
    assert EventsQuery.model_validate({"limit": "7", "newest_first": "true"}).limit == 7


@pytest.mark.parametrize(
    "params",
    [
        {"since": "2h"},
        {"since": "2026-13-01T00:00:00Z"},
        {"until": "2026-11-22T08:00:00+01:00"},
        {"until": "２０２６-11-22T08:00:00Z"},  # full-width digits
        {"action": "store.*' OR 1=1 --"},
        {"action": "Store.*"},
        {"action": "x" * 65},
        {"actor": "unix:root\n"},
        {"actor": "unix:ro ot"},
        {"after_seq": -1},
        {"after_seq": 2**64},
        {"before_seq": 0},
        {"limit": PAGE_MAX + 1},
        {"limit": 0},
        {"newest_first": "maybe"},
        {"seq": 1},
    ],
)
def test_bad_event_filters_are_refused(params: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        EventsQuery.model_validate(params)


@pytest.mark.parametrize(
    "body",
    [
        {"text": 123, "source": "p.toml"},
        {"text": ["a"], "source": "p.toml"},
        {"text": b"x", "source": "p.toml"},
        {"text": "x" * (POLICY_TEXT_MAX + 1), "source": "p.toml"},
        {"text": "", "source": ""},
        {"text": "", "source": "p.toml\nINJECTED"},
        {"text": "", "source": "p\u202etoml"},  # right-to-left override
        {"text": "", "source": "x" * 1025},
        {"text": ""},
        {"text": "", "source": "p.toml", "actor": "unix:someone-else"},
    ],
)
def test_bad_policy_bodies_are_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        policy_api.PolicyFile.model_validate(body)


def test_routes_and_who_may_call_them() -> None:
    routes = {(r.method, r.path): r.access for r in REGISTRY.routes}
    assert routes[("GET", "/v1/audit/verify")] is Access.OPERATOR
    assert routes[("GET", "/v1/audit/events")] is Access.OPERATOR
    assert routes[("POST", "/v1/audit/seal")] is Access.OPERATOR
    for path in ("/v1/policy/check", "/v1/policy/plan", "/v1/policy/apply"):
        assert routes[("POST", path)] is Access.OPERATOR
    assert routes[("GET", "/v1/policy")] is Access.OPERATOR
    assert routes[("POST", "/v1/policy/explain")] is Access.SELF_OR_OPERATOR


# ---------------------------------------------------------------- explain: self or operator


def _user(app: App, name: str) -> Caller:
    account = app.directory().snapshot().account(name)
    assert account is not None
    return Caller(f"unix:{name}", name, account.uid, None, account, False, None)


def _explain(app: App, caller: Caller, **params: Any) -> ExplainOut:
    request = policy_api.ExplainRequest.model_validate(params)
    caller.require(Access.SELF_OR_OPERATOR)
    return policy_api.explain(Context(caller, app, request, utcnow()))


@pytest.fixture
def seeded(broker_config: Path) -> Iterator[App]:
    seed_directory(broker_config)
    app = App(load_settings(broker_config))
    app.policy().apply(LAB_POLICY, "policy.toml", "unix:root")
    yield app
    app.close()


def test_explain_is_self_service_for_directory_users(seeded: App) -> None:
    alice, bob = _user(seeded, "alice"), _user(seeded, "bob")
    mine = _explain(seeded, alice, user="HPC\\alice", node="gpu01")
    assert mine.verdict == "allow" and mine.user == "alice"
    assert _explain(seeded, bob, user="bob@HPC.TEST", node="gpu01").verdict == "deny"
    with pytest.raises(RefusedError, match="bob may only"):
        _explain(seeded, bob, user="alice", node="gpu01")
    with pytest.raises(RefusedError, match="bob may only"):
        _explain(seeded, bob, user="mallory", node="gpu01")
    operator = Caller("unix:root", "root", 0, None, None, True, "not in the directory")
    assert _explain(seeded, operator, user="alice", node="gpu01").verdict == "allow"
    assert (
        "not in the directory snapshot"
        in _explain(seeded, operator, user="mallory", node="gpu01").reason
    )
    stranger = Caller("unix:eve", "eve", 4242, None, None, False, "no account 'eve'")
    with pytest.raises(RefusedError, match="not a usable directory account"):
        stranger.require(Access.SELF_OR_OPERATOR)
    with pytest.raises(RefusedError, match="is not a broker operator"):
        bob.require(Access.OPERATOR)


def test_explain_checks_its_arguments_again(seeded: App) -> None:
    operator = Caller("unix:root", "root", 0, None, None, True, None)
    with pytest.raises(UsageError, match="names 2 nodes"):
        _explain(seeded, operator, user="alice", node="gpu[01-02]")
    with pytest.raises(UsageError, match="bad user name"):
        _explain(seeded, operator, user="$alice", node="gpu01")
    with pytest.raises(UsageError, match="bad role name"):
        _explain(seeded, operator, user="alice", node="gpu01", role="GPU-root")
    with pytest.raises(UsageError, match="bad duration"):
        _explain(seeded, operator, user="alice", node="gpu01", duration="90x")


def test_only_operators_may_explain_against_a_policy_text(seeded: App) -> None:
    alice = _user(seeded, "alice")
    other = LAB_POLICY.replace('zones = ["compute"]\n', 'zones = ["storage"]\n', 1)
    with pytest.raises(RefusedError) as caught:
        _explain(seeded, alice, user="alice", node="gpu01", policy_text=other)
    assert caught.value.message == (
        "only operators may explain against a policy text; ask about the active policy"
    )
    # Refused before the text is read: not even a huge one is parsed for a user.
    huge = "a=" + "[" * 5000 + "]" * 5000
    with pytest.raises(RefusedError, match="only operators may explain against a policy text"):
        _explain(seeded, alice, user="alice", node="gpu01", policy_text=huge)
    assert _explain(seeded, alice, user="alice", node="gpu01").verdict == "allow"
    operator = Caller("unix:root", "root", 0, None, None, True, None)
    judged = _explain(seeded, operator, user="alice", node="gpu01", policy_text=other)
    assert judged.policy_sha256 == hashlib.sha256(other.encode()).hexdigest()


# ---------------------------------------------------------------- over the socket


def _client(config: Path) -> Client:
    return Client(Target(socket_path=daemon_socket_of(config)), timeout=30)


def test_raw_requests_are_refused_and_the_daemon_keeps_serving(daemon: Path) -> None:
    c = _client(daemon)
    for body in (
        {"text": 123, "source": "p.toml"},
        {"text": "", "source": "p\u202etoml"},
        {"text": "x", "source": "p.toml", "extra": True},
    ):
        with pytest.raises(BadRequestError, match="invalid request"):
            c.post_raw("/v1/policy/check", body)
    with pytest.raises(BadRequestError, match="exceeds 2097152 bytes"):
        c.post_raw("/v1/policy/check", {"text": "x" * 2_100_000, "source": "p.toml"})
    with pytest.raises(BadRequestError, match="invalid request: text"):
        c.post_raw("/v1/policy/check", {"text": "x" * 1_100_000, "source": "p.toml"})
    with pytest.raises(BadRequestError, match="invalid request: action"):
        c.get_raw("/v1/audit/events", action="*' OR 1=1")
    with pytest.raises(BadRequestError, match="invalid request: since"):
        c.get_raw("/v1/audit/events", since="yesterday")
    with pytest.raises(BadRequestError, match="not allowed"):
        c.post_raw("/v1/audit/verify")
    assert c.get("/v1/audit/verify", VerifyOut).ok is True


def test_tail_and_export_page_through_long_chains(daemon: Path, tmp_path: Path) -> None:
    extra = PAGE_MAX + 700
    app = App(load_settings(daemon))
    with app.ready_store().transaction() as conn:
        writer.record_many(
            conn,
            [
                writer.EventInput("unix:test", "test.bulk", f"t{i}", details={"i": i})
                for i in range(extra)
            ],
        )
    app.close()
    total = INIT_EVENTS + extra
    tail = run_broker("audit", "tail", "-n", str(PAGE_MAX + 500), "--json", config=daemon)
    assert tail.returncode == 0, tail.stderr
    seqs = [e["seq"] for e in json.loads(tail.stdout)]
    assert seqs == list(range(total - PAGE_MAX - 499, total + 1))
    target = tmp_path / "all.jsonl"
    assert run_broker("audit", "export", "-o", str(target), config=daemon).returncode == 0
    exported = [json.loads(line) for line in target.read_text().splitlines()]
    assert [e["seq"] for e in exported] == list(range(1, total + 1))
    assert exported[-1]["details"] == {"i": extra - 1}
    only = run_broker("audit", "tail", "--actor", "unix:root", "--json", config=daemon)
    actors = {e["actor"] for e in json.loads(only.stdout)}
    assert only.returncode == 0 and actors == {"unix:root"}
