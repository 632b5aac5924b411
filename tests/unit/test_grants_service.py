"""The grant flows over a real store: approvals, races, expiry, re-checks, removals.

The nodes are a fake of the SSH pool (the same `run` interface) that answers like the node
program; the real node program and real sudo are exercised in tests/lab/test_elevation.py.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.app import App
from broker.audit.refusals import RefusalLimiter, RefusalRecorder
from broker.core.errors import RefusedError
from broker.core.identity import Account, MemorySnapshot
from broker.fleet import hostkeys, inventory
from broker.fleet.ssh import CommandResult, NodeTarget
from broker.grants import rows
from broker.grants.delivery import GrantRules
from broker.grants.service import GrantService
from broker.notify.notices import RequestNotices
from broker.policy.load import load_policy
from broker.policy.model import Policy
from tests.unit.policy_samples import LAB_POLICY, NOW, account

ALICE = account("alice", "gpu-admins", "hpc-admins")
CAROL = account("carol", "gpu-admins", "hpc-admins")
FRANK = account("frank", "hpc-approvers")
GRACE = account("grace", "hpc-approvers")


class FakeNodes:
    """Answers `broker-node` commands as a healthy node would; `replies` overrides one."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.replies: dict[tuple[str, str], str] = {}

    def run(
        self,
        target: NodeTarget,
        argv: list[str],
        stdin: bytes | None = None,
        *,
        timeout: float = 60,
        max_output: int = 0,
    ) -> CommandResult:
        command = argv[-1]
        payload = json.loads(stdin or b"{}")
        self.calls.append((target.name, command, payload))
        reply = self.replies.get((target.name, command))
        if reply is None:
            reply = json.dumps(
                {
                    "install-grant": {"ok": True, "live": True, "error": None},
                    "revoke": {"revoked": payload.get("ids", []), "killed": [], "errors": []},
                    "collect": {"events": [], "errors": []},
                }.get(command, {})
            )
        return CommandResult(target.name, 0, reply + "\n", "", None, 1.0)

    def map(self, work: Any, items: list[Any]) -> list[Any]:
        return [work(item) for item in items]


class World:
    def __init__(self, app: App, tmp: Path, notices: RequestNotices | None = None) -> None:
        self.app = app
        self.notices = notices
        self.store = app.ready_store()
        self.nodes = FakeNodes()
        self.accounts = {a.name: a for a in (ALICE, CAROL, FRANK, GRACE)}
        self.policy_text = LAB_POLICY
        for name in ("gpu01", "gpu02"):
            inventory.add(self.store, name, f"10.0.0.{name[-1]}", 22, "test")
            key = Ed25519PrivateKey.generate().public_key()
            blob = key.public_bytes(
                serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
            )
            b64 = blob.split()[1].decode()
            inventory.pin(
                self.store,
                name,
                "ssh-ed25519",
                b64,
                hostkeys.fingerprint(base64.b64decode(b64)),
                "test",
                known_hosts=tmp / "known_hosts",
                owner=None,
            )
            inventory.record_status(
                self.store,
                [inventory.Observation(name, "1", "sudo", "1.9.13p3", True, 0.0)],
                "test",
            )
        self.service = self.build(GrantRules(max_skew=timedelta(seconds=60), log_port=30343))

    def build(self, rules: GrantRules) -> GrantService:
        return GrantService(
            store=self.store,
            pool=self.nodes,  # type: ignore[arg-type]
            signing_key=Ed25519PrivateKey.generate(),
            rules=rules,
            policy=self.policy,
            snapshot=lambda now: MemorySnapshot.of(self.accounts.values()),
            mfa=lambda account, code, purpose, actor: None,
            refusals=RefusalRecorder(self.store, RefusalLimiter()),
            notices=self.notices,
        )

    def policy(self) -> tuple[str, Policy]:
        return "0" * 64, load_policy(self.policy_text, "policy.toml").policy

    def request(self, user: Account = ALICE, nodes: str = "gpu01") -> str:
        result = self.service.elevate(
            user,
            nodes=nodes,
            duration=timedelta(minutes=30),
            reason="INC-1",
            role="gpu-root",
            commands=None,
            code="123456",
            actor=f"unix:{user.name}",
            now=NOW,
        )
        assert result.request is not None and result.grant is None
        return result.request.id


@pytest.fixture
def world(broker_app: App, tmp_path: Path) -> Iterator[World]:
    yield World(broker_app, tmp_path)


