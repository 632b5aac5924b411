"""Session recording end to end: sudo on a node streams to sudo_logsrvd (through stunnel)
on the broker host; the daemon indexes the store; list, show, search, replay, verify.

The lab's daemon indexes every second (`sessions.index_interval = "1s"`).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import BROKER, run_broker
from tests.lab.conftest import Codes, cli, config_of, ssh_argv

pytestmark = pytest.mark.lab


def node(lab: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in lab["nodes"] if n["name"] == name)


def store_dir(lab: dict[str, Any]) -> Path:
    return Path(lab["broker"]["state_dir"]) / "sessions" / "iolog"


def db(lab: dict[str, Any]) -> sqlite3.Connection:
    path = Path(lab["broker"]["state_dir"]) / "broker.db"
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def recorded_events(lab: dict[str, Any], recording_id: str) -> int:
    with contextlib.closing(db(lab)) as conn:
        row = conn.execute(
            "SELECT COUNT(*) FROM audit_events WHERE action = 'session.recorded' AND target = ?",
            (recording_id,),
        ).fetchone()
    return int(row[0])


@pytest.fixture(scope="module")
def ready(lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """alice holds a 30-minute grant on gpu01 (approved by frank), revoked afterwards so
    the modules that follow find her without one."""
    assert run_broker("sync", "--full", config=config_of(lab)).returncode == 0
    codes = Codes()
    for user in ("alice", "frank"):
        codes.enroll(lab, user)
    assert cli(lab, "revoke", "--user", "alice", "--reason", "clean slate").returncode == 0
    asked = cli(
        lab, "elevate", "gpu01", "--for", "30m", "--reason", "INC-5150 recorded work",
        "--json", user="alice", stdin=codes.code("alice"),
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    request = json.loads(asked.stdout)["request"]
    approved = cli(lab, "approve", request["id"], "--json", user="frank", stdin=codes.code("frank"))
    assert approved.returncode == 0, approved.stderr
    grant = json.loads(approved.stdout)["grant"]
    yield {"lab": lab, "grant": grant}
    done = cli(lab, "revoke", grant["id"], "--reason", "end of the recording tests")
    assert done.returncode == 0, done.stderr


def sudo_over_ssh(
    lab: dict[str, Any],
    command: str,
    timeout: float = 60,
    *,
    user: str = "alice",
    on: str = "gpu01",
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ssh_argv(lab, user, node(lab, on)["address"], command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def interactive_root_shell(lab: dict[str, Any], lines: list[str]) -> bytes:
    """`ssh -tt alice@gpu01 sudo -i`, typing LINES one by one; what the terminal showed."""
    argv = ssh_argv(lab, "alice", node(lab, "gpu01")["address"], "sudo -i")
    argv.insert(1, "-tt")
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdin is not None
    time.sleep(1.5)
    for line in lines:
        proc.stdin.write(line.encode() + b"\r")
        proc.stdin.flush()
        time.sleep(0.4)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, (out, err)
    return out


def wait_for(lab: dict[str, Any], *args: str, timeout: float = 20) -> list[dict[str, Any]]:
    """`broker sessions ARGS --json` until it returns something (the daemon indexes)."""
    deadline = time.monotonic() + timeout
    while True:
        done = cli(lab, "sessions", *args, "--json")
        assert done.returncode == 0, done.stderr
        found: list[dict[str, Any]] = json.loads(done.stdout)
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_a_recorded_root_shell_is_found_shown_replayed_and_verified(ready: dict[str, Any]) -> None:
    lab, grant = ready["lab"], ready["grant"]
    mark = secrets.token_hex(4)
    shown = interactive_root_shell(
        lab,
        [
            f"echo OUT-{mark}",
            f"echo listing /data/checkpoints/{mark} for the audit > /dev/null",
            "echo $((7*191))",
            # Root erases the node's local I/O log directories from inside the session.
            "rm -rf /var/log/broker-io /var/log/sudo-io",
            f"echo AFTER-RM-{mark}",
            "exit",
        ],
    )
    assert f"AFTER-RM-{mark}".encode() in shown

    hits = wait_for(lab, "search", f"OUT-{mark}", "--output")
    assert len(hits) == 1
    rid = hits[0]["session"]["id"]
    # Found by what was typed, not by what only the output holds (1337 = 7*191).
    typed = wait_for(lab, "search", f"listing /data/checkpoints/{mark}", "--input")
    assert [h["session"]["id"] for h in typed] == [rid]
    assert cli(lab, "sessions", "search", "1337", "--input", "--user", "alice", "--json").stdout
    assert rid not in cli(lab, "sessions", "search", "1337", "--input", "--json").stdout
    assert rid in cli(lab, "sessions", "search", "1337", "--output", "--json").stdout

    # Listed (complete once the shell exits) under alice, gpu01 and the grant.
    deadline = time.monotonic() + 15
    while True:
        listed = json.loads(
            cli(lab, "sessions", "list", "--user", "alice", "--node", "gpu01", "--json").stdout
        )
        row = next(r for r in listed if r["id"] == rid)
        if row["state"] == "complete" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert row["state"] == "complete" and row["grant_id"] == grant["id"]
    assert row["runas"] == "root" and row["exit_value"] == 0 and row["end_reason"] == "exit 0"
    by_grant = json.loads(cli(lab, "sessions", "list", "--grant", grant["id"], "--json").stdout)
    assert rid in [r["id"] for r in by_grant]

    detail = json.loads(cli(lab, "sessions", "show", rid, "--json").stdout)
    assert detail["grant"]["reason"] == "INC-5150 recorded work"
    assert detail["grant"]["approvers"] == ["frank"]
    assert detail["session"]["started_at"] < detail["session"]["ended_at"]
    typed_lines = [c["text"] for c in detail["timeline"]]
    assert f"echo OUT-{mark}" in typed_lines and "exit" in typed_lines
    human = cli(lab, "sessions", "show", rid)
    assert human.returncode == 0 and "INC-5150 recorded work" in human.stdout

    # The central copy survived the rm -rf, and replays byte for byte what was stored.
    recording = store_dir(lab) / f"{rid[0:2]}/{rid[2:4]}/{rid[4:6]}"
    stored = (recording / "ttyout").read_bytes()
    replayed = subprocess.run(
        [BROKER, "--config", str(config_of(lab)), "sessions", "replay", rid, "--speed", "0"],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout == stored
    assert f"AFTER-RM-{mark}".encode() in replayed.stdout and b"1337" in replayed.stdout
    assert replayed.stdout.replace(b"\r\n", b"\n").strip() in shown.replace(b"\r\n", b"\n")
    # sudo's own sudoreplay reads the central copy.
    native = subprocess.run(
        ["sudoreplay", "-d", str(store_dir(lab)), "-s", "0", "-m", "0", rid],
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert native.returncode == 0 and f"OUT-{mark}".encode() in native.stdout, native.stderr

    # Its digest is in the audit chain once; tampering with the stored copy is detected.
    assert recorded_events(lab, rid) == 1
    intact = cli(lab, "sessions", "verify", rid)
    assert intact.returncode == 0 and "intact" in intact.stdout
    data = bytearray(stored)
    data[len(data) // 2] ^= 0x20
    (recording / "ttyout").write_bytes(bytes(data))
    tampered = cli(lab, "sessions", "verify", rid)
    assert tampered.returncode == 1
    assert tampered.stderr.strip() == (
        f"broker: error: session {rid}: the stored recording changed since it was indexed "
        "(ttyout); treat it as tampered; the audit chain holds the original digest"
    )


def test_sessions_made_while_the_daemon_is_down_are_indexed_once_after_it_restarts(
    ready: dict[str, Any], lab_module: ModuleType
) -> None:
    lab, grant = ready["lab"], ready["grant"]
    info = lab_module.load_info(Path(lab["root"]))
    os.killpg(info["broker"]["pid"], signal.SIGKILL)
    mark = secrets.token_hex(4)
    for n in range(3):
        done = sudo_over_ssh(lab, f"sudo -n sh -c 'echo down-{n}-{mark}'")
        assert done.returncode == 0 and f"down-{n}-{mark}" in done.stdout, done.stderr
    lab_module.restart_broker(Path(lab["root"]))
    # Restarted again while it is indexing what piled up: nothing lost, nothing doubled.
    lab_module.restart_broker(Path(lab["root"]))
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        found = wait_for(lab, "search", f"down-.-{mark}", "--output", "--since", "1h")
        if len(found) == 3 and all(h["session"]["state"] == "complete" for h in found):
            break
        time.sleep(0.5)
    assert len(found) == 3
    for hit in found:
        assert hit["session"]["grant_id"] == grant["id"]
        assert recorded_events(lab, hit["session"]["id"]) == 1


def test_without_the_log_server_sudo_refuses_and_a_running_session_ends(
    ready: dict[str, Any], lab_module: ModuleType
) -> None:
    lab = ready["lab"]
    root = Path(lab["root"])
    running = subprocess.Popen(
        ssh_argv(lab, "alice", node(lab, "gpu01")["address"],
                 "sudo -n sh -c 'echo started; sleep 25; echo never'"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    time.sleep(2)
    lab_module.stop_logserver(root, "logsrvd")
    try:
        out, err = running.communicate(timeout=20)
        assert "started" in out and "never" not in out
        assert "lost connection to log server" in err
        refused = sudo_over_ssh(lab, "sudo -i id -u")
        assert refused.returncode != 0 and refused.stdout.strip() != "0"
        assert "log server" in refused.stderr, refused.stderr
        # pam_broker.so had allowed it; gpu01's watcher spools the refusal with its reason,
        # under the grant, and the broker collects it (reap collects the nodes' events).
        denied = log_server_denies(lab, ready["grant"]["id"])
        assert [d["details"]["user"] for d in denied] == ["alice"], denied
        assert denied[0]["outcome"] == "refused" and denied[0]["details"]["known_grant"]
    finally:
        lab_module.restart_logserver(root)
    again = sudo_over_ssh(lab, "sudo -n id -u")
    assert again.returncode == 0 and again.stdout.strip() == "0", again.stderr


def test_break_glass_sudo_works_without_the_log_server_and_its_recording_arrives_later(
    ready: dict[str, Any], lab_module: ModuleType
) -> None:
    """heidi (break-glass) runs sudo on gpu01 under a site rule while the broker host's
    sudo_logsrvd is down: it works, gpu01's break-glass recorder keeps the recording, and
    once the server is back it arrives, listed as break-glass."""
    lab = ready["lab"]
    root = Path(lab["root"])
    site_rule = Path(node(lab, "gpu01")["dir"]) / "etc" / "sudoers.d" / "site-break-glass"
    site_rule.write_text("%break-glass ALL = (ALL) NOPASSWD: ALL\n")
    site_rule.chmod(0o440)
    mark = secrets.token_hex(4)
    lab_module.stop_logserver(root, "logsrvd")
    try:
        done = sudo_over_ssh(lab, f"sudo -n sh -c 'echo glass-{mark}; id -u'", user="heidi")
        assert done.returncode == 0 and done.stdout.split() == [f"glass-{mark}", "0"], done.stderr
    finally:
        lab_module.restart_logserver(root)
        site_rule.unlink()
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert cli(lab, "grants", "reap").returncode == 0  # collects gpu01's hook events
        found = wait_for(lab, "search", f"glass-{mark}", "--output", "--since", "1h", timeout=2)
        if (
            found
            and found[0]["session"]["state"] == "complete"
            and found[0]["session"]["break_glass"]
        ):
            break
        time.sleep(1)
    assert len(found) == 1, found
    session = found[0]["session"]
    assert (session["user"], session["node"], session["grant_id"]) == ("heidi", "gpu01", None)
    assert session["break_glass"] is True and session["state"] == "complete"
    listed = cli(lab, "sessions", "list", "--user", "heidi")
    assert listed.returncode == 0 and "complete (break-glass)" in listed.stdout, listed.stdout


def log_server_denies(lab: dict[str, Any], grant_id: str) -> list[dict[str, Any]]:
    """`session.deny` audit events with reason log_server under GRANT_ID from gpu01, once
    the watcher (every 2 s in the lab) has spooled them and the broker collected them."""
    deadline = time.monotonic() + 30
    while True:
        assert cli(lab, "grants", "reap").returncode == 0
        tail = cli(lab, "audit", "tail", "--action", "session.deny", "--actor", "node:gpu01",
                   "-n", "200", "--json")  # fmt: skip
        assert tail.returncode == 0, tail.stderr
        found = [
            e
            for e in json.loads(tail.stdout)
            if e["target"] == grant_id and e["details"].get("reason") == "log_server"
        ]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_a_full_disk_never_means_an_unrecorded_command(ready: dict[str, Any]) -> None:
    """Node disk full: the recording does not live there, so sudo runs and is recorded
    centrally. Log server's disk full: sudo ends the command at the server's first error."""
    lab = ready["lab"]
    gpu01 = node(lab, "gpu01")
    nsenter = ["nsenter", "--target", str(gpu01["pid"]), "--mount", "--uts", "--"]
    mark = secrets.token_hex(4)
    full = "/var/spool/broker"
    subprocess.run([*nsenter, "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", full], check=True)
    try:
        subprocess.run([*nsenter, "sh", "-c", f"cat /dev/zero > {full}/fill"], check=False)
        ran = sudo_over_ssh(lab, f"sudo -n sh -c 'echo nodefull-{mark}'")
        assert ran.returncode == 0 and f"nodefull-{mark}" in ran.stdout, ran.stderr
        assert wait_for(lab, "search", f"nodefull-{mark}", "--output")
    finally:
        subprocess.run([*nsenter, "umount", full], check=True)

    store = store_dir(lab)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(store)], check=True)
    try:
        subprocess.run(["sh", "-c", f"cat /dev/zero > {store}/fill"], check=False)
        # sudo_logsrvd accepts the session, then cannot store its first output: sudo reports
        # the server's error and ends the command (a command that is already done by then
        # has run; docs/sessions.md says so).
        ended = sudo_over_ssh(lab, f"sudo -n sh -c 'echo x; sleep 5; echo serverfull-{mark}'")
        assert ended.returncode != 0 and f"serverfull-{mark}" not in ended.stdout
        assert "server" in ended.stderr, ended.stderr
    finally:
        subprocess.run(["umount", str(store)], check=True)


# ---------------------------------------------------------------- a relay zone


@pytest.fixture(scope="module")
def storage_grant(lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """erin holds a grant on stor01, whose zone (storage) records through the relay that
    login01 runs (`[sessions.relays] storage = "login01:30344"` in the lab)."""
    codes = Codes()
    codes.enroll(lab, "erin")
    assert cli(lab, "revoke", "--user", "erin", "--reason", "clean slate").returncode == 0
    asked = cli(
        lab, "elevate", "stor01", "--for", "30m", "--reason", "INC-5151 relayed work",
        "--json", user="erin", stdin=codes.code("erin"),
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    grant = json.loads(asked.stdout)["grant"]
    yield grant
    done = cli(lab, "revoke", grant["id"], "--reason", "end of the relay tests")
    assert done.returncode == 0, done.stderr
    assert cli(lab, "mfa", "reset", "erin", "--yes").returncode == 0


def erin_on_stor01(lab: dict[str, Any], command: str) -> subprocess.CompletedProcess[str]:
    return sudo_over_ssh(lab, command, user="erin", on="stor01")


def test_a_relay_zone_elevates_without_the_broker_host_and_its_recording_arrives_later(
    lab: dict[str, Any], storage_grant: dict[str, Any], lab_module: ModuleType
) -> None:
    root = Path(lab["root"])
    mark = secrets.token_hex(4)
    lab_module.stop_logserver(root, "logsrvd")
    try:
        ran = erin_on_stor01(lab, f"sudo -n sh -c 'echo relayed-{mark}; id -u'")
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.split() == [f"relayed-{mark}", "0"]
        # The relay holds it; the broker host has nothing yet.
        time.sleep(3)
        assert wait_for(lab, "search", f"relayed-{mark}", "--output", timeout=0) == []
    finally:
        lab_module.restart_logserver(root)
    # Offered again every sessions.relay_retry (2 s in the lab) until the broker host takes it.
    hits = wait_for(lab, "search", f"relayed-{mark}", "--output", timeout=30)
    assert len(hits) == 1
    session = hits[0]["session"]
    assert (session["node"], session["user"], session["state"]) == ("stor01", "erin", "complete")
    assert session["relayed"] is True
    assert session["grant_id"] == storage_grant["id"]
    shown = cli(lab, "sessions", "show", session["id"])
    assert shown.returncode == 0 and "(relayed)" in shown.stdout, shown.stdout
    assert cli(lab, "sessions", "verify", session["id"]).returncode == 0
    # Sessions elsewhere went straight to the broker host: not marked.
    direct = cli(lab, "sessions", "list", "--node", "gpu01", "--json")
    assert direct.returncode == 0
    assert not any(s["relayed"] for s in json.loads(direct.stdout))


@pytest.mark.usefixtures("storage_grant")
def test_a_relay_zone_is_strict_about_its_relay(
    lab: dict[str, Any], lab_module: ModuleType
) -> None:
    root = Path(lab["root"])
    lab_module.stop_relay(root)
    try:
        refused = erin_on_stor01(lab, "sudo -n id -u")
        assert refused.returncode != 0 and refused.stdout.strip() != "0"
        # The node's tunnel is up, so sudo connects and is then cut off.
        assert "error initializing I/O plugin sudoers_io" in refused.stderr, refused.stderr
    finally:
        lab_module.restart_relay(root)
    again = erin_on_stor01(lab, "sudo -n id -u")
    assert again.returncode == 0 and again.stdout.strip() == "0", again.stderr
