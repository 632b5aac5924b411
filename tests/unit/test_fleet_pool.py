"""The SSH pool without SSH servers: version floor, trust file checks, failures per node."""

from __future__ import annotations

import socket
from datetime import timedelta
from pathlib import Path

import pytest

from broker.config.loader import load_settings
from broker.core.errors import RefusedError, UnavailableError
from broker.fleet import pool as pool_module
from broker.fleet.pool import Job, SshOptions, SshPool, require_paramiko, version_tuple
from broker.fleet.ssh import CommandResult, NodeTarget, SshRunner
from tests.helpers import write_config


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
