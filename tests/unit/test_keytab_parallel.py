"""Many accounts at once (keytabs.rotate_workers, docs/keytabs.md "Many accounts at once"):
rotations side by side on their own store connections, the same steps and audit events per
account as one by one, a contiguous chain, and the store's claim keeping every account on
one worker, across threads and across processes (a claim of a killed process lapses).

The nodes are tests/unit/test_keytabs.py's LocalNodes (the node program run as over SSH,
SFTP in process); AD is a fake with a key version per account that notes how many password
changes are in flight at once."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
from pydantic import ValidationError

from broker.app import App
from broker.config.settings import KeytabsSection
from broker.core.errors import RefusedError
from broker.core.timeutil import to_text
from broker.fleet.ssh import CommandResult, NodeTarget
from broker.keytabs import claims, keys, rows
from broker.keytabs import keytabfile as kf
from broker.keytabs.ad import AdAccount
from broker.keytabs.service import KeytabRules, KeytabService
from broker.policy.model import Policy, ServiceAccount
from tests.unit.test_keytabs import NOW, Clock, LocalNodes

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="keytab directories must be root's")

HOST = re.escape(socket.gethostname())
ELSEWHERE = f"broker2.hpc.test:4242:1234:{'cd' * 8}"  # a claim of another broker host
STEPS = ["keytab.plan", "keytab.stage", "keytab.ad_pending", "keytab.ad_set", "keytab.verify"]


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    """Where the nodes keep the keytabs: a directory of root's, 0755 (one for both nodes)."""
    directory = tmp_path / "etc-broker"
    directory.mkdir(mode=0o755)
    return directory


class ManyAD:
    """A key version per account; the password changes in flight at once are counted."""

    def __init__(self) -> None:
        self.kvno: dict[str, int] = {}
        self.resets: dict[str, int] = {}
        self.in_flight = 0
        self.most_in_flight = 0
        self.on_set: dict[str, Any] = {}
        # The first `rendezvous` password changes wait (10 s at most) until that many are in
        # flight: side by side they meet at once, one after another they never do.
        self.rendezvous = 1
        self.arrivals = 0
        self._lock = threading.Condition()

    def lookup(self, account: str) -> AdAccount:
        kvno = self.kvno.setdefault(account, 1)
        return AdAccount(f"CN={account},OU=Svc,DC=hpc,DC=test", account, kvno, None, (), False)

    def set_password(self, account: AdAccount, password: keys.Secret) -> None:
        hook = self.on_set.get(account.account)
        if hook is not None:
            hook()
        with self._lock:
            self.in_flight += 1
            self.arrivals += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            self._lock.notify_all()
            if self.arrivals <= self.rendezvous:  # the first ones wait for each other
                self._lock.wait_for(lambda: self.in_flight >= self.rendezvous, timeout=10)
        time.sleep(0.01)
        with self._lock:
            self.in_flight -= 1
            self.kvno[account.account] += 1
            self.resets[account.account] = self.resets.get(account.account, 0) + 1

    def create(self, account: str, spns: Sequence[str], ou: str, password: keys.Secret) -> Any:
        raise AssertionError("not used")

    def close(self) -> None:
        pass


class ManyNodes(LocalNodes):
    """LocalNodes whose verification asks ManyAD for the version of the keytab's account."""

    def __init__(self, ad: ManyAD, accounts: dict[str, str]) -> None:
        super().__init__()
        self.many = ad
        self.accounts = accounts  # keytab path -> AD account

    def _verify(self, target: NodeTarget, payload: dict[str, Any]) -> CommandResult:
        held = kf.parse(Path(payload["path"]).read_bytes())
        kvno = self.many.kvno[self.accounts[payload["path"]]]
        results = []
        for item in payload["tokens"]:
            name = kf.Principal.parse(item["principal"])
            ok = any(e.principal == name and e.kvno == kvno for e in held)
            results.append({"principal": item["principal"], "ok": ok, "client": "", "error": ""})
        reply = {"ok": True, "path": payload["path"], "results": results}
        return CommandResult(target.name, 0, json.dumps(reply), "", None, 1.0)


