"""The lab, started once per test session for tests marked `lab`, and removed at the end.

BROKER_LAB_KEEP=1 reuses a lab that is already up and leaves it up afterwards.
BROKER_LAB_HA=1 brings the session's lab up with `--ha` (the store in PostgreSQL, two
daemons), to run any lab test against the PostgreSQL store.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import ldap3
import pyotp
import pytest

from tests.helpers import BROKER, REPO

ADMIN_DN = "CN=Administrator,CN=Users,DC=hpc,DC=test"


def load_lab_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("broker_lab", REPO / "deploy" / "lab" / "lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["broker_lab"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def lab_module() -> ModuleType:
    return load_lab_module()


# The HA lab's tests (lab up --ha) take the lab over for their module: they run last, after
# every test of the session-wide lab, which `up --ha` replaces (up starts with a down).
HA_MODULES = ("test_ha_lab.py",)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Order the HA lab's modules after every other test, so the session's lab is never
    needed again once `ha_lab` has replaced it (the two never run at the same time)."""
    items.sort(key=lambda item: item.path.name in HA_MODULES)


@pytest.fixture(scope="session")
def lab(lab_module: ModuleType) -> Iterator[dict[str, Any]]:
    root = Path(os.environ.get("BROKER_LAB_ROOT", "/var/lib/broker-lab"))
    keep = os.environ.get("BROKER_LAB_KEEP") == "1"
    ha = os.environ.get("BROKER_LAB_HA") == "1"  # the whole lab suite on PostgreSQL
    reuse = keep and (root / "lab.json").exists() and lab_module.status(root).get("up")
    if not reuse:
        lab_module.up(root=root, ha=ha)
    info: dict[str, Any] = lab_module.load_info(root)
    yield info
    if not keep:
        lab_module.down(root)
        lab_module.assert_host_clean(root)


@pytest.fixture(scope="module")
def ha_lab(lab_module: ModuleType) -> Iterator[dict[str, Any]]:
    """The HA lab (`lab up --ha`: the store in the lab's own PostgreSQL, a second daemon on
    it), brought up for one module and removed after it. `up` first removes whatever lab is
    up, the session's included, so this fixture's modules are ordered last. With
    BROKER_LAB_KEEP=1 an HA lab already up is reused and left up."""
    root = Path(os.environ.get("BROKER_LAB_ROOT", "/var/lib/broker-lab"))
    keep = os.environ.get("BROKER_LAB_KEEP") == "1"
    current = lab_module.status(root)
    if not (keep and current.get("up") and current.get("ha")):
        lab_module.up(root=root, ha=True)
    info: dict[str, Any] = lab_module.load_info(root)
    yield info
    if not keep:
        lab_module.down(root)
        lab_module.assert_host_clean(root)


@contextlib.contextmanager
def watchers_paused(lab: dict[str, Any], lab_module: ModuleType, *names: str) -> Iterator[None]:
    """Stop (SIGSTOP) the named nodes' `broker-node watch` while a test places files the
    watcher would act on (an expired grant it would reap); continue it afterwards."""
    info = lab_module.load_info(Path(lab["root"]))
    pids = [int(n["watch_pid"]) for n in info["nodes"] if n["name"] in names and n.get("watch_pid")]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def private_daemon_config(text: str, directory: Path) -> Path:
    """The lab's broker.toml (changed as given) with its own socket and no TLS listener, so
    `tests.helpers.serving` can run a second daemon for it beside the lab's."""
    head = text.split("\n[daemon]\n", 1)[0]
    config = directory / "broker.toml"
    config.write_text(f'{head}\n[daemon]\nsocket = "{directory / "run" / "broker.sock"}"\n')
    return config


