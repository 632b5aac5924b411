"""Index sudo_logsrvd's store into SQLite: incrementally, idempotently, crash-safe.

sudo_logsrvd keeps receiving while the daemon is away; each pass picks up where
the store is. A finished recording is hashed and its row, its final state and
its `session.recorded` audit event (carrying the SHA-256) commit in one
transaction, so a crash or restart mid-pass neither loses nor doubles anything:
the next pass finds the row still `running` (or absent) and does it again. A
recording that cannot be read as sudo wrote it is quarantined (row and audit
event with the reason) and never stops the others.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from broker.audit import writer
from broker.core.timeutil import to_text
from broker.sessions import iolog, rows, typed
from broker.sessions.iolog import IologError, LogInfo
from broker.sessions.rows import FINAL, GrantWindow
from broker.sessions.typed import InputText
from broker.store.db import Store

log = logging.getLogger("broker.sessions")

# A directory sudo_logsrvd has only just created may not have its log.json yet.
SETTLE_S = 30.0
# Within this much of the grant's end, an ending counts as the grant's doing.
END_SLACK = timedelta(seconds=3)
# Recordings indexed before the search index existed (migration 17), added per pass.
BACKFILL_BATCH = 500


@dataclass
class IndexReport:
    seen: int = 0
    new: list[str] = field(default_factory=list)
    finished: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)
    bytes_read: int = 0
    seconds: float = 0.0
    backfilled: int = 0  # older recordings added to the search index in this pass


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def find_grant(conn: sqlite3.Connection, info: LogInfo) -> GrantWindow | None:
    """The grant under which sudo ran this: the user's grant on that node whose window
    holds the start (sudo itself refuses outside NOTBEFORE/NOTAFTER); the newest wins."""
    return rows.grant_window(conn, info.user, info.node, to_text(_utc(info.started)))


def end_reason(info: LogInfo, grant: GrantWindow | None, ended: datetime | None) -> str:
    """What ended the session, in the words `sessions show` uses. A signal near the grant's
    revocation or end was the broker's reaper or sudo's TIMEOUT; a normal exit is the user's."""
    if info.signal is None:
        return "no exit status" if info.exit_value is None else f"exit {info.exit_value}"
    if ended is not None and grant is not None:
        late = to_text(ended + END_SLACK)
        if grant.state == "revoked" and grant.ended_at and late >= grant.ended_at:
            return "ended at revocation"
        if late >= grant.not_after:
            return "ended at expiry"
    return f"killed by SIG{info.signal}"


