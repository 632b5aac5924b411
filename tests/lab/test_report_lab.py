"""`broker report` against the real lab (issue 22): a day's worth of activity, then each
fact under the right control with the right number, then one tampered audit row making
`broker report verify` fail.

The activity, from a moment T0 on: alice elevates on gpu01 with frank's approval (gpu-root)
and runs a recorded `sudo apt-get install`; a job launch (the `slurm` PAM service) for
alice on gpu01 is refused while she holds root; dave elevates on stor01 without approval
(storage-root) and loses the grant when his AD account expires and the broker syncs;
carol's replayed TOTP code is refused and more wrong codes lock her; kt-web's keytab is
rotated. The report for [T0, now) must show exactly these.

The module fixture `reports` writes report.json and report.html; the page is then loaded in
headless Chromium (tests/report_page.py), and its screenshot is kept beside them (the one in
docs/report-screenshot.png was taken from a run of this test: the path is printed).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import ldap3
import pytest

from broker.core.timeutil import to_text, utcnow
from broker.report.charts import CHART_KEYS
from tests.helpers import run_broker
from tests.lab import keytab_lab
from tests.lab.conftest import ADMIN_DN, Codes, cli, config_of, ssh_argv
from tests.lab.test_pam_hook_lab import Node, pam
from tests.report_page import check_report_page

pytestmark = pytest.mark.lab

FILETIME_EPOCH = 116444736000000000  # 1601-01-01 to 1970-01-01 in 100 ns


def _node(lab: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in lab["nodes"] if n["name"] == name)


def _ok(done: subprocess.CompletedProcess[str]) -> Any:
    """The command's --json answer, once it succeeded."""
    assert done.returncode == 0, done.stderr + done.stdout
    return json.loads(done.stdout)


def _approved_grant(lab: dict[str, Any], codes: Codes) -> dict[str, Any]:
    asked = _ok(cli(lab, "elevate", "gpu01", "--for", "30m", "--reason", "INC-22 audit day",
                    "--json", user="alice", stdin=codes.code("alice")))  # fmt: skip
    request = asked["request"]
    approved = _ok(cli(lab, "approve", request["id"], "--json", user="frank",
                       stdin=codes.code("frank")))  # fmt: skip
    grant: dict[str, Any] = approved["grant"]
    return grant


def _recorded_install(lab: dict[str, Any], grant_id: str) -> None:
    """`sudo apt-get install -s hello` (a simulated install: the node stays as it was),
    recorded and indexed with its digest in the chain."""
    argv = ssh_argv(lab, "alice", _node(lab, "gpu01")["address"],
                    "sudo -n apt-get install -s hello; true")  # fmt: skip
    subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        listed = _ok(cli(lab, "sessions", "list", "--grant", grant_id, "--json"))
        if any(s["sha256"] and "apt-get" in (s["command"] or "") for s in listed):
            return
        time.sleep(1)
    raise AssertionError(f"the recorded apt-get install never got indexed: {listed}")


def _refused_job_launch(lab: dict[str, Any]) -> None:
    """The job launcher's PAM account check for alice on gpu01, refused (workloads=0),
    then collected by the broker as `session.deny` with reason `workloads`."""
    n = _node(lab, "gpu01")
    result = pam(Node("gpu01", int(n["pid"]), Path(n["dir"])), "slurm", "alice", "acct_mgmt")
    assert result.code != 0, result.output
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert cli(lab, "grants", "reap").returncode == 0  # collects the nodes' hook events
        tail = _ok(cli(lab, "audit", "tail", "--action", "session.deny", "--actor",
                       "node:gpu01", "-n", "50", "--json"))  # fmt: skip
        if any(e["details"].get("pid") == result.pid for e in tail):
            return
        time.sleep(1)
    raise AssertionError("the refused job launch was never collected")


def _replay_and_lockout(lab: dict[str, Any], codes: Codes) -> None:
    """carol: one good code, the same code again (replayed), then wrong codes to the lock."""
    code = codes.code("carol")
    assert cli(lab, "mfa", "verify", user="carol", stdin=code).returncode == 0
    replayed = cli(lab, "mfa", "verify", user="carol", stdin=code)
    assert replayed.returncode == 1 and "already used" in replayed.stderr, replayed.stderr
    for _ in range(4):  # failures 2..5: the fifth locks (mfa.max_failures = 5)
        cli(lab, "mfa", "verify", user="carol", stdin="000000\n")
    locked = cli(lab, "mfa", "verify", user="carol", stdin=codes.code("carol"))
    assert locked.returncode == 1 and "locked until" in locked.stderr, locked.stderr


