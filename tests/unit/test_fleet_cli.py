"""`broker node` against a real daemon (no nodes): the inventory round trip and exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

from broker.app import App
from broker.config.loader import load_settings
from tests.helpers import run_broker


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_inventory_round_trip_and_exit_codes(daemon: Path) -> None:
    config, port = daemon, closed_port()
    added = run_broker("node", "add", "gpu01", "--address", f"127.0.0.1:{port}", config=config)
    assert added.returncode == 0, added.stderr
    assert f"added gpu01 (127.0.0.1 port {port})" in added.stdout
    again = run_broker("node", "add", "gpu01", "--address", "127.0.0.2", config=config)
    assert again.returncode == 1 and "already in the inventory" in again.stderr
    hostile = run_broker("node", "add", "gpu02", "--address", "a;reboot", config=config)
    assert hostile.returncode == 2 and "bad node address" in hostile.stderr
    bad_name = run_broker("node", "add", "GPU;02", "--address", "127.0.0.2", config=config)
    assert bad_name.returncode == 1, bad_name.stderr

    listed = run_broker("node", "list", "--json", config=config)
    records = json.loads(listed.stdout)
    assert [(r["name"], r["address"], r["port"], r["fingerprint"]) for r in records] == [
        ("gpu01", "127.0.0.1", port, None)
    ]
    assert "broker node enroll gpu01" in records[0]["problem"]

    # Not pinned: nothing goes to the node; the refusal names it and the fix.
    for command in (["status", "gpu01"], ["ping", "gpu01"], ["bootstrap", "gpu01"]):
        refused = run_broker("node", *command, config=config)
        assert refused.returncode == 1, (command, refused.stderr)
    status = run_broker("node", "status", "gpu01", config=config)
    assert "host key not pinned yet: gpu01" in status.stderr
    everyone = run_broker("node", "status", "--json", config=config)
    assert everyone.returncode == 0 and json.loads(everyone.stdout) == []  # none enrolled

    fingerprint = "SHA256:" + "A" * 43
    enroll = run_broker("node", "enroll", "gpu01", "--fingerprint", fingerprint, config=config)
    assert enroll.returncode == 3 and f"127.0.0.1:{port}" in enroll.stderr
    md5 = run_broker("node", "enroll", "gpu01", "--fingerprint", "MD5:aa:bb", config=config)
    assert md5.returncode == 2 and "SHA256" in md5.stderr

    removed = run_broker("node", "remove", "gpu01", config=config)
    assert removed.returncode == 0 and "removed gpu01" in removed.stdout
    assert json.loads(run_broker("node", "list", "--json", config=config).stdout) == []

    app = App(load_settings(config))
    try:
        rows = app.ready_store().conn.execute(
            "SELECT action, actor FROM audit_events WHERE action LIKE 'node.%' ORDER BY seq"
        )
        assert [r[0] for r in rows] == ["node.add", "node.remove"]
    finally:
        app.close()
