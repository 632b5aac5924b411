"""Keytab rotation without servers: the node program's commands, distribution over a real
SFTP conversation (tests/unit/local_sftp.py) with the node program run as over SSH, the
state machine over both with a fake AD, the pure rotation rules, passwords and keys.
The keytab format itself: tests/unit/test_keytabfile.py."""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path, PurePosixPath
from types import SimpleNamespace
from typing import Any

import pytest

from broker.app import App
from broker.core.errors import RefusedError, UnavailableError
from broker.fleet import nodeprog
from broker.fleet.ssh import CommandResult, NodeTarget
from broker.keytabs import ad as ad_module
from broker.keytabs import distribute, keys, plan
from broker.keytabs import keytabfile as kf
from broker.keytabs.ad import AdAccount
from broker.keytabs.service import KeytabRules, KeytabService
from broker.policy.model import Policy, ServiceAccount
from tests.helpers import REPO, load_node_script
from tests.unit.local_sftp import Recorder, local_sftp

bk = load_node_script("broker_keytab.py", "broker_keytab")
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
P1, P2 = "HTTP/web.hpc.test@HPC.TEST", "svc-web@HPC.TEST"
HOST = "host/node.hpc.test@HPC.TEST"


def entry(principal: str, kvno: int, enctype: int = 18, fill: int = 1) -> kf.Entry:
    return kf.new_entry(
        principal, kvno, enctype, bytes([fill]) * (32 if enctype == 18 else 16), 1700000000
    )


# ---------------------------------------------------------------- the node program


def run_node(command: str, payload: dict[str, object]) -> tuple[int, dict[str, object]]:
    out = io.StringIO()
    code = bk.main([command], io.StringIO(json.dumps(payload)), out)
    return code, json.loads(out.getvalue())


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    """Where a node keeps a keytab: a directory of root's, 0755."""
    directory = tmp_path / "etc-broker"
    directory.mkdir(mode=0o755)
    return directory


def test_list_reports_versions_owner_ids_and_links_never_keys(node_dir: Path) -> None:
    path = node_dir / "svc.keytab"
    path.write_bytes(kf.serialize([entry(P1, 2), entry(P1, 3), entry(P2, 3), entry(HOST, 9)]))
    path.chmod(0o600)
    query = {"path": str(path), "principals": [P1, P2]}
    code, listed = run_node("keytab-list", {**query, "owner": "nobody", "group": "nogroup"})
    assert code == 0 and listed["ok"] and listed["kvnos"] == {P1: [2, 3], P2: [3]}
    assert (listed["owner_uid"], listed["owner_gid"]) == (65534, 65534)
    assert listed["mode"] == 0o600 and listed["nlink"] == 1 and listed["exists"] is True
    assert "AQEB" not in json.dumps(listed) and "0101" not in json.dumps(listed)
    code, plain = run_node("keytab-list", query)
    assert "owner_uid" not in plain and plain["kvnos"] == listed["kvnos"]
    code, missing = run_node("keytab-list", {**query, "path": str(node_dir / "none")})
    assert missing["ok"] and missing["exists"] is False and missing["kvnos"] == {P1: [], P2: []}
    code, unknown = run_node("keytab-list", {**query, "owner": "no-such-user", "group": "root"})
    assert code == 0 and not unknown["ok"]
    assert unknown["error"] == "user no-such-user does not exist on this node"
    code, unknown = run_node("keytab-list", {**query, "owner": "root", "group": "no-such-group"})
    assert unknown["error"] == "group no-such-group does not exist on this node"


def test_sync_fsyncs_and_lists_what_is_on_disk(node_dir: Path) -> None:
    path = node_dir / "svc.keytab"
    path.write_bytes(kf.serialize([entry(P1, 4)]))
    code, synced = run_node("keytab-sync", {"path": str(path), "principals": [P1]})
    assert code == 0 and synced["ok"] and synced["kvnos"] == {P1: [4]}
    (node_dir / "link.keytab").symlink_to(path)
    code, refused = run_node(
        "keytab-sync", {"path": str(node_dir / "link.keytab"), "principals": [P1]}
    )
    assert not refused["ok"] and "link.keytab" in str(refused["error"])
    os.chmod(node_dir, 0o777)
    code, loose = run_node("keytab-sync", {"path": str(path), "principals": [P1]})
    assert not loose["ok"] and "writable by root only" in str(loose["error"])