class Indexer:
    def __init__(
        self,
        store: Store,
        root: str,
        *,
        relayed_nodes: frozenset[str] = frozenset(),
        stale_after: timedelta = timedelta(minutes=5),
    ) -> None:
        self._store = store
        self._root = root
        self._relayed = relayed_nodes
        self._stale_after = stale_after

    def run(self, now: datetime) -> IndexReport:
        """One pass over the store."""
        started = time.monotonic()
        report = IndexReport()
        try:
            root_fd = iolog.open_store(self._root)
        except FileNotFoundError:
            return report
        try:
            done = rows.finished_paths(self._store.conn)
            for path in iolog.walk(root_fd):
                report.seen += 1
                if path in done:
                    continue
                try:
                    self._one(root_fd, path, now, report)
                except sqlite3.Error:
                    raise
                except Exception as exc:  # one recording never stops the others
                    log.exception("indexing %s failed", path)
                    self._quarantine(path, f"{type(exc).__name__}: {exc}", now, report)
            report.backfilled = self.backfill(root_fd, BACKFILL_BATCH)
        finally:
            os.close(root_fd)
        report.seconds = time.monotonic() - started
        return report

    def backfill(self, root_fd: int, limit: int) -> int:
        """Put finished recordings the search index lacks into it (those indexed before
        migration 17): a site upgrading keeps search over its old sessions; until a
        recording is in, search reads its files."""
        done = 0
        for rid, path in rows.text_backlog(self._store.conn, limit):
            try:
                dir_fd = iolog.open_recording(root_fd, path)
            except IologError:
                text = InputText("", "", partial=True)  # gone: search finds nothing there
            else:
                try:
                    text = _input_text(dir_fd)
                finally:
                    os.close(dir_fd)
            with self._store.transaction() as conn:
                if rows.state(conn, rid) in ("complete", "incomplete"):
                    rows.put_text(conn, rid, text.typed, text.raw, partial=text.partial)
                    done += 1
        return done

    def _one(self, root_fd: int, path: str, now: datetime, report: IndexReport) -> None:
        rid = iolog.seq_id(path)
        try:
            dir_fd = iolog.open_recording(root_fd, path)
        except IologError as exc:
            self._quarantine(path, str(exc), now, report)
            return
        try:
            self._read(dir_fd, path, rid, now, report)
        except IologError as exc:
            settling = "log.json" in str(exc) or not iolog.is_complete(dir_fd)
            if settling and self._young(dir_fd, now):
                return  # still being written: look again on the next pass
            self._quarantine(path, str(exc), now, report)
        finally:
            os.close(dir_fd)

    def _young(self, dir_fd: int, now: datetime) -> bool:
        with contextlib.suppress(OSError):
            return now.timestamp() - os.fstat(dir_fd).st_mtime < SETTLE_S
        return False

    def _read(self, dir_fd: int, path: str, rid: str, now: datetime, report: IndexReport) -> None:
        # Order matters while sudo_logsrvd writes: completeness first (so the log.json read
        # next already has the exit fields), the timing file before the stream sizes (the
        # streams only grow, so they hold at least what the timing file names).
        complete = iolog.is_complete(dir_fd)
        raw = iolog.read_small(dir_fd, "log.json", iolog.MAX_LOG_JSON)
        if raw is None:
            raise IologError("log.json is missing")
        info = iolog.parse_log_json(raw)
        timing = iolog.read_small(dir_fd, "timing", iolog.MAX_TIMING)
        if timing is None:
            raise IologError("timing is missing")
        sizes = iolog.file_sizes(dir_fd)
        events = iolog.parse_timing(timing, partial=not complete)
        iolog.check_sizes(events, sizes, complete=complete)
        bytes_in = sum(sizes.get(s, 0) for s in iolog.INPUT)
        bytes_out = sum(sizes.get(s, 0) for s in iolog.OUTPUT)
        conn = self._store.conn
        grant = find_grant(conn, info)
        stale = not complete and self._stale(dir_fd, grant, now)
        if complete or stale:
            sha, files = iolog.digest(dir_fd)
            text = _input_text(dir_fd, events)
            report.bytes_read += sum(sizes.values())
            ended = (
                _utc(info.started + info.run_time)
                if info.run_time is not None
                else _utc(os.stat("timing", dir_fd=dir_fd, follow_symlinks=False).st_mtime)
            )
            reason = end_reason(info, grant, ended) if complete else "recording cut off"
            self._finish(
                path, rid, info, grant, now, report,
                state="complete" if complete else "incomplete",
                ended=ended, reason=reason, sha=sha, files=files,
                bytes_in=bytes_in, bytes_out=bytes_out, text=text,
            )  # fmt: skip
            return
        self._running(path, rid, info, grant, now, report, bytes_in, bytes_out)

    def _stale(self, dir_fd: int, grant: GrantWindow | None, now: datetime) -> bool:
        """Never finished by the server (it died, or the node vanished) and can no longer
        grow: the grant has ended and nothing was written for `stale_after`."""
        mtime = os.stat("timing", dir_fd=dir_fd, follow_symlinks=False).st_mtime
        if now.timestamp() - mtime < self._stale_after.total_seconds():
            return False
        if grant is None:
            return True
        end = grant.ended_at if grant.state != "active" and grant.ended_at else grant.not_after
        return to_text(now - self._stale_after) >= end

    def _values(self, info: LogInfo, grant: GrantWindow | None) -> dict[str, object]:
        return {
            "node": info.node,
            "user": info.user,
            "runas": info.runas,
            "command": info.command,
            "argv": json.dumps(list(info.argv)),
            "cwd": info.cwd,
            "tty": info.tty,
            "started_at": to_text(_utc(info.started)),
            "grant_id": None if grant is None else grant.id,
            "relayed": int(info.node in self._relayed),
        }

    def _running(self, path: str, rid: str, info: LogInfo, grant: GrantWindow | None,
                 now: datetime, report: IndexReport, bytes_in: int, bytes_out: int) -> None:  # fmt: skip
        values = {
            **self._values(info, grant),
            "state": "running",
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }
        with self._store.transaction() as conn:
            if rows.upsert(conn, rid, path, now, values):
                report.new.append(rid)

    def _finish(self, path: str, rid: str, info: LogInfo, grant: GrantWindow | None,
                now: datetime, report: IndexReport, *, state: str, ended: datetime,
                reason: str, sha: str, files: dict[str, str], bytes_in: int,
                bytes_out: int, text: InputText) -> None:  # fmt: skip
        values = {
            **self._values(info, grant),
            "state": state,
            "ended_at": to_text(ended),
            "exit_value": info.exit_value,
            "signal": info.signal,
            "end_reason": reason,
            "sha256": sha,
            "files": json.dumps(files, sort_keys=True),
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
            "error": None,
        }
        with self._store.transaction() as conn:
            if rows.state(conn, rid) in FINAL:
                return  # another pass finished it first
            if rows.upsert(conn, rid, path, now, values):
                report.new.append(rid)
            rows.put_text(conn, rid, text.typed, text.raw, partial=text.partial)
            writer.record(
                conn,
                writer.EventInput(
                    f"node:{info.node}",
                    "session.recorded",
                    rid,
                    "ok" if state == "complete" else "failed",
                    {
                        "sha256": sha,
                        "files": files,
                        "user": info.user,
                        "runas": info.runas,
                        "grant": None if grant is None else grant.id,
                        "end": reason,
                    },
                ),
                now,
            )
        report.finished.append(rid)

    def _quarantine(self, path: str, error: str, now: datetime, report: IndexReport) -> None:
        rid = iolog.seq_id(path)
        error = error[:300]
        with self._store.transaction() as conn:
            if rows.state(conn, rid) in FINAL:
                return
            rows.upsert(conn, rid, path, now, {"state": "quarantined", "error": error})
            writer.record(
                conn,
                writer.EventInput("broker", "session.quarantined", rid, "failed", {"error": error}),
                now,
            )
        log.warning("recording %s quarantined: %s", rid, error)
        report.quarantined.append(rid)


def _input_text(dir_fd: int, events: list[iolog.TimingEvent] | None = None) -> InputText:
    """The recording's input for the search index; one the index cannot read whole is
    marked partial, so search reads its files instead (never a silent miss)."""
    try:
        return typed.input_text(dir_fd, events)
    except (IologError, OSError):
        log.warning("the input of a recording could not be indexed for search", exc_info=True)
        return InputText("", "", partial=True)
