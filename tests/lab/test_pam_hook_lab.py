"""The PAM module (pam_broker.so) on real lab nodes: every row of the decision table in
docs/grants.md, driven through the node's own PAM stack (the bootstrapped /etc/pam.d blocks)
with pamtester, and real sudo racing for the last session slot.

Only stor01 and login01 and only carol, bob, heidi, dave and erin are used: other tests
elevate alice and frank on gpu01/gpu02 at the same time. The lab runs no syslog daemon, so
each pamtester run gets a private /dev whose `log` is a datagram socket of this test: the
reasons the hook gives are asserted from what it sent there.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pyotp
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit.checkpoint import load_signing_key
from broker.grants import grantfile
from tests.helpers import BROKER
from tests.lab.conftest import ssh_argv, watchers_paused

pytestmark = pytest.mark.lab

STOR, LOGIN = "stor01", "login01"
MODULE = "/usr/lib/broker/pam_broker.so"
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
# Runs inside a private copy of the node's mount namespace: /dev becomes our directory
# (the real device nodes bound into it, plus our `log` socket), then pamtester is exec'd,
# so its pid is the one Popen reports.
PRIVATE_DEV = (
    'set -e; d="$1"; shift; for n in ' + " ".join(DEVICES) + '; do mount --bind "/dev/$n" '
    '"$d/$n"; done; mount --rbind "$d" /dev; exec "$@"'
)
AUTHPRIV = 10  # syslog facility number
NOBODY = 65534


# ---------------------------------------------------------------- nodes and pamtester


@dataclass(frozen=True)
class Node:
    name: str
    pid: int
    root: Path  # the node's files as the host sees them

    def path(self, inside: str) -> Path:
        """The node's file as the host sees it; its private /run through the namespace."""
        if inside.startswith("/run/"):
            return Path(f"/proc/{self.pid}/root{inside}")
        return self.root / inside.lstrip("/")


@dataclass(frozen=True)
class Pam:
    """One pamtester run: its exit status, output, pid and what reached syslog."""

    code: int
    output: str
    pid: int
    syslog: list[str]

    def hook_lines(self, verdict: str) -> list[str]:
        """The module's `allow`/`deny` lines, facility checked (authpriv), without the header
        (pam_syslog's `pam_broker(SERVICE:TYPE): `)."""
        found = []
        for line in self.syslog:
            match = re.match(r"<(\d+)>.*? pam_broker\([^)]*\): (.*)", line)
            if match and match.group(2).startswith(f"{verdict} "):
                assert int(match.group(1)) >> 3 == AUTHPRIV, line
                found.append(match.group(2))
        return found


