"""The broker's SQLite store: WAL, foreign keys, FULL sync, one writer at a time.

Every state change runs inside `Store.transaction()`, which takes SQLite's
write lock up front (BEGIN IMMEDIATE). The audit chain reads its head inside
that lock, so two concurrent requests can never fork the chain.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlite_utils

from broker.core.errors import UnavailableError
from broker.store.files import ensure_private_file

BUSY_TIMEOUT_MS = 30_000


class Store:
    """One connection to the broker database."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self._after_commit: list[Callable[[], None]] = []
        self._in_transaction = False

    @classmethod
    def open(cls, path: Path, *, owner: tuple[int, int] | None) -> Store:
        """Open (creating 0600 if needed) and set the pragmas every connection needs."""
        ensure_private_file(path, owner)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # 64 MiB page cache: the index pages of a long chain stay hot.
            conn.execute("PRAGMA cache_size = -65536")
        except sqlite3.Error as exc:
            raise UnavailableError(f"cannot open the store {path}: {exc}") from exc
        if mode != "wal":
            raise UnavailableError(f"the store {path} cannot use WAL mode (got {mode!r})")
        return cls(conn, path)

    @property
    def db(self) -> sqlite_utils.Database:
        """sqlite-utils view of the same connection, for schema work and reads."""
        return sqlite_utils.Database(self.conn)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` after every committed write transaction (e.g. seal the audit head)."""
        self._after_commit.append(callback)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database write lock for its whole length."""
        if self._in_transaction:
            raise RuntimeError("nested write transaction")
        self.conn.execute("BEGIN IMMEDIATE")
        self._in_transaction = True
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        else:
            self.conn.execute("COMMIT")
        finally:
            self._in_transaction = False
        for callback in self._after_commit:
            callback()

    def journal_mode(self) -> str:
        return str(self.conn.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        self.conn.close()
