"""Nothing outlives its grant (docs/elevation.md, "What is contained"): every elevated session
in a cgroup of its own on the node, ended as a whole by revoke, quarantine and expiry, the
last with the broker stopped; what a session used and how it ended in `sessions show`; a root
process that leaves its cgroup raises an alert; a node without a delegated subtree says so.

Each lab node runs `broker-node watch` every 2 s in a cgroup subtree of its own, as
broker-node-watch.service (Delegate=yes) does on a real node.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import run_broker
from tests.lab.conftest import Codes, cli, config_of, ssh_argv

pytestmark = pytest.mark.lab


def node(lab: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in lab["nodes"] if n["name"] == name)


def ssh(lab: dict[str, Any], user: str, node_name: str, command: str) -> list[str]:
    return ssh_argv(lab, user, node(lab, node_name)["address"], command)


def node_path(lab: dict[str, Any], node_name: str, path: str) -> Path:
    if path.startswith("/run/"):
        return Path(f"/proc/{node(lab, node_name)['pid']}/root{path}")
    return Path(node(lab, node_name)["dir"]) / path.lstrip("/")


def pids_of(marker: str) -> list[int]:
    found = subprocess.run(
        ["pgrep", "-f", f"^{marker}"], capture_output=True, text=True, check=False
    )
    return [int(p) for p in found.stdout.split()]


def cgroup_of(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""
    return next((ln[3:] for ln in text.splitlines() if ln.startswith("0::")), "")


def until(check: Callable[[], Any], seconds: float, pause: float = 0.2) -> Any:
    deadline = time.monotonic() + seconds
    while True:
        found = check()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(pause)


@pytest.fixture(scope="module")
def ready(lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Synced; alice and carol (gpu-admins), frank and grace (approvers), ivan (incident
    response) enrolled; nobody holds a grant before or after."""
    if "cgroup" not in lab:
        pytest.fail("this host has no cgroup v2 mount the lab can delegate from")
    assert run_broker("sync", "--full", config=config_of(lab)).returncode == 0
    codes = Codes()
    for user in ("alice", "carol", "frank", "grace", "ivan"):
        codes.enroll(lab, user)
    for user in ("alice", "carol"):
        assert cli(lab, "revoke", "--user", user, "--reason", "clean slate").returncode == 0
    yield {"lab": lab, "codes": codes}
    for user in ("alice", "carol"):
        cli(lab, "revoke", "--user", user, "--reason", "end of the containment tests")


