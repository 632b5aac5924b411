"""Keytab rotation against the real lab: the DC, three nodes, a Kerberos service on each.

Keytabs reach the nodes over SFTP (the lab's sshd: `Subsystem sftp internal-sftp`, which
has fsync@openssh.com and posix-rename@openssh.com); the node program only resolves the
owner (`nobody`/`nogroup` from each node's own /etc/passwd and /etc/group), syncs and
verifies. Runs the keytab service layer in a private state directory (tests/lab/keytab_lab.py),
so it needs neither the lab daemon's database nor its code version. Needs the lab's
keytab additions: OU=Keytab Services with svc-broker's delegation (deploy/lab/keytab_ad.py,
applied here too, idempotently) and [service_accounts.kt-web] in deploy/lab/policy.toml.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gssapi
import pytest

from tests.lab import keytab_lab

pytestmark = pytest.mark.lab

NAME = "kt-web"
NODES = ("gpu01", "gpu02", "stor01")
PORT = 7010
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def state(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    os.environ["KRB5_CONFIG"] = lab["krb5_conf"]
    keytab_lab.prepare_ad(lab)
    state_dir = tmp_path_factory.mktemp("keytab-lab") / "state"
    policy = (REPO / "deploy" / "lab" / "policy.toml").read_text()
    nodes = [n for n in lab["nodes"] if n["name"] in NODES]
    app = keytab_lab.private_app(lab, state_dir, policy, nodes)
    keytab_lab.install_node_side(app, list(NODES))
    app.keytabs().create(NAME, actor="test", create_account=True)
    app.close()
    yield state_dir


def _app(lab: dict[str, Any], state_dir: Path) -> Any:
    from broker.app import App
    from broker.config.loader import load_settings

    return App(load_settings(keytab_lab.private_config(lab, state_dir)))


def _consistent(lab: dict[str, Any], state_dir: Path) -> Any:
    app = _app(lab, state_dir)
    try:
        (status,) = [s for s in app.keytabs().status(live=True) if s.name == NAME]
    finally:
        app.close()
    assert status.rotation_state is None, status
    for node in status.nodes:
        assert not node.stale and node.verified_kvno == status.ad_kvno, node
        assert max(node.kvnos) == status.ad_kvno
    return status


@contextlib.contextmanager
def _acceptors(addresses: dict[str, str]) -> Iterator[None]:
    """A GSS-API acceptor with the node's keytab on each node, stopped whatever happens."""
    lab_cmd = str(REPO / "deploy" / "lab" / "lab")
    acceptors: list[subprocess.Popen[str]] = []
    try:
        for node in NODES:
            proc = subprocess.Popen(
                [lab_cmd, "exec", node, "--", "/usr/bin/python3",
                 str(REPO / "tests" / "lab" / "keytab_acceptor.py"),
                 addresses[node], str(PORT), "/etc/broker/kt-web.keytab"],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                start_new_session=True,  # the acceptor inside the node stops with its group
            )  # fmt: skip
            acceptors.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        yield
    finally:
        for proc in acceptors:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            proc.communicate(timeout=10)


def test_rotation_keeps_every_client_working(lab: dict[str, Any], state: Path) -> None:
    addresses = {n["name"]: n["address"] for n in lab["nodes"]}
    with _acceptors(addresses):
        _rotate_under_load(lab, state, addresses)
    _consistent(lab, state)


def _rotate_under_load(lab: dict[str, Any], state: Path, addresses: dict[str, str]) -> None:
    failures: list[str] = []
    successes = [0]
    stop = threading.Event()

    def client() -> None:
        keytab = lab["broker"]["keytab"]
        ccache = f"MEMORY:kt-client-{secrets.token_hex(4)}"
        round_ = 0
        while not stop.is_set():
            round_ += 1
            if round_ % 20 == 0:  # now and then a client without cached tickets
                ccache = f"MEMORY:kt-client-{secrets.token_hex(4)}"
            creds = gssapi.Credentials(
                name=gssapi.Name(lab["broker"]["principal"], gssapi.NameType.kerberos_principal),
                usage="initiate",
                store={"client_keytab": keytab, "ccache": ccache},
            )
            for node in NODES:
                try:
                    ctx = gssapi.SecurityContext(
                        name=gssapi.Name(
                            f"HTTP/{node}.hpc.test@HPC.TEST", gssapi.NameType.kerberos_principal
                        ),
                        creds=creds,
                        usage="initiate",
                        mech=gssapi.MechType.kerberos,
                    )
                    token = ctx.step() or b""
                    with socket.create_connection((addresses[node], PORT), timeout=5) as sock:
                        sock.sendall(struct.pack(">I", len(token)) + token)
                        answer = sock.recv(2)
                    if answer == b"OK":
                        successes[0] += 1
                    else:
                        failures.append(f"{node}: refused")
                except Exception as exc:
                    failures.append(f"{node}: {exc}")

    thread = threading.Thread(target=client)
    thread.start()
    try:
        app = _app(lab, state)
        try:
            for _ in range(3):
                time.sleep(1.0)
                report = app.keytabs().rotate(NAME, actor="test")
                assert report.outcome == "rotated", report
        finally:
            app.close()
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not failures, failures[:5]
    assert successes[0] > 30