def test_node_program_refuses_unsafe_input_and_no_longer_installs(node_dir: Path) -> None:
    query = {"path": str(node_dir / "k"), "principals": [P1]}
    cases = [
        ("keytab-list", {**query, "path": "relative/x"}),
        ("keytab-list", {**query, "path": "/etc/../x"}),
        ("keytab-list", {**query, "owner": "root;rm", "group": "root"}),
        ("keytab-list", {**query, "owner": "root"}),  # a group too, or neither
        ("keytab-list", {**query, "principals": ["bad principal@X"]}),
        ("keytab-sync", {**query, "principals": []}),
        ("keytab-install", {**query, "add": [], "keep": [1]}),  # gone: the broker writes
        ("nope", {}),
    ]
    for command, payload in cases:
        code, reply = run_node(command, payload)
        assert code == 2 and "error" in reply, (command, payload)


def test_keytab_commands_use_their_own_launcher() -> None:
    assert nodeprog.argv_for("keytab-sync")[-2:] == [nodeprog.KEYTAB_PROGRAM, "keytab-sync"]
    assert nodeprog.argv_for("keytab-list")[-2] == nodeprog.KEYTAB_PROGRAM
    assert nodeprog.argv_for("keytab-install")[-2:] == [nodeprog.KEYTAB_PROGRAM, "keytab-install"]
    assert nodeprog.argv_for("status")[-2] == nodeprog.NODE_PROGRAM
    for gone in ("keytab-merge", "keytab-nope"):
        with pytest.raises(ValueError):
            nodeprog.argv_for(gone)


# ---------------------------------------------------------------- distribution over SFTP


