"""The node program (`broker-node`): status, install-grant, revoke, reap, collect, ack.

Run in-process against a node tree under a temporary root, with the real
visudo, sudo and processes; the one test that needs sudo to read the
installed drop-in runs in a private mount namespace, never touching /etc.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from broker.grants.grantfile import encode_signed
from tests.helpers import load_node_module
from tests.node_tree import NODE, PAM_DIR, NodeTree, bn, bn_now, checker, now_s

drift = load_node_module("drift")
install = load_node_module("install")
spool = load_node_module("spool")

GOOD_SUDOERS = (
    "# managed by the broker; do not edit\n"
    "Defaults:{user} use_pty, log_input, log_output, !ignore_iolog_errors\n"
    "Defaults:{user} log_servers=127.0.0.1:30343, log_server_timeout=10, log_server_keepalive\n"
    "{user} ALL = (root) NOTBEFORE={nb} NOTAFTER={na} TIMEOUT=1800 "
    "NOPASSWD: LOG_INPUT: LOG_OUTPUT: ALL\n"
)


@pytest.fixture
def node(tmp_path: Path) -> NodeTree:
    return NodeTree(tmp_path / "node")


def call(node: NodeTree, command: str, payload: Any = None) -> tuple[int, dict[str, Any]]:
    stdin = io.StringIO("" if payload is None else json.dumps(payload))
    stdout = io.StringIO()
    code = bn.node_main([command], stdin, stdout, node.paths)
    return code, json.loads(stdout.getvalue())


def install_payload(node: NodeTree, **changes: Any) -> tuple[dict[str, str], Any]:
    grant = node.grant(**changes)
    sudoers = GOOD_SUDOERS.format(
        user=grant.user,
        nb=grant.not_before.strftime("%Y%m%d%H%M%SZ"),
        na=grant.not_after.strftime("%Y%m%d%H%M%SZ"),
    )
    payload = {
        "id": grant.id,
        "user": grant.user,
        "grant": encode_signed(grant, node.key),
        "sudoers": sudoers,
        "broker_time": time.time(),
        "max_skew": 60,
    }
    return payload, grant


def files(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir())


def sudo_lists_the_rule(monkeypatch: pytest.MonkeyPatch, grant: Any) -> None:
    """This tree's grants are not in the real /etc/sudoers.d: let `sudo -l` answer as a node
    whose sudo reads them would (visudo still runs for real)."""
    real = bn.install.run_program
    stamp = "%Y%m%d%H%M%SZ"
    rule = (
        f"    ({grant.runas}) NOTBEFORE={grant.not_before.strftime(stamp)}"
        f" NOTAFTER={grant.not_after.strftime(stamp)} TIMEOUT=1800 NOPASSWD: ALL\n"
    )

    def run(argv: list[str], timeout: float = 30) -> tuple[int, str]:
        return (0, rule) if argv[0] == "sudo" else real(argv, timeout)

    monkeypatch.setattr(bn.install, "run_program", run)


# ---------------------------------------------------------------- status


def test_status_reports_node_sudo_and_grants(node: NodeTree) -> None:
    good = node.grant()
    node.install(good)
    expired = node.grant(
        not_before=now_s() - timedelta(hours=2), not_after=now_s() - timedelta(hours=1)
    )
    node.install(expired)
    code, status = call(node, "status")
    assert code == 0
    assert (status["node"], status["hook_version"]) == ("gpu01", "2")
    assert abs(status["time"] - time.time()) < 5
    assert status["sudo"]["flavour"] == "sudo" and status["sudo"]["version"].startswith("1.")
    assert status["sudo"]["io_logging"] is True
    by_id = {g["id"]: g for g in status["grants"]}
    assert by_id[good.id]["valid"] is True and by_id[good.id]["problem"] is None
    assert by_id[expired.id]["valid"] is False and "expired" in by_id[expired.id]["problem"]
    assert by_id[good.id]["user"] == "alice"
    assert status["bootstrapped"] is False, "no PAM block in etc/pam.d/sudo yet"
    (node.root / "etc/pam.d/sudo").write_text("# BEGIN broker\n# END broker\n")
    assert call(node, "status")[1]["bootstrapped"] is True


# ---------------------------------------------------------------- install-grant


def test_install_grant_writes_both_files_with_final_modes(
    node: NodeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, grant = install_payload(node)
    sudo_lists_the_rule(monkeypatch, grant)
    code, reply = call(node, "install-grant", payload)
    assert code == 0 and reply == {"ok": True, "live": True, "error": None}, reply
    grant_file = node.root / "var/lib/broker/grants" / grant.id
    drop_in = node.root / "etc/sudoers.d" / f"broker_{grant.id}"
    assert grant_file.read_text() == payload["grant"]
    assert drop_in.read_text() == payload["sudoers"]
    assert grant_file.stat().st_mode & 0o7777 == 0o600
    assert drop_in.stat().st_mode & 0o7777 == 0o440
    assert files(node.root / "var/lib/broker/grants") == [grant.id]
    assert files(node.root / "etc/sudoers.d") == [f"broker_{grant.id}"]
    assert node.status_of(grant.id)["valid"] is True


def test_a_rule_sudo_does_not_list_is_taken_off_again(node: NodeTree) -> None:
    # sudo reads the real /etc/sudoers.d and knows no alice here: a node where the user is
    # unknown. The broker records the push as failed; nothing of it may stay installed.
    payload, grant = install_payload(node)
    code, reply = call(node, "install-grant", payload)
    assert code == 0 and reply["ok"] is False and reply["live"] is False, reply
    assert reply["error"].startswith("sudo -l -U alice ")
    assert reply["error"].endswith("; its files were removed again")
    assert files(node.root / "var/lib/broker/grants") == []
    assert files(node.root / "etc/sudoers.d") == []
    # Not marked revoked: `broker grants retry` may install it there once the user exists.
    assert not (node.root / "var/lib/broker/revoked" / grant.id).exists()


def test_install_grant_refuses_a_bad_drop_in_and_leaves_nothing(node: NodeTree) -> None:
    payload, _ = install_payload(node)
    payload["sudoers"] = "alice ALL = (root) NOPASSWD ALL\n"
    code, reply = call(node, "install-grant", payload)
    assert code == 0 and reply["ok"] is False and "visudo refused" in reply["error"]
    assert files(node.root / "var/lib/broker/grants") == []
    assert files(node.root / "etc/sudoers.d") == []


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda n, p: p.update(grant=p["grant"].replace("user=alice", "user=bob")), "match"),
        (lambda n, p: p.update(grant=p["grant"].replace("runas=root", "runas=rooT")), "bad runas"),
        (lambda n, p: p.update(grant=p["grant"].replace("runas=root", "runas=daem")), "signature"),
        (lambda n, p: p.update(grant=p["grant"] + "x=1\n"), "number of lines"),
        (lambda n, p: p.update(grant=p["grant"].replace("max_", "máx_")), "not ASCII"),
        (
            lambda n, p: (n.root / "var/lib/broker/revoked" / p["id"]).write_text("x"),
            "revoked",
        ),
        (lambda n, p: (n.root / "etc/broker/node.conf").unlink(), "not bootstrapped"),
    ],
)
def test_install_grant_verifies_the_grant_like_the_module(
    node: NodeTree, damage: Any, expected: str
) -> None:
    payload, _ = install_payload(node)
    damage(node, payload)
    code, reply = call(node, "install-grant", payload)
    assert code == 0 and reply["ok"] is False and expected in reply["error"], reply
    assert files(node.root / "var/lib/broker/grants") == []
    assert files(node.root / "etc/sudoers.d") == []


def test_install_grant_accepts_a_future_grant_but_not_an_expired_one(
    node: NodeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, grant = install_payload(
        node, not_before=now_s() + timedelta(hours=1), not_after=now_s() + timedelta(hours=2)
    )
    sudo_lists_the_rule(monkeypatch, grant)
    assert call(node, "install-grant", payload)[1]["ok"] is True
    payload, _ = install_payload(
        node, not_before=now_s() - timedelta(hours=2), not_after=now_s() - timedelta(hours=1)
    )
    reply = call(node, "install-grant", payload)[1]
    assert reply["ok"] is False and "expired" in reply["error"]


@pytest.mark.parametrize(
    "change",
    [
        {"id": "../../../etc/passwd"},
        {"id": "g0123"},
        {"user": "alice\nroot ALL=(ALL) ALL"},
        {"user": "%admin"},
        {"extra": "1"},
        {"sudoers": "alice ALL=(ALL) ALL\x00"},
        {"grant": 5},
        {"broker_time": "now"},
        {"max_skew": 0},
    ],
)
def test_install_grant_usage_errors_touch_nothing(node: NodeTree, change: dict[str, Any]) -> None:
    payload, _ = install_payload(node)
    payload.update(change)
    code, reply = call(node, "install-grant", payload)
    assert code == 2 and "error" in reply
    assert files(node.root / "var/lib/broker/grants") == []
    assert files(node.root / "etc/sudoers.d") == []


@pytest.mark.parametrize("offset", [-75.0, 75.0])
def test_install_grant_refuses_a_skewed_clock_naming_it(node: NodeTree, offset: float) -> None:
    payload, _ = install_payload(node)
    payload["broker_time"] = time.time() + offset
    code, reply = call(node, "install-grant", payload)
    assert code == 0 and reply["ok"] is False
    way = "behind" if offset > 0 else "ahead of"
    assert "clock is 75." in reply["error"] and f"{way} the broker's (limit 60 s)" in reply["error"]
    assert files(node.root / "var/lib/broker/grants") == []
    assert files(node.root / "etc/sudoers.d") == []


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    done = subprocess.run(["unshare", "--mount", "true"], capture_output=True, check=False)
    return done.returncode == 0


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --mount (root)")
def test_install_grant_reports_live_when_sudo_lists_the_rule(node: NodeTree) -> None:
    payload, _ = install_payload(node, user="nobody")
    sudoers_dir = node.root / "etc/sudoers.d"
    sudoers_dir.chmod(0o755)
    script = (
        "import io, json, sys; sys.path.insert(0, sys.argv[1]); import broker_node as b; "
        "out = io.StringIO(); "
        "paths = b.Paths(sys.argv[2], sys.argv[3]); "
        "b.node_main(['install-grant'], io.StringIO(sys.stdin.read()), out, paths); "
        "print(out.getvalue())"
    )
    # sudo reads /etc/sudoers -> @includedir /etc/sudoers.d: bind the test's directory
    # over it in a private mount namespace; the host's /etc is never touched
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount --bind "$1" /etc/sudoers.d && exec /usr/bin/python3 -I -S -c "$2" "$3" "$4" "$5"',
            "sh",
            str(sudoers_dir),
            script,
            str(PAM_DIR),
            str(node.root),
            checker(),
        ],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reply = json.loads(done.stdout)
    assert reply == {"ok": True, "live": True, "error": None}, done.stderr


def test_rule_detection_needs_runas_and_both_times() -> None:
    listing = (
        "User nobody may run the following commands on vm:\n"
        "    (root) TIMEOUT=1800 NOTBEFORE=20300101000000Z NOTAFTER=20300101003000Z\n"
        "        NOPASSWD: LOG_INPUT: LOG_OUTPUT: ALL\n"
        "    (root) NOTAFTER=20990101003000Z NOPASSWD: /usr/bin/id\n"
    )

    def fake(runas: str, nb: int, na: int) -> Any:
        values: list[Any] = [None] * 14
        values[4], values[6], values[7] = runas, nb, na
        return bn.CheckedGrant(*values)

    nb, na = bn.parse_utc("2030-01-01T00:00:00Z"), bn.parse_utc("2030-01-01T00:30:00Z")
    assert install._rule_listed(listing, fake("root", nb, na))
    assert not install._rule_listed(listing, fake("daemon", nb, na))
    assert not install._rule_listed(listing, fake("root", nb, na + 1))
    assert not install._rule_listed(listing, fake("root", nb - 1, na))


# ---------------------------------------------------------------- revoke


def record_session(directory: Path, pid: int, started: int, ticks: int | None = None) -> None:
    """A session record as pam_broker.so writes it (`ticks`: the process's start in clock
    ticks since boot), or without ticks as records before them were."""
    path = directory / str(pid)
    tail = "" if ticks is None else f" {ticks}"
    path.write_text(f"alice root pts/4 {bn.format_utc(started)}{tail}\n")
    path.chmod(0o600)


def start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[19])


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, None when it is gone."""
    try:
        data = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = data.rpartition(")")[2].split()
    return fields[0], int(fields[3])