def _rotate_keytab(lab: dict[str, Any], directory: Path) -> None:
    """kt-web rotated once, by the keytab service over the lab's own store (the lab daemon's
    configuration has no [keytabs] section; this adds it, as tests/lab/keytab_lab.py does)."""
    from broker.app import App
    from broker.config.kerberos import use_krb5_conf
    from broker.config.loader import load_settings

    keytab_lab.prepare_ad(lab)
    text = config_of(lab).read_text().split("\n[daemon]\n", 1)[0]
    config = directory / "keytabs.toml"
    config.write_text(f'{text}\n[keytabs]\naccounts_ou = "{keytab_lab.ACCOUNTS_OU}"\n')
    settings = load_settings(config)
    use_krb5_conf(settings.kerberos)
    app = App(settings)
    try:
        keytab_lab.install_node_side(app, ["gpu01", "gpu02", "stor01"])
        report = app.keytabs().create("kt-web", actor="test", create_account=True)
        assert report.outcome == "rotated", report
    finally:
        app.close()


@contextlib.contextmanager
def _expired(admin: ldap3.Connection, lab: dict[str, Any], user: str) -> Iterator[None]:
    """USER's AD account expired yesterday, restored afterwards."""
    dn = f"CN={user},OU=People,OU=Cluster,{lab['base_dn']}"
    admin.search(dn, "(objectClass=user)", ldap3.BASE, attributes=["accountExpires"])
    raw = admin.entries[0]["accountExpires"].raw_values
    original = raw[0].decode("ascii") if raw else "0"
    yesterday = FILETIME_EPOCH + int(time.time() - 86400) * 10**7
    admin.modify(dn, {"accountExpires": [(ldap3.MODIFY_REPLACE, [str(yesterday)])]})
    try:
        yield
    finally:
        admin.modify(dn, {"accountExpires": [(ldap3.MODIFY_REPLACE, [original])]})