class LocalNodes:
    """The part of SshPool that distribute.py and nodeprog use, without SSH: the node
    program runs here as a subprocess (as over SSH: JSON on stdin), SFTP is the in-process
    server of tests/unit/local_sftp.py. Nodes in `down` do not answer; with `old_program`,
    the node program predates keytab-install and says so. Every command line, stdin and
    stdout is kept, to check where keys travel."""

    def __init__(self, ad: FakeAD | None = None) -> None:
        self.options = SimpleNamespace(known_hosts=Path("/nonexistent/known_hosts"), workers=4)
        self.recorder = Recorder()
        self.down: set[str] = set()
        self.calls: list[tuple[str, list[str], bytes]] = []
        self.ad = ad
        self.before_sync: Callable[[], None] | None = None
        self.old_program = False
        self.replies: list[str] = []

    def check_known_hosts(self) -> None:
        pass

    def map(self, work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        return [work(item) for item in items]

    def run(
        self,
        target: NodeTarget,
        argv: list[str],
        stdin: bytes | None = None,
        *,
        timeout: float = 60.0,
        max_output: int = 0,
    ) -> CommandResult:
        self.calls.append((target.name, list(argv), stdin or b""))
        if target.name in self.down:
            return CommandResult(target.name, None, "", "", f"{target.name}: timed out", 1.0)
        command = argv[-1]
        if command == "keytab-install" and self.old_program:
            said = json.dumps({"error": "unknown command 'keytab-install'"})
            return CommandResult(target.name, 2, said, "", None, 1.0)
        if command == "keytab-verify":
            return self._verify(target, json.loads(stdin or b"{}"))
        if command == "keytab-sync" and self.before_sync is not None:
            self.before_sync()
        done = subprocess.run(
            [sys.executable, "-I", "-S", str(REPO / "pam" / "broker_keytab.py"), command],
            input=stdin,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        self.replies.append(done.stdout.decode())
        return CommandResult(target.name, done.returncode, done.stdout.decode(), "", None, 1.0)

    def _verify(self, target: NodeTarget, payload: dict[str, Any]) -> CommandResult:
        """What GSS-API acceptance decides: a ticket under AD's current version is accepted
        when the keytab holds that version for the principal. Several keytabs in one run
        (`keytabs`) are answered each on its own, as the node program does."""
        if "keytabs" in payload:
            answers = [json.loads(self._verify(target, one).stdout) for one in payload["keytabs"]]
            return CommandResult(target.name, 0, json.dumps({"results": answers}), "", None, 1.0)
        assert self.ad is not None
        held = kf.parse(Path(payload["path"]).read_bytes())
        results = []
        for item in payload["tokens"]:
            name = kf.Principal.parse(item["principal"])
            ok = any(e.principal == name and e.kvno == self.ad.kvno for e in held)
            results.append(
                {
                    "principal": item["principal"],
                    "ok": ok,
                    "client": "",
                    "error": "" if ok else "no key",
                }
            )
        reply = {"ok": True, "path": payload["path"], "results": results}
        return CommandResult(target.name, 0, json.dumps(reply), "", None, 1.0)

    @contextmanager
    def sftp(self, target: NodeTarget, *, timeout: float | None = None) -> Iterator[Any]:
        if target.name in self.down:
            raise TimeoutError("timed out")
        with local_sftp(self.recorder) as (sftp, _recorder):
            yield sftp


def spec_for(path: Path, owner: str = "nobody", group: str = "nogroup") -> distribute.KeytabSpec:
    return distribute.KeytabSpec(str(path), owner, group, 0o640, (P1, P2))


NODE = NodeTarget("gpu01", "127.0.0.1", 22)


def key_forms(key: bytes) -> tuple[str, ...]:
    return (key.hex(), base64.b64encode(key).decode(), key.decode("latin-1"))


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another owner needs root")
def test_install_is_one_node_program_run_with_the_keys_on_stdin_only(node_dir: Path) -> None:
    path = node_dir / "svc.keytab"
    path.write_bytes(kf.serialize([entry(HOST, 9), entry(P1, 1), entry(P1, 2), entry(P2, 2)]))
    before = path.read_bytes()
    nodes = LocalNodes()
    add = [entry(P1, 3, fill=5), entry(P2, 3, fill=5)]
    result = distribute.install_one(nodes, NODE, spec_for(path), keep={2, 3}, add=add)  # type: ignore[arg-type]
    assert result == distribute.NodeResult("gpu01", True, None, (2, 3))
    held = kf.parse(path.read_bytes())
    assert kf.versions(held, [kf.Principal.parse(P1), kf.Principal.parse(P2)]) == {
        P1: [2, 3],
        P2: [2, 3],
    }
    assert held[0].raw == kf.parse(before)[0].raw  # the host principal's entry, to the byte
    assert [e.key for e in held[1:]] == [b"\x01" * 32] * 2 + [b"\x05" * 32] * 2
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o640)
    assert [c[1][-1] for c in nodes.calls] == ["keytab-install"]  # one round trip, no SFTP
    assert nodes.recorder.events == []
    assert sorted(p.name for p in node_dir.iterdir()) == ["svc.keytab"]
    # The new key went on the node program's stdin, never argv; no reply carries any key.
    (_node, argv, stdin), reply = nodes.calls[0], nodes.replies[0]
    assert base64.b64encode(b"\x05" * 32).decode() in stdin.decode()
    for key in (b"\x05" * 32, b"\x01" * 32):
        assert not any(form in " ".join(argv) or form in reply for form in key_forms(key))
    # Everything already right: nothing written (same file, same inode).
    inode = path.stat().st_ino
    again = distribute.install_one(nodes, NODE, spec_for(path), keep={2, 3}, add=[])  # type: ignore[arg-type]
    assert again.ok and again.kvnos == (2, 3) and path.stat().st_ino == inode
    assert json.loads(nodes.replies[-1])["results"][0]["written"] is False
    # Prune to 3: written again; the owner changed by hand is put back.
    os.chown(path, 0, 0)
    pruned = distribute.install_one(nodes, NODE, spec_for(path), keep={3}, add=[])  # type: ignore[arg-type]
    assert pruned.ok and pruned.kvnos == (3,) and path.stat().st_uid == 65534
    assert path.stat().st_ino != inode and len(nodes.calls) == 3


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another owner needs root")
def test_an_older_node_program_gets_the_keytab_over_sftp(
    node_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = node_dir / "svc.keytab"
    other = entry(HOST, 9)
    path.write_bytes(kf.serialize([other, entry(P1, 1), entry(P1, 2), entry(P2, 2)]))
    before = path.read_bytes()
    nodes = LocalNodes()
    nodes.old_program = True
    add = [entry(P1, 3, fill=5), entry(P2, 3, fill=5)]
    result = distribute.install_one(nodes, NODE, spec_for(path), keep={2, 3}, add=add)  # type: ignore[arg-type]
    assert result == distribute.NodeResult("gpu01", True, None, (2, 3))
    assert f"gpu01: node program without keytab-install: {path} over SFTP" in caplog.messages
    held = kf.parse(path.read_bytes())
    assert kf.versions(held, [kf.Principal.parse(P1), kf.Principal.parse(P2)]) == {
        P1: [2, 3],
        P2: [2, 3],
    }
    assert held[0].raw == kf.parse(before)[0].raw  # the host principal's entry, to the byte
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o640)
    assert [c[1][-1] for c in nodes.calls] == ["keytab-install", "keytab-list", "keytab-sync"]
    nodes.calls.pop(0)  # the older program's refusal of keytab-install
    assert nodes.recorder.kinds()[:6] == ["open", "chown", "chmod", "write", "fsync", "rename"]
    assert sorted(p.name for p in node_dir.iterdir()) == ["svc.keytab"]
    # No key on any command line or stdin: only the SFTP write carried them.
    for key in (b"\x05" * 32, b"\x01" * 32):
        for _node, argv, stdin in nodes.calls:
            for form in (key.hex(), base64.b64encode(key).decode(), key.decode("latin-1")):
                assert form not in " ".join(argv) and form not in stdin.decode("latin-1")
    # Everything already right: nothing written, no sync.
    nodes.calls.clear()
    count = len(nodes.recorder.events)
    again = distribute.install_one(nodes, NODE, spec_for(path), keep={2, 3}, add=add)  # type: ignore[arg-type]
    assert again.ok and again.kvnos == (2, 3)
    assert "open" not in nodes.recorder.kinds()[count:]
    assert [c[1][-1] for c in nodes.calls] == ["keytab-install", "keytab-list"]
    # Prune to 3: written again; the owner changed by hand is put back.
    os.chown(path, 0, 0)
    pruned = distribute.install_one(nodes, NODE, spec_for(path), keep={3}, add=[])  # type: ignore[arg-type]
    assert pruned.ok and pruned.kvnos == (3,) and path.stat().st_uid == 65534


def test_install_refuses_unknown_owner_link_and_loose_directory_writing_nothing(
    node_dir: Path,
) -> None:
    path = node_dir / "svc.keytab"
    path.write_bytes(kf.serialize([entry(P1, 1), entry(P2, 1)]))
    before = path.read_bytes()
    nodes = LocalNodes()
    add = [entry(P1, 2), entry(P2, 2)]

    def install(spec: distribute.KeytabSpec) -> distribute.NodeResult:
        return distribute.install_one(nodes, NODE, spec, keep={1, 2}, add=add)  # type: ignore[arg-type]

    unknown = install(spec_for(path, owner="no-such-user"))
    assert not unknown.ok and not unknown.unreachable
    assert unknown.error == "gpu01: user no-such-user does not exist on this node"
    target = node_dir / "elsewhere"
    target.write_bytes(before)
    link = node_dir / "link.keytab"
    link.symlink_to(target)
    linked = install(spec_for(link))
    assert not linked.ok and linked.error is not None
    assert f"{link} is a symbolic link" in linked.error
    loose = node_dir / "loose"
    loose.mkdir()
    os.chmod(loose, 0o777)
    refused = install(spec_for(loose / "svc.keytab"))
    assert refused.error is not None and "writable by root only" in refused.error
    assert "open" not in nodes.recorder.kinds()
    assert path.read_bytes() == before and target.read_bytes() == before and link.is_symlink()
    bad = node_dir / "bad.keytab"
    bad.write_bytes(b"\x05\x02\x00\x00\x00\x40")
    malformed = install(spec_for(bad, owner="root", group="root"))
    assert malformed.error == f"gpu01: {bad}: truncated keytab entry"
    nodes.down.add("gpu01")
    gone = install(spec_for(path))
    assert not gone.ok and gone.unreachable


def test_the_broker_side_refuses_on_its_own_too(node_dir: Path) -> None:
    """merge_into does not rely on the node program's checks: a link, a non-file, a
    malformed keytab or a loose directory are refused over SFTP before anything is written."""
    target = node_dir / "real"
    target.write_bytes(kf.serialize([entry(P1, 1)]))
    (node_dir / "link.keytab").symlink_to(target)
    (node_dir / "bad.keytab").write_bytes(b"\x05\x02\x00\x00\x00\x40")
    (node_dir / "dir.keytab").mkdir()
    loose = node_dir / "loose"
    loose.mkdir()
    os.chmod(loose, 0o757)
    cases = [
        ("link.keytab", RefusedError, "is a symbolic link"),
        ("dir.keytab", RefusedError, "is not a regular file"),
        ("bad.keytab", kf.MalformedKeytab, "entry of 64 bytes at 2 runs past the end"),
        ("loose/k", RefusedError, "writable by root only"),
        ("absent/k", RefusedError, "does not exist"),
    ]
    with local_sftp() as (sftp, recorder):
        for name, error, message in cases:
            with pytest.raises(error, match=message):
                distribute.merge_into(
                    sftp, spec_for(node_dir / name), keep={1}, add=[], uid=0, gid=0
                )
    assert "open" not in recorder.kinds() and target.read_bytes() == kf.serialize([entry(P1, 1)])


def test_a_write_someone_else_undid_is_a_failure(node_dir: Path) -> None:
    path = node_dir / "svc.keytab"
    nodes = LocalNodes()
    nodes.old_program = True
    nodes.before_sync = lambda: path.write_bytes(kf.serialize([entry(P1, 1), entry(P2, 1)]))
    result = distribute.install_one(  # type: ignore[arg-type]
        nodes, NODE, spec_for(path, "root", "root"), keep={1, 2}, add=[entry(P1, 2), entry(P2, 2)]
    )
    assert not result.ok and result.error is not None
    assert "holds versions [1] after the write, not [2]" in result.error


def test_keytab_specs_are_checked_before_anything_is_sent() -> None:
    for path in ("relative", "/etc/../x", "/etc/./x", "/etc/broker/", "/etc/a b"):
        with pytest.raises(RefusedError):
            distribute.KeytabSpec(path, "root", "root", 0o600, (P1,))
    with pytest.raises(RefusedError):
        distribute.KeytabSpec("/etc/k", "root", "root", 0o644, (P1,))
    with pytest.raises(RefusedError):
        distribute.KeytabSpec("/etc/k", "Root$", "root", 0o600, (P1,))


# ---------------------------------------------------------------- the state machine over it


class FakeAD:
    """AD as rotation sees it: a key version that a password reset moves on by one."""

    def __init__(self, kvno: int = 1) -> None:
        self.kvno = kvno
        self.on_set: Callable[[], None] | None = None
        self.resets = 0

    def lookup(self, account: str) -> AdAccount:
        return AdAccount(f"CN={account},OU=Svc,DC=hpc,DC=test", account, self.kvno, None, (), False)

    def set_password(self, account: AdAccount, password: keys.Secret) -> None:
        if self.on_set is not None:
            self.on_set()
        self.kvno += 1
        self.resets += 1

    def create(
        self, account: str, spns: Sequence[str], ou: str, password: keys.Secret
    ) -> AdAccount:
        raise AssertionError("not used")

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


def rotation_service(
    broker_app: App, nodes: LocalNodes, ad: FakeAD, clock: Clock, path: Path, names: Sequence[str]
) -> tuple[KeytabService, list[keys.Key]]:
    account = ServiceAccount(
        name="kt-web",
        account="svc-web",
        principals=("HTTP/web.hpc.test",),
        nodes=frozenset(names),
        keytab=PurePosixPath(path),
        owner="nobody",
        group="nogroup",
        mode=0o640,
        keep_old_kvnos=1,
    )
    policy = Policy.build(
        zones={}, command_sets={}, roles={}, bindings=(), service_accounts={"kt-web": account}
    )
    derived: list[keys.Key] = []

    def derive(password: keys.Secret, salts: dict[int, keys.SaltInfo]) -> tuple[keys.Key, ...]:
        made = keys.derive(password, salts)
        derived.extend(made)
        return made

    service = KeytabService(
        store=broker_app.ready_store(),
        pool=nodes,  # type: ignore[arg-type]
        policy=lambda: policy,
        directory=lambda: ad,
        tokens=lambda principals: {p: "dG9rZW4=" for p in principals},
        rules=KeytabRules("HPC.TEST", timedelta(hours=10)),
        salts=lambda principal, enctypes: {
            e: keys.SaltInfo(e, b"HPC.TESTsvc-web", b"") for e in enctypes
        },
        derive=derive,
        clock=clock,
    )
    service._targets = lambda s: [NodeTarget(n, "127.0.0.1", 22) for n in sorted(s.nodes)]  # type: ignore[method-assign]
    return service, derived


def held_versions(path: Path) -> dict[str, list[int]]:
    return kf.versions(
        kf.parse(path.read_bytes()), [kf.Principal.parse(P2), kf.Principal.parse(P1)]
    )


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another owner needs root")
def test_rotation_stages_before_ad_verifies_and_prunes_after_the_ticket_lifetime(
    broker_app: App, node_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = node_dir / "kt-web.keytab"
    path.write_bytes(kf.serialize([entry(HOST, 9), entry(P2, 1), entry(P1, 1)]))
    host_entry = kf.parse(path.read_bytes())[0].raw
    ad, clock = FakeAD(1), Clock()
    nodes = LocalNodes(ad)
    service, derived = rotation_service(broker_app, nodes, ad, clock, path, ["gpu01"])
    seen_at_reset: list[dict[str, list[int]]] = []
    ad.on_set = lambda: seen_at_reset.append(held_versions(path))
    caplog.set_level("DEBUG")

    report = service.rotate("kt-web", actor="test")
    assert (report.outcome, report.from_kvno, report.kvno) == ("rotated", 1, 2)
    assert seen_at_reset == [{P2: [1, 2], P1: [1, 2]}]  # every node held N+1 before AD moved
    assert held_versions(path) == {P2: [1, 2], P1: [1, 2]}  # N kept: its tickets still live
    assert kf.parse(path.read_bytes())[0].raw == host_entry
    info = path.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65534, 0o640)

    clock.now += timedelta(hours=1)
    assert service.rotate("kt-web", actor="test").kvno == 3
    # 1 is older than the one kept old version (2), but AD retired it an hour ago: kept.
    assert held_versions(path) == {P2: [1, 2, 3], P1: [1, 2, 3]}
    clock.now += timedelta(hours=11)
    assert service.rotate("kt-web", actor="test").kvno == 4
    assert held_versions(path) == {P2: [3, 4], P1: [3, 4]}  # 1 and 2 past the ticket lifetime
    with broker_app.ready_store().transaction() as conn:
        states = [r[0] for r in conn.execute("SELECT state FROM keytab_rotations ORDER BY id")]
        audit = " ".join(str(r) for r in conn.execute("SELECT action, details FROM audit_events"))
        stored = " ".join(str(r) for r in conn.execute("SELECT * FROM keytab_nodes"))
    assert states == ["done", "done", "done"]
    assert "keytab.stage" in audit and "keytab.verify" in audit
    # No key, in any spelling, in the audit chain, the store, the logs, argv or stdin.
    assert len(derived) == 6
    # keytab-install's stdin is the one place a new key goes (to the node, over SSH).
    spoken = [audit, stored, caplog.text, *nodes.replies] + [
        " ".join(a) + ("" if a[-1] == "keytab-install" else s.decode("latin-1"))
        for _n, a, s in nodes.calls
    ]
    for key in derived:
        for form in (
            key.data.hex(),
            base64.b64encode(key.data).decode(),
            key.data.decode("latin-1"),
        ):
            assert not any(form in text for text in spoken)


def test_a_node_that_cannot_stage_leaves_ad_untouched_and_unstages_the_others(
    broker_app: App, node_dir: Path
) -> None:
    path = node_dir / "kt-web.keytab"
    path.write_bytes(kf.serialize([entry(P2, 1), entry(P1, 1)]))
    os.chown(path, 65534, 65534)
    path.chmod(0o640)
    ad, clock = FakeAD(1), Clock()
    nodes = LocalNodes(ad)
    nodes.down.add("gpu02")
    service, _derived = rotation_service(broker_app, nodes, ad, clock, path, ["gpu01", "gpu02"])
    with pytest.raises(UnavailableError, match="could not stage the next keys on gpu02"):
        service.rotate("kt-web", actor="test")
    assert ad.resets == 0 and ad.kvno == 1
    assert held_versions(path) == {P2: [1], P1: [1]}  # gpu01's staged 2 was taken back
    staged = [c for c in nodes.calls if c[0] == "gpu01" and c[1][-1] == "keytab-install"]
    assert len(staged) == 2  # written once to stage, once to unstage
    with broker_app.ready_store().transaction() as conn:
        row = conn.execute("SELECT state, error FROM keytab_rotations").fetchone()
    assert row[0] == "abandoned" and "gpu02" in row[1]


@pytest.mark.parametrize(
    ("answer", "state", "retried"),
    [
        (ad_module.PasswordRefused("AD refused the new password (constraintViolation)"),
         "failed", False),
        (ad_module.PasswordNotSet("AD insufficientAccessRights"), "failed", True),
        (UnavailableError("AD: the password change of svc-web was not confirmed"),
         "ad_pending", True),
    ],
)  # fmt: skip
def test_an_ad_answer_ends_the_rotation_and_a_lost_connection_leaves_it_open(
    broker_app: App, node_dir: Path, answer: Exception, state: str, retried: bool
) -> None:
    """AD answered with an error: the password is certainly unchanged, so the staged keys
    are taken back and the rotation ends (a policy refusal waits for a fix, the rest is
    retried with backoff). A connection lost mid-request: unknown, the next run decides."""
    path = node_dir / "kt-web.keytab"
    path.write_bytes(kf.serialize([entry(P2, 1), entry(P1, 1)]))
    os.chown(path, 65534, 65534)
    path.chmod(0o640)
    ad, clock = FakeAD(1), Clock()

    def refuse() -> None:
        raise answer

    ad.on_set = refuse
    service, _derived = rotation_service(broker_app, LocalNodes(ad), ad, clock, path, ["gpu01"])
    with pytest.raises(type(answer)):
        service.rotate("kt-web", actor="test")
    assert ad.kvno == 1
    with broker_app.ready_store().transaction() as conn:
        (found,) = conn.execute("SELECT state FROM keytab_rotations").fetchall()
        (retry_after,) = conn.execute("SELECT retry_after FROM keytab_accounts").fetchone()
    assert found[0] == state
    assert (retry_after is not None) is retried
    if state == "failed":
        assert held_versions(path) == {P2: [1], P1: [1]}  # the staged 2 was taken back


# ---------------------------------------------------------------- rules


def test_kept_versions_follow_count_and_ticket_lifetime() -> None:
    life = timedelta(hours=10)
    common = {"keep_old": 1, "max_ticket_lifetime": life, "now": NOW}
    present = {1, 2, 3, 4}
    # Old versions beyond keep_old go once their tickets can no longer be alive.
    assert plan.keep_kvnos(current=4, staged=5, retired={}, present=present, **common) == {3, 4, 5}
    recent = {2: NOW - timedelta(hours=9), 3: NOW - timedelta(hours=1)}
    assert plan.keep_kvnos(current=4, staged=None, retired=recent, present=present, **common) == {
        2,
        3,
        4,
    }
    expired = {2: NOW - timedelta(hours=11)}
    assert plan.keep_kvnos(current=4, staged=None, retired=expired, present=present, **common) == {
        3,
        4,
    }
    zero = {**common, "keep_old": 0}
    assert plan.keep_kvnos(current=4, staged=None, retired={}, present=present, **zero) == {4}


def test_resume_decisions_never_change_the_password_twice() -> None:
    def decide(state: str, now_kvno: int, recorded: int | None = None) -> str:
        return plan.resume(plan.Found(state, 4, 5, recorded, now_kvno))

    assert decide("planned", 4) == "discard"
    assert decide("staged", 4) == "discard"
    assert decide("staged", 6) == "discard"  # someone else changed AD: still never ours
    assert decide("ad_pending", 4) == "discard"  # AD never got it
    assert decide("ad_pending", 5) == "verify"  # AD got it; nodes hold the staged keys
    assert decide("ad_pending", 7) == "recover"
    assert decide("ad_set", 5, 5) == "verify"
    assert decide("ad_set", 6, 6) == "recover"  # crashed while re-deriving: keys lost
    with pytest.raises(ValueError):
        decide("done", 5)


def test_due_and_backoff() -> None:
    assert not plan.is_due(None, timedelta(days=30), NOW)  # never created: not scheduled
    assert not plan.is_due(NOW - timedelta(days=29), timedelta(days=30), NOW)
    assert plan.is_due(NOW - timedelta(days=30), timedelta(days=30), NOW)
    assert [plan.backoff(n).total_seconds() for n in (1, 2, 3)] == [60, 120, 240]
    assert plan.backoff(50) == timedelta(hours=1)


# ---------------------------------------------------------------- secrets


def test_passwords_are_long_complex_random_and_never_printed() -> None:
    seen = set()
    for _ in range(200):
        secret = keys.new_password()
        text = secret.reveal()
        seen.add(text)
        assert len(text) == 31
        assert any(c.islower() for c in text) and any(c.isupper() for c in text)
        assert any(c.isdigit() for c in text) and any(not c.isalnum() for c in text)
        assert text not in repr(secret) and text not in str(secret) and text not in f"{secret}"
    assert len(seen) == 200
    key = keys.Key(18, b"\x01" * 32)
    assert "\\x01" not in repr(key) and "AQEB" not in repr(key)


def test_a_keytab_path_no_node_would_take_is_refused_before_anything_is_written(
    broker_app: App, node_dir: Path
) -> None:
    path = node_dir / "kt@web.keytab"  # the policy allows '@' in paths; the node does not
    ad, clock = FakeAD(1), Clock()
    nodes = LocalNodes(ad)
    service, _derived = rotation_service(broker_app, nodes, ad, clock, path, ["gpu01"])
    with pytest.raises(RefusedError, match="is not a plain absolute path"):
        service.rotate("kt-web", actor="test")
    assert ad.resets == 0 and nodes.calls == [] and nodes.recorder.events == []
    with broker_app.ready_store().transaction() as conn:
        assert conn.execute("SELECT count(*) FROM keytab_rotations").fetchone()[0] == 0
