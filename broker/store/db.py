"""The broker's store: SQLite (WAL, foreign keys, FULL sync) or PostgreSQL, one writer at a time.

Every state change runs inside `Store.transaction()`, which takes the write lock
up front: SQLite's (BEGIN IMMEDIATE), or on PostgreSQL a transaction-scoped advisory
lock every broker's writers take first (pgconn.py). The audit chain reads its head
inside that lock, so two concurrent requests can never fork the chain.

When the store itself fails (full, read-only, locked past the busy timeout, an I/O
error) the transaction is rolled back and the caller gets one line saying so, exit 3
(unavailable): nothing that needs the audit chain happens unrecorded.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, cast

from broker.core.errors import UnavailableError
from broker.core.storeurl import StoreUrl
from broker.store.files import ensure_private_file
from broker.store.unavailable import NOTHING_DONE, PARTLY_DONE, StoreUnavailableError

__all__ = ["NOTHING_DONE", "PARTLY_DONE", "Store", "StoreUnavailableError", "store_unavailable"]

if TYPE_CHECKING:
    from broker.store.pgconn import PgConnection

BUSY_TIMEOUT = timedelta(seconds=30)
MIB = 1024 * 1024

# SQLite's primary result codes (the low byte of an extended code) that mean the store
# cannot be used right now, with what to say and what to do about it.
_UNAVAILABLE = {
    sqlite3.SQLITE_FULL: (
        "is full: no space left on its file system, or store.max_size_mib reached",
        "free space on its file system or raise store.max_size_mib, then retry",
    ),
    sqlite3.SQLITE_READONLY: (
        "is read-only",
        "make the database, its -wal and -shm files and its directory writable by the"
        " broker's user, on a file system mounted read-write",
    ),
    sqlite3.SQLITE_BUSY: (
        "stayed locked by another process past the busy timeout",
        "retry; if it persists, find what holds the database open (fuser -v PATH)",
    ),
    sqlite3.SQLITE_LOCKED: (
        "stayed locked by another process past the busy timeout",
        "retry; if it persists, find what holds the database open (fuser -v PATH)",
    ),
    sqlite3.SQLITE_IOERR: (
        "had an I/O error",
        "check the disk and the kernel log (journalctl -k), then retry",
    ),
    sqlite3.SQLITE_CANTOPEN: (
        "cannot be opened",
        "check that the database file and its directory exist and the broker may open them",
    ),
}


def store_unavailable(exc: sqlite3.Error, path: Path | str) -> StoreUnavailableError | None:
    """The one-line refusal for a store failure that is no fault of the request (None for
    any other SQLite error, which stays a bug to investigate)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if not isinstance(code, int) or code & 0xFF not in _UNAVAILABLE:
        return None
    what, fix = _UNAVAILABLE[code & 0xFF]
    name = getattr(exc, "sqlite_errorname", None) or "SQLite error"
    return StoreUnavailableError(
        f"the broker's audit store is unavailable: {path} {what} ({name}); {NOTHING_DONE}",
        fix=fix.replace("PATH", str(path)),
    )


class Store:
    """One connection to the broker database.

    `conn` is a sqlite3.Connection, or on PostgreSQL a PgConnection that behaves as one for
    everything the services use (execute with `?`, tuples, sqlite3's exceptions); it is
    typed as sqlite3's so the services' annotations hold for both engines.
    """

    def __init__(self, conn: sqlite3.Connection, path: Path | str) -> None:
        self.conn = conn
        self.path = path
        self.engine = str(getattr(conn, "dialect", "sqlite"))
        self._after_commit: list[Callable[[], None]] = []
        self._in_transaction = False
        # Write transactions committed on this connection (a request compares before/after).
        self.commits = 0

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        owner: tuple[int, int] | None,
        busy_timeout: timedelta = BUSY_TIMEOUT,
        max_size_mib: int | None = None,
        url: StoreUrl | None = None,
    ) -> Store:
        """Open (creating 0600 if needed) and set the pragmas every connection needs;
        `max_size_mib` caps the database so writes are refused before its file system fills.
        A PostgreSQL `url` opens that database instead (psycopg is imported only then)."""
        if url is not None and url.engine == "postgresql":
            from broker.store.pgconn import PgConnection

            pg = PgConnection(url, busy_timeout)
            return cls(cast(sqlite3.Connection, pg), pg.display)
        ensure_private_file(path, owner)
        try:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout.total_seconds() * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # Deleted rows are overwritten with zeros, not left in free pages: a purged
            # recording's input text (session_text) must not stay readable in the file.
            conn.execute("PRAGMA secure_delete = ON")
            # 64 MiB page cache: the index pages of a long chain stay hot.
            conn.execute("PRAGMA cache_size = -65536")
            if max_size_mib is not None:
                page = int(conn.execute("PRAGMA page_size").fetchone()[0])
                conn.execute(f"PRAGMA max_page_count = {max_size_mib * MIB // page}")
        except sqlite3.Error as exc:
            raise UnavailableError(f"cannot open the store {path}: {exc}") from exc
        if mode != "wal":
            raise UnavailableError(f"the store {path} cannot use WAL mode (got {mode!r})")
        return cls(conn, path)

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Run `callback` after every committed write transaction (e.g. seal the audit head)."""
        self._after_commit.append(callback)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction holding the database write lock for its whole length."""
        if self._in_transaction:
            raise RuntimeError("nested write transaction")
        self._in_transaction = True
        try:
            self._begin()
            try:
                yield self.conn
                self._commit()
                self.commits += 1
            except BaseException:
                self._rollback()
                raise
        except sqlite3.Error as exc:
            unavailable = store_unavailable(exc, self.path)
            if unavailable is None:
                raise
            raise unavailable from exc
        finally:
            self._in_transaction = False
        for callback in self._after_commit:
            callback()

    def _begin(self) -> None:
        if self.engine == "postgresql":
            cast("PgConnection", self.conn).begin_write()
        else:
            self.conn.execute("BEGIN IMMEDIATE")

    def _commit(self) -> None:
        if self.engine == "postgresql":
            cast("PgConnection", self.conn).end_write(commit=True)
        else:
            self.conn.execute("COMMIT")

    def _rollback(self) -> None:
        """Roll back what is left: after SQLITE_FULL or an I/O error SQLite may have rolled
        the transaction back itself, and a second ROLLBACK must not hide the first error."""
        if self.engine == "postgresql":
            cast("PgConnection", self.conn).end_write(commit=False)
        elif self.conn.in_transaction:
            with suppress(sqlite3.Error):
                self.conn.execute("ROLLBACK")

    def checkpoint_truncate(self) -> bool:
        """Copy the WAL into the database and truncate it to zero bytes (after a purge, so
        the WAL's old frames no longer hold deleted text); False when a reader elsewhere
        kept it from finishing (the next checkpoint overwrites those frames). PostgreSQL
        has no such file of the broker's: VACUUM frees the dead rows' space for reuse (it
        does not zero them; docs/ha.md says what that means for purged text)."""
        if self.engine == "postgresql":
            self.conn.execute("VACUUM")
            return True
        busy, _log, _done = self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    def journal_mode(self) -> str:
        if self.engine == "postgresql":
            return "postgresql"
        return str(self.conn.execute("PRAGMA journal_mode").fetchone()[0])

    def close(self) -> None:
        self.conn.close()
