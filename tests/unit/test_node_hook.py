"""The PAM hook (pam/broker_node/hook.py): Ed25519, grant parsing, and every row of the hook table.

The module is loaded from its file, as nodes run it; grants are written and
signed by the broker's own writer (broker.grants.grantfile), so both halves
of docs/grants.md are tested against each other.
"""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.grants.grantfile import GrantFile, encode_signed, public_key_line
from tests.helpers import load_node_module, load_node_package

PAM_DIR = Path(__file__).resolve().parents[2] / "pam"
NODE = "gpu01"
PAM_VARS = {"PAM_TYPE", "PAM_SERVICE", "PAM_USER", "PAM_RUSER", "PAM_TTY"}


bn = load_node_package()
ed25519 = load_node_module("ed25519")


def now_s() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class NodeTree:
    """A node's files under a temporary root, laid out as bootstrap leaves them."""

    def __init__(self, root: Path, *, gated: bool = True, group: str = "break-glass") -> None:
        self.root = root
        self.key = Ed25519PrivateKey.generate()
        self.paths = bn.Paths(str(root))
        for directory, mode in (
            ("etc/broker", 0o755),
            ("etc/sudoers.d", 0o750),
            ("etc/pam.d", 0o755),
            ("var/lib/broker/grants", 0o700),
            ("var/lib/broker/revoked", 0o700),
            ("var/lib/broker/sessions", 0o700),
            ("var/spool/broker/events", 0o700),
        ):
            path = root / directory
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)
        self.write_conf(gated=gated, group=group)
        key_file = root / "etc/broker/grant-key.pub"
        key_file.write_text(public_key_line(self.key.public_key()))
        key_file.chmod(0o644)

    def write_conf(self, *, gated: bool = True, group: str = "break-glass") -> None:
        conf = self.root / "etc/broker/node.conf"
        conf.write_text(
            f"# written by the test\nnode={NODE}\nlogin_gated={int(gated)}\n"
            f"break_glass_group={group}\njoblaunch_service=slurm\n"
        )
        conf.chmod(0o644)

    def grant(self, **changes: Any) -> GrantFile:
        now = now_s()
        values: dict[str, Any] = {
            "id": "g" + os.urandom(8).hex(),
            "node": NODE,
            "user": "alice",
            "runas": "root",
            "commands": "ALL",
            "not_before": now - timedelta(minutes=1),
            "not_after": now + timedelta(minutes=30),
            "login": True,
            "workloads": False,
            "max_sessions": 2,
            "policy_sha256": "ab" * 32,
            "approvers": ("frank",),
            "reason": "INC-4711 replace NVLink switch",
            "issued_at": now - timedelta(minutes=1),
        }
        values.update(changes)
        return GrantFile(**values)

    def install(
        self, grant: GrantFile | None = None, *, text: str | None = None, name: str | None = None
    ) -> Path:
        grant = grant or self.grant()
        path = self.root / "var/lib/broker/grants" / (name or grant.id)
        path.write_text(text if text is not None else encode_signed(grant, self.key))
        path.chmod(0o600)
        return path


@pytest.fixture
def node(tmp_path: Path) -> NodeTree:
    return NodeTree(tmp_path / "node")


def nobody(user: str, group: str) -> bool:
    return False


def sudo(node: NodeTree, user: str = "alice", in_group: Any = nobody) -> tuple[bool, str]:
    allow, reason = bn.decide(
        node.paths, "account", "sudo", "root", user, "/dev/pts/3", 4242, bn_now(), in_group
    )
    return allow, reason


def bn_now() -> int:
    return int(datetime.now(UTC).timestamp())


# ---------------------------------------------------------------- Ed25519 (RFC 8032, 7.1)

RFC8032 = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    (
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
]


@pytest.mark.parametrize(("public", "message", "signature"), RFC8032)
def test_rfc8032_vectors_verify_and_any_change_fails(
    public: str, message: str, signature: str
) -> None:
    pub, msg, sig = bytes.fromhex(public), bytes.fromhex(message), bytes.fromhex(signature)
    assert bn.ed25519_verify(pub, msg, sig)
    assert not bn.ed25519_verify(pub, msg + b"\x00", sig)
    for index in (0, 31, 32, 63):
        bad = bytearray(sig)
        bad[index] ^= 0x01
        assert not bn.ed25519_verify(pub, msg, bytes(bad))
    other = Ed25519PrivateKey.generate().public_key().public_bytes_raw()
    assert not bn.ed25519_verify(other, msg, sig)