@pytest.fixture(scope="module")
def day(lab: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """The day's activity (module doc); what it made, and T0."""
    assert run_broker("sync", "--full", config=config_of(lab)).returncode == 0
    codes = Codes()
    for user in ("alice", "frank", "dave", "carol"):
        codes.enroll(lab, user)
    for user in ("alice", "dave"):
        cli(lab, "revoke", "--user", user, "--reason", "clean slate for the report")
    t0 = utcnow() - timedelta(seconds=1)
    alice = _approved_grant(lab, codes)
    _recorded_install(lab, alice["id"])
    _refused_job_launch(lab)
    dave = _ok(cli(lab, "elevate", "stor01", "--for", "30m", "--reason", "INC-22 disks",
                   "--json", user="dave", stdin=codes.code("dave")))["grant"]  # fmt: skip
    _replay_and_lockout(lab, codes)
    _rotate_keytab(lab, tmp_path_factory.mktemp("report-keytab"))
    directory = tmp_path_factory.mktemp("report")
    yield {"lab": lab, "t0": t0, "alice": alice, "dave": dave, "codes": codes, "dir": directory}
    cli(lab, "revoke", "--user", "alice", "--reason", "end of the report test")
    for user in ("carol", "dave", "alice", "frank"):
        cli(lab, "mfa", "reset", user, "--yes")


@pytest.fixture(scope="module")
def reports(day: dict[str, Any], lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """dave's account expires and the sync ends his grant; then the report as JSON (and
    HTML) in the module's directory (the path is printed)."""
    password = Path(lab["dc"]["admin_password_file"]).read_text().strip()
    tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=lab["dc"]["ca_file"])
    server = ldap3.Server(lab["dc"]["host"], port=636, use_ssl=True, tls=tls)
    admin = ldap3.Connection(server, ADMIN_DN, password, auto_bind=True, raise_exceptions=True)
    try:
        with _expired(admin, lab, "dave"):
            synced = _ok(cli(lab, "sync", "--json"))
            assert synced["revoked"] == [day["dave"]["id"]], synced
        assert cli(lab, "sync").returncode == 0
    finally:
        admin.unbind()
    out = day["dir"]
    args = ["report", "controls", "--since", to_text(day["t0"]), "--json"]
    made = cli(lab, *args, "--html", str(out / "report.html"))
    assert made.returncode == 0, made.stderr
    (out / "report.json").write_text(made.stdout)
    print(f"\nreport files: {out}/report.json {out}/report.html")
    yield {"doc": json.loads(made.stdout), "dir": out}


def figures(doc: dict[str, Any], control_id: str) -> dict[str, Any]:
    (entry,) = [c for c in doc["controls"] if c["id"] == control_id]
    return {e["label"].strip(): e["value"] for e in entry["evidence"]}


def test_each_fact_of_the_day_is_under_its_control(
    day: dict[str, Any], reports: dict[str, Any]
) -> None:
    doc = reports["doc"]
    assert doc["period"]["since"] == to_text(day["t0"]) and doc["zone"] is None
    ac2 = figures(doc, "AC-2")
    assert ac2["grants ended because AD or the policy no longer allowed them"] == 1
    assert ac2["user.state"] == 2  # dave's expiry and its undoing, read from AD
    assert isinstance(ac2["slowest end after the AD change (s)"], float)
    ac22 = figures(doc, "AC-2(2)")
    assert ac22["earlier (revoked)"] == 1 and ac22["grants that outlived their time box"] == 0
    ac6 = figures(doc, "AC-6")
    assert (ac6["grants issued"], ac6["root (every command)"], ac6["after approval"]) == (2, 2, 1)
    assert ac6["job launches refused while elevated"] == 1
    cm11 = figures(doc, "CM-11")
    assert cm11["software installs seen in recorded sessions"] == 1
    assert cm11["grants under which software was installed"] == 1
    (cm,) = [c for c in doc["controls"] if c["id"] == "CM-11"]
    assert cm["details"]["per_grant"][0]["grant"] == day["alice"]["id"]
    ia2 = figures(doc, "IA-2(1)")
    assert (ia2["elevations without approval"], ia2["approvals"]) == (1, 1)
    assert ia2["elevation requests (waiting for approval)"] == 1
    assert ia2["of them without a fresh TOTP code"] == 0
    ia28 = figures(doc, "IA-2(8)")
    assert (ia28["replayed codes refused"], ia28["lockouts"]) == (1, 1)
    assert ia28["attempts refused while locked"] == 1
    assert figures(doc, "IA-5")["keytab rotations done"] == 1
    au10 = figures(doc, "AU-10")
    assert au10["finished recordings in the period"] >= 1
    assert (
        au10["recordings whose SHA-256 is in the audit chain"]
        == au10["finished recordings in the period"]
    )
    assert figures(doc, "AU-9(3)")["chain verified up to seq"] == doc["audit_head"]["seq"]


def test_the_lab_report_page_loads_in_chromium(reports: dict[str, Any]) -> None:
    """The page of the real report: no console errors, no fetches, the five charts drawn
    from the day's data, a badge per control, the embedded document the signed one."""
    page = reports["dir"] / "report.html"
    seen = check_report_page(page, reports["doc"])
    drawn = {c["key"] for c in seen.probe["charts"] if c["empty"] != "true"}
    assert drawn == set(CHART_KEYS), drawn  # the day had elevations, an approval, sessions,
    # MFA failures and a keytab rotation: every chart has something to draw
    shot = reports["dir"] / "report-screenshot.png"
    shot.write_bytes(seen.screenshot)
    print(f"\nscreenshot: {shot}")


def test_verify_holds_and_one_tampered_row_breaks_it(
    lab: dict[str, Any], day: dict[str, Any], reports: dict[str, Any]
) -> None:
    path = reports["dir"] / "report.json"
    ok = cli(lab, "report", "verify", str(path))
    assert ok.returncode == 0, ok.stderr
    assert f"audit head seq {reports['doc']['audit_head']['seq']}" in ok.stdout
    assert cli(lab, "report", "verify", str(reports["dir"] / "report.html")).returncode == 0
    db = Path(lab["broker"]["state_dir"]) / "broker.db"
    target = day["dave"]["id"]
    with contextlib.closing(sqlite3.connect(db)) as conn:
        conn.execute("DROP TRIGGER IF EXISTS audit_events_no_update")
        (seq, reason) = conn.execute(
            "SELECT seq, details FROM audit_events WHERE action = 'grant.issue' AND target = ?",
            (target,),
        ).fetchone()
        conn.execute(
            "UPDATE audit_events SET details = ? WHERE seq = ?",
            (reason.replace("INC-22 disks", "INC-22 nothing"), seq),
        )
        conn.commit()
    try:
        bad = cli(lab, "report", "verify", str(path))
        assert bad.returncode == 1, bad.stdout + bad.stderr
        assert "(chain)" in bad.stderr and f"seq {seq}" in bad.stderr, bad.stderr
        assert len(bad.stderr.strip().splitlines()) == 1
    finally:
        with contextlib.closing(sqlite3.connect(db)) as conn:
            conn.execute("UPDATE audit_events SET details = ? WHERE seq = ?", (reason, seq))
            conn.execute(
                "CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events"
                " BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END"
            )
            conn.commit()
    assert cli(lab, "report", "verify", str(path)).returncode == 0
