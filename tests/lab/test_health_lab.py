"""Health and metrics of the lab's daemon: ok on a working lab, the lab's nodes and grants
in /metrics, and a stopped log server named by `broker health` (exit 3) until it is back."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import run_broker
from tests.lab.conftest import Codes, cli, config_of

pytestmark = pytest.mark.lab


def scrape(lab_module: ModuleType) -> dict[str, float]:
    url = f"http://{lab_module.BROKER_ADDR}:{lab_module.METRICS_PORT}/metrics"
    with urllib.request.urlopen(url, timeout=20) as answer:
        text = answer.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            label = ",".join(sample.labels.values())
            found[f"{sample.name}{{{label}}}" if label else sample.name] = sample.value
    return found


@pytest.fixture(scope="module")
def granted(lab: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """alice holds a grant on gpu01, approved by frank; revoked afterwards."""
    assert run_broker("sync", "--full", config=config_of(lab)).returncode == 0
    codes = Codes()
    for user in ("alice", "frank"):
        codes.enroll(lab, user)
    assert cli(lab, "revoke", "--user", "alice", "--reason", "clean slate").returncode == 0
    asked = cli(
        lab, "elevate", "gpu01", "--for", "30m", "--reason", "INC-9464 metrics",
        "--json", user="alice", stdin=codes.code("alice"),
    )  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    request = json.loads(asked.stdout)["request"]
    approved = cli(lab, "approve", request["id"], "--json", user="frank", stdin=codes.code("frank"))
    assert approved.returncode == 0, approved.stderr
    grant = json.loads(approved.stdout)["grant"]
    yield grant
    assert cli(lab, "revoke", grant["id"], "--reason", "end of the metrics test").returncode == 0


def test_health_is_ok_and_metrics_show_the_labs_nodes_and_grants(
    lab: dict[str, Any], lab_module: ModuleType, granted: dict[str, Any]
) -> None:
    health = cli(lab, "health", "--json")
    assert health.returncode == 0, health.stdout + health.stderr
    body = json.loads(health.stdout)
    checks = {c["name"]: c for c in body["checks"]}
    for name in ("store", "directory", "logserver", "logserver-tunnel", "broker-indexer"):
        assert checks[name]["ok"] and not checks[name]["skipped"], checks[name]
    found = scrape(lab_module)
    assert found["broker_nodes_enrolled"] == len(lab["nodes"])
    assert found["broker_grants_active"] >= 1
    assert found["broker_grant_pushes_failed"] == 0
    assert found["broker_healthy"] == 1
    assert 0 <= found["broker_directory_sync_age_seconds"] < 600
    assert found["broker_audit_head_seq"] > 0
    assert found["broker_recording_index_lag_seconds"] < 30  # indexes every second


def test_a_stopped_log_server_is_named_until_it_is_back(
    lab: dict[str, Any], lab_module: ModuleType
) -> None:
    root = Path(lab["root"])
    lab_module.stop_logserver(root, "logsrvd")
    try:
        down = cli(lab, "health")
        assert down.returncode == 3, down.stdout + down.stderr
        assert "the broker is degraded: logserver failed" in down.stderr
        assert "sudo_logsrvd does not answer" in down.stdout
        as_user = cli(lab, "health", "--json", user="alice")  # any caller: names, no details
        assert as_user.returncode == 3
        assert json.loads(as_user.stdout)["failed"] == ["logserver"]
        found = scrape(lab_module)
        assert found["broker_health_check_ok{logserver}"] == 0
        assert found["broker_healthy"] == 0
    finally:
        lab_module.restart_logserver(root)
    deadline = time.monotonic() + 30
    while (again := cli(lab, "health")).returncode != 0 and time.monotonic() < deadline:
        time.sleep(1)
    assert again.returncode == 0, again.stdout + again.stderr
