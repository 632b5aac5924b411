"""Just-in-time elevation end to end: MFA, approval, the grant on the node, sudo over SSH,
expiry without the broker, revocation of a running sudo, and revocation by the directory.

The lab daemon's scheduler interval is an hour, so nothing here is removed by the broker
unless the test asks for it (`broker revoke`, `broker sync`, `broker grants reap`).
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import ldap3
import pytest

from tests.helpers import BROKER, run_broker
from tests.lab.conftest import Codes, as_user, cli, config_of, ssh_argv

pytestmark = pytest.mark.lab


def node(lab: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in lab["nodes"] if n["name"] == name)


def ssh(lab: dict[str, Any], user: str, node_name: str, command: str) -> list[str]:
    return ssh_argv(lab, user, node(lab, node_name)["address"], command)


def run_ssh(
    lab: dict[str, Any], user: str, node_name: str, command: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ssh(lab, user, node_name, command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def in_node(
    lab: dict[str, Any], node_name: str, argv: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A command inside the node's namespaces (as a console login would run it)."""
    return subprocess.run(
        ["nsenter", "--target", str(node(lab, node_name)["pid"]), "--mount", "--uts", "--", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **(env or {})},
    )


def node_path(lab: dict[str, Any], node_name: str, path: str) -> Path:
    """A node's file as the host sees it: its own directories, or its private /run through
    the namespace's root."""
    if path.startswith("/run/"):
        return Path(f"/proc/{node(lab, node_name)['pid']}/root{path}")
    return Path(node(lab, node_name)["dir"]) / path.lstrip("/")


@pytest.fixture(scope="module")
def ready(lab: dict[str, Any]) -> dict[str, Any]:
    """The lab as `lab up` leaves it (policy applied, nodes bootstrapped), synced, and
    alice, carol (gpu-admins), frank and grace (hpc-approvers) enrolled in MFA."""
    assert run_broker("sync", "--full", config=config_of(lab)).returncode == 0
    codes = Codes()
    for user in ("alice", "carol", "frank", "grace"):
        codes.enroll(lab, user)
    return {"lab": lab, "codes": codes}


def elevate_approved(
    ready: dict[str, Any], user: str, approver: str, nodes: str, duration: str
) -> dict[str, Any]:
    """USER elevates (gpu-root needs one approval), APPROVER approves; the grant as JSON."""
    lab, codes = ready["lab"], ready["codes"]
    asked = cli(
        lab,
        "elevate",
        nodes,
        "--for",
        duration,
        "--reason",
        "INC-4711 replace NVLink switch",
        "--json",
        user=user,
        stdin=codes.code(user),
    )
    assert asked.returncode == 0, asked.stderr
    request = json.loads(asked.stdout)["request"]
    assert request["state"] == "pending" and request["approvals_needed"] == 1
    approved = cli(
        lab, "approve", request["id"], "--json", user=approver, stdin=codes.code(approver)
    )
    assert approved.returncode == 0, approved.stderr + approved.stdout
    result = json.loads(approved.stdout)
    assert [r["ok"] for r in result["results"]] == [True] * len(result["results"])
    grant: dict[str, Any] = result["grant"]
    assert grant["approvers"] == [approver] and grant["request_id"] == request["id"]
    return grant


def test_a_user_in_no_mapped_group_is_refused_with_the_rule(ready: dict[str, Any]) -> None:
    lab = ready["lab"]
    refused = cli(lab, "elevate", "gpu01", "--for", "10m", "--reason", "curious", user="bob")
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "broker: error: bob may not elevate on gpu01: bob is in no group bound to any role; "
        "see `broker policy explain bob gpu01`"
    )
    explained = cli(lab, "policy", "explain", "bob", "gpu01", user="bob")
    assert "bob is in no group bound to any role" in explained.stdout