def store_bytes(lab: dict[str, Any]) -> bytes:
    """Everything the lab broker's store holds, as bytes to search for a secret: the SQLite
    file, or on the HA lab a pg_dump of its PostgreSQL database (as the cluster's owner)."""
    if "pg" not in lab:
        return (Path(lab["broker"]["state_dir"]) / "broker.db").read_bytes()
    dump = ["/usr/lib/postgresql/15/bin/pg_dump", "-h", lab["pg"]["socket_dir"], "broker"]
    done = subprocess.run(
        ["runuser", "-u", "postgres", "--", *dump], capture_output=True, timeout=120, check=True
    )
    return done.stdout


def config_of(lab: dict[str, Any]) -> Path:
    return Path(lab["broker"]["config"])


def as_user(lab: dict[str, Any], name: str) -> list[str]:
    """The argv prefix that runs a command as a lab user (the daemon knows callers by uid)."""
    user = lab["users"][name]
    return ["setpriv", "--reuid", str(user["uid"]), "--regid", str(user["gid"]), "--clear-groups"]


def cli(
    lab: dict[str, Any],
    *args: str,
    user: str | None = None,
    stdin: str = "",
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """`broker --config <lab config> ARGS`, as root or as a lab user."""
    full_env = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    full_env.update({"COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    full_env.update(env or {})
    prefix = as_user(lab, user) if user else []
    return subprocess.run(
        [*prefix, BROKER, "--config", str(config_of(lab)), *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=180,
        check=False,
    )


def ssh_argv(lab: dict[str, Any], user: str, address: str, command: str) -> list[str]:
    """OpenSSH as USER (root: the broker's key) to a node, its host key pinned."""
    key = lab["broker"]["ssh_key"] if user == "root" else lab["users"][user]["ssh_key"]
    return [
        "ssh",
        "-i",
        key,
        "-o",
        f"UserKnownHostsFile={lab['broker']['known_hosts']}",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=10",
        f"{user}@{address}",
        command,
    ]


def ssh(
    lab: dict[str, Any], user: str, node: dict[str, Any], command: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ssh_argv(lab, user, node["address"], command),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def admin(lab: dict[str, Any]) -> Iterator[ldap3.Connection]:
    """An Administrator connection over LDAPS, to change the directory as an AD admin would."""
    password = Path(lab["dc"]["admin_password_file"]).read_text().strip()
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=lab["dc"]["ca_file"])
    server = ldap3.Server(lab["dc"]["host"], port=636, use_ssl=True, tls=tls)
    conn = ldap3.Connection(server, ADMIN_DN, password, auto_bind=True, raise_exceptions=True)
    yield conn
    conn.unbind()


class Codes:
    """TOTP codes for lab users, each step used once (the daemon refuses a replay)."""

    def __init__(self) -> None:
        self.secrets: dict[str, str] = {}
        self.last: dict[str, int] = {}

    def enroll(self, lab: dict[str, Any], user: str) -> None:
        assert cli(lab, "mfa", "reset", user, "--yes").returncode == 0
        proc = subprocess.Popen(
            [*as_user(lab, user), BROKER, "--config", str(config_of(lab)), "mfa", "enroll"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert proc.stdout is not None
        uri = None
        for line in proc.stdout:
            found = re.search(r"(otpauth://totp/\S+)", line)
            if found:
                uri = found.group(1)
                break
        assert uri is not None
        totp = pyotp.parse_uri(uri)
        step = int(time.time()) // 30
        _out, err = proc.communicate(totp.at(step * 30) + "\n", timeout=60)
        assert proc.returncode == 0, err
        self.secrets[user] = totp.secret
        self.last[user] = step

    def code(self, user: str) -> str:
        """The next unused step's code, waiting when the +-1 step window is used up."""
        now_step = int(time.time()) // 30
        step = max(self.last[user] + 1, now_step - 1)
        if step > now_step + 1:
            time.sleep((step - 1) * 30 - time.time() + 0.5)
        self.last[user] = step
        return str(pyotp.TOTP(self.secrets[user]).at(step * 30)) + "\n"
