"""Elevation fails closed on an old directory snapshot (issue 20): the last successful sync
bounds how long AD membership may be believed; revoking still works."""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from broker.app import App
from broker.config.loader import load_settings
from broker.core.errors import UnavailableError
from broker.core.timeutil import utcnow
from broker.daemon.api import grants as grants_api
from broker.daemon.caller import Caller
from broker.daemon.routing import Context
from broker.directory.snapshot import SyncState, save_state
from broker.wire.grants import PlanOut
from tests.helpers import run_broker, serving, write_config
from tests.unit.policy_samples import LAB_POLICY
from tests.unit.test_grants_service import World
from tests.unit.test_policy_cli import seed_directory

DC = "ldaps://dc1.hpc.test:636"


def directory_section(tmp: Path, extra: str = "") -> str:
    password = tmp / "directory.pass"
    password.write_text("secret\n")
    password.chmod(0o600)
    return (
        f'\n[directory]\nuris = ["{DC}"]\nbase_dn = "DC=hpc,DC=test"\n'
        f'ca_file = "{tmp / "ca.pem"}"\nauth = "simple"\n'
        f'bind_dn = "CN=svc-broker,DC=hpc,DC=test"\npassword_file = "{password}"\n{extra}'
    )


@pytest.fixture
def ad_config() -> Iterator[Path]:
    """An initialised broker with a [directory] section and the lab's people (a short path:
    the daemon's socket lives under it)."""
    path = Path(tempfile.mkdtemp(prefix="broker-freshness-test-", dir="/tmp"))
    path.chmod(0o755)
    config = write_config(path, directory_section(path))
    config.chmod(0o644)
    result = run_broker("init", config=config)
    assert result.returncode == 0, result.stderr
    seed_directory(config)
    yield config
    shutil.rmtree(path)


@pytest.fixture
def app(ad_config: Path, tmp_path: Path) -> Iterator[App]:
    app = App(load_settings(ad_config))
    app.policy().apply(LAB_POLICY, "policy.toml", "unix:root")
    World(app, tmp_path)  # gpu01 and gpu02 enrolled, pinned and ready
    yield app
    app.close()


def synced(app: App, ago: timedelta) -> None:
    """Record a successful sync `ago` before now, as `broker sync` would."""
    at = utcnow() - ago
    with app.ready_store().transaction() as conn:
        save_state(conn, SyncState(DC, "DC1", 100, "S-1-5-21-1-2-3", None, at, at, at))


def preview(app: App, name: str) -> PlanOut:
    account = app.directory().snapshot().account(name)
    assert account is not None
    caller = Caller(f"unix:{name}", name, account.uid, None, account, False, None)
    params = grants_api.ElevateIn.model_validate({"nodes": "gpu01", "role": "node-diag"})
    plan: PlanOut = grants_api.preview(Context(caller, app, params, utcnow()))
    return plan


def test_a_fresh_snapshot_elevates(app: App) -> None:
    synced(app, timedelta(minutes=2))
    plan = preview(app, "alice")
    assert plan.user == "alice" and plan.role == "node-diag"


def test_a_stale_snapshot_refuses_elevation_naming_the_dc_and_its_age(app: App) -> None:
    synced(app, timedelta(minutes=20, seconds=5))
    with pytest.raises(UnavailableError) as caught:
        preview(app, "alice")
    line = caught.value.one_line()
    assert caught.value.exit_code == 3
    assert re.match(r"the directory snapshot is 20m[0-9]+s old \(last checked against ", line)
    assert DC in line
    assert "directory.max_snapshot_age is 15m" in line and "run `broker sync`" in line


def test_a_failed_sync_is_named_in_the_refusal(app: App) -> None:
    synced(app, timedelta(hours=1))
    with pytest.raises(UnavailableError):  # the CA file does not exist: the sync fails
        app.directory().sync("unix:root")
    with pytest.raises(UnavailableError, match="last sync failed: ") as caught:
        preview(app, "alice")
    assert "1h old" in caught.value.one_line()


def test_never_synced_refuses(app: App) -> None:
    with pytest.raises(UnavailableError, match="the directory has never been synced"):
        preview(app, "alice")


def test_approval_is_refused_on_a_stale_snapshot(app: App) -> None:
    synced(app, timedelta(minutes=16))
    dave = app.directory().snapshot().account("dave")
    assert dave is not None
    caller = Caller("unix:dave", "dave", dave.uid, None, dave, False, None)
    params = grants_api.ApproveIn.model_validate({"id": "r" + "0" * 16, "code": "123456"})
    with pytest.raises(UnavailableError, match=r"the directory snapshot is 16m[0-9]*s? old"):
        grants_api.approve(Context(caller, app, params, utcnow()))


def test_through_the_daemon_pushing_exits_3_and_revoke_still_works(
    ad_config: Path, app: App
) -> None:
    synced(app, timedelta(minutes=30))
    with serving(ad_config):
        pushed = run_broker("grants", "retry", "g" + "0" * 16, config=ad_config)
        revoked = run_broker("revoke", "--user", "alice", "--reason", "left", config=ad_config)
    assert pushed.returncode == 3, pushed.stdout + pushed.stderr
    (line,) = pushed.stderr.strip().splitlines()
    assert re.search(r"error: the directory snapshot is 30m[0-9]*s? old \(last checked", line)
    assert DC in line
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr


@pytest.mark.parametrize("age", ["30s", "1m", "5s"])
def test_max_snapshot_age_must_outlast_a_sync(tmp_path: Path, age: str) -> None:
    extra = f'timeout = "10s"\nmax_snapshot_age = "{age}"\n'
    config = write_config(tmp_path, directory_section(tmp_path, extra))
    result = run_broker("config", "check", config=config)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "max_snapshot_age must be longer than 1m" in result.stderr
