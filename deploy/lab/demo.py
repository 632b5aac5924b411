"""The broker's story end to end, on the lab: run by `deploy/lab/lab demo`.

Grows with each capability. Today: the lab is up; the broker binds to AD
over LDAPS with SASL GSSAPI from its keytab; it syncs the directory into
its snapshot, applies the lab policy and shows accounts with their nested
groups, state, roles and where they may elevate, explains decisions and
reviews accounts (AC-2); the daemon knows callers by uid (alice is refused
operator commands) and alice enrolls TOTP MFA, a code working once and its
replay refused; it reaches every node over SSH with pinned host keys; its audit chain is written and verifies; and
tampering with a copy of the chain is detected and named.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BROKER = REPO / ".venv" / "bin" / "broker"


def load_lab() -> ModuleType:
    spec = importlib.util.spec_from_file_location("broker_lab", HERE / "lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["broker_lab"] = module
    spec.loader.exec_module(module)
    return module


def step(title: str) -> None:
    print(f"\n\033[1m== {title}\033[0m", flush=True)


def broker(config: Path, *args: str, expect: int = 0) -> str:
    print(f"$ broker {' '.join(args)}", flush=True)
    env = dict(os.environ, BROKER_CONFIG=str(config), COLUMNS="120")
    result = subprocess.run(
        [str(BROKER), *args], env=env, capture_output=True, text=True, check=False
    )
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    if result.returncode != expect:
        print(f"demo: `broker {' '.join(args)}` exited {result.returncode}, expected {expect}")
        sys.exit(1)
    return result.stdout


def tamper_copy(config: Path, state_dir: Path) -> None:
    """Delete the newest audit events in a copy of the state and show verify catching it."""
    with tempfile.TemporaryDirectory(prefix="broker-demo-") as tmp:
        copy_state = Path(tmp) / "state"
        shutil.copytree(state_dir, copy_state)
        copy_config = Path(tmp) / "broker.toml"
        head = config.read_text().replace(str(state_dir), str(copy_state)).split("\n[daemon]\n")[0]
        sock = Path(tmp) / "run" / "broker.sock"
        copy_config.write_text(f'{head}\n[daemon]\nsocket = "{sock}"\n')
        conn = sqlite3.connect(copy_state / "broker.db")
        newest = conn.execute("SELECT max(seq) FROM audit_events").fetchone()[0]
        conn.execute("DROP TRIGGER audit_events_no_delete")
        conn.execute("DELETE FROM audit_events WHERE seq = ?", (newest,))
        conn.commit()
        conn.close()
        print(f"(deleted event {newest}, the newest, from a copy of the store in {tmp})")
        print("(a second daemon serves the copy on its own socket)")
        daemon = subprocess.Popen(
            [str(BROKER), "--config", str(copy_config), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 20
            while not sock.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            broker(copy_config, "audit", "verify", expect=1)
        finally:
            daemon.terminate()
            daemon.wait(timeout=20)


def user_command(
    info: dict[str, Any], config: Path, name: str, *args: str
) -> tuple[list[str], dict[str, str]]:
    """argv and environment to run `broker ARGS` as a lab user (uid from the directory):
    the daemon knows them by that uid."""
    user = info["users"][name]
    print(f"$ (as {name}) broker {' '.join(args)}", flush=True)
    env = dict(os.environ, BROKER_CONFIG=str(config), COLUMNS="120", PYTHONUNBUFFERED="1")
    argv = ["setpriv", "--reuid", str(user["uid"]), "--regid", str(user["gid"]), "--clear-groups"]
    return [*argv, str(BROKER), *args], env


def as_user(info: dict[str, Any], config: Path, name: str, *args: str, stdin: str = "") -> str:
    argv, env = user_command(info, config, name, *args)
    result = subprocess.run(argv, env=env, input=stdin, capture_output=True, text=True, check=False)
    sys.stdout.write(result.stdout)
    sys.stdout.write(result.stderr)
    return result.stdout + result.stderr


class Authenticator:
    """What the demo users' phones would show: each TOTP step's code is used once."""

    def __init__(self, uri: str, step: int) -> None:
        import pyotp

        self.totp = pyotp.parse_uri(uri)
        self.last = step

    def code(self) -> str:
        now = int(time.time()) // 30
        step = max(self.last + 1, now - 1)
        if step > now + 1:
            print("(waiting for the authenticator's next code)", flush=True)
            time.sleep((step - 1) * 30 - time.time() + 0.5)
        self.last = step
        return str(self.totp.at(step * 30)) + "\n"


def enroll(info: dict[str, Any], config: Path, name: str) -> Authenticator:
    """NAME enrolls TOTP; the demo plays their authenticator app."""
    broker(config, "mfa", "reset", name, "--yes")
    argv, env = user_command(info, config, name, "mfa", "enroll")
    proc = subprocess.Popen(
        argv,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    uri = ""
    for line in proc.stdout:
        sys.stdout.write(line)
        if "otpauth://" in line:
            uri = line[line.index("otpauth://") :].strip()
            break
    step = int(time.time()) // 30
    phone = Authenticator(uri, step)
    out, err = proc.communicate(phone.totp.at(step * 30) + "\n", timeout=60)
    sys.stdout.write(out + err)
    if proc.returncode != 0:
        sys.exit(f"demo: mfa enroll of {name} failed")
    return phone


def mfa_story(info: dict[str, Any], config: Path) -> Authenticator:
    """alice enrolls TOTP (the demo plays her authenticator), a code works once, then not."""
    phone = enroll(info, config, "alice")
    code = phone.code()
    as_user(info, config, "alice", "mfa", "verify", stdin=code)
    if "already used" not in as_user(info, config, "alice", "mfa", "verify", stdin=code):
        sys.exit("demo: a replayed code was not refused")
    as_user(info, config, "alice", "mfa", "status")
    return phone


def ssh_as(info: dict[str, Any], name: str, node: str, command: str) -> str:
    address = next(n["address"] for n in info["nodes"] if n["name"] == node)
    print(f"$ ssh {name}@{node} {command!r}", flush=True)
    result = subprocess.run(
        [
            "ssh",
            "-i",
            info["users"][name]["ssh_key"],
            "-o",
            f"UserKnownHostsFile={info['broker']['known_hosts']}",
            "-o",
            "BatchMode=yes",
            f"{name}@{address}",
            command,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    sys.stdout.write(result.stdout + result.stderr)
    return result.stdout


def elevation_story(info: dict[str, Any], config: Path, alice: Authenticator) -> None:
    """bob is refused with the rule; alice asks, frank approves, alice is root on gpu01 only,
    until the grant is revoked."""
    import json
    import re

    as_user(info, config, "bob", "elevate", "gpu01", "--for", "30m", "--reason", "curious")
    frank = enroll(info, config, "frank")
    asked = as_user(
        info,
        config,
        "alice",
        "elevate",
        "gpu01",
        "--for",
        "30m",
        "--reason",
        "INC-4711 replace NVLink switch",
        stdin=alice.code(),
    )
    found = re.search(r"request (r[0-9a-f]{16})", asked)
    if not found:
        sys.exit("demo: alice's elevation did not open a request")
    as_user(info, config, "frank", "requests", "list")
    approved = as_user(info, config, "frank", "approve", found.group(1), stdin=frank.code())
    grant = re.search(r"grant (g[0-9a-f]{16})", approved)
    if not grant:
        sys.exit("demo: the approval did not issue a grant")
    if ssh_as(info, "alice", "gpu01", "sudo -n id -u").strip() != "0":
        sys.exit("demo: alice is not root on gpu01")
    drop_in = Path(next(n["dir"] for n in info["nodes"] if n["name"] == "gpu01"))
    print(f"$ cat /etc/sudoers.d/broker_{grant.group(1)}   (on gpu01)")
    print((drop_in / f"etc/sudoers.d/broker_{grant.group(1)}").read_text())
    ssh_as(info, "alice", "gpu02", "sudo -n id -u")  # login-gated: refused
    broker(config, "grants", "list", "--active")
    broker(config, "revoke", grant.group(1), "--reason", "INC-4711 done")
    if ssh_as(info, "alice", "gpu01", "sudo -n id -u").strip() == "0":
        sys.exit("demo: the revoked grant still works")
    shown = json.loads(broker(config, "grants", "show", grant.group(1), "--json"))
    print(f"grant {shown['id']}: {shown['state']} ({shown['end_reason']})")


def main() -> None:
    lab = load_lab()
    root = Path(os.environ.get("BROKER_LAB_ROOT", "/var/lib/broker-lab"))
    step("lab")
    info = lab.status(root) if (root / "lab.json").exists() else None
    if not info or not info.get("up"):
        lab.up(root=root)
    info = lab.load_info(root)
    config = Path(info["broker"]["config"])
    state_dir = Path(info["broker"]["state_dir"])
    print(
        f"DC {info['dc']['host']} ({info['dc']['address']}), realm {info['realm']}, "
        f"{len(info['nodes'])} nodes; broker config {config}"
    )
    step("broker init: state directory, audit signing key, SSH key, schema")
    broker(config, "init")
    step("Active Directory over LDAPS, SASL GSSAPI with the broker's keytab (no password)")
    broker(config, "directory", "ping")
    step("directory sync: users, nested groups, account state, POSIX ids into the snapshot")
    broker(config, "sync")
    broker(config, "sync")
    step("policy as code: check, plan, apply the lab policy")
    policy = str(HERE / "policy.toml")
    broker(config, "policy", "check", policy)
    broker(config, "policy", "plan", policy)
    broker(config, "policy", "apply", policy)
    step("accounts: nested groups, state, roles and where each may elevate")
    broker(config, "accounts", "show", "alice")
    broker(config, "accounts", "list", "--disabled")
    broker(config, "policy", "explain", "alice", "gpu01")
    broker(config, "policy", "explain", "dora", "gpu01", expect=1)
    step("the daemon knows callers by uid (SO_PEERCRED); alice is an AD user, not an operator")
    as_user(info, config, "alice", "whoami")
    if "not a broker operator" not in as_user(info, config, "alice", "accounts", "list"):
        sys.exit("demo: alice was not refused an operator command")
    step("MFA: alice enrolls a TOTP authenticator; a code is accepted once, never twice")
    phone = mfa_story(info, config)
    step("elevation: refusal with its rule, request, approval, root on one node, revoke")
    elevation_story(info, config, phone)
    step("AC-2 account review (the lab keeps some findings on purpose)")
    broker(config, "accounts", "review", expect=1)
    step("every node over SSH with pinned host keys")
    names = ",".join(n["name"] for n in info["nodes"])
    broker(config, "node", "ping", names)
    step("audit chain written and verified")
    broker(config, "audit", "tail", "-n", "5")
    broker(config, "audit", "verify")
    step("tampering is detected: newest event deleted from a copy of the store")
    tamper_copy(config, state_dir)
    print(
        "\ndemo: all steps behaved as expected. The lab is still up; `deploy/lab/lab down` removes it."
    )


if __name__ == "__main__":
    main()