def _tree(root: int) -> set[int]:
    """root, its descendants and the members of sessions its descendants lead."""
    table: dict[int, tuple[int, int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            table[int(entry.name)] = (int(fields[1]), int(fields[3]))
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.add(pid)
            todo += [child for child, (parent, _sid) in table.items() if parent == pid]
    sessions = {table[p][1] for p in tree if p != root} - {table[root][1]}
    return tree | {p for p, (_pp, sid) in table.items() if sid in sessions}


def _sleeps(pids: set[int]) -> set[str]:
    """The arguments of the `sleep` processes among pids."""
    found = set()
    for pid in pids:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] == b"sleep":
            found.add(argv[1].decode())
    return found


def _gone(pid: int) -> bool:
    state = _stat(pid)
    return state is None or state[0] == "Z"


def _wait_for(predicate: Any, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_revoke_kills_the_session_tree_and_blocks_replay(
    node: NodeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    payload, grant = install_payload(node)
    sudo_lists_the_rule(monkeypatch, grant)
    assert call(node, "install-grant", payload)[1]["ok"]
    # a "sudo" with a background child, and a command in its own session whose
    # orphan (parent gone, reparented away) is found by its session id
    command = "sleep 60 & setsid sh -c '(sleep 61 &); exec sleep 62' & wait"
    sudo = subprocess.Popen(["sh", "-c", command])
    victims: set[int] = set()
    try:
        sessions = node.root / "run/broker-sessions" / grant.id
        sessions.mkdir(mode=0o700, parents=True)
        record_session(sessions, sudo.pid, bn_now())
        assert _wait_for(lambda: _sleeps(_tree(sudo.pid)) == {"60", "61", "62"})
        victims = _tree(sudo.pid)
        code, reply = call(node, "revoke", {"ids": [grant.id]})
        assert code == 0 and reply["revoked"] == [grant.id] and reply["errors"] == []
        assert set(reply["killed"]) >= victims
        sudo.wait(timeout=5)
        assert _wait_for(lambda: all(_gone(pid) for pid in victims)), [
            (pid, _stat(pid)) for pid in victims
        ]
    finally:
        for pid in victims | _tree(sudo.pid) if sudo.poll() is None else victims:
            if not _gone(pid):
                os.kill(pid, signal.SIGKILL)
        sudo.wait(timeout=5)
    assert os.getpid() not in reply["killed"] and _stat(os.getpid()) is not None
    assert files(node.root / "var/lib/broker/grants") == []
    assert files(node.root / "etc/sudoers.d") == []
    assert not sessions.exists()
    marker = node.root / "var/lib/broker/revoked" / grant.id
    assert marker.read_text() == grant.not_after.strftime("%Y-%m-%dT%H:%M:%SZ\n")
    events = [json.loads(p.read_text()) for p in (node.root / "var/spool/broker/events").iterdir()]
    assert [(e["kind"], e["pid"], e["grant_id"]) for e in events] == [("close", sudo.pid, grant.id)]
    # the same signed file put back (replay) is refused by the checker and by install-grant
    node.install(grant, text=payload["grant"])
    replayed = node.status_of(grant.id)
    assert replayed.pop("drop_in")["present"] is False
    assert replayed == {
        "id": grant.id,
        "user": "alice",
        "not_after": grant.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "valid": False,
        "problem": "revoked",
    }
    assert "revoked" in call(node, "install-grant", payload)[1]["error"]


def test_revoke_leaves_a_reused_pid_alone(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    sessions = node.root / "run/broker-sessions" / grant.id
    sessions.mkdir(mode=0o700, parents=True)
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        # recorded an hour ago: the process now holding that pid started later
        record_session(sessions, bystander.pid, bn_now() - 3600)
        code, reply = call(node, "revoke", {"ids": [grant.id]})
        assert code == 0 and reply["killed"] == []
        assert reply["errors"] == [
            f"{grant.id}: pid {bystander.pid} is not the recorded session; not killed"
        ]
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_revoke_trusts_the_recorded_start_ticks_not_the_clock(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    sessions = node.root / "run/broker-sessions" / grant.id
    sessions.mkdir(mode=0o700, parents=True)
    session = subprocess.Popen(["sleep", "60"])
    bystander = subprocess.Popen(["sleep", "61"])
    try:
        # the clock was stepped an hour: the recorded time is off, the ticks are right
        record_session(sessions, session.pid, bn_now() - 3600, start_ticks(session.pid))
        # the pid now belongs to a process that started at another tick: not the session
        record_session(sessions, bystander.pid, bn_now(), start_ticks(bystander.pid) + 1)
        code, reply = call(node, "revoke", {"ids": [grant.id]})
        assert code == 0 and session.pid in reply["killed"]
        assert reply["errors"] == [
            f"{grant.id}: pid {bystander.pid} is not the recorded session; not killed"
        ]
        assert session.wait(timeout=10) is not None and bystander.poll() is None
    finally:
        for process in (session, bystander):
            process.kill()
            process.wait()


def test_a_live_session_with_an_unreadable_record_is_kept_not_called_closed(
    node: NodeTree,
) -> None:
    grant = node.grant()
    node.install(grant)
    sessions = node.root / "run/broker-sessions" / grant.id
    sessions.mkdir(mode=0o700, parents=True)
    session = subprocess.Popen(["sleep", "60"])
    try:
        record = sessions / str(session.pid)
        record.write_text("garbage\n")
        record.chmod(0o644)  # too open: read_secure refuses it
        code, reply = call(node, "end-sessions", {"grant_ids": [grant.id]})
        assert code == 0 and reply["killed"] == []
        assert reply["errors"] == [
            f"{grant.id}: pid {session.pid} runs but its record cannot be read; kept"
        ]
        assert record.exists() and session.poll() is None
        events = [
            json.loads(p.read_text())
            for p in (node.root / "var/spool/broker/events").glob("*.json")
        ]
        assert not [e for e in events if e["kind"] == "close" and e["pid"] == session.pid]
    finally:
        session.kill()
        session.wait()


def test_revoke_refuses_bad_ids_before_touching_anything(node: NodeTree) -> None:
    node.install()
    for payload in ({"ids": ["../grants"]}, {"ids": "g" + "0" * 16}, {"id": []}):
        assert call(node, "revoke", payload)[0] == 2
    assert len(files(node.root / "var/lib/broker/grants")) == 1
    assert files(node.root / "var/lib/broker/revoked") == []


def test_revoke_of_an_unknown_grant_still_leaves_a_marker(node: NodeTree) -> None:
    grant_id = "g" + "a" * 16
    code, reply = call(node, "revoke", {"ids": [grant_id]})
    assert (code, reply) == (0, {"revoked": [grant_id], "killed": [], "errors": []})
    assert files(node.root / "var/lib/broker/revoked") == [grant_id]


# ---------------------------------------------------------------- reap


def test_reap_removes_what_has_expired(node: NodeTree) -> None:
    past = {"not_before": now_s() - timedelta(hours=2), "not_after": now_s() - timedelta(hours=1)}
    old, fresh = node.grant(**past), node.grant()
    for grant in (old, fresh):
        node.install(grant)
        drop_in = node.root / "etc/sudoers.d" / f"broker_{grant.id}"
        drop_in.write_text("# drop-in\n")
        drop_in.chmod(0o440)
    orphan = node.root / "etc/sudoers.d" / ("broker_g" + "b" * 16)
    orphan.write_text("# no grant\n")
    foreign = node.root / "etc/sudoers.d" / "site-admins"
    foreign.write_text("# not ours\n")
    revoked = node.root / "var/lib/broker/revoked"
    (revoked / ("g" + "c" * 16)).write_text("2000-01-01T00:00:00Z\n")
    (revoked / ("g" + "d" * 16)).write_text("2999-01-01T00:00:00Z\n")
    for marker in revoked.iterdir():
        marker.chmod(0o600)
    code, reply = call(node, "reap")
    assert code == 0
    assert reply["grants"] == [old.id]
    assert sorted(reply["drop_ins"]) == sorted([f"broker_{old.id}", orphan.name])
    assert reply["markers"] == ["g" + "c" * 16]
    assert files(node.root / "var/lib/broker/grants") == [fresh.id]
    assert files(node.root / "etc/sudoers.d") == sorted([f"broker_{fresh.id}", "site-admins"])
    assert files(revoked) == ["g" + "d" * 16]
    assert call(node, "reap")[1]["grants"] == []


# ---------------------------------------------------------------- collect and ack


def test_collect_returns_oldest_first_and_ack_deletes(node: NodeTree) -> None:
    ids = [
        bn.spool_event(
            node.paths, "open", "g" + "e" * 16, "alice", "root", "sudo", "pts/1", 100 + i, bn_now()
        )
        for i in range(3)
    ]
    code, reply = call(node, "collect")
    assert code == 0 and reply["errors"] == []
    assert [e["event_id"] for e in reply["events"]] == ids
    assert [e["pid"] for e in reply["events"]] == [100, 101, 102]
    code, reply = call(node, "ack", {"event_ids": [ids[0], ids[1], "1-2-abcdef01"]})
    assert code == 0 and reply == {"acked": ids[:2], "missing": ["1-2-abcdef01"]}
    assert [e["event_id"] for e in call(node, "collect")[1]["events"]] == [ids[2]]
    assert call(node, "ack", {"event_ids": ["../../x"]})[0] == 2


def test_collect_stops_at_1000_and_reports_bad_files(node: NodeTree) -> None:
    events = node.root / "var/spool/broker/events"
    for i in range(1003):
        event_id = f"{1000 + i}-1-0000abcd"
        path = events / f"{event_id}.json"
        path.write_text(json.dumps({"event_id": event_id, "kind": "open"}))
        path.chmod(0o600)
    (events / "999-1-0000abcd.json").write_text("{not json")
    (events / "999-1-0000abcd.json").chmod(0o600)
    reply = call(node, "collect")[1]
    assert len(reply["events"]) == 999
    assert reply["events"][0]["event_id"] == "1000-1-0000abcd"
    assert reply["errors"] == ["999-1-0000abcd: not an event"]


def test_event_text_is_valid_json_for_any_tty_and_service(node: NodeTree) -> None:
    grant = node.grant()
    tty = spool.tty_name('pts/"1\n')
    bn.spool_event(node.paths, "open", grant.id, "alice", "root", "sudo-i", tty, 7, bn_now())
    (event,) = call(node, "collect")[1]["events"]
    assert (event["service"], event["tty"], event["kind"]) == ("sudo-i", "-", "open")
    for text in ('a"\\\n\x00é😀', "plain", "\u202e"):
        assert json.loads(spool._json_string(text)) == text


# ---------------------------------------------------------------- usage


@pytest.mark.parametrize(
    ("argv", "stdin"),
    [(["frobnicate"], ""), ([], ""), (["status", "extra"], ""), (["ack"], "[1]"), (["ack"], "{")],
)
def test_bad_usage_exits_2_with_a_json_error(node: NodeTree, argv: list[str], stdin: str) -> None:
    out = io.StringIO()
    assert bn.node_main(argv, io.StringIO(stdin), out, node.paths) == 2
    assert "error" in json.loads(out.getvalue())


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --mount (root)")
def test_launchers_run_from_the_install_directory() -> None:
    # /usr/libexec replaced by an empty tmpfs in a private mount namespace, the files
    # installed as bootstrap does, then run as the broker would run them: the program
    # finds broker-grant-check where bootstrap puts it
    script = (
        "mount -t tmpfs tmpfs /usr/libexec && mkdir -m 0755 /usr/libexec/broker && "
        'cp -r "$1/broker_node" "$1/broker-node" "$2" /usr/libexec/broker/ && '
        "/usr/libexec/broker/broker-node status </dev/null && "
        "/usr/libexec/broker/broker-grant-check --version"
    )
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(PAM_DIR), checker()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status, version = done.stdout.splitlines()
    assert json.loads(status)["hook_version"] == "2"
    assert not [p for p in json.loads(status)["problems"] if "broker-grant-check" in p]
    assert version == "broker-grant-check 2"


# ---------------------------------------------------------------- quarantine and release

QUARANTINE = {"reason": "INC-9: odd root shell ✓", "since": "2026-11-23T10:00:00Z", "group": "ir"}


def test_quarantine_places_the_marker_status_shows_it_release_removes_it(node: NodeTree) -> None:
    node.install()
    assert call(node, "status")[1]["quarantined"] is None
    code, reply = call(node, "quarantine", QUARANTINE)
    assert (code, reply) == (0, {"quarantined": True, "node": "gpu01", "error": None})
    marker = node.root / "etc/broker/quarantine"
    info = marker.stat()
    assert (info.st_uid, info.st_mode & 0o7777) == (0, 0o644)
    assert files(node.root / "etc/broker") == ["grant-key.pub", "node.conf", "quarantine"]
    assert call(node, "status")[1]["quarantined"] == {
        "since": "2026-11-23T10:00:00Z",
        "reason": "INC-9: odd root shell ✓",
        "group": "ir",
        "problem": None,
    }
    # placed again (a retry, a new reason): replaced, not refused
    again = {**QUARANTINE, "reason": "second look", "group": None}
    assert call(node, "quarantine", again)[1]["quarantined"] is True
    shown = call(node, "status")[1]["quarantined"]
    assert (shown["reason"], shown["group"]) == ("second look", None)
    assert call(node, "release", {}) == (0, {"released": True, "error": None})
    assert not marker.exists()
    assert call(node, "release", {}) == (0, {"released": False, "error": None})


def test_status_reports_an_untrusted_marker(node: NodeTree) -> None:
    marker = node.root / "etc/broker/quarantine"
    marker.write_text("garbage\n")
    marker.chmod(0o644)
    shown = call(node, "status")[1]["quarantined"]
    assert shown["since"] is None and "quarantine marker: line 1" in shown["problem"]


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"reason": "x"},
        {**QUARANTINE, "node": "gpu01"},
        {**QUARANTINE, "reason": ""},
        {**QUARANTINE, "reason": "   "},
        {**QUARANTINE, "reason": "two\nlines"},
        {**QUARANTINE, "reason": "bell\x07"},
        {**QUARANTINE, "reason": "x" * 201},
        {**QUARANTINE, "reason": 7},
        {**QUARANTINE, "since": "2026-11-23 10:00:00"},
        {**QUARANTINE, "since": None},
        {**QUARANTINE, "group": "ir team"},
        {**QUARANTINE, "group": "../x"},
        {**QUARANTINE, "group": 0},
    ],
)
def test_quarantine_refuses_bad_input_and_writes_nothing(
    node: NodeTree, payload: dict[str, Any]
) -> None:
    code, reply = call(node, "quarantine", payload)
    assert code == 2 and "error" in reply
    assert not (node.root / "etc/broker/quarantine").exists()


def test_quarantine_needs_a_bootstrapped_node(node: NodeTree) -> None:
    (node.root / "etc/broker/node.conf").unlink()
    code, reply = call(node, "quarantine", QUARANTINE)
    assert code == 0 and reply["quarantined"] is False and reply["node"] is None
    assert "node not bootstrapped: node.conf: missing" in reply["error"]
    assert call(node, "release", {"all": True})[0] == 2


# ---------------------------------------------------------------- end-sessions


def test_end_sessions_kills_grant_and_break_glass_sessions_without_revoking(
    node: NodeTree,
) -> None:
    grant = node.grant()
    node.install(grant)
    processes = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        base = node.root / "run/broker-sessions"
        for key, process in zip((grant.id, "break-glass"), processes, strict=False):
            (base / key).mkdir(mode=0o700, parents=True)
            record_session(base / key, process.pid, bn_now())
        code, reply = call(node, "end-sessions", {"grant_ids": [grant.id, "break-glass"]})
        assert code == 0 and reply["errors"] == []
        assert reply["killed"] == sorted(p.pid for p in processes[:2])
        for process in processes[:2]:
            process.wait(timeout=5)
        assert processes[2].poll() is None, "a process of no recorded session is left alone"
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert files(node.root / "var/lib/broker/grants") == [grant.id], "the grant stays"
    assert files(node.root / "var/lib/broker/revoked") == []
    events = [json.loads(p.read_text()) for p in (node.root / "var/spool/broker/events").iterdir()]
    assert sorted((e["kind"], e["grant_id"], e["service"]) for e in events) == [
        ("close", "break-glass", "end-session"),
        ("close", grant.id, "end-session"),
    ]
    assert {e["ended_by"] for e in events} == {"end-session"}
    assert call(node, "end-sessions", {"grant_ids": [grant.id]}) == (
        0,
        {"killed": [], "errors": []},
    )


@pytest.mark.parametrize(
    "payload",
    [{}, {"grant_ids": "break-glass"}, {"grant_ids": ["../x"]}, {"ids": []}, {"grant_ids": [1]}],
)
def test_end_sessions_refuses_bad_ids(node: NodeTree, payload: dict[str, Any]) -> None:
    assert call(node, "end-sessions", payload)[0] == 2


# ---------------------------------------------------------------- drift-scan

ALICE_KEY = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHf3qGmX5bqPt0kV7t0mhJ9oRbLyv2cQzAbCdEfGh1jK alice@laptop"
)


def put(root: Path, path: str, text: str | bytes = "", mode: int = 0o644) -> Path:
    """A file of a node tree (parents 0755), with its mode."""
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        target.write_bytes(text)
    else:
        target.write_text(text)
    target.chmod(mode)
    return target


def drift_tree(root: Path) -> None:
    """What a small Debian node holds in the places drift-scan looks at."""
    put(
        root,
        "etc/passwd",
        "root:x:0:0:root:/root:/bin/bash\nalice:x:1000:1000::/home/alice:/bin/bash\n"
        "bob:x:1001:1001::/home/bob:/bin/sh\nodd:x:1002:1002::relative/home:/bin/sh\n",
    )
    put(root, "etc/group", "root:x:0:\nsudo:x:27:\n")
    put(root, "etc/sudoers", "root ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n", 0o440)
    put(root, "etc/sudoers.d/site", "Defaults use_pty\n", 0o440)
    (root / "etc/sudoers.d/link").symlink_to("/tmp/elsewhere")
    put(root, "etc/pam.d/sudo", "@include common-auth\n")
    put(root, "etc/security/limits.conf", "* hard core 0\n")
    put(root, "etc/polkit-1/rules.d/49-admin.rules", "polkit.addAdminRule(...);\n")
    put(root, "etc/crontab", "17 * * * * root cd / && run-parts /etc/cron.hourly\n")
    put(root, "etc/cron.d/backup", "0 3 * * * root /usr/local/sbin/backup\n")
    put(root, "etc/cron.d/big", "# " + "x" * 70_000 + "\n")
    put(root, "etc/cron.daily/logrotate", "#!/bin/sh\nlogrotate /etc/logrotate.conf\n", 0o755)
    os.mkfifo(root / "etc/cron.d/fifo", 0o644)
    put(root, "var/spool/cron/crontabs/alice", "@reboot /home/alice/x\n", 0o600)
    put(root, "usr/lib/systemd/system/ssh.service", "[Service]\nExecStart=/usr/sbin/sshd\n")
    (root / "lib").symlink_to("usr/lib")  # merged /usr: the same units under two names
    (root / "bin").symlink_to("usr/bin")
    put(root, "usr/bin/sudo", b"\x7fELF sudo", 0o4755)
    put(root, "usr/bin/ls", b"\x7fELF ls", 0o755)
    put(root, "usr/sbin/unix_chkpwd", b"\x7fELF chkpwd", 0o2755)
    put(root, "opt/tool/helper", b"\x7fELF helper", 0o4750)
    put(root, "home/alice/.ssh/authorized_keys", ALICE_KEY + "\n", 0o600)
    os.mkfifo(root / "home/alice/.ssh/authorized_keys2", 0o600)
    put(root, "root/.ssh/authorized_keys2", "# no keys\n", 0o600)
    (root / "home/bob").mkdir(parents=True)
    (root / "home/bob/.ssh").symlink_to("../../root/.ssh")  # not followed


def scan(node: NodeTree) -> dict[str, Any]:
    code, reply = call(node, "drift-scan", {})
    assert code == 0, reply
    return reply


def test_drift_scan_lists_what_root_can_leave_behind(node: NodeTree) -> None:
    import hashlib

    drift_tree(node.root)
    started = time.monotonic()
    reply = scan(node)
    assert time.monotonic() - started < 5
    assert (reply["truncated"], reply["errors"]) == (False, [])
    entries, texts = reply["entries"], reply["texts"]
    assert all(path.startswith("/") and str(node.root) not in path for path in entries)
    category = {path: entry["category"] for path, entry in entries.items()}
    assert {p for p, c in category.items() if c == "setuid"} == {
        "/usr/bin/sudo",
        "/usr/sbin/unix_chkpwd",
        "/opt/tool/helper",
    }
    assert {p for p, c in category.items() if c == "authorized_keys"} == {
        "/home/alice/.ssh/authorized_keys",
        "/home/alice/.ssh/authorized_keys2",
        "/home/bob/.ssh",
        "/root/.ssh/authorized_keys2",
    }
    assert {p for p, c in category.items() if c == "sudoers"} == {
        "/etc/sudoers",
        "/etc/sudoers.d",
        "/etc/sudoers.d/site",
        "/etc/sudoers.d/link",
    }
    assert category["/etc/pam.d/sudo"] == category["/etc/security/limits.conf"] == "pam"
    assert category["/etc/polkit-1/rules.d/49-admin.rules"] == "polkit"
    assert category["/usr/lib/systemd/system/ssh.service"] == "systemd"
    assert not [p for p in entries if p.startswith(("/lib/", "/bin/"))], "links not followed"
    assert category["/var/spool/cron/crontabs/alice"] == category["/etc/crontab"] == "cron"
    assert category["/etc/passwd"] == category["/etc/group"] == "accounts"

    sudo = entries["/usr/bin/sudo"]
    assert sudo == {
        "type": "f",
        "mode": 0o4755,
        "uid": 0,
        "gid": 0,
        "size": 9,
        "sha256": hashlib.sha256(b"\x7fELF sudo").hexdigest(),
        "target": None,
        "category": "setuid",
    }
    assert entries["/etc/sudoers.d"]["type"] == "d" and entries["/etc/sudoers.d"]["sha256"] is None
    assert entries["/etc/sudoers.d/link"]["type"] == "l"
    assert entries["/etc/sudoers.d/link"]["target"] == "/tmp/elsewhere"
    assert entries["/home/bob/.ssh"]["target"] == "../../root/.ssh"
    for fifo in ("/etc/cron.d/fifo", "/home/alice/.ssh/authorized_keys2"):
        assert (entries[fifo]["type"], entries[fifo]["sha256"]) == ("o", None)
    assert entries["/etc/cron.d/big"]["sha256"] is not None
    assert set(texts) == {
        "/etc/passwd",
        "/etc/group",
        "/etc/sudoers",
        "/etc/sudoers.d/site",
        "/etc/crontab",
        "/etc/cron.d/backup",
        "/etc/cron.daily/logrotate",
        "/var/spool/cron/crontabs/alice",
        "/home/alice/.ssh/authorized_keys",
        "/root/.ssh/authorized_keys2",
    }, "texts: accounts, sudoers, cron and keys of at most 64 KiB; never a PAM file"
    assert texts["/home/alice/.ssh/authorized_keys"] == ALICE_KEY + "\n"


def test_drift_scan_escapes_file_names_and_reads_through_no_link(node: NodeTree) -> None:
    drift_tree(node.root)
    put(node.root, "etc/cron.d/" + os.fsdecode(b"bad\xffname\n"), "x\n")
    (node.root / "etc/cron.d/back\\slash").write_text("y\n")
    # a hard link a user made to another file is listed and hashed, never shown
    os.link(node.root / "etc/sudoers", node.root / "home/alice/.ssh/authorized_keys2.tmp")
    (node.root / "home/alice/.ssh/authorized_keys2").unlink()
    (node.root / "home/alice/.ssh/authorized_keys2.tmp").rename(
        node.root / "home/alice/.ssh/authorized_keys2"
    )
    reply = scan(node)
    assert "/etc/cron.d/bad\\xffname\\x0a" in reply["entries"]
    assert "/etc/cron.d/back\\\\slash" in reply["entries"]
    linked = reply["entries"]["/home/alice/.ssh/authorized_keys2"]
    assert linked["sha256"] == reply["entries"]["/etc/sudoers"]["sha256"]
    assert "/home/alice/.ssh/authorized_keys2" not in reply["texts"]


def test_drift_scan_caps_entries_and_texts(node: NodeTree, monkeypatch: pytest.MonkeyPatch) -> None:
    drift_tree(node.root)
    monkeypatch.setattr(drift, "DRIFT_MAX_ENTRIES", 5)
    reply = scan(node)
    assert reply["truncated"] is True and len(reply["entries"]) == 5
    monkeypatch.setattr(drift, "DRIFT_MAX_ENTRIES", 50_000)
    monkeypatch.setattr(drift, "DRIFT_MAX_TEXTS", 300)
    reply = scan(node)
    assert reply["truncated"] is True and 0 < len(reply["texts"]) < 10
    assert "/usr/bin/sudo" in reply["entries"], "entries go on when texts are full"
    assert sum(len(json.dumps(t)) + len(json.dumps(p)) for p, t in reply["texts"].items()) <= 300


def test_drift_scan_takes_no_input(node: NodeTree) -> None:
    assert call(node, "drift-scan", {"paths": ["/"]})[0] == 2


@pytest.mark.skipif(not _unshare_works(), reason="needs unshare --mount (root)")
def test_drift_scan_stays_on_each_file_system_and_skips_nosuid(node: NodeTree) -> None:
    drift_tree(node.root)
    script = (
        'mount -t tmpfs tmpfs "$2/usr/local" && mount -t tmpfs -o nosuid tmpfs "$2/srv" && '
        'for d in "$2/usr/local" "$2/srv"; do : > "$d/suid" && chmod 4755 "$d/suid"; done && '
        'exec /usr/bin/python3 -I -S -c "$1" "$3" "$2"'
    )
    code = (
        "import io, sys; sys.path.insert(0, sys.argv[1]); import broker_node as b; "
        "b.node_main(['drift-scan'], io.StringIO('{}'), sys.stdout, b.Paths(sys.argv[2]))"
    )
    for directory in ("usr/local", "srv"):
        (node.root / directory).mkdir(parents=True)
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", code, str(node.root), str(PAM_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    entries = json.loads(done.stdout)["entries"]
    assert "/usr/bin/sudo" in entries
    assert "/usr/local/suid" not in entries, "another file system below /usr"
    assert "/srv/suid" not in entries, "a nosuid mount: the kernel ignores the bit"


@pytest.mark.parametrize(
    ("node_name", "hostname", "applies"),
    [
        ("gpu01", "gpu01", True),
        ("gpu01", "GPU01", True),  # sudo ignores case
        ("gpu01", "gpu01.hpc.test", True),  # a name without a dot meets the short name
        ("gpu01.hpc.test", "gpu01.hpc.test", True),
        ("gpu01.hpc.test", "gpu01", False),  # a name with a dot meets the whole name
        ("gpu01", "gpu02", False),
        ("gpu01", "gpu011", False),
    ],
)
def test_sudo_applies_a_drop_in_only_where_the_host_is_named_so(
    node_name: str, hostname: str, applies: bool
) -> None:
    contract = load_node_module("contract")
    problem = contract.host_mismatch(node_name, hostname)
    assert (problem is None) is applies
    if problem is not None:
        assert f"node={node_name}" in problem and "set the hostname" in problem


def test_status_and_install_name_a_host_that_is_not_the_node(
    node: NodeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Drop-ins name the node as their host: on a host named otherwise, sudo would list
    no rule, and the node says why."""
    import socket

    monkeypatch.setattr(socket, "gethostname", lambda: "not-this-node")
    _, status = call(node, "status")
    assert any("named 'not-this-node'" in p for p in status["problems"])
    monkeypatch.setattr(socket, "gethostname", lambda: NODE)
    _, status = call(node, "status")
    assert not any("named" in p for p in status["problems"])