def elevate(ready: dict[str, Any], user: str, approver: str, where: str, duration: str) -> Any:
    lab, codes = ready["lab"], ready["codes"]
    asked = cli(
        lab, "elevate", where, "--for", duration, "--reason", "INC-7001 containment",
        "--json", user=user, stdin=codes.code(user),
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    request = json.loads(asked.stdout)["request"]
    approved = cli(
        lab, "approve", request["id"], "--json", user=approver, stdin=codes.code(approver)
    )
    assert approved.returncode == 0, approved.stderr
    return json.loads(approved.stdout)["grant"]


def leave_behind(mark: str) -> str:
    """What an administrator under a grant might leave running: setsid, nohup, a double
    fork, and a daemon written in shell that closes its descriptors and calls setsid."""
    return (
        "sudo -n sh -c '"
        f"(setsid sleep 1{mark}1 &) ; "
        f'nohup sh -c "sleep 1{mark}2" >/dev/null 2>&1 & '
        f'(sh -c "sleep 1{mark}3 &" &) ; '
        f'sh -c "exec </dev/null >/dev/null 2>&1; setsid sh -c \\"sleep 1{mark}4\\" &" ; '
        "echo started'"
    )


def test_revoke_ends_every_process_the_session_left_behind(ready: dict[str, Any]) -> None:
    lab = ready["lab"]
    grant = elevate(ready, "carol", "grace", "gpu01", "10m")
    mark = f"{secrets.randbelow(9000) + 1000}"
    done = subprocess.run(
        ssh(lab, "carol", "gpu01", leave_behind(mark)), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "started" in done.stdout, done.stderr
    left = until(lambda: len(pids_of(f"sleep 1{mark}")) >= 4 and pids_of(f"sleep 1{mark}"), 10)
    assert len(left) == 4, left
    # All four outlived their sudo, all inside its session cgroup, named for the grant.
    groups = {cgroup_of(p) for p in left}
    assert len(groups) == 1, groups
    (group,) = groups
    assert f"/gpu01/sessions/{grant['id']}-" in group, group

    revoked = cli(lab, "revoke", grant["id"], "--reason", "INC-7001 done", "--json")
    assert revoked.returncode == 0, revoked.stderr
    result = json.loads(revoked.stdout)
    assert result["results"][0]["killed"] >= 4, result
    assert until(lambda: not pids_of(f"sleep 1{mark}"), 2, 0.05) is True
    audit = json.loads(cli(lab, "audit", "tail", "--action", "grant.remove", "--json").stdout)
    assert any(e["details"].get("killed", 0) >= 4 for e in audit), audit
    # The session cgroup is gone with them.
    mount = Path(lab["cgroup"]).parent
    assert not (mount / group.lstrip("/")).exists()


def test_a_revoke_while_the_watcher_is_stopped_still_ends_the_whole_session(
    ready: dict[str, Any], lab_module: ModuleType
) -> None:
    lab = ready["lab"]
    grant = elevate(ready, "carol", "grace", "gpu01", "10m")
    mark = f"{secrets.randbelow(9000) + 1000}"
    done = subprocess.run(
        ssh(lab, "carol", "gpu01", leave_behind(mark)), capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and "started" in done.stdout, done.stderr
    assert until(lambda: len(pids_of(f"sleep 1{mark}")) >= 4, 10)
    info = lab_module.load_info(Path(lab["root"]))
    gpu01 = next(n for n in info["nodes"] if n["name"] == "gpu01")
    lab_module.stop_process(gpu01["watch_pid"])  # SIGTERM: `.cgroup` withdrawn
    try:
        assert until(
            lambda: not node_path(lab, "gpu01", "/run/broker-sessions/.cgroup").exists(), 10
        )
        revoked = cli(lab, "revoke", grant["id"], "--reason", "INC-7001 done", "--json")
        assert revoked.returncode == 0, revoked.stderr
        assert json.loads(revoked.stdout)["results"][0]["killed"] >= 4, revoked.stdout
        # the double fork and the daemon too: the cgroup was killed, not a process tree
        assert until(lambda: not pids_of(f"sleep 1{mark}"), 2, 0.05) is True
    finally:
        lab_module.start_watcher(info, gpu01, delegated=True)
        lab_module.save_info(Path(lab["root"]), info)
    assert until(lambda: node_path(lab, "gpu01", "/run/broker-sessions/.cgroup").exists(), 10)


def test_expiry_ends_a_sudo_i_with_the_broker_stopped(
    ready: dict[str, Any], lab_module: ModuleType
) -> None:
    lab = ready["lab"]
    grant = elevate(ready, "alice", "frank", "gpu02", "40s")
    not_after = time.mktime(time.strptime(grant["not_after"][:19], "%Y-%m-%dT%H:%M:%S"))
    not_after -= time.timezone
    drop_in = node_path(lab, "gpu02", f"/etc/sudoers.d/broker_{grant['id']}")
    info = lab_module.load_info(Path(lab["root"]))
    os.killpg(info["broker"]["pid"], signal.SIGKILL)  # no broker from here on
    try:
        time.sleep(max(0.0, not_after - 10 - time.time()))
        mark = f"{secrets.randbelow(9000) + 1000}"
        opened = time.time()
        session = subprocess.Popen(
            ssh(lab, "alice", "gpu02", f"sudo -n -i sleep 2{mark}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert until(lambda: pids_of(f"sleep 2{mark}"), 8), "the sudo -i did not start"
        assert opened < not_after
        session.communicate(timeout=60)
        ended = time.time()
        assert not pids_of(f"sleep 2{mark}")
        assert ended <= not_after + 15, f"ended {ended - not_after:.1f} s after NOTAFTER"
        grant_file = node_path(lab, "gpu02", f"/var/lib/broker/grants/{grant['id']}")
        assert until(lambda: not drop_in.exists() and not grant_file.exists(), 3) is True
    finally:
        lab_module.restart_broker(Path(lab["root"]))
    # The broker's reap, back, only does the bookkeeping; the close says expiry.
    reaped = cli(lab, "grants", "reap", "--json")
    assert reaped.returncode == 0, reaped.stderr
    audit = json.loads(cli(lab, "audit", "tail", "--action", "session.close", "--json").stdout)
    mine = [e for e in audit if e["target"] == grant["id"]]
    assert mine and mine[-1]["details"]["ended_by"] == "expiry", mine


def newest_session(lab: dict[str, Any], user: str, where: str, mark: str) -> dict[str, Any]:
    def found() -> Any:
        listed = cli(lab, "sessions", "list", "--user", user, "--node", where, "--json")
        rows = [s for s in json.loads(listed.stdout) if mark in " ".join(s["argv"])]
        return rows[0] if rows and rows[0]["state"] != "running" else None

    row = until(found, 20, 0.5)
    assert row, f"no finished recording of {mark}"
    return dict(row)


def test_quarantine_ends_sessions_and_show_has_what_they_used(ready: dict[str, Any]) -> None:
    lab, codes = ready["lab"], ready["codes"]
    elevate(ready, "carol", "grace", "gpu02", "10m")
    mark = f"{secrets.randbelow(9000) + 1000}"
    # Some CPU work, then something left running that only the quarantine ends.
    command = f"sudo -n sh -c 'i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; (setsid sleep 3{mark} &); echo {mark}'"
    done = subprocess.run(ssh(lab, "carol", "gpu02", command), capture_output=True, text=True)
    assert done.returncode == 0 and mark in done.stdout, done.stderr
    assert until(lambda: pids_of(f"sleep 3{mark}"), 10)
    held = cli(
        lab, "node", "quarantine", "gpu02", "--reason", "INC-7002 containment",
        user="ivan", stdin=codes.code("ivan"),
    )  # fmt: skip
    try:
        assert held.returncode == 0, held.stderr
        assert until(lambda: not pids_of(f"sleep 3{mark}"), 2, 0.05) is True
        assert cli(lab, "grants", "reap").returncode == 0  # collects the nodes' events
        row = newest_session(lab, "carol", "gpu02", mark)
        shown = cli(lab, "sessions", "show", row["id"], "--json")
        assert shown.returncode == 0, shown.stderr
        ending = json.loads(shown.stdout)["ending"]
        assert ending["ended_by"] == "quarantine" and ending["killed"] >= 1, ending
        assert ending["contained"] is True
        assert ending["cpu_seconds"] is not None and ending["cpu_seconds"] > 0, ending
        plain = cli(lab, "sessions", "show", row["id"])
        assert "quarantine" in plain.stdout and "CPU" in plain.stdout, plain.stdout
    finally:
        released = cli(lab, "node", "release", "gpu02", user="ivan", stdin=codes.code("ivan"))
        assert released.returncode == 0, released.stderr


def test_a_root_process_that_leaves_its_cgroup_raises_an_alert(ready: dict[str, Any]) -> None:
    lab = ready["lab"]
    elevate(ready, "alice", "frank", "gpu01", "10m")
    mount = Path(lab["cgroup"]).parent
    mark = f"{secrets.randbelow(9000) + 1000}"
    started = time.time()
    escape = (
        f'sudo -n sh -c \'sh -c "echo \\$\\$ > {mount}/cgroup.procs; exec sleep 4{mark}" & '
        "sleep 5'"
    )
    try:
        done = subprocess.run(ssh(lab, "alice", "gpu01", escape), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        (pid,) = pids_of(f"sleep 4{mark}")
        assert cgroup_of(pid) == "/"  # it left

        def raised() -> list[dict[str, Any]]:
            cli(lab, "grants", "reap")  # collects the node's escape event
            listed = cli(lab, "alerts", "list", "--rule", "session-escape", "--json")
            return [
                a for a in json.loads(listed.stdout)
                if a["node"] == "gpu01" and str(pid) in a["message"]
                and time.mktime(time.strptime(a["created_at"][:19], "%Y-%m-%dT%H:%M:%S"))
                - time.timezone >= started - 2
            ]  # fmt: skip

        found = until(raised, 30, 1.0)
        assert len(found) == 1, found
        assert found[0]["severity"] == "high" and found[0]["user"] == "alice"
    finally:
        for pid in pids_of(f"sleep 4{mark}"):
            os.kill(pid, signal.SIGKILL)


def test_a_node_without_a_delegated_subtree_says_so_and_still_ends_sessions(
    ready: dict[str, Any], lab_module: ModuleType
) -> None:
    lab = ready["lab"]
    info = lab_module.load_info(Path(lab["root"]))
    login = next(n for n in info["nodes"] if n["name"] == "login01")
    status = cli(lab, "node", "status", "gpu01,login01", "--json")
    assert status.returncode == 0, status.stderr
    assert {n["containment"] for n in json.loads(status.stdout)} == {"cgroup"}
    # systemd delegated nothing on login01: the watcher runs, says why, contains nothing
    lab_module.start_watcher(info, login, delegated=False)
    try:
        assert not node_path(lab, "login01", "/run/broker-sessions/.cgroup").exists()
        weak = cli(lab, "node", "status", "login01", "--json")
        assert weak.returncode == 1, weak.stdout  # a problem, said on the node's row
        [row] = json.loads(weak.stdout)
        assert row["containment"] == "process-tree" and row["can_grant"] is True
        assert "not contained" in row["problem"] and "double fork" in row["problem"]
        log = (Path(login["dir"]) / "watch.log").read_text()
        assert "containment off: the watcher runs in the root cgroup" in log
        # the watcher stopped altogether: said too
        lab_module.stop_process(login["watch_pid"])
        gone = json.loads(cli(lab, "node", "status", "login01", "--json").stdout)
        assert "broker-node watch is not running" in gone[0]["problem"]
    finally:
        lab_module.start_watcher(info, login, delegated=True)
        lab_module.save_info(Path(lab["root"]), info)
    again = json.loads(cli(lab, "node", "status", "login01", "--json").stdout)
    assert again[0]["containment"] == "cgroup" and again[0]["problem"] is None