def test_refusals_before_anything_is_pushed(ready: dict[str, Any]) -> None:
    lab = ready["lab"]
    before = sorted(p.name for p in node_path(lab, "gpu01", "/etc/sudoers.d").iterdir())
    too_long = cli(
        lab, "elevate", "gpu01", "--role", "gpu-root", "--for", "5h", "--reason", "x", user="alice"
    )
    assert too_long.returncode == 1 and "5h exceeds the maximum 4h of gpu-root" in too_long.stderr
    outside = cli(lab, "elevate", "login01", "--reason", "x", user="alice")
    assert outside.returncode == 1 and "may not elevate on login01" in outside.stderr
    unknown = cli(lab, "elevate", "gpu77", "--reason", "x", user="alice")
    assert unknown.returncode == 1 and "gpu77 is in no zone of the policy" in unknown.stderr
    hostile = cli(lab, "elevate", "gpu01", "--reason", "x\ny", user="alice")
    assert hostile.returncode == 1 and "reason" in hostile.stderr
    assert len(hostile.stderr.strip().splitlines()) == 1
    after = sorted(p.name for p in node_path(lab, "gpu01", "/etc/sudoers.d").iterdir())
    assert after == before


def test_elevation_works_on_its_node_only_and_ends_at_expiry_without_the_broker(
    ready: dict[str, Any],
) -> None:
    lab = ready["lab"]
    grant = elevate_approved(ready, "alice", "frank", "gpu01", "40s")
    assert grant["nodes"] == "gpu01" and grant["runas"] == "root"
    assert [n["state"] for n in grant["node_states"]] == ["live"]
    drop_in = node_path(lab, "gpu01", f"/etc/sudoers.d/broker_{grant['id']}")
    grant_file = node_path(lab, "gpu01", f"/var/lib/broker/grants/{grant['id']}")
    assert drop_in.stat().st_mode & 0o777 == 0o440 and grant_file.stat().st_mode & 0o777 == 0o600
    text = drop_in.read_text()
    assert "INC-4711" not in text  # the reason never reaches sudoers
    assert re.search(
        r"NOTAFTER=\d{14}Z TIMEOUT=40 NOPASSWD: LOG_INPUT: LOG_OUTPUT: ALL$", text, re.M
    )
    assert re.search(r"^alice gpu01 = \(root\) NOTBEFORE=", text, re.M)  # this node only
    copied_rule_grants_nothing_elsewhere(lab, text)

    # One SSH session that outlives the grant: root before expiry, refused after, also in
    # a time zone 14 hours ahead of UTC.
    until = int(
        time.mktime(time.strptime(grant["not_after"][:19], "%Y-%m-%dT%H:%M:%S")) - time.timezone
    )
    script = (
        "sudo -n id -u; "
        f"while [ $(date +%s) -lt {until + 2} ]; do sleep 1; done; "
        "sudo -n id -u 2>&1; echo rc=$?; "
        "TZ=Pacific/Kiritimati sudo -n id -u 2>&1; echo rc=$?"
    )
    session = run_ssh(lab, "alice", "gpu01", script, timeout=180)
    lines = session.stdout.splitlines()
    assert lines[0] == "0", session.stdout + session.stderr
    assert "rc=1" in lines and lines.count("rc=1") == 2, session.stdout
    assert "0" not in lines[1:]
    # The broker did nothing; the node's own watcher removed the expired grant and its
    # drop-in (within a pass or two of expiry).
    deadline = time.monotonic() + 15
    while (drop_in.exists() or grant_file.exists()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not drop_in.exists() and not grant_file.exists()

    # gpu02 is not in the grant: the gated login refuses alice, and sudo there refuses her.
    other = run_ssh(lab, "alice", "gpu02", "sudo -n id -u")
    assert other.returncode == 255 and "0" not in other.stdout.split()
    alice = lab["users"]["alice"]
    local = in_node(
        lab,
        "gpu02",
        [*as_user(lab, "alice"), "sudo", "-n", "id", "-u"],
        env={"HOME": "/home/alice", "USER": "alice"},
    )
    assert local.returncode == 1 and local.stdout.strip() != "0", (alice, local)

    # The scheduler's tick expires it in the broker's records too.
    reaped = cli(lab, "grants", "reap", "--json")
    assert reaped.returncode == 0, reaped.stderr
    assert grant["id"] in json.loads(reaped.stdout)["grants_expired"]
    assert not drop_in.exists() and not grant_file.exists()


def copied_rule_grants_nothing_elsewhere(lab: dict[str, Any], text: str) -> None:
    """gpu01's drop-in copied to gpu02 by its root: sudo there does not list the rule (its
    host field names gpu01), so the copy grants nothing even before the PAM module decides."""
    listed = in_node(lab, "gpu01", ["sudo", "-n", "-l", "-U", "alice"])
    assert "NOPASSWD: LOG_INPUT: LOG_OUTPUT: ALL" in listed.stdout, listed.stdout
    copy = node_path(lab, "gpu02", "/etc/sudoers.d/copied-from-gpu01")
    copy.write_text(text)
    copy.chmod(0o440)
    try:
        checked = in_node(lab, "gpu02", ["visudo", "-c"])
        assert checked.returncode == 0, checked.stdout + checked.stderr  # sudo reads the file
        listed = in_node(lab, "gpu02", ["sudo", "-n", "-l", "-U", "alice"])
        assert "NOTBEFORE=" not in listed.stdout, listed.stdout
        assert "alice is not allowed to run sudo on gpu02" in listed.stdout, listed.stdout
    finally:
        copy.unlink()


def test_revoke_ends_a_running_sudo_and_its_process_tree(ready: dict[str, Any]) -> None:
    lab = ready["lab"]
    assert cli(lab, "revoke", "--user", "carol", "--reason", "clean slate").returncode == 0
    grant = elevate_approved(ready, "carol", "grace", "gpu01", "10m")
    marker = f"sleep 3{int(time.time()) % 1000:03d}"
    running = subprocess.Popen(
        ssh(lab, "carol", "gpu01", f"sudo -n sh -c '{marker} & {marker}'"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    sessions = node_path(lab, "gpu01", f"/run/broker-sessions/{grant['id']}")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not (sessions.is_dir() and any(sessions.iterdir())):
        time.sleep(0.2)
    assert sessions.is_dir() and any(sessions.iterdir()), "the hook recorded no session"
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 0

    started = time.monotonic()
    revoked = cli(lab, "revoke", grant["id"], "--reason", "INC-4711 done", "--json")
    assert revoked.returncode == 0, revoked.stderr
    result = json.loads(revoked.stdout)
    assert result["revoked"] == [grant["id"]] and result["pending"] == []
    assert result["results"][0]["killed"] >= 2
    running.communicate(timeout=15)
    assert time.monotonic() - started < 15
    assert subprocess.run(["pgrep", "-f", marker], capture_output=True).returncode == 1
    assert not node_path(lab, "gpu01", f"/etc/sudoers.d/broker_{grant['id']}").exists()
    # A revoked grant stays revoked: its file put back by hand is refused by the hook.
    again = run_ssh(lab, "carol", "gpu01", "sudo -n id -u")
    assert "0" not in again.stdout.split()
    shown = json.loads(cli(lab, "grants", "show", grant["id"], "--json").stdout)
    assert shown["state"] == "revoked" and shown["end_reason"] == "INC-4711 done"
    assert [n["state"] for n in shown["node_states"]] == ["removed"]


@pytest.mark.parametrize("spelling", ["ALICE", "HPC\\alice", "alice@HPC.TEST"])
def test_revoke_by_any_spelling_of_the_user_cuts_them_off(
    ready: dict[str, Any], spelling: str
) -> None:
    """Issue 20, item 3: `revoke --user ALICE` once answered "nothing active" and alice
    kept root; every spelling `accounts show` takes now names her account."""
    lab = ready["lab"]
    assert cli(lab, "revoke", "--user", "alice", "--reason", "clean slate").returncode == 0
    grant = elevate_approved(ready, "alice", "frank", "gpu01", "10m")
    assert run_ssh(lab, "alice", "gpu01", "sudo -n id -u").stdout.strip() == "0"
    listed = cli(lab, "grants", "list", "--user", spelling, "--active", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [g["id"] for g in json.loads(listed.stdout)] == [grant["id"]]
    revoked = cli(lab, "revoke", "--user", spelling, "--reason", "INC-4713 cut off", "--json")
    assert revoked.returncode == 0, revoked.stderr
    result = json.loads(revoked.stdout)
    assert result["revoked"] == [grant["id"]] and result["pending"] == []
    assert not node_path(lab, "gpu01", f"/etc/sudoers.d/broker_{grant['id']}").exists()
    again = run_ssh(lab, "alice", "gpu01", "sudo -n id -u")
    assert "0" not in again.stdout.split()
    left = cli(lab, "grants", "list", "--user", spelling, "--active", "--json")
    assert left.returncode == 0 and json.loads(left.stdout) == []


def test_a_user_not_in_the_directory_is_an_error_never_nothing(ready: dict[str, Any]) -> None:
    lab = ready["lab"]
    for args in (
        ("revoke", "--user", "alicia"),
        ("grants", "list", "--user", "HPC\\alicia"),
        ("sessions", "list", "--user", "alicia@HPC.TEST"),
        ("mfa", "status", "ALICIA"),
    ):
        result = cli(lab, *args)
        assert result.returncode == 1, (args, result.stdout)
        [line] = result.stderr.strip().splitlines()
        assert "no user" in line and "in the directory snapshot" in line, line
        assert "broker accounts list" in line


def test_removing_the_user_from_the_group_in_ad_revokes_at_the_next_sync(
    ready: dict[str, Any], admin: ldap3.Connection
) -> None:
    lab = ready["lab"]
    grant = elevate_approved(ready, "alice", "frank", "gpu01", "10m")
    assert run_ssh(lab, "alice", "gpu01", "sudo -n id -u").stdout.strip() == "0"
    group = f"CN=gpu-admins,OU=Groups,OU=Cluster,{lab['base_dn']}"
    alice = f"CN=alice,OU=People,OU=Cluster,{lab['base_dn']}"
    admin.modify(group, {"member": [(ldap3.MODIFY_DELETE, [alice])]})
    try:
        synced = cli(lab, "sync", "--json")
        assert synced.returncode == 0, synced.stderr
        assert json.loads(synced.stdout)["revoked"] == [grant["id"]]
        shown = json.loads(cli(lab, "grants", "show", grant["id"], "--json").stdout)
        assert shown["state"] == "revoked"
        assert shown["end_reason"].startswith("directory: alice is in none of the groups")
        assert not node_path(lab, "gpu01", f"/etc/sudoers.d/broker_{grant['id']}").exists()
        audit = cli(lab, "audit", "tail", "--action", "grant.revoke", "--json")
        assert grant["id"] in audit.stdout
    finally:
        admin.modify(group, {"member": [(ldap3.MODIFY_ADD, [alice])]})
        assert cli(lab, "sync").returncode == 0


def test_users_see_their_own_grants_and_operators_all(ready: dict[str, Any]) -> None:
    lab = ready["lab"]
    mine = cli(lab, "grants", "list", "--json", user="carol")
    assert mine.returncode == 0 and {g["user"] for g in json.loads(mine.stdout)} <= {"carol"}
    others = cli(lab, "grants", "list", "--user", "alice", user="carol")
    assert others.returncode == 1 and "only operators" in others.stderr
    everyone = json.loads(cli(lab, "grants", "list", "--json").stdout)
    assert {"alice", "carol"} <= {g["user"] for g in everyone}
    requests = cli(lab, "requests", "list", "--state", "", "--json", user="frank")
    assert requests.returncode == 0 and json.loads(requests.stdout)


def test_on_a_terminal_the_push_is_watched_and_lands_on_every_node(ready: dict[str, Any]) -> None:
    lab, codes = ready["lab"], ready["codes"]
    asked = cli(
        lab,
        "elevate",
        "gpu[01-02]",
        "--for",
        "5m",
        "--reason",
        "INC-4712 two nodes",
        "--json",
        user="carol",
        stdin=codes.code("carol"),
    )
    assert asked.returncode == 0, asked.stderr
    request = json.loads(asked.stdout)["request"]
    # On a terminal the daemon answers once the grant is issued, and the CLI follows the
    # push with a progress bar, then prints each node's result.
    approve = [*as_user(lab, "grace"), BROKER, "--config", str(config_of(lab))]
    try:
        status, output = on_a_terminal(
            [*approve, "approve", request["id"]], answer=codes.code("grace"), prompt=b"(6 digits)"
        )
        assert status == 0, output
        found = re.search(
            r"grant (g[0-9a-f]{16}): carol may `sudo` as root on gpu\[01-02\]", output
        )
        assert found, output
        assert re.search(r"gpu01\s*│\s*ok", output) and re.search(r"gpu02\s*│\s*ok", output)
        shown = json.loads(cli(lab, "grants", "show", found.group(1), "--json").stdout)
        assert [n["state"] for n in shown["node_states"]] == ["live", "live"]
    finally:  # the grant never outlives the test
        assert cli(lab, "revoke", "--user", "carol", "--reason", "test done").returncode == 0


def on_a_terminal(argv: list[str], *, answer: str, prompt: bytes) -> tuple[int, str]:
    """Run argv on a pseudo-terminal; type `answer` once `prompt` shows (getpass flushes
    whatever was typed before it asked). Returns the exit status and everything shown."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: exec at once, nothing else
        os.environ.update({"COLUMNS": "200", "TERM": "xterm"})
        os.execvp(argv[0], argv)
    shown = b""
    answered = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
        if not answered and prompt in shown:
            time.sleep(0.2)
            os.write(fd, answer.encode())
            answered = True
    os.close(fd)
    _pid, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), shown.decode("utf-8", "replace")


def _broken_shown(lab: dict[str, Any], grant_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """`broker node status gpu01` (which checks the drop-ins) and `grants show`, as JSON."""
    status = cli(lab, "node", "status", "gpu01", "--json")
    assert status.returncode == 1, status.stdout + status.stderr  # a problem: exit 1
    [node_status] = json.loads(status.stdout)
    shown = json.loads(cli(lab, "grants", "show", grant_id, "--json").stdout)
    return node_status, shown["node_states"][0]


def _repaired(lab: dict[str, Any], grant_id: str) -> None:
    """`broker grants reap` (the scheduler's tick) pushes it again (drop_in_integrity=repair)."""
    reaped = cli(lab, "grants", "reap", "--json")
    assert reaped.returncode == 0, reaped.stderr
    assert json.loads(reaped.stdout)["drop_ins_repaired"] == [f"{grant_id}@gpu01"]
    shown = json.loads(cli(lab, "grants", "show", grant_id, "--json").stdout)
    assert [(n["state"], n["drop_in_problem"]) for n in shown["node_states"]] == [("live", None)]


def test_a_tampered_drop_in_is_not_live_is_alerted_and_repaired(ready: dict[str, Any]) -> None:
    lab = ready["lab"]
    assert cli(lab, "revoke", "--user", "alice", "--reason", "clean slate").returncode == 0
    grant = elevate_approved(ready, "alice", "frank", "gpu01", "10m")
    name = f"/etc/sudoers.d/broker_{grant['id']}"
    pushed = node_path(lab, "gpu01", name).read_text()
    assert in_node(lab, "gpu01", ["chmod", "666", name]).returncode == 0
    # sudo itself now ignores the rule (that is the danger: nothing said so before)
    assert f"({grant['runas']})" not in run_ssh(lab, "alice", "gpu01", "sudo -n -l").stdout

    node_status, row = _broken_shown(lab, grant["id"])
    why = "drop-in mode 0666: sudo ignores it"
    assert node_status["drop_in_problems"] == [f"{grant['id']}: {why}"]
    assert why in node_status["problem"]
    assert (row["state"], row["drop_in_problem"]) == ("broken", why)

    def alerted() -> list[dict[str, Any]]:
        listed = cli(lab, "alerts", "list", "--rule", "drop-in-tampered", "--json")
        return [a for a in json.loads(listed.stdout) if a["grant_id"] == grant["id"]]

    deadline = time.monotonic() + 30
    while not alerted() and time.monotonic() < deadline:
        time.sleep(1)
    [alert] = alerted()
    assert (alert["node"], alert["severity"], alert["user"]) == ("gpu01", "high", "alice")
    assert why in alert["message"]

    _repaired(lab, grant["id"])
    drop_in = node_path(lab, "gpu01", name)
    assert drop_in.stat().st_mode & 0o777 == 0o440 and drop_in.read_text() == pushed
    assert f"({grant['runas']})" in run_ssh(lab, "alice", "gpu01", "sudo -n -l").stdout

    # Changed content, mode kept: found by its sha256, and put back.
    drop_in.write_text(pushed + "alice ALL = (ALL) NOPASSWD: ALL\n")
    node_status, row = _broken_shown(lab, grant["id"])
    assert row["state"] == "broken" and row["drop_in_problem"].startswith("drop-in changed")
    _repaired(lab, grant["id"])
    assert drop_in.read_text() == pushed
    assert cli(lab, "revoke", grant["id"], "--reason", "done").returncode == 0