def many_service(
    app: App, node_dir: Path, count: int, workers: int
) -> tuple[KeytabService, ManyAD, ManyNodes]:
    accounts = {}
    for i in range(1, count + 1):
        accounts[f"kt-{i:02d}"] = ServiceAccount(
            name=f"kt-{i:02d}",
            account=f"svc-{i:02d}",
            principals=(f"HTTP/web{i:02d}.hpc.test",),
            nodes=frozenset({"gpu01", "gpu02"}),
            keytab=PurePosixPath(node_dir / f"kt-{i:02d}.keytab"),
            owner="root",
            group="root",
            mode=0o600,
            keep_old_kvnos=1,
        )
    policy = Policy.build(
        zones={}, command_sets={}, roles={}, bindings=(), service_accounts=accounts
    )
    ad = ManyAD()
    nodes = ManyNodes(ad, {str(s.keytab): s.account for s in accounts.values()})
    service = KeytabService(
        store=app.ready_store(),
        pool=nodes,  # type: ignore[arg-type]
        policy=lambda: policy,
        directory=lambda: ad,
        tokens=lambda principals: {p: "dG9rZW4=" for p in principals},
        rules=KeytabRules("HPC.TEST", timedelta(hours=10)),
        salts=lambda principal, enctypes: {
            e: keys.SaltInfo(e, b"HPC.TEST" + principal.partition("@")[0].encode(), b"")
            for e in enctypes
        },
        clock=Clock(),
        open_store=app.worker_store,
        workers=workers,
    )
    service._targets = lambda s: [NodeTarget(n, "127.0.0.1", 22) for n in sorted(s.nodes)]  # type: ignore[method-assign,assignment]
    return service, ad, nodes


def actions_by_account(app: App) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with app.ready_store().transaction() as conn:
        for target, action in conn.execute(
            "SELECT target, action FROM audit_events WHERE action LIKE 'keytab.%' ORDER BY seq"
        ):
            found.setdefault(target.removeprefix("keytab:"), []).append(action)
    return found


@needs_root
def test_accounts_rotate_side_by_side_with_the_same_steps_and_one_chain(
    broker_app: App, node_dir: Path
) -> None:
    service, ad, nodes = many_service(broker_app, node_dir, count=6, workers=3)
    ad.rendezvous = 2
    reports = service.rotate_due(actor="test", every=True)
    assert [(r.name, r.outcome, r.from_kvno, r.kvno) for r in reports] == [
        (f"kt-{i:02d}", "rotated", 1, 2) for i in range(1, 7)
    ]
    # Side by side, and never more at once than the setting allows.
    assert 2 <= ad.most_in_flight <= 3
    assert ad.resets == {f"svc-{i:02d}": 1 for i in range(1, 7)}
    # Each account went through every step once, in order, each step one audit event,
    # and the events of all workers form one unbroken chain.
    assert actions_by_account(broker_app) == {f"kt-{i:02d}": STEPS for i in range(1, 7)}
    assert broker_app.audit().verify().ok
    with broker_app.ready_store().transaction() as conn:
        states = {r[0] for r in conn.execute("SELECT state FROM keytab_rotations")}
        left = conn.execute("SELECT count(*) FROM keytab_claims").fetchone()[0]
    assert states == {"done"} and left == 0
    for i in range(1, 7):
        held = kf.parse((node_dir / f"kt-{i:02d}.keytab").read_bytes())
        assert {e.kvno for e in held} == {2}
    # Per account and node: a first listing (never seen before), a keytab to stage, a
    # verification. The prune found nothing to remove in what the nodes read back: it asked
    # no node. Installs of several accounts on one node may share a run (coalesce.py).
    commands = [argv[-1] for _node, argv, _stdin in nodes.calls]
    assert commands.count("keytab-list") == 12 and commands.count("keytab-verify") == 12
    runs = [json.loads(s) for _n, a, s in nodes.calls if a[-1] == "keytab-install"]
    assert sum(len(run["keytabs"]) for run in runs) == 12 and 6 <= len(runs) <= 12
    assert set(commands) == {"keytab-list", "keytab-install", "keytab-verify"}