# The kill points: before each state write of a rotation (the intent, staged, ad_pending,
# ad_set, done) and before the verification.
KILLER = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from broker.keytabs import nodes, rows
from tests.lab import keytab_lab
import json
lab = json.load(open(sys.argv[2]))
state_dir, kill_at = sys.argv[3], int(sys.argv[4])
count = [0]
def point(original):
    def wrapped(*args, **kwargs):
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    return wrapped
rows.start_rotation = point(rows.start_rotation)
rows.move = point(rows.move)
nodes.KeytabNodes.verify = point(nodes.KeytabNodes.verify)
from broker.app import App
from broker.config.loader import load_settings
from pathlib import Path
app = App(load_settings(keytab_lab.private_config(lab, Path(state_dir))))
app.keytabs().rotate("kt-web", actor="test")
print("finished")
"""


@pytest.mark.parametrize("kill_at", [1, 2, 3, 4, 5, 6])
def test_kill_9_between_steps_then_a_rerun_completes(
    lab: dict[str, Any], state: Path, kill_at: int
) -> None:
    info = Path(lab["root"]) / "lab.json"
    env = {**os.environ, "KRB5_CONFIG": lab["krb5_conf"], "PYTHONPATH": str(REPO)}
    before = _consistent(lab, state).ad_kvno
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, str(REPO), str(info), str(state), str(kill_at)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-500:]
    app = _app(lab, state)
    try:
        report = app.keytabs().rotate(NAME, actor="test")
        if report.outcome in ("abandoned", "superseded"):
            report = app.keytabs().rotate(NAME, actor="test")
    finally:
        app.close()
    assert report.outcome in ("rotated", "verified"), report
    after = _consistent(lab, state)
    assert after.ad_kvno is not None and before is not None and after.ad_kvno > before


def test_keytab_files_are_0600_and_owned_as_the_policy_says(
    lab: dict[str, Any], state: Path
) -> None:
    lab_cmd = str(REPO / "deploy" / "lab" / "lab")
    for node in NODES:
        out = subprocess.run(
            [lab_cmd, "exec", node, "--", "stat", "-c", "%a %U %G", "/etc/broker/kt-web.keytab"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert out == ["600", "nobody", "nogroup"], (node, out)
        # The broker writes over SFTP (docs/keytabs.md): temporary files beside the keytab,
        # `.kt-web.keytab.broker-<hex>`, are renamed or removed, never left behind.
        names = subprocess.run(
            [lab_cmd, "exec", node, "--", "ls", "-A", "/etc/broker"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
        assert not [n for n in names if n.startswith(".kt-web.keytab.broker-")], (node, names)
    app = _app(lab, state)
    try:
        audit = (
            app.ready_store()
            .conn.execute(
                "SELECT action, details FROM audit_events WHERE target = ?", (f"keytab:{NAME}",)
            )
            .fetchall()
        )
    finally:
        app.close()
    assert {
        "keytab.plan",
        "keytab.stage",
        "keytab.ad_pending",
        "keytab.ad_set",
        "keytab.verify",
    } <= {a for a, _ in audit}
    assert all("key" not in json.loads(d) for _a, d in audit)


def test_the_cli_creates_rotates_verifies_and_reports_through_the_daemon(
    lab: dict[str, Any],
) -> None:
    """What an operator types, against the lab daemon (its own store, not the private one)."""
    from tests.helpers import run_broker
    from tests.lab.conftest import config_of

    config = config_of(lab)

    def json_of(*args: str) -> Any:
        done = run_broker("keytab", *args, "--json", config=config)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def consistent() -> int:
        (status,) = [a for a in json_of("status", "--live") if a["name"] == NAME]
        assert status["rotation_state"] is None and status["ad_kvno"] is not None
        assert sorted(n["node"] for n in status["nodes"]) == sorted(NODES)
        for node in status["nodes"]:
            assert not node["stale"] and node["verified_kvno"] == status["ad_kvno"], node
            assert max(node["kvnos"]) == status["ad_kvno"]
        assert status["next_due_at"] is not None
        return int(status["ad_kvno"])

    (created,) = json_of("create", NAME)
    assert created["outcome"] == "rotated", created
    first = consistent()
    (rotated,) = json_of("rotate", NAME)
    assert (rotated["outcome"], rotated["from_kvno"], rotated["kvno"]) == (
        "rotated", first, first + 1
    )  # fmt: skip
    assert consistent() == first + 1
    (verified,) = json_of("verify", NAME)
    assert verified["outcome"] == "verified"
    # Just rotated: not due; accounts whose keytab was never made are not scheduled.
    assert NAME not in [r["name"] for r in json_of("rotate", "--due")]
    table = run_broker("keytab", "status", config=config)
    assert table.returncode == 0 and "not created" in table.stdout


# Accounts rotated side by side (keytabs.rotate_workers): a run killed in the middle, with
# several accounts' rotations open at once, is finished by the next runs.
PARALLEL = ("kt-par1", "kt-par2", "kt-par3")
PARALLEL_KILLER = r"""
import os, signal, sys, threading
sys.path.insert(0, sys.argv[1])
from broker.keytabs import rows
from tests.lab import keytab_lab
import json
lab = json.load(open(sys.argv[2]))
config, kill_at = sys.argv[3], int(sys.argv[4])
count, guard = [0], threading.Lock()
original = rows.move
def move(*args, **kwargs):
    with guard:
        count[0] += 1
        if count[0] == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
