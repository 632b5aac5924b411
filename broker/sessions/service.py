"""What `broker sessions` asks of the indexed store: list, show, replay, search, verify,
purge. Reads go through `iolog`'s descriptor-relative opens only."""

from __future__ import annotations

import dataclasses
import json
import mmap
import os
import re
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.audit import writer
from broker.core.errors import FailedError, RefusedError, UsageError
from broker.core.timeutil import to_text
from broker.sessions import iolog
from broker.sessions.iolog import IologError
from broker.store.db import Store

COLUMNS = (
    "id", "path", "state", "node", "user", "runas", "command", "argv", "cwd", "tty",
    "started_at", "ended_at", "exit_value", "signal", "end_reason", "grant_id", "relayed",
    "bytes_in", "bytes_out", "sha256", "files", "error", "first_seen", "indexed_at",
)  # fmt: skip
MAX_PATTERN = 1000
EXCERPT = 60


@dataclass(frozen=True)
class Filters:
    user: str | None = None
    node: str | None = None
    grant: str | None = None
    since: str | None = None
    until: str | None = None
    running: bool = False
    limit: int = 200


def _row(raw: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    row = dict(zip(COLUMNS, raw, strict=True))
    row["argv"] = json.loads(row["argv"]) if row["argv"] else []
    row["files"] = json.loads(row["files"]) if row["files"] else {}
    row["relayed"] = bool(row["relayed"])
    return row


def listing(conn: sqlite3.Connection, f: Filters) -> list[dict[str, Any]]:
    where, args = ["state != 'purged'"], []
    for column, value in (("user", f.user), ("node", f.node), ("grant_id", f.grant)):
        if value is not None:
            where.append(f"{column} = ?")
            args.append(value)
    if f.since is not None:
        where.append("COALESCE(ended_at, '9999') >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append("started_at <= ?")
        args.append(f.until)
    if f.running:
        where.append("state = 'running'")
    sql = (
        f"SELECT {', '.join(COLUMNS)} FROM recordings WHERE {' AND '.join(where)}"  # noqa: S608
        " ORDER BY COALESCE(started_at, first_seen) DESC, id DESC LIMIT ?"
    )
    return [_row(r) for r in conn.execute(sql, (*args, f.limit))]


def one(conn: sqlite3.Connection, recording_id: str) -> dict[str, Any]:
    iolog.seq_path(recording_id)  # validates the id
    raw = conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM recordings WHERE id = ?",  # noqa: S608
        (recording_id,),
    ).fetchone()
    if raw is None:
        raise RefusedError(f"no recorded session {recording_id}", fix="see `broker sessions list`")
    return _row(raw)


def context(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    """The grant (reason, approvers), the node's own session open/close events, the drift the
    session left and the alerts raised about it."""
    out: dict[str, Any] = {"grant": None, "hook_events": [], "drift": None, "alerts": []}
    d = conn.execute(
        "SELECT checked_at, changes, unexpected, error FROM session_drift WHERE recording_id = ?",
        (row["id"],),
    ).fetchone()
    if d is not None:
        out["drift"] = {
            "checked_at": d[0],
            "changes": [c.get("summary", "?") for c in json.loads(d[1])],
            "unexpected": d[2],
            "error": d[3],
        }
    out["alerts"] = [
        r[0]
        for r in conn.execute(
            "SELECT id FROM alerts WHERE recording_id = ? ORDER BY id", (row["id"],)
        )
    ]
    if row["grant_id"]:
        g = conn.execute(
            "SELECT id, role, reason, not_before, not_after, state, approvers FROM grants"
            " WHERE id = ?",
            (row["grant_id"],),
        ).fetchone()
        if g is not None:
            out["grant"] = {
                "id": g[0], "role": g[1], "reason": g[2], "not_before": g[3],
                "not_after": g[4], "state": g[5], "approvers": json.loads(g[6] or "[]"),
            }  # fmt: skip
    if row["started_at"] and row["node"]:
        start = datetime.fromisoformat(row["started_at"].replace("Z", "+00:00"))
        end = row["ended_at"] or to_text(start + timedelta(days=1))
        events = conn.execute(
            "SELECT kind, at, tty, pid, service, grant_id FROM session_events"
            " WHERE node = ? AND user = ? AND at >= ? AND at <= ? ORDER BY at, id LIMIT 50",
            (row["node"], row["user"], to_text(start - timedelta(seconds=10)), end),
        ).fetchall()
        out["hook_events"] = [
            {"kind": e[0], "at": e[1], "tty": e[2], "pid": e[3], "service": e[4], "grant": e[5]}
            for e in events
        ]
    return out


class Recordings:
    """The store on disk, through the row of each recording."""

    def __init__(self, store: Store, root: str) -> None:
        self._store = store
        self._root = root

    def _open(self, row: dict[str, Any]) -> int:
        if row["state"] == "purged":
            raise RefusedError(f"session {row['id']} was purged (retention)")
        try:
            root_fd = iolog.open_store(self._root)
        except OSError as exc:
            raise FailedError(f"the session store {self._root} cannot be read: {exc}") from exc
        try:
            return iolog.open_recording(root_fd, row["path"])
        except IologError as exc:
            raise FailedError(
                f"session {row['id']} is gone from the store ({exc})",
                fix="the recording was removed outside the broker; see the audit chain",
            ) from exc
        finally:
            os.close(root_fd)

    def timeline(
        self, recording_id: str, streams: tuple[str, ...], limit: int
    ) -> Iterator[tuple[float, str, bytes]]:
        row = one(self._store.conn, recording_id)
        if row["state"] == "quarantined":
            raise FailedError(f"session {recording_id} is quarantined: {row['error']}")
        dir_fd = self._open(row)
        try:
            yield from iolog.chunks(dir_fd, streams, limit)
        except IologError as exc:
            raise FailedError(f"session {recording_id}: {exc}") from exc
        finally:
            os.close(dir_fd)

    def info(self, recording_id: str) -> iolog.LogInfo:
        """log.json of a recording (terminal size for replays)."""
        dir_fd = self._open(one(self._store.conn, recording_id))
        try:
            raw = iolog.read_small(dir_fd, "log.json", iolog.MAX_LOG_JSON)
            if raw is None:
                raise FailedError(f"session {recording_id}: log.json is missing")
            return iolog.parse_log_json(raw)
        except IologError as exc:
            raise FailedError(f"session {recording_id}: {exc}") from exc
        finally:
            os.close(dir_fd)

    def verify(self, recording_id: str) -> dict[str, Any]:
        """Recompute the digest; compare with the index and with the audit chain's copy."""
        conn = self._store.conn
        row = one(conn, recording_id)
        if row["sha256"] is None:
            raise FailedError(
                f"session {recording_id} has no digest yet ({row['state']})",
                fix="a running session is hashed when it ends",
            )
        event = conn.execute(
            "SELECT details FROM audit_events WHERE action = 'session.recorded' AND target = ?"
            " ORDER BY seq DESC LIMIT 1",
            (recording_id,),
        ).fetchone()
        audited = json.loads(event[0]) if event else {}
        dir_fd = self._open(row)
        try:
            sha, files = iolog.digest(dir_fd)
        finally:
            os.close(dir_fd)
        recorded = audited.get("files", {})
        changed = sorted(
            name for name in set(files) | set(recorded) if files.get(name) != recorded.get(name)
        )
        ok = sha == row["sha256"] == audited.get("sha256")
        return {
            "id": recording_id,
            "ok": ok,
            "sha256": sha,
            "indexed_sha256": row["sha256"],
            "audited_sha256": audited.get("sha256"),
            "changed": changed,
        }

    def search(self, pattern: str, streams: tuple[str, ...], f: Filters) -> list[dict[str, Any]]:
        """Sessions whose chosen streams match (a bytes regex), with the first match."""
        if len(pattern) > MAX_PATTERN:
            raise UsageError(f"the pattern is longer than {MAX_PATTERN} characters")
        try:
            regex = re.compile(pattern.encode("utf-8"))
        except re.error as exc:
            raise UsageError(f"bad regular expression: {exc}", fix="check the pattern") from exc
        found = []
        for row in listing(self._store.conn, dataclasses.replace(f, limit=100_000)):
            if row["state"] == "quarantined":
                continue
            match = self._match(row, regex, streams)
            if match is not None:
                found.append({**row, "match": match})
                if len(found) >= f.limit:
                    break
        return found

    def _match(
        self, row: dict[str, Any], regex: re.Pattern[bytes], streams: tuple[str, ...]
    ) -> dict[str, Any] | None:
        try:
            dir_fd = self._open(row)
        except (FailedError, RefusedError):
            return None
        try:
            for stream in streams:
                fd = iolog.open_file(dir_fd, stream)
                if fd is None:
                    continue
                try:
                    size = os.fstat(fd).st_size
                    # Mapped, not read: a multi-GB stream costs address space, not memory.
                    data = mmap.mmap(fd, 0, access=mmap.ACCESS_READ) if size else b""
                finally:
                    os.close(fd)
                try:
                    m = regex.search(data)
                    excerpt = "" if m is None else _excerpt(data, m)
                finally:
                    if isinstance(data, mmap.mmap):
                        data.close()
                if m is not None:
                    return {"stream": stream, "offset": m.start(), "excerpt": excerpt}
        except IologError:
            return None
        finally:
            os.close(dir_fd)
        return None

    def purge(self, retention_days: int, now: datetime, actor: str) -> list[str]:
        """Remove finished recordings older than the retention; rows stay, marked purged."""
        cutoff = to_text(now - timedelta(days=retention_days))
        conn = self._store.conn
        old = conn.execute(
            "SELECT id, path FROM recordings WHERE state IN ('complete', 'incomplete',"
            " 'quarantined') AND COALESCE(ended_at, first_seen) < ? ORDER BY id",
            (cutoff,),
        ).fetchall()
        purged = []
        for rid, path in old:
            if not iolog.RECORDING_PATH.fullmatch(path):
                continue
            target = os.path.join(self._root, path)
            try:  # every component a real directory (no link anywhere on the way)
                root_fd = iolog.open_store(self._root)
                try:
                    os.close(iolog.open_recording(root_fd, path))
                finally:
                    os.close(root_fd)
            except (IologError, OSError):
                continue
            shutil.rmtree(target, ignore_errors=True)
            if not os.path.exists(target):
                purged.append(rid)
        if purged:
            with self._store.transaction() as tx:
                tx.executemany(
                    "UPDATE recordings SET state = 'purged', indexed_at = ? WHERE id = ?",
                    [(to_text(now), rid) for rid in purged],
                )
                writer.record(
                    tx,
                    writer.EventInput(
                        actor,
                        "session.purged",
                        f"{len(purged)} recordings",
                        "ok",
                        {"ids": purged, "retention_days": retention_days},
                    ),
                    now,
                )
        return purged


def _excerpt(data: bytes | mmap.mmap, m: re.Match[bytes]) -> str:
    start, end = max(0, m.start() - EXCERPT), min(len(data), m.end() + EXCERPT)
    return bytes(data[start:end]).decode("utf-8", "replace")


_ESCAPE = re.compile(rb"\x1b(?:\[[0-9;?]*[ -/]*[@-~]|O.|[@-Z\\-_])")


def command_lines(chunks: Iterator[tuple[float, str, bytes]]) -> list[tuple[float, str]]:
    """What was typed, line by line, with when each line was entered (seconds from the
    start): backspaces applied, terminal escape sequences (arrow keys) dropped."""
    lines: list[tuple[float, str]] = []
    current = bytearray()
    at = 0.0
    for delay, _stream, data in chunks:
        at += delay
        for piece in _ESCAPE.split(data):
            for byte in piece:
                if byte in (0x0D, 0x0A):
                    if current:
                        lines.append((at, current.decode("utf-8", "replace")))
                    current.clear()
                elif byte in (0x7F, 0x08):
                    if current:
                        current.pop()
                elif byte == 0x15:  # ^U
                    current.clear()
                elif byte >= 0x20 or byte == 0x09:
                    current.append(byte)
    if current:
        lines.append((at, current.decode("utf-8", "replace")))
    return lines[:5000]
