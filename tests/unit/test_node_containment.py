"""Containment on the node (pam/broker_node cgroups.py, watch.py, escapes.py) against real
cgroup v2: each test makes a cgroup subtree of its own below the host's cgroup2 mount and
removes it (with anything left in it) at the end. The node's files are under a temporary
root whose sys/fs/cgroup leads to the real mount, as `.cgroup` names it on a node.
"""

from __future__ import annotations

import io
import json
import os
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import load_node_module
from tests.node_tree import NodeTree, bn, bn_now, now_s

cgroups = load_node_module("cgroups")
watch = load_node_module("watch")
escapes = load_node_module("escapes")


def cgroup2_mount() -> Path | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        if " - cgroup2 " in line and len(fields) > 4:
            return Path(fields[4])
    return None


MOUNT = cgroup2_mount()


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeTree]:
    """A node tree whose `.cgroup` names a fresh real cgroup (removed afterwards)."""
    if MOUNT is None or not (MOUNT / "cgroup.procs").exists():
        pytest.skip("no cgroup v2 mount on this machine")
    tree = NodeTree(tmp_path / "node")
    base = MOUNT / f"broker-unit-{secrets.token_hex(4)}"
    (base / "sessions").mkdir(parents=True)
    link = tree.root / MOUNT.relative_to("/")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(MOUNT)
    sessions = tree.root / "run/broker-sessions"
    sessions.mkdir(parents=True, mode=0o700)
    (sessions / ".cgroup").write_text(f"{base}/sessions\n")
    (sessions / ".cgroup").chmod(0o644)
    try:
        yield tree
    finally:
        (base / "cgroup.kill").write_text("1")
        deadline = time.monotonic() + 5
        while "populated 1" in (base / "cgroup.events").read_text():
            assert time.monotonic() < deadline, "the test cgroup did not empty"
            time.sleep(0.02)
        for top, dirs, _files in os.walk(base, topdown=False):
            for name in dirs:
                os.rmdir(os.path.join(top, name))
        base.rmdir()


def session_group(node: NodeTree, grant_id: str, pid: int, ticks: int) -> Path:
    root = cgroups.session_root(node.paths)
    assert root is not None
    group = Path(root) / f"{grant_id}-{pid}-{ticks}"
    group.mkdir()
    return group


def ticks_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def start_in(group: Path, command: str) -> subprocess.Popen[bytes]:
    """A shell already in `group` when it starts `command` (as sudo is when its command
    starts: the module moved it at the account check)."""
    return subprocess.Popen(
        ["sh", "-c", f"echo $$ > {group}/cgroup.procs && exec sh -c '{command}'"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def pgrep(marker: str) -> list[int]:
    done = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True, check=False)
    return [int(p) for p in done.stdout.split()]


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = predicate()
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.02)


def spooled(node: NodeTree) -> list[dict[str, Any]]:
    events = node.root / "var/spool/broker/events"
    return [json.loads(p.read_text()) for p in sorted(events.iterdir())]


def leave_behind(group: Path, mark: str) -> subprocess.Popen[bytes]:
    """setsid, nohup, a double fork and a shell daemon, from a shell that then exits."""
    script = (
        f"(setsid sleep 7{mark}1 &) ; nohup sleep 7{mark}2 >/dev/null 2>&1 & "
        f'(sh -c "sleep 7{mark}3 &" &) ; '
        f'sh -c "exec </dev/null >/dev/null 2>&1; setsid sleep 7{mark}4 &"'
    )
    return start_in(group, script)


def test_the_cgroup_root_rule_is_the_modules(node: NodeTree) -> None:
    assert cgroups.is_root_path("/sys/fs/cgroup/system.slice/broker-node-watch.service/sessions")
    for bad in ("/sys/fs/cgroup/", "/sys/fs/cgroup/a/../b", "/sys/fs/cgroup/a//b", "/tmp/x",
                "/sys/fs/cgroup/a/", "/sys/fs/cgroup/a b", "/sys/fs/cgroup/" + "a" * 190):  # fmt: skip
        assert not cgroups.is_root_path(bad), bad
    assert cgroups.split_session("g0123456789abcdef-42-777") == ("g0123456789abcdef", 42, 777)
    assert cgroups.split_session("break-glass-42-0") == ("break-glass", 42, 0)
    for bad in ("g0123456789abcdef-42", "x-1-2", "g0123456789abcdef--2", "../g-1-2"):
        assert cgroups.split_session(bad) is None, bad