rows.move = move
from pathlib import Path
from broker.app import App
from broker.config.loader import load_settings
app = App(load_settings(Path(config)))
app.keytabs().rotate_due(actor="test", every=True)
print("finished")
"""


def _parallel_policy() -> str:
    # The lab's own service accounts left out: kt-web is the module's, the others are on
    # nodes this test does not pin, and rotate --all would take them all.
    text = (REPO / "deploy" / "lab" / "policy.toml").read_text()
    text = re.sub(r"\n\[service_accounts\.[^\]]+\]\n(?:[^\n\[#][^\n]*\n)*", "\n", text)
    for name in PARALLEL:
        spns = ", ".join(f'"{name.replace("kt-", "")}/{n}.hpc.test"' for n in NODES)
        text += (
            f'\n[service_accounts.{name}]\nprincipals = [{spns}]\nnodes = "gpu[01-02],stor01"\n'
            f'keytab = "/etc/broker/{name}.keytab"\nmode = "0600"\nrotate_every = "1h"\n'
        )
    return text


def test_a_parallel_run_killed_midway_is_finished_by_the_next(
    lab: dict[str, Any], state: Path, tmp_path: Path
) -> None:
    nodes = [n for n in lab["nodes"] if n["name"] in NODES]
    state_dir = tmp_path / "state"
    workers = "rotate_workers = 3\n"
    app = keytab_lab.private_app(lab, state_dir, _parallel_policy(), nodes, keytabs=workers)
    try:
        for name in PARALLEL:
            assert app.keytabs().create(name, actor="test", create_account=True).outcome == (
                "rotated"
            )
        before = {s.name: s.ad_kvno for s in app.keytabs().status()}
    finally:
        app.close()
    config = keytab_lab.private_config(lab, state_dir, workers)
    env = {**os.environ, "KRB5_CONFIG": lab["krb5_conf"], "PYTHONPATH": str(REPO)}
    info = Path(lab["root"]) / "lab.json"
    # The 5th state write: the first accounts are past staging, the others not yet.
    killed = subprocess.run(
        [sys.executable, "-c", PARALLEL_KILLER, str(REPO), str(info), str(config), "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-500:]
    app = _app(lab, state_dir)
    try:
        with app.ready_store().transaction() as conn:
            held = conn.execute("SELECT count(*) FROM keytab_claims").fetchone()[0]
        assert held >= 2  # the killed workers' claims, left behind, lapse with the process
        for _ in range(3):
            reports = app.keytabs().rotate_due(actor="test", every=True)
            if all(r.outcome in ("rotated", "verified") for r in reports):
                break
        assert [(r.name, r.outcome in ("rotated", "verified")) for r in reports] == [
            (name, True) for name in PARALLEL
        ], reports
        for status in app.keytabs().status(live=True):
            assert status.rotation_state is None, status
            assert status.ad_kvno is not None and status.ad_kvno > (before[status.name] or 0)
            for node in status.nodes:
                assert not node.stale and node.verified_kvno == status.ad_kvno, node
        with app.ready_store().transaction() as conn:
            assert conn.execute("SELECT count(*) FROM keytab_claims").fetchone()[0] == 0
        assert app.audit().verify().ok
    finally:
        app.close()
