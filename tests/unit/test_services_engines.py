"""Services on both engines, for what the HA lab (issue 24) found broken on PostgreSQL:
every alert's user read back as the database role (an unquoted `user` in a select list is
PostgreSQL's CURRENT_USER), and the session indexer failed on every recording (the text
index's key left NULL). Each test runs on SQLite and on a throwaway PostgreSQL database."""

from __future__ import annotations

import time
from pathlib import Path

from broker.app import App
from broker.config.loader import load_settings
from broker.core.timeutil import utcnow
from broker.detect import alerts
from broker.detect.engine import Finding
from broker.sessions import rows
from tests.helpers import write_config


def make_app(tmp_path: Path, engine_url: str | None) -> App:
    store = f'\n[store]\nurl = "{engine_url}"\n' if engine_url else ""
    return App(load_settings(write_config(tmp_path, store)))


def test_a_recordings_text_goes_into_the_index_and_is_replaced(
    tmp_path: Path, engine_url: str | None
) -> None:
    app = make_app(tmp_path, engine_url)
    try:
        app.setup().init("unix:test")
        with app.ready_store().transaction() as conn:
            rows.put_text(conn, "00000A", "sudo ls /root", "ls /root\n", partial=True)
        with app.ready_store().transaction() as conn:
            rows.put_text(conn, "00000A", "sudo id", "id\n", partial=False)
            held = conn.execute("SELECT rid, typed FROM session_text").fetchall()
        assert [tuple(r) for r in held] == [("00000A", "sudo id")]
    finally:
        app.close()


def test_an_alert_reads_back_with_its_own_user(tmp_path: Path, engine_url: str | None) -> None:
    app = make_app(tmp_path, engine_url)
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
