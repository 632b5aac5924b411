"""The SSH pool without SSH servers: version floor, trust file checks, failures per node; the
SFTP helpers over a real SFTP conversation with an in-process server (tests/unit/local_sftp.py)."""

from __future__ import annotations

import os
import socket
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from broker.config.loader import load_settings
from broker.core.errors import RefusedError, UnavailableError
from broker.fleet import pool as pool_module
from broker.fleet.pool import (
    Job,
    SshOptions,
    SshPool,
    put_atomic,
    read_regular,
    require_paramiko,
    version_tuple,
)
from broker.fleet.runner import SshRunner
from broker.fleet.ssh import CommandResult, NodeTarget
from tests.helpers import write_config
from tests.unit.local_sftp import local_sftp


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def options(tmp_path: Path, **changes: object) -> SshOptions:
    known = tmp_path / "known_hosts"
    if not known.exists():
        known.write_text("")
        known.chmod(0o600)
    values: dict[str, object] = {
        "key_path": tmp_path / "ssh_ed25519",
        "known_hosts": known,
        "user": "root",
        "connect_timeout": 2.0,
    }
    values.update(changes)
    return SshOptions(**values)  # type: ignore[arg-type]


def test_paramiko_without_the_terrapin_fix_is_refused() -> None:
    assert version_tuple("3.4.0") == (3, 4, 0) and version_tuple("4.0.0rc1") == (4, 0, 0)
    assert version_tuple("3.10.1.post2") == (3, 10, 1)
    require_paramiko("3.4.0")
    require_paramiko("5.1.0")
    with pytest.raises(UnavailableError, match="Terrapin") as info:
        require_paramiko("3.3.1")
    assert "paramiko>=3.4.0" in str(info.value)


def test_trust_file_problems_are_raised_not_reported_per_node(tmp_path: Path) -> None:
    target = NodeTarget("gpu01", "127.0.0.1", closed_port())
    missing = SshPool(options(tmp_path, known_hosts=tmp_path / "nowhere"))
    with pytest.raises(UnavailableError, match="no pinned host keys") as info:
        missing.run(target, ["true"])
    assert "broker node enroll" in str(info.value)
    loose = SshPool(options(tmp_path))
    (tmp_path / "known_hosts").chmod(0o666)
    with pytest.raises(RefusedError, match="wider than 0644"):
        loose.run(target, ["true"])


def test_unreachable_nodes_come_back_as_results_in_order(tmp_path: Path) -> None:
    pool = SshPool(options(tmp_path))
    port = closed_port()
    jobs = [Job(NodeTarget(f"gpu0{i}", "127.0.0.1", port), ["true"]) for i in (1, 2, 3)]
    seen: list[str] = []
    results = pool.run_many(jobs, lambda r: seen.append(r.node))
    assert [r.node for r in results] == ["gpu01", "gpu02", "gpu03"] and sorted(seen) == [
        "gpu01",
        "gpu02",
        "gpu03",
    ]
    for r in results:
        assert not r.ok and r.exit_status is None
        assert r.error is not None and r.error.startswith(f"{r.node} (127.0.0.1:{port})")
    assert pool.connected() == [] and pool.close_idle() == 0
    pool.close()
    closed = pool.run(jobs[0].target, ["true"])
    assert closed.error == "gpu01: the SSH pool is closed"


def test_the_old_runner_wraps_the_pool(tmp_path: Path) -> None:
    opts = options(tmp_path)
    runner = SshRunner(
        key_path=opts.key_path,
        known_hosts=opts.known_hosts,
        user="root",
        timeout=timedelta(seconds=2),
    )
    result = runner.run(NodeTarget("gpu01", "127.0.0.1", closed_port()), ["true"])
    assert isinstance(result, CommandResult) and not result.ok
    shared = SshPool(opts)
    assert SshRunner.over(shared).pool is shared
    runner.close()


def test_gssapi_needs_a_paramiko_that_has_it(tmp_path: Path) -> None:
    if pool_module.gssapi_supported():
        assert SshPool(options(tmp_path, auth="gssapi")).options.auth == "gssapi"
    else:
        with pytest.raises(UnavailableError, match="no GSS-API support") as info:
            SshPool(options(tmp_path, auth="gssapi"))
        assert "ssh.auth = 'key'" in str(info.value)


