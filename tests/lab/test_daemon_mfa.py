"""The lab's daemon: callers known by uid (SO_PEERCRED) or Kerberos, and TOTP MFA end to end.

The daemon runs in its own namespace whose /etc/passwd holds the lab's AD users,
as on a cluster host; tests call it as those users with setpriv.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pyotp
import pytest

from tests.helpers import BROKER, run_broker
from tests.lab.conftest import as_user, cli, config_of, store_bytes

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def synced(lab: dict[str, Any]) -> dict[str, Any]:
    result = run_broker("sync", "--full", config=config_of(lab))
    assert result.returncode == 0, result.stderr
    reset = run_broker("mfa", "reset", "alice", "--yes", config=config_of(lab))
    assert reset.returncode == 0, reset.stderr
    return lab


@pytest.fixture
def kerberos_alice(synced: dict[str, Any], tmp_path: Path) -> Iterator[dict[str, str]]:
    """A ticket for alice@HPC.TEST in a private ccache, as `kinit` would leave it."""
    env = {"KRB5_CONFIG": synced["krb5_conf"], "KRB5CCNAME": f"FILE:{tmp_path / 'alice.cc'}"}
    passwords = json.loads((Path(synced["root"]) / "dc" / "users.json").read_text())
    subprocess.run(
        ["kinit", "alice@HPC.TEST"],
        input=passwords["alice"] + "\n",
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    yield env
    subprocess.run(["kdestroy"], env={**os.environ, **env}, capture_output=True, check=False)


def over_tls(lab: dict[str, Any]) -> list[str]:
    return ["--broker", lab["broker"]["url"], "--ca-file", lab["dc"]["ca_file"]]


def test_callers_are_known_by_uid_and_checked_against_the_directory(
    synced: dict[str, Any],
) -> None:
    alice = cli(synced, "whoami", "--json", user="alice")
    assert alice.returncode == 0, alice.stderr
    data = json.loads(alice.stdout)
    assert data["actor"] == "unix:alice"
    assert data["account"] == "alice"
    assert data["sid"].startswith("S-1-5-21-")
    assert data["operator"] is False
    dora = json.loads(cli(synced, "whoami", "--json", user="dora").stdout)
    assert dora["directory_user"] is False
    assert dora["problem"] == "the account dora is disabled"
    refused = cli(synced, "mfa", "enroll", user="dora")
    assert refused.returncode == 1
    assert refused.stderr.strip().startswith(
        "broker: error: dora is not a usable directory account: the account dora is disabled"
    )
    mine = cli(synced, "accounts", "show", "alice", "--json", user="alice")
    assert mine.returncode == 0 and json.loads(mine.stdout)["name"] == "alice"
    other = cli(synced, "accounts", "show", "bob", user="alice")
    assert other.returncode == 1
    assert "alice may only look at their own account" in other.stderr
    admin = cli(synced, "accounts", "list", user="alice")
    assert admin.returncode == 1
    assert "alice is not a broker operator" in admin.stderr


def test_kerberos_over_tls_identifies_the_principal(
    synced: dict[str, Any], kerberos_alice: dict[str, str]
) -> None:
    who = cli(synced, *over_tls(synced), "whoami", "--json", env=kerberos_alice)
    assert who.returncode == 0, who.stderr
    data = json.loads(who.stdout)
    assert data["actor"] == "krb:alice@HPC.TEST"
    assert data["account"] == "alice"
    assert data["operator"] is False
    admin = cli(synced, *over_tls(synced), "db", "status", env=kerberos_alice)
    assert admin.returncode == 1
    assert "alice@HPC.TEST is not a broker operator" in admin.stderr


def test_tls_listener_without_a_ticket_or_with_an_unknown_ca_is_unavailable(
    synced: dict[str, Any], tmp_path: Path
) -> None:
    no_ticket = {"KRB5_CONFIG": synced["krb5_conf"], "KRB5CCNAME": f"FILE:{tmp_path / 'none'}"}
    result = cli(synced, *over_tls(synced), "whoami", env=no_ticket)
    assert result.returncode == 3
    assert len(result.stderr.strip().splitlines()) == 1
    assert "run `kinit` first" in result.stderr
    raw = subprocess.run(
        ["curl", "-s", "--cacert", synced["dc"]["ca_file"], f"{synced['broker']['url']}/v1/whoami"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert json.loads(raw.stdout)["error"]["kind"] == "unauthorized"


def _enroll(lab: dict[str, Any], user: str) -> tuple[str, list[str], int]:
    """Run `broker mfa enroll` as USER, answering the prompt from the QR's otpauth URI."""
    env = {k: v for k, v in os.environ.items() if k != "BROKER_CONFIG"}
    env.update({"COLUMNS": "200", "PYTHONUNBUFFERED": "1"})
    proc = subprocess.Popen(
        [*as_user(lab, user), BROKER, "--config", str(config_of(lab)), "mfa", "enroll"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    uri = None
    shown = []
    for line in proc.stdout:
        shown.append(line)
        found = re.search(r"(otpauth://totp/\S+)", line)
        if found:
            uri = found.group(1)
            break
    assert uri is not None, "".join(shown)
    assert any("\u2580" in line or "\u2584" in line or "\u2588" in line for line in shown)
    totp = pyotp.parse_uri(uri)
    assert isinstance(totp, pyotp.TOTP)
    now_step = int(time.time()) // 30
    out, err = proc.communicate(totp.at(now_step * 30) + "\n", timeout=60)
    assert proc.returncode == 0, err
    codes = re.findall(r"^\s+([a-z0-9]{4}-[a-z0-9]{4}-[a-z0-9]{4})$", out, flags=re.M)
    return totp.secret, codes, now_step


def test_mfa_enroll_verify_replay_recovery_lockout_and_reset(
    synced: dict[str, Any], kerberos_alice: dict[str, str], lab_module: ModuleType
) -> None:
    secret, recovery, step = _enroll(synced, "alice")
    assert len(recovery) == 10 and len(set(recovery)) == 10
    totp = pyotp.TOTP(secret)
    db = store_bytes(synced)
    assert secret.encode() not in db  # encrypted at rest
    assert not any(code.encode() in db for code in recovery)  # stored hashed

    # Enrolled: a second enroll is refused instead of replacing the factor.
    again = cli(synced, "mfa", "enroll", user="alice")
    assert again.returncode == 1
    assert "already enrolled" in again.stderr

    # The next step's code works once (window +-1); the same code again is a replay.
    code = totp.at((step + 1) * 30)
    assert cli(synced, "mfa", "verify", user="alice", stdin=code + "\n").returncode == 0
    replay = cli(synced, "mfa", "verify", user="alice", stdin=code + "\n")
    assert replay.returncode == 1
    assert "already used" in replay.stderr
    # ... also after the daemon restarts: accepted steps live in the store.
    lab_module.restart_broker(Path(synced["root"]))
    replay = cli(synced, "mfa", "verify", user="alice", stdin=code + "\n")
    assert replay.returncode == 1 and "already used" in replay.stderr  # failure 2

    # Full-width digits are not six ASCII digits: refused, never normalised.
    wide = cli(
        synced, "mfa", "verify", user="alice", stdin="\uff11\uff12\uff13\uff14\uff15\uff16\n"
    )
    assert wide.returncode == 1 and "exactly six digits" in wide.stderr  # failure 3

    # A recovery code works once.
    used = cli(synced, "mfa", "verify", "--recovery", user="alice", stdin=recovery[0] + "\n")
    assert used.returncode == 0, used.stderr
    assert "9 left" in used.stdout
    reused = cli(synced, "mfa", "verify", "--recovery", user="alice", stdin=recovery[0] + "\n")
    assert reused.returncode == 1  # failure 4

    # Failures count per objectSid: the Kerberos principal shares alice's counter.
    valid = {totp.at((step + d) * 30) for d in range(-2, 4)}
    wrong = next(f"{n:06d}" for n in range(1000, 2000) if f"{n:06d}" not in valid)
    krb = cli(synced, *over_tls(synced), "mfa", "verify", stdin=wrong + "\n", env=kerberos_alice)
    assert krb.returncode == 1 and "wrong code" in krb.stderr  # failure 5 -> locked
    locked = cli(synced, "mfa", "verify", "--recovery", user="alice", stdin=recovery[1] + "\n")
    assert locked.returncode == 1
    assert "locked until" in locked.stderr

    # Operators see the same lock whatever the name form.
    forms = ["HPC\\alice", "Alice", "alice@HPC.TEST"]
    states = [
        json.loads(run_broker("mfa", "status", f, "--json", config=config_of(synced)).stdout)
        for f in forms
    ]
    assert all(s["locked_until"] == states[0]["locked_until"] is not None for s in states)
    assert states[0]["recent_failures"] >= 5
    assert states[0]["recovery_codes_left"] == 9

    events = run_broker(
        "audit", "tail", "-n", "30", "--action", "mfa.*", "--json", config=config_of(synced)
    )
    actions = [(e["action"], e["outcome"], e["actor"]) for e in json.loads(events.stdout)]
    assert ("mfa.lock", "ok", "krb:alice@HPC.TEST") in actions
    assert ("mfa.verify", "refused", "krb:alice@HPC.TEST") in actions
    assert secret not in events.stdout and code not in events.stdout

    # alice cannot reset herself; root can, and it is audited.
    assert cli(synced, "mfa", "reset", "alice", "--yes", user="alice").returncode == 1
    reset = run_broker("mfa", "reset", "alice@HPC.TEST", "--yes", config=config_of(synced))
    assert reset.returncode == 0, reset.stderr
    after = json.loads(
        run_broker("mfa", "status", "alice", "--json", config=config_of(synced)).stdout
    )
    assert after["enrolled"] is False and after["locked_until"] is None
    # (the newest reset: the detector may write its own response events meanwhile)
    tail = json.loads(
        run_broker(
            "audit", "tail", "--action", "mfa.reset", "-n", "1", "--json",
            config=config_of(synced),
        ).stdout
    )  # fmt: skip
    assert tail[0]["action"] == "mfa.reset" and tail[0]["actor"] == "unix:root"


def test_a_server_that_cannot_answer_kerberos_is_not_believed(
    synced: dict[str, Any], kerberos_alice: dict[str, str]
) -> None:
    """An impostor with a certificate the client trusts (here the broker's own, as a stolen
    one would be) but without the HTTP/ key cannot complete mutual authentication."""
    import http.server
    import ssl
    import threading

    class Impostor(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"actor": "unix:root", "operator": True}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    ca = Path(synced["dc"]["ca_file"]).parent
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(ca / "broker.pem"), str(ca / "broker.key"))
    server = http.server.HTTPServer(("127.0.0.11", 8444), Impostor)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = cli(
            synced,
            "--broker",
            "https://broker.hpc.test:8444",
            "--ca-file",
            synced["dc"]["ca_file"],
            "whoami",
            "--json",
            env=kerberos_alice,
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert result.returncode == 3
    assert result.stdout == ""
    assert "did not prove it is the broker" in result.stderr