def pam(
    node: Node,
    service: str,
    user: str,
    *operations: str,
    ruser: str | None = None,
    tty: str | None = None,
    answer: str = "",
) -> Pam:
    """Run `pamtester SERVICE USER OPERATIONS` inside the node, as sudo/sshd would call PAM."""
    items = [f"ruser={ruser}"] * (ruser is not None) + [f"tty={tty}"] * (tty is not None)
    argv = ["pamtester", *(arg for item in items for arg in ("-I", item))]
    with (
        tempfile.TemporaryDirectory(prefix="pam-dev-") as dev,
        socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as log,
    ):
        for name in DEVICES:
            Path(dev, name).touch()
        log.bind(os.path.join(dev, "log"))
        log.setblocking(False)
        enter = ["nsenter", "--target", str(node.pid), "--mount", "--uts", "--"]
        private = ["unshare", "--mount", "--propagation", "private", "--"]
        command = [*argv, service, user, *operations]
        proc = subprocess.Popen(
            [*enter, *private, "/bin/sh", "-c", PRIVATE_DEV, "sh", dev, *command],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        output, _ = proc.communicate(answer, timeout=60)
        messages = []
        with contextlib.suppress(BlockingIOError):
            while True:
                messages.append(log.recv(4096).decode("utf-8", "replace"))
    return Pam(proc.returncode, output, proc.pid, messages)


def assert_allowed(result: Pam) -> None:
    assert result.code == 0, f"{result.output}{result.syslog}"
    assert not result.hook_lines("deny"), result.syslog


def assert_denied(result: Pam, reason: str, said: str = "broker: ") -> None:
    """Refused by the module itself with PAM's own error (account: PAM_PERM_DENIED, auth:
    PAM_AUTH_ERR), one line said to the person, and the reason in syslog."""
    assert result.code == 1, result.output
    assert "System error" not in result.output, result.output
    assert "Permission denied" in result.output or "Authentication failure" in result.output
    if said:
        assert said in result.output, result.output
    denials = result.hook_lines("deny")
    assert any(reason in line for line in denials), (reason, result.syslog)


def write_file(path: Path, data: bytes, mode: int) -> None:
    """Root-owned, final mode before it is visible: temp name in the same dir, then rename."""
    temp = path.with_name(f".broker-tmp-{path.name}.pamtest")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


@contextlib.contextmanager
def swapped(node: Node, inside: str, data: bytes | None) -> Iterator[bytes]:
    """Replace a node file with `data` (None: remove it); the original is put back after."""
    path = node.path(inside)
    original, mode = path.read_bytes(), path.stat().st_mode & 0o7777
    try:
        if data is None:
            path.unlink()
        else:
            write_file(path, data, mode)
        yield original
    finally:
        write_file(path, original, mode)


@contextlib.contextmanager
def login_gated(node: Node, gated: bool) -> Iterator[None]:
    """Make the node's logins gated or not for the test, whatever bootstrap decided."""
    text = node.path("/etc/broker/node.conf").read_text()
    want = f"login_gated={int(gated)}"
    if re.search(rf"^{want}$", text, flags=re.M):
        yield
        return
    changed = re.sub(r"^login_gated=[01]$", want, text, flags=re.M)
    with swapped(node, "/etc/broker/node.conf", changed.encode()):
        yield


# ---------------------------------------------------------------- grants on nodes


class Grants:
    """Signs grants with the lab broker's key, installs them, and removes all traces after."""

    def __init__(self, key: Ed25519PrivateKey, nodes: list[Node]) -> None:
        self.key = key
        self.nodes = nodes
        self.ids: list[str] = []
        self.files: list[Path] = []

    def install(
        self,
        node: Node,
        user: str,
        *,
        key: Ed25519PrivateKey | None = None,
        for_node: str | None = None,
        starts: int = -60,
        ends: int = 600,
        runas: str = "root",
        login: bool = False,
        workloads: bool = False,
        max_sessions: int = 1,
    ) -> Path:
        """A signed grant in /var/lib/broker/grants/<id> (0600 root); times are seconds from now."""
        grant_id = grantfile.new_grant_id()
        self.ids.append(grant_id)
        now = datetime.now(UTC).replace(microsecond=0)
        grant = grantfile.GrantFile(
            id=grant_id,
            node=for_node or node.name,
            user=user,
            runas=runas,
            commands="ALL",
            not_before=now + timedelta(seconds=starts),
            not_after=now + timedelta(seconds=ends),
            login=login,
            workloads=workloads,
            max_sessions=max_sessions,
            policy_sha256="0" * 64,
            approvers=(),
            reason="pamtester lab test",
            issued_at=now,
        )
        text = grantfile.encode_signed(grant, key or self.key)
        return self.place(node.path(f"/var/lib/broker/grants/{grant_id}"), text)

    def place(self, path: Path, text: str, mode: int = 0o600) -> Path:
        self.files.append(path)
        write_file(path, text.encode("ascii"), mode)
        return path

    def cleanup(self) -> None:
        for path in self.files:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        for node in self.nodes:
            for grant_id in self.ids:
                for inside in ("grants", "revoked"):
                    with contextlib.suppress(FileNotFoundError):
                        node.path(f"/var/lib/broker/{inside}/{grant_id}").unlink()
                remove_tree(node.path(f"/run/broker-sessions/{grant_id}"))
            for event in spool(node):
                if event["grant_id"] in self.ids:
                    with contextlib.suppress(FileNotFoundError):
                        event_path(node, event).unlink()


def remove_tree(directory: Path) -> None:
    if directory.is_dir():
        for entry in directory.iterdir():
            entry.unlink()
        directory.rmdir()


def spool(node: Node) -> list[dict[str, Any]]:
    """The session events waiting on the node (oldest first)."""
    events = []
    for path in sorted(node.path("/var/spool/broker/events").glob("*.json")):
        with contextlib.suppress(FileNotFoundError):  # collected meanwhile by another test
            events.append(json.loads(path.read_text()))
    return events


def event_path(node: Node, event: dict[str, Any]) -> Path:
    return node.path(f"/var/spool/broker/events/{event['event_id']}.json")


@pytest.fixture(scope="module")
def nodes(lab: dict[str, Any]) -> dict[str, Node]:
    return {
        n["name"]: Node(n["name"], int(n["pid"]), Path(n["dir"]))
        for n in lab["nodes"]
        if n["name"] in (STOR, LOGIN)
    }


@pytest.fixture
def stor(nodes: dict[str, Node]) -> Node:
    return nodes[STOR]


@pytest.fixture
def login(nodes: dict[str, Node]) -> Node:
    return nodes[LOGIN]


@pytest.fixture(scope="module")
def broker_key(lab: dict[str, Any]) -> Ed25519PrivateKey:
    """The lab broker's own grant-signing key: nodes trust only it."""
    return load_signing_key(Path(lab["broker"]["state_dir"]) / "keys" / "grant-ed25519.pem").private


@pytest.fixture
def grants(broker_key: Ed25519PrivateKey, nodes: dict[str, Node]) -> Iterator[Grants]:
    installer = Grants(broker_key, list(nodes.values()))
    try:
        yield installer
    finally:
        installer.cleanup()


# ---------------------------------------------------------------- sudo account (and auth)


def test_sudo_account_allows_a_valid_grant(grants: Grants, stor: Node) -> None:
    grants.install(stor, "carol")
    assert_allowed(pam(stor, "sudo", "root", "acct_mgmt", ruser="carol"))


def test_sudo_grant_is_only_for_its_user(grants: Grants, stor: Node) -> None:
    grants.install(stor, "dave")
    assert_allowed(pam(stor, "sudo", "root", "acct_mgmt", ruser="dave"))
    assert_denied(
        pam(stor, "sudo", "root", "acct_mgmt", ruser="carol"), "no valid grant for carol on stor01"
    )


def test_sudo_account_allows_root_and_break_glass_without_a_grant(stor: Node) -> None:
    assert_allowed(pam(stor, "sudo", "root", "acct_mgmt", ruser="root"))
    heidi = pam(stor, "sudo", "root", "acct_mgmt", ruser="heidi")
    assert_allowed(heidi)
    assert heidi.hook_lines("allow") == [
        "allow service=sudo type=account user=root ruser=heidi: break-glass: heidi is in break-glass"
    ]


def _expired(g: Grants, node: Node) -> None:
    g.install(node, "carol", starts=-1200, ends=-600)


def _not_yet_valid(g: Grants, node: Node) -> None:
    g.install(node, "carol", starts=600, ends=1200)


def _other_node(g: Grants, node: Node) -> None:
    g.install(node, "carol", for_node="gpu02")


def _edited_byte(g: Grants, node: Node) -> None:
    path = g.install(node, "carol")
    text = path.read_text().replace("reason=pamtester", "reason=pamtestes")
    g.place(path, text)


def _other_key(g: Grants, node: Node) -> None:
    g.install(node, "carol", key=Ed25519PrivateKey.generate())


def _other_key_claiming_ours(g: Grants, node: Node) -> None:
    path = g.install(node, "carol")
    body = path.read_text().partition("signature=")[0]
    forged = Ed25519PrivateKey.generate().sign(body.encode("ascii"))
    g.place(path, f"{body}signature={base64.b64encode(forged).decode('ascii')}\n")


def _revoked(g: Grants, node: Node) -> None:
    path = g.install(node, "carol")
    g.place(node.path(f"/var/lib/broker/revoked/{path.name}"), "2099-01-01T00:00:00Z\n")


def _symlinked(g: Grants, node: Node) -> None:
    path = g.install(node, "carol")
    target = g.place(node.path(f"/var/lib/broker/{path.name}.target"), path.read_text())
    path.unlink()
    path.symlink_to(target)


def _group_readable(g: Grants, node: Node) -> None:
    g.install(node, "carol").chmod(0o640)


def _owned_by_nobody(g: Grants, node: Node) -> None:
    os.chown(g.install(node, "carol"), NOBODY, NOBODY)


@pytest.mark.parametrize(
    ("setup", "reason"),
    [
        pytest.param(lambda g, n: None, "no valid grant for carol on stor01", id="no-grant"),
        pytest.param(_expired, "expired at ", id="expired"),
        pytest.param(_not_yet_valid, "not valid before ", id="not-yet-valid"),
        pytest.param(_other_node, "for node gpu02, this is stor01", id="other-node"),
        pytest.param(_edited_byte, "bad signature", id="edited-byte"),
        pytest.param(_other_key, "signed by key ", id="other-key"),
        pytest.param(_other_key_claiming_ours, "bad signature", id="forged-key-id"),
        pytest.param(_revoked, ": revoked", id="revoked"),
        pytest.param(_symlinked, ": a symlink", id="symlink"),
        pytest.param(_group_readable, "mode 0640 is too open", id="group-readable"),
        pytest.param(_owned_by_nobody, f"owned by uid {NOBODY}, not root", id="owner-nobody"),
    ],
)
def test_sudo_account_denies(
    setup: Callable[[Grants, Node], None],
    reason: str,
    grants: Grants,
    stor: Node,
    lab: dict[str, Any],
    lab_module: ModuleType,
) -> None:
    # stor01's watcher would reap the expired grant within seconds: the module must refuse
    # it for its own reason, not because it is gone
    with watchers_paused(lab, lab_module, stor.name):
        setup(grants, stor)
        assert_denied(pam(stor, "sudo", "root", "acct_mgmt", ruser="carol"), reason)


@pytest.mark.parametrize(("limit", "allowed"), [(1, False), (2, True)])
def test_sudo_account_counts_live_sessions_against_max_sessions(
    limit: int, allowed: bool, grants: Grants, stor: Node
) -> None:
    grant_id = grants.install(stor, "carol", max_sessions=limit).name
    # The account check takes the slot for its process (pid = pamtester, as sudo's own).
    first = pam(stor, "sudo", "root", "acct_mgmt", ruser="carol", tty="/dev/pts/7")
    assert_allowed(first)
    record = stor.path(f"/run/broker-sessions/{grant_id}/{first.pid}")
    assert record.read_text().split()[:3] == ["carol", "root", "pts/7"]
    # A session held by a process that is still running counts against the limit.
    with subprocess.Popen(["sleep", "60"]) as holder:
        try:
            write_file(
                stor.path(f"/run/broker-sessions/{grant_id}/{holder.pid}"),
                f"carol root pts/8 {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}\n".encode(),
                0o600,
            )
            second = pam(stor, "sudo", "root", "acct_mgmt", ruser="carol")
            if allowed:
                assert_allowed(second)
            else:
                assert_denied(
                    second,
                    f"max_sessions reached: 1 open elevated sessions (limit {limit})",
                    f"broker: you already have 1 elevated session(s) open here (limit {limit})",
                )
        finally:
            holder.kill()
    # Their processes have ended: the records no longer count and are removed on the next check.
    assert_allowed(pam(stor, "sudo", "root", "acct_mgmt", ruser="carol"))
    assert not record.exists()
    assert not stor.path(f"/run/broker-sessions/{grant_id}/{holder.pid}").exists()


def test_sudo_auth_passes_a_grant_on_to_the_password_and_stops_others(
    grants: Grants, stor: Node
) -> None:
    grants.install(stor, "carol")
    # The hook lets carol through to pam_unix, which asks for her (locked) password.
    carol = pam(stor, "sudo", "carol", "authenticate", ruser="carol", answer="wrong\n")
    assert "Password:" in carol.output and "Authentication failure" in carol.output
    assert not carol.hook_lines("deny")
    assert any("pam_unix(sudo:auth): authentication failure" in m for m in carol.syslog)
    # Without a grant `requisite` stops the stack before any password prompt.
    bob = pam(stor, "sudo", "bob", "authenticate", ruser="bob", answer="wrong\n")
    assert_denied(bob, "no valid grant for bob on stor01")
    assert "Password:" not in bob.output
    assert any(line.startswith("deny service=sudo type=auth ") for line in bob.hook_lines("deny"))


def test_sudo_i_decides_like_sudo(grants: Grants, stor: Node) -> None:
    grants.install(stor, "carol")
    assert_allowed(pam(stor, "sudo-i", "root", "acct_mgmt", ruser="carol"))
    assert_denied(
        pam(stor, "sudo-i", "root", "acct_mgmt", ruser="bob"), "no valid grant for bob on stor01"
    )


# ---------------------------------------------------------------- sessions, end to end


def _as_user(lab: dict[str, Any], user: str | None) -> list[str]:
    if user is None:
        return []
    ids = lab["users"][user]
    return ["setpriv", "--reuid", str(ids["uid"]), "--regid", str(ids["gid"]), "--clear-groups"]


def _broker(
    lab: dict[str, Any], *args: str, user: str | None = None, stdin: str = ""
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    return subprocess.run(
        [*_as_user(lab, user), BROKER, "--config", lab["broker"]["config"], *args],
        input=stdin,
        capture_output=True,
        text=True,
        env={**env, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )


def _enroll(lab: dict[str, Any], user: str) -> pyotp.TOTP:
    """`broker mfa enroll` as USER, answering with a code for the URI it shows."""
    proc = subprocess.Popen(
        [*_as_user(lab, user), BROKER, "--config", lab["broker"]["config"], "mfa", "enroll"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"},
    )
    assert proc.stdout is not None
    uri = next(m.group(1) for line in proc.stdout if (m := re.search(r"(otpauth://\S+)", line)))
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    _, err = proc.communicate(totp.at(int(time.time()) // 30 * 30) + "\n", timeout=60)
    assert proc.returncode == 0, err
    return totp


@pytest.fixture
def dave_elevated(lab: dict[str, Any], stor: Node) -> Iterator[str]:
    """A real grant for dave on stor01 (MFA, policy, push by the broker); revoked afterwards.

    The broker collects session events only from nodes it granted on, so a grant the test
    signed itself would never be collected.
    """
    assert _broker(lab, "mfa", "reset", "dave", "--yes").returncode == 0
    grant_id = ""
    try:
        totp = _enroll(lab, "dave")
        code = totp.at((int(time.time()) // 30 + 1) * 30)  # the enrolment used this step's
        result = _broker(
            lab,
            *("elevate", STOR, "--for", "15m", "--reason", "pamtester session test", "--json"),
            user="dave",
            stdin=code + "\n",
        )
        assert result.returncode == 0, result.stderr
        grant_id = json.loads(result.stdout)["grant"]["id"]
        yield grant_id
    finally:
        if grant_id:
            _broker(lab, "revoke", grant_id, "--reason", "pamtester session test done")
            with contextlib.suppress(FileNotFoundError):
                stor.path(f"/var/lib/broker/revoked/{grant_id}").unlink()
            remove_tree(stor.path(f"/run/broker-sessions/{grant_id}"))
        _broker(lab, "mfa", "reset", "dave", "--yes")


def test_sudo_session_is_recorded_spooled_and_collected(
    lab: dict[str, Any], dave_elevated: str, stor: Node
) -> None:
    grant_id = dave_elevated
    session = pam(
        stor, "sudo", "root", "open_session", "close_session", ruser="dave", tty="/dev/pts/4"
    )
    assert_allowed(session)
    assert not stor.path(f"/run/broker-sessions/{grant_id}/{session.pid}").exists()
    # (stor01's watcher adds a `usage` event once the session's cgroup empties, on its own
    # schedule: test_containment_lab.py looks at those)
    opened_closed = ("open", "close")
    spooled = [e for e in spool(stor) if e["grant_id"] == grant_id and e["kind"] in opened_closed]
    assert [e["kind"] for e in spooled] == ["open", "close"]
    for event in spooled:
        assert (event["user"], event["runas"], event["tty"]) == ("dave", "root", "pts/4")
        assert (event["service"], event["pid"]) == ("sudo", session.pid)
        assert event_path(stor, event).stat().st_mode & 0o7777 == 0o600

    reap = _broker(lab, "grants", "reap", "--json")
    assert reap.returncode == 0, reap.stderr
    listed = _broker(
        lab,
        *("audit", "tail", "--action", "session.*", "--actor", f"node:{STOR}", "-n", "500"),
        "--json",
    )
    assert listed.returncode == 0, listed.stderr
    stored = [
        e
        for e in json.loads(listed.stdout)
        if e["target"] == grant_id and e["action"] in ("session.open", "session.close")
    ]
    assert [e["action"] for e in stored] == ["session.open", "session.close"]
    for event in stored:
        details = event["details"]
        assert (details["user"], details["runas"], details["tty"]) == ("dave", "root", "pts/4")
        assert details["pid"] == session.pid
    # Collected events are acknowledged: the node's spool no longer holds them.
    assert not [e for e in spool(stor) if e["grant_id"] == grant_id and e["kind"] in opened_closed]


def _sudo_in_node(lab: dict[str, Any], node: Node, user: str, *argv: str) -> subprocess.Popen[str]:
    """Real sudo as USER inside the node (its own PAM stack, sudoers and log server)."""
    return subprocess.Popen(
        [
            *("nsenter", "--target", str(node.pid), "--mount", "--uts", "--"),
            *_as_user(lab, user),
            *("sudo", "-n", *argv),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_concurrent_sudo_with_max_sessions_1_exactly_one_runs(
    lab: dict[str, Any], dave_elevated: str, stor: Node
) -> None:
    """The slot is taken in the account check, under a lock: two sudo started together
    cannot both pass (the Python hook counted in one process and recorded in another)."""
    grant = stor.path(f"/var/lib/broker/grants/{dave_elevated}").read_text()
    assert "max_sessions=1\n" in grant
    for _round in range(3):
        with (
            _sudo_in_node(lab, stor, "dave", "sleep", "3") as first,
            _sudo_in_node(lab, stor, "dave", "sleep", "3") as second,
        ):
            results = [(*proc.communicate(timeout=60), proc.returncode) for proc in (first, second)]
        codes = sorted(code for _out, _err, code in results)
        assert codes == [0, 1], results
        refused = next(err for _out, err, code in results if code == 1)
        assert "broker: you already have 1 elevated session(s) open here (limit 1)" in refused
    # Both have ended: the next one runs.
    with _sudo_in_node(lab, stor, "dave", "true") as alone:
        out, err = alone.communicate(timeout=60)
    assert alone.returncode == 0, (out, err)


def test_the_person_sees_why_sudo_was_refused_over_ssh_with_a_pty(
    lab: dict[str, Any], stor: Node
) -> None:
    address = next(n["address"] for n in lab["nodes"] if n["name"] == stor.name)
    argv = ssh_argv(lab, "erin", address, "sudo -i true")
    argv.insert(1, "-tt")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode != 0
    shown = done.stdout + done.stderr
    assert (
        f"broker: no active grant for erin on {stor.name} (request one: broker elevate "
        f'{stor.name} --for 30m --reason "...")'
    ) in shown, shown


def test_a_refused_sudo_spools_its_reason(lab: dict[str, Any], grants: Grants, stor: Node) -> None:
    path = grants.install(stor, "carol")
    grants.place(stor.path(f"/var/lib/broker/revoked/{path.name}"), "2099-01-01T00:00:00Z\n")
    refused = pam(stor, "sudo", "root", "acct_mgmt", ruser="carol")
    assert_denied(refused, ": revoked", f"broker: your grant {path.name} on stor01 was revoked")
    deadline = time.monotonic() + 30
    while True:
        # The broker may collect (and ack) the event at any moment: look in both places.
        spooled = [e for e in spool(stor) if e["kind"] == "deny" and e["pid"] == refused.pid]
        if spooled:
            assert spooled[0]["reason"] == "revoked" and spooled[0]["user"] == "carol"
            return
        stored = _broker(
            lab,
            *("audit", "tail", "--action", "session.deny", "--actor", f"node:{STOR}", "-n", "200"),
            "--json",
        )
        found = [e for e in json.loads(stored.stdout) if e["details"]["pid"] == refused.pid]
        if found:
            assert found[0]["details"]["reason"] == "revoked", found
            return
        assert time.monotonic() < deadline, "the deny event went nowhere"
        time.sleep(1)


# ---------------------------------------------------------------- sshd, job launch, others


@pytest.mark.parametrize(
    ("user", "grant", "denial"),
    [
        pytest.param("carol", {"login": True}, None, id="login-grant"),
        pytest.param("bob", None, "login gated: no valid grant for bob on login01", id="none"),
        pytest.param("dave", {"login": False}, "has login=0", id="grant-without-login"),
        pytest.param("heidi", None, None, id="break-glass"),
        pytest.param("root", None, None, id="root"),
    ],
)
def test_sshd_account_on_a_gated_node(
    user: str, grant: dict[str, Any] | None, denial: str | None, grants: Grants, login: Node
) -> None:
    if grant is not None:
        grants.install(login, user, **grant)
    with login_gated(login, True):
        result = pam(login, "sshd", user, "acct_mgmt")
    if denial is None:
        assert_allowed(result)
    else:
        assert_denied(result, denial)


def test_sshd_account_on_a_node_without_gating_lets_anyone_in(stor: Node) -> None:
    with login_gated(stor, False):
        for user in ("bob", "erin", "heidi"):
            assert_allowed(pam(stor, "sshd", user, "acct_mgmt"))


@pytest.mark.parametrize(
    ("user", "grant", "denial"),
    [
        pytest.param(
            "carol", {"workloads": False}, "(workloads=0): no jobs while elevated", id="root-grant"
        ),
        pytest.param("dave", {"workloads": True}, None, id="workloads-allowed"),
        pytest.param("erin", {"runas": "nobody"}, None, id="not-root"),
        pytest.param("bob", None, None, id="no-grant"),
    ],
)
def test_job_launch_account(
    user: str, grant: dict[str, Any] | None, denial: str | None, grants: Grants, stor: Node
) -> None:
    if grant is not None:
        grants.install(stor, user, **grant)
    # Slurm's slurmstepd opens a PAM session without an account check: both are gated.
    for operation in ("acct_mgmt", "open_session"):
        result = pam(stor, "slurm", user, operation)
        if denial is None:
            assert_allowed(result)
        else:
            assert_denied(result, denial, "broker: no jobs while you hold root grant ")


@pytest.fixture
def unknown_service(login: Node) -> Iterator[str]:
    """/etc/pam.d/broker-test on login01: nothing but the hook, for account."""
    path = login.path("/etc/pam.d/broker-test")
    write_file(path, f"account  requisite  {MODULE}\n".encode(), 0o644)
    try:
        yield path.name
    finally:
        path.unlink()


def test_a_service_the_hook_does_not_know_is_allowed(unknown_service: str, login: Node) -> None:
    for user in ("bob", "carol"):
        assert_allowed(pam(login, unknown_service, user, "acct_mgmt"))


# ---------------------------------------------------------------- fail closed


def test_without_node_conf_everyone_but_root_is_denied(
    grants: Grants, unknown_service: str, login: Node
) -> None:
    grants.install(login, "carol", login=True)
    with swapped(login, "/etc/broker/node.conf", None):
        for ruser in ("carol", "heidi"):
            assert_denied(pam(login, "sudo", "root", "acct_mgmt", ruser=ruser), "node.conf: ")
        for service in ("sshd", "slurm", unknown_service):
            assert_denied(pam(login, service, "carol", "acct_mgmt"), "node.conf: ")
            assert_allowed(pam(login, service, "root", "acct_mgmt"))
        assert_allowed(pam(login, "sudo", "root", "acct_mgmt", ruser="root"))


def _corrupt_key(login: Node) -> contextlib.AbstractContextManager[bytes]:
    line = login.path("/etc/broker/grant-key.pub").read_text()
    return swapped(login, "/etc/broker/grant-key.pub", (line[:-5] + "\n").encode())


def test_with_a_corrupt_key_no_grant_is_honoured(grants: Grants, login: Node) -> None:
    grants.install(login, "carol")
    with _corrupt_key(login):
        denied = pam(login, "sudo", "root", "acct_mgmt", ruser="carol")
        assert_denied(denied, "grant-key.pub: line 1: not a broker-grant-key-v1 line")
        assert_allowed(pam(login, "sudo", "root", "acct_mgmt", ruser="root"))
    assert_allowed(pam(login, "sudo", "root", "acct_mgmt", ruser="carol"))


def test_a_node_listing_a_peer_brokers_key_honours_its_grants(grants: Grants, login: Node) -> None:
    """Two brokers (issue 24): with the peer's key listed after the lab broker's, real sudo
    PAM honours grants either signed; without it the peer's grant is a bad signature."""
    peer = Ed25519PrivateKey.generate()
    grants.install(login, "carol", key=peer)
    grants.install(login, "alice")
    denied = pam(login, "sudo", "root", "acct_mgmt", ruser="carol")
    assert_denied(denied, f"signed by key {grantfile.key_id(peer.public_key())}")
    own = login.path("/etc/broker/grant-key.pub").read_bytes()
    both = own + grantfile.public_key_line(peer.public_key()).encode("ascii")
    with swapped(login, "/etc/broker/grant-key.pub", both):
        assert_allowed(pam(login, "sudo", "root", "acct_mgmt", ruser="carol"))
        assert_allowed(pam(login, "sudo", "root", "acct_mgmt", ruser="alice"))
    assert_denied(pam(login, "sudo", "root", "acct_mgmt", ruser="carol"), "signed by key ")


def test_with_a_corrupt_key_break_glass_is_denied_too(login: Node) -> None:
    with _corrupt_key(login):
        assert_denied(pam(login, "sudo", "root", "acct_mgmt", ruser="heidi"), "grant-key.pub")
