"""A stale directory snapshot fails closed in the lab (issue 20 item 1).

The lab's own daemon runs with `directory.max_snapshot_age = "75s"` for this module,
the DC stops answering (its processes are stopped: to a client that is what dropped
ports look like, a connection that never gets an answer), and once the last good sync
is older than that, elevation is refused with exit 3 and one line naming the DC, the
age and why the last sync failed, while an operator's revoke still works.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import run_broker
from tests.lab.conftest import cli, config_of

pytestmark = pytest.mark.lab

MAX_AGE_S = 75


@pytest.fixture
def short_max_age(lab: dict[str, Any], lab_module: ModuleType) -> Iterator[Path]:
    """The lab's daemon with a 75 s limit; the lab's own limit and daemon afterwards."""
    config = config_of(lab)
    text = config.read_text()
    needle = f'max_snapshot_age = "{lab_module.LAB_SNAPSHOT_AGE}"'
    assert needle in text
    config.write_text(text.replace(needle, f'max_snapshot_age = "{MAX_AGE_S}s"'))
    lab_module.restart_broker(Path(lab["root"]))
    try:
        yield config
    finally:
        config.write_text(text)
        lab_module.restart_broker(Path(lab["root"]))


@contextlib.contextmanager
def silent_dc(lab: dict[str, Any]) -> Iterator[None]:
    """The DC's processes stopped (not killed): connections are accepted by the kernel and
    never answered. Continued afterwards, and the snapshot brought up to date again."""
    pid = lab["dc"]["pid"]
    os.killpg(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(pid, signal.SIGCONT)
        assert run_broker("sync", config=config_of(lab), timeout=120).returncode == 0


def test_a_stale_snapshot_refuses_elevation_and_revoke_still_works(
    lab: dict[str, Any], short_max_age: Path
) -> None:
    synced = run_broker("sync", config=short_max_age)
    assert synced.returncode == 0, synced.stderr
    started = time.monotonic()
    with silent_dc(lab):
        stale_refuses_and_revoke_works(lab, short_max_age, started)


def stale_refuses_and_revoke_works(lab: dict[str, Any], config: Path, started: float) -> None:
    failed = run_broker("sync", config=config, timeout=120)
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert len(failed.stderr.strip().splitlines()) == 1
    assert "ldaps://dc1.hpc.test:636" in failed.stderr

    time.sleep(max(0.0, MAX_AGE_S + 2 - (time.monotonic() - started)))
    refused = cli(lab, "elevate", "gpu01", "--for", "5m", "--reason", "INC-1", user="alice")
    assert refused.returncode == 3, refused.stdout + refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert "the directory snapshot is " in line and " old (last checked against" in line
    assert "ldaps://dc1.hpc.test:636" in line
    assert f"directory.max_snapshot_age is {MAX_AGE_S // 60}m{MAX_AGE_S % 60}s" in line
    assert "last sync failed: " in line

    # Taking access away never waits for AD.
    revoked = cli(lab, "revoke", "--user", "alice", "--reason", "DC down, cut off", "--json")
    assert revoked.returncode == 0, revoked.stdout + revoked.stderr
    assert isinstance(json.loads(revoked.stdout), dict)
