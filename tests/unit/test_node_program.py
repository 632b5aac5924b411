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
from tests.unit.test_node_hook import PAM_DIR, NodeTree, bn, bn_now, nobody, now_s

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
    assert (status["node"], status["hook_version"]) == ("gpu01", "1")
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


def test_install_grant_writes_both_files_with_final_modes(node: NodeTree) -> None:
    payload, grant = install_payload(node)
    code, reply = call(node, "install-grant", payload)
    assert code == 0 and reply["ok"] is True, reply
    # sudo reads the real /etc/sudoers.d, not this tree: installed, but not live here
    assert reply["live"] is False and "sudo -l" in reply["error"]
    grant_file = node.root / "var/lib/broker/grants" / grant.id
    drop_in = node.root / "etc/sudoers.d" / f"broker_{grant.id}"
    assert grant_file.read_text() == payload["grant"]
    assert drop_in.read_text() == payload["sudoers"]
    assert grant_file.stat().st_mode & 0o7777 == 0o600
    assert drop_in.stat().st_mode & 0o7777 == 0o440
    assert files(node.root / "var/lib/broker/grants") == [grant.id]
    assert files(node.root / "etc/sudoers.d") == [f"broker_{grant.id}"]
    assert bn.decide(node.paths, "account", "sudo", "root", "alice", "", 1, bn_now(), nobody)[0]


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
def test_install_grant_verifies_the_grant_like_the_hook(
    node: NodeTree, damage: Any, expected: str
) -> None:
    payload, _ = install_payload(node)
    damage(node, payload)
    code, reply = call(node, "install-grant", payload)
    assert code == 0 and reply["ok"] is False and expected in reply["error"], reply
    assert files(node.root / "var/lib/broker/grants") == []
    assert files(node.root / "etc/sudoers.d") == []


def test_install_grant_accepts_a_future_grant_but_not_an_expired_one(node: NodeTree) -> None:
    payload, _ = install_payload(
        node, not_before=now_s() + timedelta(hours=1), not_after=now_s() + timedelta(hours=2)
    )
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
        "b.node_main(['install-grant'], io.StringIO(sys.stdin.read()), out, b.Paths(sys.argv[2])); "
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
            'mount --bind "$1" /etc/sudoers.d && exec /usr/bin/python3 -I -S -c "$2" "$3" "$4"',
            "sh",
            str(sudoers_dir),
            script,
            str(PAM_DIR),
            str(node.root),
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
        values = [None] * 17
        values[3], values[5], values[6] = runas, nb, na
        return bn.Grant(*values)

    nb, na = bn.parse_utc("2030-01-01T00:00:00Z"), bn.parse_utc("2030-01-01T00:30:00Z")
    assert bn._rule_listed(listing, fake("root", nb, na))
    assert not bn._rule_listed(listing, fake("daemon", nb, na))
    assert not bn._rule_listed(listing, fake("root", nb, na + 1))
    assert not bn._rule_listed(listing, fake("root", nb - 1, na))


# ---------------------------------------------------------------- revoke


def record_session(directory: Path, pid: int, started: int) -> None:
    """A session record as the hook writes it at open_session."""
    path = directory / str(pid)
    path.write_text(f"alice root pts/4 {bn.format_utc(started)}\n")
    path.chmod(0o600)


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


def test_revoke_kills_the_session_tree_and_blocks_replay(node: NodeTree) -> None:
    payload, grant = install_payload(node)
    assert call(node, "install-grant", payload)[1]["ok"]
    # a "sudo" with a background child, and a command in its own session whose
    # orphan (parent gone, reparented away) is found by its session id
    command = "sleep 60 & setsid sh -c '(sleep 61 &); exec sleep 62' & wait"
    sudo = subprocess.Popen(["sh", "-c", command])
    victims: set[int] = set()
    try:
        sessions = node.root / "var/lib/broker/sessions" / grant.id
        sessions.mkdir(mode=0o700)
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
    # the same signed file put back (replay) is refused by the hook and by install-grant
    node.install(grant, text=payload["grant"])
    allow, reason = bn.decide(
        node.paths, "account", "sudo", "root", "alice", "", 1, bn_now(), nobody
    )
    assert not allow and "revoked" in reason
    assert "revoked" in call(node, "install-grant", payload)[1]["error"]


def test_revoke_leaves_a_reused_pid_alone(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    sessions = node.root / "var/lib/broker/sessions" / grant.id
    sessions.mkdir(mode=0o700)
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
    node.install(grant)
    bn.decide(
        node.paths, "open_session", "sudo-i", "root", "alice", 'pts/"1\n', 7, bn_now(), nobody
    )
    (event,) = call(node, "collect")[1]["events"]
    assert (event["service"], event["tty"], event["kind"]) == ("sudo-i", "-", "open")
    for text in ('a"\\\n\x00é😀', "plain", "\u202e"):
        assert json.loads(bn._json_string(text)) == text


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
    # installed as bootstrap does, then run as pam_exec and the broker would run them
    script = (
        "mount -t tmpfs tmpfs /usr/libexec && mkdir -m 0755 /usr/libexec/broker && "
        'cp "$1/broker_node.py" "$1/pam-hook" "$1/broker-node" /usr/libexec/broker/ && '
        "/usr/libexec/broker/broker-node status </dev/null && "
        "PAM_TYPE=account PAM_SERVICE=sudo PAM_RUSER=root /usr/libexec/broker/pam-hook && "
        "echo root=$? && "
        "{ PAM_TYPE=account PAM_SERVICE=sudo PAM_RUSER=nobody "
        "/usr/bin/python3 -I -S /usr/libexec/broker/pam-hook; echo nobody=$?; }"
    )
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, "sh", str(PAM_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    status, root, nobody_line = done.stdout.splitlines()
    assert json.loads(status)["hook_version"] == "1"
    assert (root, nobody_line) == ("root=0", "nobody=1")