def test_one_approval_grants_and_pushes_a_signed_grant(world: World) -> None:
    request_id = world.request()
    result = world.service.approve(request_id, FRANK, code="1", actor="unix:frank", now=NOW)
    assert result.grant is not None and result.grant.approvers == ("frank",)
    assert [(o.node, o.ok) for o in result.outcomes] == [("gpu01", True)]
    sent = [p for node, cmd, p in world.nodes.calls if cmd == "install-grant"]
    assert sent[0]["user"] == "alice" and "signature=" in sent[0]["grant"]
    assert "INC-1" not in sent[0]["sudoers"]
    # sudo on the node streams the session to its own tunnel (sessions.node_listen loopback).
    assert "log_servers=127.0.0.1:30343, " in sent[0]["sudoers"]
    assert world.service.request(request_id).state == "granted"


def test_node_address_listen_names_each_node_in_its_own_drop_in(world: World) -> None:
    world.service = world.build(
        GrantRules(max_skew=timedelta(seconds=60), log_listen="node-address", log_port=4711)
    )
    request_id = world.request(nodes="gpu[01-02]")
    world.service.approve(request_id, FRANK, code="1", actor="unix:frank", now=NOW)
    sent = {node: p["sudoers"] for node, cmd, p in world.nodes.calls if cmd == "install-grant"}
    assert "log_servers=10.0.0.1:4711, " in sent["gpu01"]
    assert "log_servers=10.0.0.2:4711, " in sent["gpu02"]


def test_the_requester_and_outsiders_may_not_approve(world: World) -> None:
    request_id = world.request()
    with pytest.raises(RefusedError, match=r"alice requested .* may not approve"):
        world.service.approve(request_id, ALICE, code="1", actor="unix:alice", now=NOW)
    with pytest.raises(RefusedError, match="carol is not in an approver group"):
        world.service.approve(request_id, CAROL, code="1", actor="unix:carol", now=NOW)


def test_a_request_denied_meanwhile_never_becomes_a_grant(world: World) -> None:
    request_id = world.request()
    request = world.service.request(request_id)
    world.service.deny(request_id, GRACE, reason="no", code="1", actor="unix:grace", now=NOW)
    # The approval that was already past its checks when the deny committed:
    with pytest.raises(RefusedError, match="no longer pending"):
        world.service._grant_request(request, ("frank",), "unix:frank", NOW, None)
    assert rows.grants(world.store.conn) == []
    assert world.service.request(request_id).state == "denied"


def test_an_unapproved_request_expires_and_is_denied_never_granted(world: World) -> None:
    request_id = world.request()
    report = world.service.reap(NOW + timedelta(minutes=31))
    assert report.requests_expired == [request_id]
    assert world.service.request(request_id).state == "expired"
    with pytest.raises(RefusedError, match="is expired, not pending"):
        world.service.approve(
            request_id, FRANK, code="1", actor="unix:frank", now=NOW + timedelta(minutes=32)
        )
    assert rows.grants(world.store.conn) == []


def test_an_approver_disabled_since_approving_does_not_count(world: World) -> None:
    request_id = world.request()
    world.accounts["frank"] = account("frank", "hpc-approvers", state="disabled")
    result = world.service._grant_request(
        world.service.request(request_id), ("frank",), "unix:frank", NOW, None
    )
    assert result.grant is None and world.service.request(request_id).state == "pending"


def test_a_tightened_role_revokes_grants_it_no_longer_allows(world: World) -> None:
    request_id = world.request()
    grant = world.service.approve(request_id, FRANK, code="1", actor="unix:frank", now=NOW).grant
    assert grant is not None and grant.login
    assert world.service.recheck(actor="broker", cause="policy", now=NOW) == []
    world.policy_text = LAB_POLICY.replace("login = true\n", "", 1)
    assert world.service.recheck(actor="broker", cause="policy", now=NOW) == [grant.id]
    ended = world.service.grant(grant.id)
    assert (
        ended.state == "revoked"
        and ended.end_reason == "policy: role gpu-root no longer allows login"
    )
    assert ("gpu01", "revoke", {"ids": [grant.id]}) in world.nodes.calls