@needs_root
def test_one_worker_is_one_by_one_on_the_callers_connection(
    broker_app: App, node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service, ad, _nodes = many_service(broker_app, node_dir, count=3, workers=1)
    monkeypatch.setattr(broker_app, "worker_store", lambda: pytest.fail("no second connection"))
    reports = service.rotate_due(actor="test", every=True)
    assert [r.outcome for r in reports] == ["rotated"] * 3 and ad.most_in_flight == 1


@needs_root
def test_an_account_claimed_by_a_live_worker_is_refused_and_audited(
    broker_app: App, node_dir: Path
) -> None:
    service, ad, _nodes = many_service(broker_app, node_dir, count=2, workers=2)
    holder = claims.new_owner()  # this process: alive
    with broker_app.ready_store().transaction() as conn:
        rows.set_claim(conn, "kt-01", holder, NOW)
    with pytest.raises(
        RefusedError,
        match=f"a rotation of kt-01 is already running \\(pid {os.getpid()} on {HOST}\\)",
    ):
        service.rotate("kt-01", actor="test")
    reports = service.rotate_due(actor="test", every=True)
    assert [(r.name, r.outcome) for r in reports] == [("kt-01", "failed"), ("kt-02", "rotated")]
    assert "already running" in reports[0].message
    assert "svc-01" not in ad.resets  # AD never asked for the claimed account
    assert actions_by_account(broker_app)["kt-01"] == ["keytab.busy", "keytab.busy"]
    with broker_app.ready_store().transaction() as conn:
        (owner,) = conn.execute("SELECT owner FROM keytab_claims").fetchone()
    assert owner == holder  # the refusal left the holder's claim alone


@needs_root
def test_a_claim_of_a_killed_process_lapses_and_the_rotation_runs(
    broker_app: App, node_dir: Path
) -> None:
    service, ad, _nodes = many_service(broker_app, node_dir, count=1, workers=1)
    proc = subprocess.Popen(["sleep", "30"])
    start = claims.process_start(proc.pid)
    assert start is not None
    dead = f"{socket.gethostname()}:{proc.pid}:{start}:{'ab' * 8}"
    assert claims.is_live(dead, NOW, NOW)
    proc.kill()
    proc.wait()
    assert not claims.is_live(dead, NOW, NOW)
    with broker_app.ready_store().transaction() as conn:
        rows.set_claim(conn, "kt-01", dead, NOW)
    assert service.rotate("kt-01", actor="test").outcome == "rotated"
    assert ad.resets == {"svc-01": 1}


@needs_root
def test_a_second_connection_cannot_rotate_an_account_being_rotated(
    broker_app: App, node_dir: Path
) -> None:
    """Two services on two store connections, as two processes would be: while the first
    is setting the password in AD, the second is refused by the store, not by memory."""
    first, ad, _nodes = many_service(broker_app, node_dir, count=1, workers=1)
    other_store = broker_app.worker_store()
    second, _ad, _ = many_service(broker_app, node_dir, count=1, workers=1)
    second._bind(other_store)
    second._directory = lambda: ad
    refused: list[str] = []

    def meanwhile() -> None:
        try:
            second.rotate("kt-01", actor="other")
        except RefusedError as exc:
            refused.append(exc.one_line())

    ad.on_set["svc-01"] = meanwhile
    try:
        assert first.rotate("kt-01", actor="test").outcome == "rotated"
    finally:
        other_store.close()
    assert len(refused) == 1 and "already running" in refused[0]
    assert ad.resets == {"svc-01": 1}


@pytest.mark.parametrize("workers", [0, 7, -1])
def test_rotate_workers_is_bounded(workers: int) -> None:
    with pytest.raises(ValidationError, match="rotate_workers"):
        KeytabsSection(rotate_workers=workers)
    assert KeytabsSection().rotate_workers == 4


def claim_row(app: App) -> tuple[str, str] | None:
    with app.ready_store().transaction() as conn:
        row = conn.execute("SELECT owner, claimed_at FROM keytab_claims").fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def rotation_state(app: App) -> str:
    with app.ready_store().transaction() as conn:
        (state,) = conn.execute("SELECT state FROM keytab_rotations ORDER BY id DESC").fetchone()
    return str(state)


@needs_root
def test_a_live_holders_claim_is_never_taken_however_old(broker_app: App, node_dir: Path) -> None:
    """A rotation stuck for days (an LDAP call, a lock) keeps its account: while its
    process runs on this host, no second worker resumes the rotation under it."""
    service, ad, nodes = many_service(broker_app, node_dir, count=1, workers=1)
    holder = claims.new_owner()
    with broker_app.ready_store().transaction() as conn:
        rows.set_claim(conn, "kt-01", holder, NOW - timedelta(days=30))
    with pytest.raises(RefusedError, match=f"already running \\(pid {os.getpid()} on {HOST}\\)"):
        service.rotate("kt-01", actor="test")
    assert ad.resets == {} and nodes.calls == []
    assert claim_row(broker_app) == (holder, to_text(NOW - timedelta(days=30)))  # untouched
    assert claims.is_live(holder, NOW - 1000 * claims.CLAIM_TTL, NOW)
    # Another host's claim (its process cannot be seen from here) or one that does not
    # parse, such as the holder text before host names, stands until the TTL has passed.
    for owner in (ELSEWHERE, "garbage", f"{os.getpid()}:1234:{'ab' * 8}"):
        assert claims.is_live(owner, NOW - claims.CLAIM_TTL + timedelta(seconds=1), NOW)
        assert not claims.is_live(owner, NOW - claims.CLAIM_TTL, NOW)


@needs_root
@pytest.mark.parametrize("when", ["deriving", "in_ad"])
def test_a_worker_whose_claim_was_taken_stops_before_its_next_ad_or_node_step(
    broker_app: App, node_dir: Path, when: str
) -> None:
    """Another broker host takes the claim over while this worker waits on the KDC (keys
    being derived, nothing staged yet) or on AD (the password change): this worker stages,
    sets, verifies and prunes nothing more; it refuses with one line and an audit event and
    leaves the open rotation to the new holder, which resumes it once its claim is its own."""
    service, ad, nodes = many_service(broker_app, node_dir, count=1, workers=1)
    calls_then: list[int] = []

    def take_over() -> None:
        calls_then.append(len(nodes.calls))
        with broker_app.ready_store().transaction() as conn:
            rows.set_claim(conn, "kt-01", ELSEWHERE, NOW)

    if when == "deriving":
        salts = service._salts

        def deriving(principal: str, enctypes: Sequence[int]) -> dict[int, keys.SaltInfo]:
            if not calls_then:
                take_over()
            return salts(principal, enctypes)

        service._salts = deriving
    else:
        ad.on_set["svc-01"] = take_over
    with pytest.raises(RefusedError, match="claim was taken over \\(now pid 4242 on broker2") as e:
        service.rotate("kt-01", actor="test")
    assert e.value.exit_code == 1 and "stopped before touching AD or the nodes" in str(e.value)
    assert len(nodes.calls) == calls_then[0]  # not one node call after the takeover
    steps = actions_by_account(broker_app)["kt-01"]
    if when == "deriving":
        assert ad.resets == {} and rotation_state(broker_app) == "planned"
        assert steps == ["keytab.plan", "keytab.claim_lost"]
    else:
        assert ad.resets == {"svc-01": 1} and rotation_state(broker_app) == "ad_pending"
        assert steps == [*STEPS[:3], "keytab.claim_lost"]
    assert claim_row(broker_app) == (ELSEWHERE, to_text(NOW))  # left with its new holder
    # The other host's claim lapses an hour after its last step; the rotation is resumed.
    service._clock.now = NOW + claims.CLAIM_TTL  # type: ignore[attr-defined]
    report = service.rotate("kt-01", actor="test")
    assert report.outcome == ("rotated" if when == "deriving" else "verified")
    assert claim_row(broker_app) is None


@needs_root
def test_every_step_refreshes_the_claim(broker_app: App, node_dir: Path) -> None:
    """A rotation that waits long on one step keeps its claim fresh at the next: a claim
    of another host's worker, judged by its age, is never taken while it still makes steps."""
    service, ad, _nodes = many_service(broker_app, node_dir, count=1, workers=1)
    clock = service._clock
    seen: list[tuple[str, str] | None] = []
    salts = service._salts

    def slow(principal: str, enctypes: Sequence[int]) -> dict[int, keys.SaltInfo]:
        clock.now += timedelta(minutes=50)  # type: ignore[attr-defined]
        return salts(principal, enctypes)

    service._salts = slow
    ad.on_set["svc-01"] = lambda: seen.append(claim_row(broker_app))
    assert service.rotate("kt-01", actor="test").outcome == "rotated"
    assert seen and seen[0] is not None
    assert seen[0][1] == to_text(NOW + timedelta(minutes=50))  # stamped at ad_pending


@needs_root
@pytest.mark.parametrize("broken", ["start time", "host name"])
def test_no_claim_is_taken_without_a_holder_that_names_a_live_process(
    broker_app: App, node_dir: Path, monkeypatch: pytest.MonkeyPatch, broken: str
) -> None:
    """Without its start time (or its host's name) a holder could be mistaken for a dead
    one and its claim taken at once: refused before anything is written, never pid:0."""
    service, ad, nodes = many_service(broker_app, node_dir, count=1, workers=1)
    if broken == "start time":
        monkeypatch.setattr(claims, "process_start", lambda pid: None)
    else:
        monkeypatch.setattr(claims.socket, "gethostname", lambda: "bad host;")
    with pytest.raises(RefusedError, match="cannot take a rotation claim") as e:
        service.rotate("kt-01", actor="test")
    assert e.value.exit_code == 1
    assert claim_row(broker_app) is None and ad.resets == {} and nodes.calls == []
    assert actions_by_account(broker_app)["kt-01"] == ["keytab.busy"]
