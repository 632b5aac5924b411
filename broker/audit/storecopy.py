"""The move of a broker's SQLite store into PostgreSQL (`broker db copy`), recorded in the
chain it copies and verified there before anything of it is kept (broker/store/copy.py)."""

from __future__ import annotations

import socket
import sqlite3
from datetime import timedelta
from pathlib import Path

from broker.audit import writer
from broker.audit.query import verify_store
from broker.config.settings import Settings
from broker.core.errors import RefusedError, UsageError
from broker.core.storeurl import StoreUrl, StoreUrlError, parse_store_url
from broker.store.copy import CopyReport, copy_store
from broker.store.db import Store


def target_url(text: str) -> StoreUrl:
    """The database to copy into: a PostgreSQL `store.url`, checked like the setting."""
    try:
        url = parse_store_url(text)
    except StoreUrlError as exc:
        raise UsageError(f"--to: {exc}") from None
    if url.engine != "postgresql":
        raise UsageError(
            "--to must name a PostgreSQL database: the copy moves a SQLite store there",
            fix="e.g. --to 'postgresql://broker@/broker?host=/run/postgresql'",
        )
    return url


def daemon_answers(path: Path) -> bool:
    """Whether something accepts connections on the daemon's socket."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(2.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


def copy_to(settings: Settings, source: Store, url: StoreUrl, actor: str) -> CopyReport:
    """Copy `source` (this broker's SQLite store) into the empty database at `url`; the
    copy's own `store.copy` event is the last event copied."""
    if settings.store_url.engine != "sqlite":
        raise UsageError("this broker's store is not SQLite: `db copy` moves a SQLite store")
    if daemon_answers(settings.daemon.socket):
        # Its writes would wait for the copy, then go on in the SQLite file (and the shared
        # checkpoint log past the copied head), lost to the broker on PostgreSQL.
        raise RefusedError(
            f"the broker daemon is running (it answers on {settings.daemon.socket});"
            " nothing was copied",
            fix="stop it first (systemctl stop broker), copy, set store.url, start it",
        )
    target = Store.open(settings.db_path, owner=None, busy_timeout=timedelta(seconds=30), url=url)

    def record(conn: sqlite3.Connection) -> None:
        writer.record(
            conn,
            writer.EventInput(
                actor, "store.copy", url.display(), details={"from": str(source.path)}
            ),
        )

    def verify(conn: sqlite3.Connection) -> str | None:
        report = verify_store(
            conn, settings.signing_key, settings.checkpoint_paths, settings.audit.trusted_keys
        )
        return None if report.problem is None else report.problem.message

    try:
        return copy_store(source, target, verify, before=record)
    finally:
        target.close()