def test_verify_rejects_non_canonical_s_r_and_a() -> None:
    pub, msg, sig = (bytes.fromhex(part) for part in RFC8032[0])
    s = int.from_bytes(sig[32:], "little")
    assert not bn.ed25519_verify(pub, msg, sig[:32] + (s + ed25519._L).to_bytes(32, "little"))
    # y >= p: the non-canonical encoding of a valid y (y + p still fits in 255 bits for y=1)
    non_canonical = (1 + ed25519._P).to_bytes(32, "little")
    assert ed25519.decode_point((1).to_bytes(32, "little")) is not None
    assert ed25519.decode_point(non_canonical) is None
    assert not bn.ed25519_verify(non_canonical, msg, sig)
    assert not bn.ed25519_verify(pub, msg, non_canonical + sig[32:])
    # x = 0 with the sign bit set ("negative zero") and a y that is not on the curve
    assert ed25519.decode_point(((1 << 255) | 1).to_bytes(32, "little")) is None
    assert ed25519.decode_point((2).to_bytes(32, "little")) is None
    assert not bn.ed25519_verify(pub[:31], msg, sig)
    assert not bn.ed25519_verify(pub, msg, sig[:63])


def test_verify_agrees_with_cryptography_on_many_messages() -> None:
    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes_raw()
    for size in range(0, 300, 7):
        message = os.urandom(size)
        assert bn.ed25519_verify(public, message, key.sign(message))


# ---------------------------------------------------------------- time and parsing


def test_utc_parse_and_format_are_calendar_exact() -> None:
    moment = datetime(1970, 1, 1, tzinfo=UTC)
    for step in range(0, 3000):
        moment += timedelta(days=97, seconds=3607 * step % 86400)
        text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        assert bn.parse_utc(text) == int(moment.timestamp())
        assert bn.format_utc(int(moment.timestamp())) == text
    assert bn.parse_utc("2024-02-29T23:59:59Z") is not None
    for bad in (
        "2023-02-29T00:00:00Z",
        "2026-11-23T24:00:00Z",
        "2026-11-23T10:00:60Z",
        "2026-11-23T10:00:00",
        "2026-11-23T10:00:00+00:00",
        "2026-11-23 10:00:00Z",
        "２026-11-23T10:00:00Z",
        "2026-13-01T00:00:00Z",
    ):
        assert bn.parse_utc(bad) is None, bad


def test_signed_grant_parses_to_the_fields_written(node: NodeTree) -> None:
    grant = node.grant(commands="gpu-reset,nvlink", approvers=("frank", "grace"), reason="Äpfel ✓")
    parsed = bn.parse_grant(encode_signed(grant, node.key).encode())
    assert isinstance(parsed, bn.Grant)
    assert (parsed.id, parsed.node, parsed.user, parsed.runas) == (grant.id, NODE, "alice", "root")
    assert parsed.commands == ("gpu-reset", "nvlink")
    assert parsed.not_before == int(grant.not_before.timestamp())
    assert parsed.not_after == int(grant.not_after.timestamp())
    assert parsed.approvers == ("frank", "grace")
    assert parsed.reason == "%C3%84pfel%20%E2%9C%93"
    assert (parsed.login, parsed.workloads, parsed.max_sessions) == (True, False, 2)
    key = bn.load_key(node.paths)
    conf = bn.load_conf(node.paths)
    assert bn.check_grant(parsed, conf, key, bn_now(), paths=node.paths, user="alice") is None


# ---------------------------------------------------------------- sudo: allow and every deny


def test_valid_grant_allows_sudo_and_root_needs_none(node: NodeTree) -> None:
    assert sudo(node) == (False, f"no valid grant for alice on {NODE}")
    grant = node.grant()
    node.install(grant)
    assert sudo(node) == (True, f"grant {grant.id}")
    assert sudo(node, "root") == (True, "root")
    assert sudo(node, "bob")[0] is False
    assert sudo(node, "")[0] is False


def _edit(node: NodeTree, find: str, replace: str) -> None:
    grant = node.grant()
    text = encode_signed(grant, node.key)
    assert find in text
    node.install(grant, text=text.replace(find, replace, 1))


