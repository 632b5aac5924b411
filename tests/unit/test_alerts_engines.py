"""Alerts read back on both engines (issue 24): the lab on PostgreSQL showed every alert's
user as the database role, because an unquoted `user` in a select list is PostgreSQL's
CURRENT_USER. Each test runs on SQLite and on a throwaway PostgreSQL database."""

from __future__ import annotations

import time
from pathlib import Path

from broker.app import App
from broker.config.loader import load_settings
from broker.core.timeutil import utcnow
from broker.detect import alerts
from broker.detect.engine import Finding
from tests.helpers import write_config


def test_an_alert_reads_back_with_its_own_user(tmp_path: Path, engine_url: str | None) -> None:
    store = f'\n[store]\nurl = "{engine_url}"\n' if engine_url else ""
    app = App(load_settings(write_config(tmp_path, store)))
    try:
        app.setup().init("unix:test")
        finding = Finding(
            "drop-in-tampered", "high", ("alert",), "grant g1 on gpu01: changed", time.time(),
            "audit:1", user="alice", node="gpu01", grant_id="g1",
        )  # fmt: skip
        with app.ready_store().transaction() as conn:
            made = alerts.raise_alert(conn, finding, utcnow())
        with app.ready_store().transaction() as conn:
            listed = alerts.alerts(conn)
            one = alerts.alert(conn, made)
        assert [(a.user, a.node, a.grant_id) for a in listed] == [("alice", "gpu01", "g1")]
        assert one.user == "alice" and one.rule == "drop-in-tampered"
    finally:
        app.close()