def test_revoke_ends_what_an_exited_session_left_running(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    mark = f"{secrets.randbelow(9000) + 1000}"
    shell = leave_behind(session_group(node, grant.id, 4242, 1), mark)
    shell.wait(timeout=5)  # the "sudo" is gone; what it started is not
    left = wait_for(lambda: len(pgrep(f"sleep 7{mark}")) == 4 and pgrep(f"sleep 7{mark}"))
    assert left and len(left) == 4
    out = io.StringIO()
    assert (
        bn.node_main(["revoke"], io.StringIO(json.dumps({"ids": [grant.id]})), out, node.paths) == 0
    )
    reply = json.loads(out.getvalue())
    assert reply["revoked"] == [grant.id] and reply["errors"] == []
    assert set(left) <= set(reply["killed"])
    assert pgrep(f"sleep 7{mark}") == []
    assert cgroups.session_cgroups(cgroups.session_root(node.paths)) == []
    [usage] = [e for e in spooled(node) if e["kind"] == "usage"]
    assert usage["ended_by"] == "revoke" and usage["killed"] >= 4 and usage["pid"] == 4242
    assert isinstance(usage["cpu_usec"], int) and usage["grant_id"] == grant.id


def test_a_recorded_session_is_ended_by_its_cgroup_and_its_close_says_so(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    mark = f"{secrets.randbelow(9000) + 1000}"
    # the "sudo": a shell waiting on a setsid child, recorded as pam_broker.so records it
    sudo = subprocess.Popen(
        ["sh", "-c", f"read go; (setsid sleep 8{mark} &); exec sleep 8{mark}0"],
        stdin=subprocess.PIPE,
    )
    group = session_group(node, grant.id, sudo.pid, ticks_of(sudo.pid))
    (group / "cgroup.procs").write_text(str(sudo.pid))
    assert sudo.stdin is not None
    sudo.stdin.write(b"go\n")
    sudo.stdin.close()
    records = node.root / "run/broker-sessions" / grant.id
    records.mkdir(mode=0o700)
    (records / str(sudo.pid)).write_text(
        f"alice root pts/4 {bn.format_utc(bn_now())} {ticks_of(sudo.pid)} {group.name}\n"
    )
    (records / str(sudo.pid)).chmod(0o600)
    wait_for(lambda: len(pgrep(f"sleep 8{mark}")) == 2)
    ended, errors = load_node_module("revoke").end_sessions(
        node.paths, grant.id, bn_now(), "end-session"
    )
    assert errors == [] and sudo.pid in ended
    sudo.wait(timeout=5)
    assert pgrep(f"sleep 8{mark}") == []
    [close] = [e for e in spooled(node) if e["kind"] == "close"]
    assert close["ended_by"] == "end-session" and close["contained"] is True
    assert close["killed"] >= 2 and close["user"] == "alice"


def test_the_watcher_ends_sessions_of_an_expired_grant_and_removes_it(node: NodeTree) -> None:
    grant = node.grant(
        not_before=now_s() - timedelta(minutes=10), not_after=now_s() - timedelta(seconds=1)
    )
    path = node.install(grant)
    drop_in = node.root / "etc/sudoers.d" / f"broker_{grant.id}"
    drop_in.write_text("# the grant's drop-in\n")
    drop_in.chmod(0o440)
    mark = f"{secrets.randbelow(9000) + 1000}"
    leave_behind(session_group(node, grant.id, 4343, 1), mark).wait(timeout=5)
    assert wait_for(lambda: len(pgrep(f"sleep 7{mark}")) == 4)
    done = watch.watch_pass(node.paths, bn_now(), escapes.Memory())
    assert done["ended"] == {grant.id: 4}
    assert pgrep(f"sleep 7{mark}") == []
    assert not path.exists() and not drop_in.exists()
    [usage] = [e for e in spooled(node) if e["kind"] == "usage"]
    assert usage["ended_by"] == "expiry"


def test_a_live_grant_is_left_alone_and_an_emptied_cgroup_reports_its_use(node: NodeTree) -> None:
    grant = node.grant()
    path = node.install(grant)
    group = session_group(node, grant.id, 4444, 1)
    start_in(group, "i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done").wait(timeout=30)
    done = watch.watch_pass(node.paths, bn_now(), escapes.Memory())
    assert done["ended"] == {} and done["emptied"] == 1 and path.exists()
    assert not group.exists()
    [usage] = [e for e in spooled(node) if e["kind"] == "usage"]
    assert usage["ended_by"] == "exit" and usage["killed"] == 0 and usage["cpu_usec"] > 0


def test_a_process_that_moves_out_of_its_session_cgroup_is_reported_once(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    mark = f"{secrets.randbelow(9000) + 1000}"
    sudo = subprocess.Popen(["sleep", f"9{mark}"])
    group = session_group(node, grant.id, sudo.pid, ticks_of(sudo.pid))
    try:
        (group / "cgroup.procs").write_text(str(sudo.pid))
        memory = escapes.Memory()
        root = cgroups.session_root(node.paths)
        mount = str(node.root / MOUNT.relative_to("/"))  # type: ignore[union-attr]
        assert escapes.find_escapes(node.paths, root, mount, memory, bn_now()) == 0
        # it leaves for the parent of the broker's subtree
        (group.parent.parent / "cgroup.procs").write_text(str(sudo.pid))
        assert escapes.find_escapes(node.paths, root, mount, memory, bn_now()) == 1
        assert escapes.find_escapes(node.paths, root, mount, memory, bn_now()) == 0
        [event] = [e for e in spooled(node) if e["kind"] == "escape"]
        assert event["pid"] == sudo.pid and event["session_pid"] == sudo.pid
        assert event["grant_id"] == grant.id and "left" in event["how"]
        # its emptied cgroup is kept while its sudo runs elsewhere
        assert watch.watch_pass(node.paths, bn_now(), memory)["emptied"] == 0
    finally:
        sudo.send_signal(signal.SIGKILL)
        sudo.wait(timeout=5)


def test_status_says_when_no_watcher_runs(node: NodeTree) -> None:
    status = io.StringIO()
    assert bn.node_main(["status"], io.StringIO("{}"), status, node.paths) == 0
    reply = json.loads(status.getvalue())
    assert reply["containment"] == "process-tree" and reply["watcher"] is False
    assert any("broker-node watch is not running" in p for p in reply["problems"])


def test_a_quarantine_revoke_says_so_in_what_it_ends(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    mark = f"{secrets.randbelow(9000) + 1000}"
    leave_behind(session_group(node, grant.id, 4545, 1), mark).wait(timeout=5)
    assert wait_for(lambda: len(pgrep(f"sleep 7{mark}")) == 4)
    payload = {"ids": [grant.id], "ended_by": "quarantine"}
    out = io.StringIO()
    assert bn.node_main(["revoke"], io.StringIO(json.dumps(payload)), out, node.paths) == 0
    assert json.loads(out.getvalue())["revoked"] == [grant.id]
    assert pgrep(f"sleep 7{mark}") == []
    [usage] = [e for e in spooled(node) if e["kind"] == "usage"]
    assert usage["ended_by"] == "quarantine"
    bad = io.StringIO()
    wrong = {"ids": [grant.id], "ended_by": "expiry"}
    assert bn.node_main(["revoke"], io.StringIO(json.dumps(wrong)), bad, node.paths) == 2


def record(node: NodeTree, grant_id: str, pid: int, group: Path) -> None:
    """The session record pam_broker.so writes at the account check."""
    records = node.root / "run/broker-sessions" / grant_id
    records.mkdir(mode=0o700, exist_ok=True)
    (records / str(pid)).write_text(
        f"alice root pts/4 {bn.format_utc(bn_now())} {ticks_of(pid)} {group.name}\n"
    )
    (records / str(pid)).chmod(0o600)


def test_a_removed_session_cgroup_is_an_escape_and_revoke_still_ends_its_sudo(
    node: NodeTree,
) -> None:
    grant = node.grant()
    node.install(grant)
    mark = f"{secrets.randbelow(9000) + 1000}"
    sudo = subprocess.Popen(["sleep", f"9{mark}"])
    try:
        group = session_group(node, grant.id, sudo.pid, ticks_of(sudo.pid))
        (group / "cgroup.procs").write_text(str(sudo.pid))
        record(node, grant.id, sudo.pid, group)
        root = cgroups.session_root(node.paths)
        mount = str(node.root / MOUNT.relative_to("/"))  # type: ignore[union-attr]
        memory = escapes.Memory()
        assert escapes.find_escapes(node.paths, root, mount, memory, bn_now()) == 0
        # root inside leaves and removes its emptied cgroup between two passes (cgroup v2
        # refuses a rename: the other way to make the session's name point nowhere)
        with pytest.raises(PermissionError):
            group.rename(group.parent / "x")
        (group.parent.parent / "cgroup.procs").write_text(str(sudo.pid))
        group.rmdir()
        fresh = escapes.Memory()  # a watcher that never saw it inside (restarted meanwhile)
        assert escapes.find_escapes(node.paths, root, mount, fresh, bn_now()) == 1
        [event] = [e for e in spooled(node) if e["kind"] == "escape"]
        assert event["pid"] == sudo.pid and "cgroup was removed" in event["how"]
        # the revoke cannot kill the cgroup by its name: the recorded sudo goes by its tree
        ended, _errors = load_node_module("revoke").end_sessions(
            node.paths, grant.id, bn_now(), "revoke"
        )
        assert sudo.pid in ended
        sudo.wait(timeout=5)
    finally:
        sudo.kill()
        sudo.wait(timeout=5)


def test_a_revoke_while_no_watcher_runs_still_kills_the_session_cgroups(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    root = cgroups.session_root(node.paths)
    assert root is not None
    cgroups.publish_root(node.paths, root[len(str(node.root)) :])  # as the watcher did
    mark = f"{secrets.randbelow(9000) + 1000}"
    leave_behind(session_group(node, grant.id, 4646, 1), mark).wait(timeout=5)
    assert wait_for(lambda: len(pgrep(f"sleep 7{mark}")) == 4)
    cgroups.withdraw_root(node.paths)  # the watcher stopped: new sessions are not contained
    assert cgroups.session_root(node.paths) is None
    out = io.StringIO()
    payload = io.StringIO(json.dumps({"ids": [grant.id]}))
    assert bn.node_main(["revoke"], payload, out, node.paths) == 0
    assert pgrep(f"sleep 7{mark}") == [], "the double fork survived a revoke"
    assert len(json.loads(out.getvalue())["killed"]) >= 4


def test_one_failing_stage_does_not_stop_expiry(
    node: NodeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = node.grant(
        not_before=now_s() - timedelta(minutes=10), not_after=now_s() - timedelta(seconds=1)
    )
    node.install(grant)
    mark = f"{secrets.randbelow(9000) + 1000}"
    leave_behind(session_group(node, grant.id, 4747, 1), mark).wait(timeout=5)
    assert wait_for(lambda: len(pgrep(f"sleep 7{mark}")) == 4)

    def vanished(*_args: object) -> None:
        raise FileNotFoundError(2, "No such file or directory", ".broker-tmp-1")

    monkeypatch.setattr(watch, "reap", vanished)
    done = watch.watch_pass(node.paths, bn_now(), escapes.Memory())
    assert done["ended"] == {grant.id: 4} and pgrep(f"sleep 7{mark}") == []
    assert done["errors"] == ["reaped: [Errno 2] No such file or directory: '.broker-tmp-1'"]


def test_released_controllers_let_the_next_watcher_start_beside_live_sessions(
    node: NodeTree,
) -> None:
    root = cgroups.session_root(node.paths)
    assert root is not None
    unit = Path(root).parent
    offered = (unit / "cgroup.controllers").read_text().split()
    if "pids" not in offered and "memory" not in offered:
        pytest.skip("no domain controller offered to a test cgroup on this machine")
    (unit / "supervisor").mkdir()
    watch._enable_controllers(str(unit))
    watch._enable_controllers(root)
    sleeper = start_in(session_group(node, "g" + "5" * 16, 4848, 1), "sleep 60")
    newcomer = subprocess.Popen(["sleep", "60"])
    try:
        assert wait_for(lambda: "populated 1" in (unit / "cgroup.events").read_text())
        # what systemd does to start the next watcher: its process into the unit's cgroup
        with pytest.raises(OSError, match="Device or resource busy"):
            (unit / "cgroup.procs").write_text(str(newcomer.pid))
        cgroups.release_controllers(str(unit))
        (unit / "cgroup.procs").write_text(str(newcomer.pid))
        assert sleeper.poll() is None, "the session still runs"
    finally:
        for process in (sleeper, newcomer):
            process.kill()
            process.wait(timeout=5)