def _edit_user(node: NodeTree) -> None:
    grant = node.grant(user="bob")
    text = encode_signed(grant, node.key)
    node.install(grant, text=text.replace("user=bob", "user=alice", 1))


def _resign(tree: NodeTree, **changes: Any) -> None:
    tree.install(tree.grant(**changes))


def _other_key(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant, text=encode_signed(grant, Ed25519PrivateKey.generate()))


def _same_key_id_other_signature(node: NodeTree) -> None:
    grant = node.grant()
    mine = encode_signed(grant, node.key)
    theirs = encode_signed(grant, Ed25519PrivateKey.generate())
    node.install(
        grant,
        text=mine.rsplit("signature=", 1)[0] + "signature=" + theirs.rsplit("signature=", 1)[1],
    )


def _revoked(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    marker = node.root / "var/lib/broker/revoked" / grant.id
    marker.write_text("2099-01-01T00:00:00Z\n")


def _symlink(node: NodeTree) -> None:
    grant = node.grant()
    real = node.install(grant, name="elsewhere")
    (real.parent / grant.id).symlink_to(real)


def _owner(node: NodeTree) -> None:
    os.chown(node.install(), 65534, 65534)


def _mode(node: NodeTree) -> None:
    node.install().chmod(0o640)


def _hard_link(node: NodeTree) -> None:
    path = node.install()
    os.link(path, node.root / "var/lib/broker/hardlink")


def _name_not_id(node: NodeTree) -> None:
    node.install(name="g" + "0" * 16)


def _unsigned(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant, text=encode_signed(grant, node.key).rsplit("signature=", 1)[0])


def _oversize(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant, text=encode_signed(grant, node.key) + "#" * 8192)


def _directory_open(node: NodeTree) -> None:
    node.install()
    (node.root / "var/lib/broker/grants").chmod(0o770)


def _fifo(node: NodeTree) -> None:
    os.mkfifo(node.root / "var/lib/broker/grants" / ("g" + "1" * 16), 0o600)


DENIALS = [
    ("corrupt", lambda n: node_text(n, "garbage\n"), "wrong magic"),
    ("edited byte", lambda n: _edit(n, "max_sessions=2", "max_sessions=9"), "bad signature"),
    ("edited expiry", lambda n: _edit(n, "not_after=20", "not_after=21"), "bad signature"),
    ("edited user", _edit_user, "bad signature"),
    ("another key", _other_key, "signed by key"),
    ("same key id, foreign signature", _same_key_id_other_signature, "bad signature"),
    ("other node", lambda n: _resign(n, node="gpu02"), "for node gpu02, this is gpu01"),
    ("other user", lambda n: _resign(n, user="bob"), "no valid grant for alice"),
    (
        "expired",
        lambda n: _resign(
            n, not_before=now_s() - timedelta(hours=2), not_after=now_s() - timedelta(seconds=1)
        ),
        "expired at",
    ),
    (
        "not yet valid",
        lambda n: _resign(n, not_before=now_s() + timedelta(minutes=5)),
        "not valid before",
    ),
    ("revoked", _revoked, "revoked"),
    ("symlink", _symlink, "a symlink"),
    ("wrong owner", _owner, "owned by uid 65534"),
    ("group-readable", _mode, "mode 0640 is too open"),
    ("hard link", _hard_link, "2 hard links"),
    ("name is not the id", _name_not_id, "holds grant"),
    ("unsigned", _unsigned, "wrong magic or number of lines"),
    ("oversize", _oversize, "larger than 8192 bytes"),
    ("directory writable by others", _directory_open, "writable by others"),
    ("fifo", _fifo, "not a regular file"),
]


def node_text(node: NodeTree, text: str) -> None:
    node.install(node.grant(), text=text)


@pytest.mark.parametrize(("label", "damage", "expected"), DENIALS, ids=[d[0] for d in DENIALS])
def test_every_bad_grant_denies_with_its_reason(
    node: NodeTree, label: str, damage: Any, expected: str
) -> None:
    damage(node)
    allow, reason = sudo(node)
    assert allow is False, label
    assert expected in reason, reason


def test_a_bad_file_does_not_hide_a_good_grant(node: NodeTree) -> None:
    node_text(node, "garbage\n")
    grant = node.grant()
    node.install(grant)
    assert sudo(node) == (True, f"grant {grant.id}")


@pytest.mark.parametrize(
    ("file", "damage", "expected"),
    [
        ("node.conf", lambda p: p.unlink(), "node.conf: missing"),
        ("node.conf", lambda p: p.write_text("node=gpu01\nlogin_gated=1\nextra=1\n"), "unknown"),
        ("node.conf", lambda p: p.write_text("node=GPU01\nlogin_gated=1\n"), "node is missing"),
        ("node.conf", lambda p: p.chmod(0o666), "too open"),
        ("grant-key.pub", lambda p: p.write_text("broker-grant-key-v1 AAAA\n"), "grant-key.pub"),
        ("grant-key.pub", lambda p: p.unlink(), "grant-key.pub: missing"),
    ],
)
def test_broken_node_config_denies_all_but_root(
    node: NodeTree, file: str, damage: Any, expected: str
) -> None:
    node.install()
    damage(node.root / "etc/broker" / file)
    allow, reason = sudo(node)
    assert allow is False and expected in reason, reason
    assert sudo(node, "root") == (True, "root")


def test_break_glass_member_passes_without_grant(node: NodeTree) -> None:
    def member(user: str, group: str) -> bool:
        return (user, group) == ("carol", "break-glass")

    allow, reason = sudo(node, "carol", member)
    assert allow and reason.startswith("break-glass"), reason
    assert sudo(node, "alice", member)[0] is False
    node.write_conf(group="")
    assert sudo(node, "carol", member)[0] is False


def test_max_sessions_counts_live_pids_only(node: NodeTree) -> None:
    grant = node.grant(max_sessions=1)
    node.install(grant)
    sessions = node.root / "var/lib/broker/sessions" / grant.id
    sessions.mkdir(mode=0o700)
    dead = subprocess.Popen(["true"])
    dead.wait()
    (sessions / str(dead.pid)).write_text("alice root pts/1 2026-01-01T00:00:00Z\n")
    assert sudo(node) == (True, f"grant {grant.id}")
    assert not (sessions / str(dead.pid)).exists(), "a dead session's record is removed"
    (sessions / str(os.getpid())).write_text("alice root pts/1 2026-01-01T00:00:00Z\n")
    allow, reason = sudo(node)
    assert not allow and "max_sessions reached: 1 open" in reason, reason


def test_session_open_and_close_record_and_spool(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    pid = os.getpid()
    now = bn_now()
    allow, _ = bn.decide(
        node.paths, "open_session", "sudo", "root", "alice", "/dev/pts/7", pid, now, nobody
    )
    assert allow
    record = node.root / "var/lib/broker/sessions" / grant.id / str(pid)
    assert record.read_text().split()[:3] == ["alice", "root", "pts/7"]
    assert record.stat().st_mode & 0o777 == 0o600
    allow, _ = bn.decide(
        node.paths, "close_session", "sudo", "root", "alice", "/dev/pts/7", pid, now, nobody
    )
    assert allow and not record.exists()
    import json

    events = sorted((node.root / "var/spool/broker/events").glob("*.json"))
    kinds = [json.loads(path.read_text()) for path in events]
    assert [e["kind"] for e in sorted(kinds, key=lambda e: e["event_id"])] == ["open", "close"]
    assert {e["grant_id"] for e in kinds} == {grant.id}
    assert {(e["user"], e["runas"], e["tty"], e["pid"]) for e in kinds} == {
        ("alice", "root", "pts/7", pid)
    }
    assert all(path.stat().st_mode & 0o777 == 0o600 for path in events)


def test_break_glass_sessions_are_recorded_without_a_grant(node: NodeTree) -> None:
    import json

    def member(user: str, group: str) -> bool:
        return (user, group) == ("carol", "break-glass")

    pid, now = os.getpid(), bn_now()
    args = ("sudo", "root", "carol", "/dev/pts/3", pid, now, member)
    assert bn.decide(node.paths, "open_session", *args)[0]
    record = node.root / "var/lib/broker/sessions/break-glass" / str(pid)
    assert record.read_text().split()[:3] == ["carol", "root", "pts/3"]
    assert bn.decide(node.paths, "close_session", *args)[0] and not record.exists()
    events = [
        json.loads(p.read_text()) for p in (node.root / "var/spool/broker/events").glob("*.json")
    ]
    assert sorted(e["kind"] for e in events) == ["close", "open"]
    assert {(e["grant_id"], e["user"]) for e in events} == {("break-glass", "carol")}


def test_session_open_without_grant_records_nothing(node: NodeTree) -> None:
    allow, _ = bn.decide(
        node.paths, "open_session", "sudo", "root", "alice", "", 1, bn_now(), nobody
    )
    assert allow
    assert not list((node.root / "var/spool/broker/events").iterdir())


# ---------------------------------------------------------------- sshd and the job launcher


def sshd(node: NodeTree, user: str, in_group: Any = nobody) -> tuple[bool, str]:
    allow, reason = bn.decide(node.paths, "account", "sshd", user, "", "ssh", 1, bn_now(), in_group)
    return allow, reason


def test_sshd_gating(node: NodeTree) -> None:
    assert sshd(node, "root") == (True, "root")
    assert sshd(node, "alice")[0] is False
    assert sshd(node, "carol", lambda user, group: group == "break-glass")[0] is True
    node.install(node.grant(login=False))
    allow, reason = sshd(node, "alice")
    assert not allow and "login=0" in reason
    grant = node.grant(login=True)
    node.install(grant)
    assert sshd(node, "alice") == (True, f"login grant {grant.id}")
    assert sshd(node, "bob")[0] is False
    node.write_conf(gated=False)
    assert sshd(node, "bob") == (True, "logins not gated")
    assert bn.decide(node.paths, "auth", "sshd", "bob", "", "", 1, bn_now(), nobody)[0] is True


def test_joblaunch_refuses_holders_of_root_grants(node: NodeTree) -> None:
    def slurm(user: str, service: str = "slurm") -> tuple[bool, str]:
        allow, reason = bn.decide(node.paths, "account", service, user, "", "", 1, bn_now(), nobody)
        return allow, reason

    assert slurm("alice")[0] is True
    grant = node.grant(workloads=False)
    node.install(grant)
    allow, reason = slurm("alice")
    assert not allow and grant.id in reason
    assert slurm("bob")[0] is True
    assert slurm("alice", "cron")[0] is True, "other services are not gated"


@pytest.mark.parametrize("changes", [{"workloads": True}, {"runas": "slurm"}])
def test_joblaunch_allows_workload_and_non_root_grants(
    node: NodeTree, changes: dict[str, Any]
) -> None:
    node.install(node.grant(**changes))
    assert bn.decide(node.paths, "account", "slurm", "alice", "", "", 1, bn_now(), nobody)[0]


# ---------------------------------------------------------------- pam_main


class RecordingEnv(dict[str, str]):
    """An environment that remembers which variables were read."""

    def __init__(self, values: dict[str, str]) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def get(self, key: str, default: Any = None) -> Any:
        self.read.add(key)
        return super().get(key, default)

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return super().__getitem__(key)


def pam_env(**values: str) -> RecordingEnv:
    base = {"PAM_TYPE": "account", "PAM_SERVICE": "sudo", "PAM_USER": "root", "PAM_RUSER": "alice"}
    base.update(values)
    base["HOME"] = "/nonexistent"
    base["BROKER_ROOT"] = "/elsewhere"
    return RecordingEnv(base)


def test_pam_main_reads_only_pam_variables_and_returns_exit_codes(node: NodeTree) -> None:
    env = pam_env()
    assert bn.pam_main([], env, node.paths) == 1
    assert env.read <= PAM_VARS
    node.install()
    assert bn.pam_main([], pam_env(), node.paths) == 0
    assert bn.pam_main([], pam_env(PAM_RUSER="root"), node.paths) == 0


def test_pam_main_fails_closed_on_errors_but_never_breaks_sessions(node: NodeTree) -> None:
    grant = node.grant()
    node.install(grant)
    # sessions/<id> is a file: counting sessions raises inside the decision
    (node.root / "var/lib/broker/sessions" / grant.id).write_text("not a directory")
    assert bn.pam_main([], pam_env(), node.paths) == 1
    assert bn.pam_main([], pam_env(PAM_TYPE="open_session"), node.paths) == 0
    assert bn.pam_main([], pam_env(PAM_TYPE="close_session"), node.paths) == 0


def run_hook(root: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = (
        "import os, sys; sys.path.insert(0, sys.argv[1]); import broker_node as b; "
        "sys.exit(b.pam_main([], os.environ, b.Paths(sys.argv[2])))"
    )
    return subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", code, str(PAM_DIR), str(root)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_time_zone_of_the_process_does_not_matter(node: NodeTree) -> None:
    env = {
        "TZ": "Pacific/Kiritimati",
        "PAM_TYPE": "account",
        "PAM_SERVICE": "sudo",
        "PAM_USER": "root",
        "PAM_RUSER": "alice",
    }
    # valid for the next 10 minutes in UTC: a local-time reading (+14 h) would call it expired
    node.install(node.grant(not_after=now_s() + timedelta(minutes=10)))
    done = run_hook(node.root, env)
    assert (done.returncode, done.stdout, done.stderr) == (0, "", "")
    for path in (node.root / "var/lib/broker/grants").iterdir():
        path.unlink()
    # expired one minute ago in UTC, still "in the future" in Kiritimati's local time
    node.install(
        node.grant(
            not_before=now_s() - timedelta(hours=1), not_after=now_s() - timedelta(minutes=1)
        )
    )
    done = run_hook(node.root, env)
    assert (done.returncode, done.stdout) == (1, "")


def test_import_is_light_and_silent() -> None:
    # what the hook imports on every sudo: no heavy stdlib, none of the commands' modules
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import broker_node; "
        "heavy = {'json', 're', 'hashlib', 'hmac', 'datetime', 'subprocess', 'logging', "
        "'dataclasses', 'typing', 'inspect', 'contextlib'}; "
        "commands = {'status', 'install', 'revoke', 'drift', 'usage', 'commands'}; "
        "heavy |= {f'broker_node.{name}' for name in commands}; "
        "print(sorted(heavy & set(sys.modules)))"
    )
    done = subprocess.run(
        ["/usr/bin/python3", "-I", "-S", "-c", code, str(PAM_DIR)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert (done.stdout, done.stderr) == ("[]\n", "")


def test_launchers_use_an_isolated_interpreter_and_the_install_dir() -> None:
    for name in ("pam-hook", "broker-node"):
        text = (PAM_DIR / name).read_text()
        assert text.startswith("#!/usr/bin/python3 -IS\n")
        assert 'sys.path.insert(0, "/usr/libexec/broker")' in text
        assert os.stat(PAM_DIR / name).st_mode & 0o111
    for block in ("sudo", "sshd", "joblaunch"):
        for line in (PAM_DIR / "pam.d" / f"{block}.block").read_text().splitlines():
            assert line.split()[2:] == [
                "pam_exec.so",
                "quiet",
                "seteuid",
                "/usr/bin/python3",
                "-I",
                "-S",
                "/usr/libexec/broker/pam-hook",
            ]


def _private_dev_works() -> bool:
    done = subprocess.run(
        ["unshare", "--mount", "sh", "-c", "mount -t tmpfs tmpfs /dev"],
        capture_output=True,
        check=False,
    )
    return done.returncode == 0


@pytest.mark.skipif(not _private_dev_works(), reason="needs unshare --mount (root)")
def test_denials_and_break_glass_reach_syslog_authpriv(node: NodeTree, tmp_path: Path) -> None:
    script = (
        "import os, socket, sys\n"
        "sys.path.insert(0, sys.argv[1]); import broker_node as b\n"
        "log = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); log.bind('/dev/log')\n"
        "log.setblocking(False)\n"
        "def logged():\n"
        "    try:\n        return log.recv(4096).decode()\n"
        "    except BlockingIOError:\n        return 'quiet'\n"
        "for ruser in ('alice', 'carol', 'root'):\n"
        "    env = dict(PAM_TYPE='account', PAM_SERVICE='sudo', PAM_USER='root', PAM_RUSER=ruser)\n"
        "    print(b.pam_main([], env, b.Paths(sys.argv[2])), logged())\n"
    )
    # real NSS (files): carol is in break-glass through a group file bound over /etc/group
    group = tmp_path / "group"
    group.write_text(Path("/etc/group").read_text() + "break-glass:x:4242:carol\n")
    # a private /dev (tmpfs) and /etc/group in a private mount namespace: the host's stay as is
    done = subprocess.run(
        [
            "unshare",
            "--mount",
            "sh",
            "-c",
            'mount -t tmpfs tmpfs /dev && mount --bind "$4" /etc/group && '
            'exec /usr/bin/python3 -I -S -c "$1" "$2" "$3"',
            "sh",
            script,
            str(PAM_DIR),
            str(node.root),
            str(group),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    alice, carol, root = done.stdout.splitlines()
    # <priority> = LOG_AUTHPRIV (10 << 3) | LOG_WARNING (4) = 84, | LOG_NOTICE (5) = 85
    assert alice.startswith("1 <84>") and "broker-pam[" in alice
    assert "deny service=sudo type=account user=root ruser=alice: no valid grant" in alice
    assert carol.startswith("0 <85>") and "allow" in carol
    assert "ruser=carol: break-glass: carol is in break-glass" in carol
    assert root == "0 quiet"


# ---------------------------------------------------------------- quarantine


def quarantine(node: NodeTree, group: str = "ir", reason: str = "INC-9 odd root shell") -> Path:
    marker = bn.Quarantine(NODE, bn.parse_utc("2026-11-23T10:00:00Z"), group, reason)
    path = node.root / "etc/broker/quarantine"
    path.write_bytes(bn.render_quarantine(marker))
    path.chmod(0o644)
    return path


def members(*pairs: tuple[str, str]) -> Any:
    def check(user: str, group: str) -> bool:
        return (user, group) in pairs

    return check


def test_quarantine_admits_only_root_and_the_ir_group_under_the_usual_rules(
    node: NodeTree,
) -> None:
    grant = node.grant()
    node.install(grant)
    quarantine(node)
    allow, reason = sudo(node)
    assert not allow
    assert reason == "node quarantined since 2026-11-23T10:00:00Z: INC-9 odd root shell"
    # in the incident-response group: the grant decides as before
    assert sudo(node, in_group=members(("alice", "ir"))) == (True, f"grant {grant.id}")
    allow, reason = sudo(node, "bob", members(("bob", "ir")))
    assert not allow and reason.startswith("no valid grant for bob"), reason
    # break-glass alone no longer passes; break-glass and incident response does
    assert sudo(node, "carol", members(("carol", "break-glass")))[0] is False
    both = members(("carol", "break-glass"), ("carol", "ir"))
    assert sudo(node, "carol", both)[0] is True
    assert sudo(node, "root") == (True, "root")
    (node.root / "etc/broker/quarantine").unlink()
    assert sudo(node) == (True, f"grant {grant.id}")


def test_quarantine_without_a_group_exempts_nobody(node: NodeTree) -> None:
    node.install()
    quarantine(node, group="")
    everyone = members(("alice", ""), ("alice", "ir"), ("alice", "break-glass"))
    allow, reason = sudo(node, in_group=everyone)
    assert not allow and reason.startswith("node quarantined since"), reason


def _marker_garbage(path: Path) -> None:
    path.write_text("quarantined, trust me\n")


def _marker_unencoded_reason(path: Path) -> None:
    path.write_text(path.read_text().replace("INC-9%20odd", "INC-9 odd"))


def _marker_missing_group_line(path: Path) -> None:
    path.write_text("\n".join(ln for ln in path.read_text().split("\n") if "group=" not in ln))


def _marker_symlink(path: Path) -> None:
    real = path.with_name("elsewhere")
    path.rename(real)
    path.symlink_to(real)


UNTRUSTED_MARKERS = [
    ("garbage", _marker_garbage, "unknown or repeated setting"),
    ("reason not encoded", _marker_unencoded_reason, "bad reason"),
    ("group line missing", _marker_missing_group_line, "a setting is missing"),
    ("world-writable", lambda p: p.chmod(0o666), "too open"),
    ("not root's", lambda p: os.chown(p, 65534, 65534), "owned by uid 65534"),
    ("symlink", _marker_symlink, "a symlink"),
    ("empty", lambda p: p.write_text(""), "a setting is missing"),
]


@pytest.mark.parametrize(
    ("label", "damage", "expected"), UNTRUSTED_MARKERS, ids=[m[0] for m in UNTRUSTED_MARKERS]
)
def test_an_untrusted_marker_quarantines_with_nobody_exempt(
    node: NodeTree, label: str, damage: Any, expected: str
) -> None:
    node.install()
    damage(quarantine(node))
    allow, reason = sudo(node, in_group=members(("alice", "ir")))
    assert not allow, label
    assert reason.startswith("node quarantined (quarantine marker: ") and expected in reason, reason
    assert sudo(node, "root") == (True, "root")


def test_quarantine_gates_sshd_only_where_logins_are_gated(node: NodeTree) -> None:
    grant = node.grant(login=True)
    node.install(grant)
    quarantine(node)
    allow, reason = sshd(node, "alice")
    assert not allow and reason.startswith("login gated: node quarantined since"), reason
    assert sshd(node, "alice", members(("alice", "ir"))) == (True, f"login grant {grant.id}")
    assert sshd(node, "carol", members(("carol", "break-glass")))[0] is False
    assert sshd(node, "root") == (True, "root")
    node.write_conf(gated=False)
    assert sshd(node, "bob") == (True, "logins not gated")


def test_quarantine_reason_round_trips_any_printable_text() -> None:
    marker = bn.Quarantine(NODE, 1, "ir-team", "Äpfel ✓ 100% sicher; rm -rf /")
    text = bn.render_quarantine(marker)
    assert text.isascii() and b"reason=%C3%84pfel%20%E2%9C%93%20100%25" in text
    assert bn.parse_quarantine(text) == marker


# ---------------------------------------------------------------- deny events


def spooled(node: NodeTree) -> list[dict[str, Any]]:
    import json

    events = [
        json.loads(path.read_text()) for path in (node.root / "var/spool/broker/events").iterdir()
    ]
    return sorted(events, key=lambda e: e["event_id"])


def attempt(node: NodeTree, pam_type: str, ruser: str, pid: int) -> bool:
    allow, _ = bn.decide(
        node.paths, pam_type, "sudo", "root", ruser, "/dev/pts/4", pid, bn_now(), nobody
    )
    return bool(allow)


def test_a_refused_sudo_spools_one_deny_event_per_sudo_process(node: NodeTree) -> None:
    from broker.sessions.collect import parse_event

    pid = os.getpid()  # a real process, as the sudo the hook's parent is
    assert attempt(node, "auth", "alice", pid) is False
    assert attempt(node, "auth", "alice", pid) is False  # a second password try
    assert attempt(node, "account", "alice", pid) is False
    events = spooled(node)
    assert len(events) == 1, events
    (event,) = events
    assert {k: v for k, v in event.items() if k not in ("event_id", "at")} == {
        "kind": "deny",
        "grant_id": "-",
        "user": "alice",
        "runas": "root",
        "service": "sudo",
        "tty": "pts/4",
        "pid": pid,
    }
    assert bn.is_event_id(event["event_id"])
    parsed = parse_event(NODE, event)
    assert parsed is not None and (parsed.kind, parsed.grant_id) == ("deny", None)
    # another sudo process is another attempt
    other = subprocess.Popen(["sleep", "5"])
    try:
        assert attempt(node, "account", "alice", other.pid) is False
    finally:
        other.kill()
        other.wait()
    assert [e["pid"] for e in spooled(node)] == [pid, other.pid]


def test_allowed_root_and_anonymous_attempts_spool_nothing(node: NodeTree) -> None:
    node.install()
    pid = os.getpid()
    assert attempt(node, "account", "alice", pid) is True
    assert attempt(node, "account", "root", pid) is True
    assert attempt(node, "account", "", pid) is False
    assert (
        bn.decide(node.paths, "account", "sshd", "bob", "", "", pid, bn_now(), nobody)[0] is False
    )
    assert spooled(node) == []


def test_a_quarantine_refusal_is_spooled_through_pam_main(node: NodeTree) -> None:
    node.install()
    quarantine(node)
    assert bn.pam_main([], pam_env(), node.paths) == 1
    (event,) = spooled(node)
    assert (event["kind"], event["user"], event["pid"]) == ("deny", "alice", os.getppid())


def test_deny_events_stop_at_the_spool_limit(node: NodeTree) -> None:
    events = node.root / "var/spool/broker/events"
    for index in range(bn.DENY_SPOOL_LIMIT):
        (events / f"{index}-1-0000000{index % 10}.json").write_text("{}")
    assert attempt(node, "account", "alice", os.getpid()) is False
    assert len(list(events.iterdir())) == bn.DENY_SPOOL_LIMIT


def test_no_spool_directory_no_deny_event(node: NodeTree) -> None:
    events = node.root / "var/spool/broker/events"
    events.rmdir()
    assert attempt(node, "account", "alice", os.getpid()) is False
    assert not events.exists(), "a node bootstrap has not prepared is left as it is"