def test_leaving_the_group_revokes_at_the_next_recheck(world: World) -> None:
    grant = world.service.approve(
        world.request(), FRANK, code="1", actor="unix:frank", now=NOW
    ).grant
    assert grant is not None
    world.accounts["alice"] = account("alice", "hpc-users")
    assert world.service.recheck(actor="broker", cause="directory", now=NOW) == [grant.id]
    assert world.service.grant(grant.id).end_reason == (
        "directory: alice is in none of the groups bound to gpu-root (gpu-admins)"
    )


def test_a_malformed_revoke_reply_keeps_the_removal_pending_and_others_go_on(world: World) -> None:
    grant = world.service.approve(
        world.request(nodes="gpu[01-02]"), FRANK, code="1", actor="unix:frank", now=NOW
    ).grant
    assert grant is not None
    world.nodes.replies[("gpu01", "revoke")] = json.dumps(
        {"revoked": [], "killed": 5, "errors": []}
    )
    result = world.service.revoke(ids=[grant.id], actor="unix:root", reason="INC", now=NOW)
    assert result.revoked == (grant.id,)
    assert result.pending == ((grant.id, "gpu01"),)
    states = {n.node: n.state for n in rows.grant_nodes(world.store.conn, grant.id)}
    assert states == {"gpu01": "removing", "gpu02": "removed"}
    del world.nodes.replies[("gpu01", "revoke")]
    report = world.service.reap(NOW + timedelta(seconds=30))
    assert report.removed == [(grant.id, "gpu01")] and report.still_pending == []


def test_revoke_by_node_ends_the_grant_on_all_its_nodes(world: World) -> None:
    grant = world.service.approve(
        world.request(nodes="gpu[01-02]"), FRANK, code="1", actor="unix:frank", now=NOW
    ).grant
    assert grant is not None
    result = world.service.revoke(node="gpu02", actor="unix:root", reason="node", now=NOW)
    assert result.revoked == (grant.id,) and result.pending == ()
    assert {o.node for o in result.outcomes} == {"gpu01", "gpu02"}


def test_a_node_error_reaches_the_store_short_and_printable(world: World) -> None:
    world.nodes.replies[("gpu01", "install-grant")] = json.dumps(
        {"ok": False, "live": False, "error": "\x1b[31mred" + "x" * 5000}
    )
    result = world.service.approve(world.request(), FRANK, code="1", actor="unix:frank", now=NOW)
    assert result.outcomes[0].ok is False
    error = rows.grant_nodes(world.store.conn, result.grant.id)[0].error  # type: ignore[union-attr]
    assert error is not None and len(error) <= 320 and "\x1b" not in error


def test_a_requester_whose_name_cannot_be_a_unix_name_is_refused_early(world: World) -> None:
    dotted = account("john.smith", "gpu-admins")
    with pytest.raises(
        RefusedError, match=r"requester name 'john\.smith' is not a POSIX user name"
    ):
        world.service.elevate(
            dotted,
            nodes="gpu01",
            duration=None,
            reason="x",
            role=None,
            commands=None,
            code="1",
            actor="unix:john.smith",
            now=NOW,
        )


def test_a_node_whose_sudo_cannot_record_gets_no_grant(world: World) -> None:
    inventory.record_status(
        world.store, [inventory.Observation("gpu02", "1", "sudo-rs", "0.2.4", False, 0.0)], "test"
    )
    with pytest.raises(RefusedError) as caught:
        world.service.elevate(
            ALICE,
            nodes="gpu[01-02]",
            duration=None,
            reason="x",
            role="gpu-root",
            commands=None,
            code="1",
            actor="unix:alice",
            now=NOW,
        )
    assert caught.value.message == (
        "no grants on gpu02: gpu02: sudo-rs cannot record sessions (no I/O logging)"
    )
    assert rows.requests(world.store.conn) == [] and world.nodes.calls == []


def test_a_deferred_push_lands_from_another_thread(world: World) -> None:
    request_id = world.request(nodes="gpu[01-02]")
    result = world.service.approve(
        request_id, FRANK, code="1", actor="unix:frank", now=NOW, push_now=False
    )
    assert result.grant is not None and result.outcomes == ()
    states = {n.state for n in rows.grant_nodes(world.store.conn, result.grant.id)}
    assert states == {"pending"}
    outcomes = world.service.push_pending(result.grant.id, now=NOW)
    assert sorted(o.node for o in outcomes if o.ok) == ["gpu01", "gpu02"]
    assert world.service.push_pending(result.grant.id, now=NOW) == []
