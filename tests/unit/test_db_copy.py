"""`broker db copy`: a SQLite broker's store moved into PostgreSQL, row for row, the chain
verified there; a broker on the copy carries on where the original stopped."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest

from broker.app import App
from broker.audit import writer
from broker.config.loader import load_settings
from tests.helpers import run_broker, serving
from tests.pgcluster import Cluster


def _session_event(app: App, n: int) -> None:
    with app.ready_store().transaction() as conn:
        conn.execute(
            'INSERT INTO session_events (node, event_id, kind, grant_id, "user", runas, service,'
            " tty, pid, at, received_at) VALUES (?, ?, 'open', NULL, 'alice', 'root', 'sudo',"
            " 'pts/1', ?, '2026-12-07T10:00:00Z', '2026-12-07T10:00:01Z')",
            ("gpu01", f"17{n:08d}-{n}-0000000{n % 10}", n),
        )
        writer.record(conn, writer.EventInput("node:gpu01", "session.open", "-", "ok", {"n": n}))


def _on(config: Path, url: str) -> Path:
    """The same broker (state dir, keys, checkpoints) with store.url set."""
    other = config.with_name("on-pg.toml")
    other.write_text(config.read_text() + f'\n[store]\nurl = "{url}"\n')
    return other


def test_copy_moves_every_row_and_the_copy_carries_on(
    broker_config: Path, pg_cluster: Cluster
) -> None:
    app = App(load_settings(broker_config))
    for n in range(1, 4):
        _session_event(app, n)
    with app.ready_store().transaction() as conn:  # a recording's typed text, indexed
        conn.execute(
            "INSERT INTO session_text (rowid, rid, typed, input) VALUES (?, ?, ?, ?)",
            (int("r0001", 36), "r0001", "apt-get install htop", "apt-get install htop\n"),
        )
    app.audit().seal()
    app.close()
    url = pg_cluster.database()
    with serving(broker_config):  # the daemon running: refused, nothing copied
        busy = run_broker("db", "copy", "--to", url, config=broker_config)
        assert busy.returncode == 1 and "daemon is running" in busy.stderr, busy.stderr
    done = run_broker("db", "copy", "--to", url, "--json", config=broker_config)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["tables"]["session_events"] == 3
    head = report["audit_head"]["seq"]
    on_pg = _on(broker_config, url)
    # A daemon on the copy serves it; the chain verifies there.
    with serving(on_pg):
        verified = run_broker("audit", "verify", config=on_pg)
        assert verified.returncode == 0, verified.stderr
        # (a daemon starting on the copy takes the scheduler lease over: one more event)
    copy = App(load_settings(on_pg))
    try:
        assert copy.audit().verify().ok
        conn = copy.ready_store().conn
        copied = conn.execute("SELECT action FROM audit_events WHERE seq = ?", (head,)).fetchone()
        assert copied[0] == "store.copy"
        top = conn.execute("SELECT MAX(seq) FROM audit_events").fetchone()[0]
        text = conn.execute('SELECT "rowid", rid, typed FROM session_text').fetchall()
        assert [tuple(r) for r in text] == [(int("r0001", 36), "r0001", "apt-get install htop")]
        # Identity counters moved past the copied ids; the chain goes on from the head.
        _session_event(copy, 4)
        ids = [r[0] for r in conn.execute("SELECT id FROM session_events ORDER BY id")]
        assert len(ids) == 4 and len(set(ids)) == 4
        assert conn.execute("SELECT MAX(seq) FROM audit_events").fetchone()[0] == top + 1
        assert copy.audit().verify().ok
    finally:
        copy.close()


def test_copy_refuses_a_target_that_holds_a_store(broker_config: Path, pg_cluster: Cluster) -> None:
    url = pg_cluster.database()
    assert run_broker("db", "copy", "--to", url, config=broker_config).returncode == 0
    again = run_broker("db", "copy", "--to", url, config=broker_config)
    assert again.returncode == 1, again.stderr
    assert "already holds a broker store" in again.stderr
    assert len(again.stderr.strip().splitlines()) <= 2  # the line and its fix


@pytest.mark.parametrize(
    ("to", "said"),
    [
        ("sqlite:///tmp/other.db", "must name a PostgreSQL database"),
        ("postgresql://broker:s3cret@/broker?host=/run/postgresql", "--to"),
        ("mysql://db/broker", "--to"),
    ],
)
def test_copy_refuses_a_bad_target_url(broker_config: Path, to: str, said: str) -> None:
    result = run_broker("db", "copy", "--to", to, config=broker_config)
    assert result.returncode == 2, result.stderr
    assert said in result.stderr and "s3cret" not in result.stderr


def test_a_copy_that_does_not_verify_is_not_kept(broker_config: Path, pg_cluster: Cluster) -> None:
    """A store edited under its checkpoints (what a tamperer would do) does not become the
    HA pair's chain: the copy is refused, and nothing of it is left in the target."""
    app = App(load_settings(broker_config))
    app.audit().seal()
    db_path = app.settings.db_path
    app.close()
    raw = sqlite3.connect(db_path)
    for (name,) in raw.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'").fetchall():
        raw.execute(f'DROP TRIGGER "{name}"')
    raw.execute("UPDATE audit_events SET target = 'forged' WHERE seq = 1")
    raw.commit()
    raw.close()
    url = pg_cluster.database()
    result = run_broker("db", "copy", "--to", url, config=broker_config)
    assert result.returncode == 1, result.stderr
    assert "does not verify" in result.stderr and "nothing was kept" in result.stderr
    dbname = url.split("///", 1)[1].split("?", 1)[0]
    tables = pg_cluster.psql(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'public'", dbname
    )
    assert tables == "0", tables