def test_one_shared_pool_per_configuration(tmp_path: Path) -> None:
    first = load_settings(write_config(tmp_path))
    (tmp_path / "other").mkdir()
    second = load_settings(write_config(tmp_path / "other"))
    try:
        assert pool_module.shared_pool(first) is pool_module.shared_pool(first)
        assert pool_module.shared_pool(first) is not pool_module.shared_pool(second)
        assert pool_module.shared_pool(first).options.known_hosts == first.known_hosts
    finally:
        pool_module.close_shared_pool()


# ---------------------------------------------------------------- SFTP helpers, over real SFTP


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    """A directory like /etc/broker on a node: root's, 0755."""
    directory = tmp_path / "etc-broker"
    directory.mkdir(mode=0o755)
    return directory


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another owner needs root")
def test_put_atomic_sets_owner_and_mode_before_the_first_byte_and_renames(node_dir: Path) -> None:
    path = str(node_dir / "svc.keytab")
    (node_dir / "svc.keytab").write_bytes(b"old")
    with local_sftp() as (sftp, recorder):
        put_atomic(sftp, path, b"new bytes", 0o640, uid=65534, gid=65533, fsync=True)
    kinds = recorder.kinds()
    assert kinds == ["open", "chown", "chmod", "write", "fsync", "rename"]
    opened, chown, chmod = recorder.events[0], recorder.events[1], recorder.events[2]
    temporary = opened[1]
    # Created 0600 by the OPEN request itself: never the server's default (0666 & ~umask).
    assert opened[2] == 0o600 and temporary.startswith(str(node_dir) + "/.svc.keytab.broker-")
    assert chown == ("chown", temporary, 65534, 65533) and chmod == ("chmod", temporary, 0o640)
    assert recorder.events[-1] == ("rename", temporary, path)
    info = os.stat(path)
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (65534, 65533, 0o640)
    assert (node_dir / "svc.keytab").read_bytes() == b"new bytes"
    assert sorted(p.name for p in node_dir.iterdir()) == ["svc.keytab"]


def test_put_atomic_defaults_to_root_and_leaves_nothing_behind_on_failure(node_dir: Path) -> None:
    path = str(node_dir / "grant")
    with local_sftp() as (sftp, recorder):
        put_atomic(sftp, path, b"x", 0o440)
        assert ("chown", recorder.events[0][1], 0, 0) in recorder.events
        assert "fsync" not in recorder.kinds()  # only when asked for
        for failing in ("write", "fsync", "rename", "chmod"):
            recorder.fail_on = failing
            with pytest.raises(OSError):
                put_atomic(sftp, path, b"changed", 0o440, fsync=True)
            assert recorder.kinds()[-1] == "remove", failing
        recorder.fail_on = None
        with pytest.raises(ValueError):
            put_atomic(sftp, path, b"x", 0o100644)
        with pytest.raises(ValueError):
            put_atomic(sftp, path, b"x", 0o600, uid=-1)
    assert (node_dir / "grant").read_bytes() == b"x"
    assert sorted(p.name for p in node_dir.iterdir()) == ["grant"]


def test_put_atomic_never_writes_through_an_existing_temporary_name(
    node_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = node_dir / "victim"
    victim.write_bytes(b"keep me")
    monkeypatch.setattr(pool_module.secrets, "token_hex", lambda n: "fixed")
    (node_dir / ".k.broker-fixed").symlink_to(victim)  # planted where the temporary goes
    with local_sftp() as (sftp, _recorder), pytest.raises(OSError):
        put_atomic(sftp, str(node_dir / "k"), b"secret", 0o600)
    assert victim.read_bytes() == b"keep me" and not (node_dir / "k").exists()


def test_read_regular_refuses_links_other_files_and_oversize(node_dir: Path) -> None:
    (node_dir / "file").write_bytes(b"12345")
    (node_dir / "link").symlink_to(node_dir / "file")
    os.mkfifo(node_dir / "fifo")
    with local_sftp() as (sftp, _recorder):
        assert read_regular(sftp, str(node_dir / "file"), 5) == b"12345"
        assert read_regular(sftp, str(node_dir / "missing"), 5) is None
        with pytest.raises(RefusedError, match="is a symbolic link"):
            read_regular(sftp, str(node_dir / "link"), 5)
        with pytest.raises(RefusedError, match="is not a regular file"):
            read_regular(sftp, str(node_dir / "fifo"), 5)
        with pytest.raises(RefusedError, match="larger than 4 bytes"):
            read_regular(sftp, str(node_dir / "file"), 4)
