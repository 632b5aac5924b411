"""Who a caller is: uid -> name -> the directory account with that uid, or a reason why not."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from broker.core.errors import RefusedError
from broker.core.identity import MemorySnapshot
from broker.daemon.caller import Access, directory_account, kerberos_caller, unix_caller
from tests.helpers import REPO
from tests.unit.policy_samples import account

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def snapshot() -> MemorySnapshot:
    return MemorySnapshot.of(
        [
            account("alice", "gpu-admins"),
            dataclasses.replace(account("dora"), state="disabled", uid=10004),
            dataclasses.replace(account("bob"), uid=10002),
        ]
    )


def test_the_account_must_own_the_callers_uid() -> None:
    found, problem = directory_account(snapshot(), "alice", uid=10001)
    assert found is not None and found.name == "alice" and problem is None
    # A local user called alice with another uid is not the directory's alice.
    found, problem = directory_account(snapshot(), "alice", uid=4242)
    assert found is None
    assert problem == "the local account is not the directory account of that name"
    assert "10001" not in problem  # the caller learns nothing about the other account


def test_disabled_and_unknown_accounts_are_not_directory_users() -> None:
    assert directory_account(snapshot(), "dora", uid=10004) == (
        None,
        "the account dora is disabled",
    )
    assert directory_account(snapshot(), "mallory", uid=1) == (
        None,
        "no account 'mallory' in the directory snapshot",
    )


def test_root_is_an_operator_but_not_a_directory_user() -> None:
    caller = unix_caller(0, snapshot(), None, NOW)
    assert caller.actor == "unix:root" and caller.operator
    caller.require(Access.OPERATOR)
    caller.require(Access.SELF_OR_OPERATOR)
    with pytest.raises(RefusedError, match="root is not a usable directory account"):
        caller.require(Access.USER)


def test_an_unnamed_uid_is_refused_everything_but_anyone_routes() -> None:
    caller = unix_caller(4_000_000, snapshot(), None, NOW)
    assert caller.actor == "unix:4000000" and not caller.operator
    caller.require(Access.ANYONE)
    with pytest.raises(RefusedError, match="is not a broker operator"):
        caller.require(Access.OPERATOR)
    with pytest.raises(RefusedError, match="has no user name"):
        caller.require(Access.USER)


@pytest.mark.parametrize(
    ("principal", "account_name"),
    [("alice@HPC.TEST", "alice"), ("Alice@HPC.TEST", "alice")],
)
def test_kerberos_principals_of_the_realm_map_to_accounts(
    principal: str, account_name: str
) -> None:
    caller = kerberos_caller(principal, "HPC.TEST", snapshot())
    assert caller.account is not None and caller.account.name == account_name
    assert caller.actor == f"krb:{principal}"
    assert not caller.operator


@pytest.mark.parametrize(
    "principal",
    [
        "alice@EVIL.TEST",
        "HTTP/broker.hpc.test@HPC.TEST",
        "@HPC.TEST",
        "alice",
        "x\\tom@HPC.TEST",  # MIT shows an escaped character this way: never "tom"
        "alice\\@HPC.TEST@HPC.TEST",
        "al\tice@HPC.TEST",
    ],
)
def test_other_realms_and_service_principals_are_not_users(principal: str) -> None:
    tom = dataclasses.replace(account("tom"), uid=10009)
    caller = kerberos_caller(
        principal, "HPC.TEST", MemorySnapshot.of([*snapshot().accounts(), tom])
    )
    assert caller.account is None
    with pytest.raises(RefusedError):
        caller.require(Access.USER)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_the_systemd_units_parse_and_the_daemon_has_no_capabilities() -> None:
    units = sorted((REPO / "deploy" / "systemd").glob("*.service"))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *map(str, units)],
        capture_output=True,
        text=True,
        check=False,
    )
    problems = [
        line
        for line in result.stderr.splitlines()
        if "Unknown key" in line or "Unknown section" in line or "Failed to parse" in line
    ]
    assert problems == []
    text = (REPO / "deploy" / "systemd" / "broker.service").read_text()
    for line in (
        "CapabilityBoundingSet=\n",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/broker",
        "PrivateTmp=yes",
        "User=broker",
        "ExecStart=/usr/bin/broker serve",
    ):
        assert line in text


def test_peer_credentials_read_uids_above_two_to_the_31() -> None:
    """uid_t is unsigned: SSSD's id ranges reach 4294967294."""
    import socket
    import tempfile

    from broker.daemon.peer import peer_credentials

    directory = Path(tempfile.mkdtemp(prefix="broker-peer-", dir="/tmp"))
    directory.chmod(0o755)
    path = directory / "s"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.settimeout(20)
        server.bind(str(path))
        server.listen(1)
        path.chmod(0o777)
        child = subprocess.Popen(
            [
                "setpriv",
                "--reuid",
                "3000000000",
                "--regid",
                "3000000000",
                "--clear-groups",
                sys.executable,
                "-c",
                f"import socket,time; s=socket.socket(socket.AF_UNIX); s.connect({str(path)!r}); time.sleep(2)",
            ],
        )
        conn, _ = server.accept()
        with conn:
            cred = peer_credentials(conn)
        child.wait()
    shutil.rmtree(directory)
    assert (cred.uid, cred.gid) == (3_000_000_000, 3_000_000_000)
