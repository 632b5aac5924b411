"""What `broker sessions` asks of the indexed store: list, show, replay, search, verify,
purge. Reads go through `iolog`'s descriptor-relative opens only."""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from broker.audit import writer
from broker.core.errors import FailedError, RefusedError, UsageError
from broker.core.timeutil import from_text
from broker.sessions import iolog, provenance, rows
from broker.sessions.iolog import IologError
from broker.sessions.provenance import GrantSpan, HookOpen, Provenance
from broker.sessions.query import MODES, Mode
from broker.sessions.rows import Filters
from broker.sessions.search import EXCERPT, MAX_PATTERN, Search, SearchResult
from broker.sessions.typed import command_lines
from broker.store.db import Store

log = logging.getLogger("broker.sessions")

__all__ = [
    "EXCERPT",
    "MAX_PATTERN",
    "MODES",
    "Filters",
    "Mode",
    "Recordings",
    "SearchResult",
    "command_lines",
    "context",
    "hook_provenance",
    "listing",
    "one",
    "recorded_row",
    "recorded_user",
    "recording_provenance",
]


def listing(conn: sqlite3.Connection, f: Filters) -> list[dict[str, Any]]:
    """Recordings not purged, newest first, filtered, each with its provenance label."""
    return [_labelled(conn, row) for row in rows.listing(conn, f)]


def _labelled(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    """The row with `provenance` and `provenance_reason`, judged now: hook events collected
    since the last look can corroborate a recording that was not before."""
    found = recording_provenance(conn, row)
    return {**row, "provenance": found.label, "provenance_reason": found.reason}


def recording_provenance(conn: sqlite3.Connection, row: dict[str, Any]) -> Provenance:
    """How the recording's user and node were learned (provenance.py): its user's hook
    `open` events collected from its node near its start, and its grant."""
    node, user, started_text = row.get("node"), row.get("user"), row.get("started_at")
    if not node or not user or not started_text:
        return provenance.judge_recording(None, None, None, None, ())
    started = from_text(started_text)
    slack = provenance.SLACK
    opens = [
        HookOpen(u, g, from_text(at))
        # From twice the slack before: a recording at the window's start had its open a
        # moment earlier, and it must be counted against the recordings below.
        for u, g, at in rows.hook_opens(conn, node, user, started - 2 * slack, started + slack)
    ]
    grant = _span(rows.grant_of(conn, row["grant_id"], user, node)) if row["grant_id"] else None
    # Every recording within the window needs a hook event of its own (one sudo, one open).
    rivals = rows.recordings_near(conn, node, user, started - slack, started + slack)
    return provenance.judge_recording(node, user, started, grant, opens, rivals)


def recorded_row(conn: sqlite3.Connection, recording_id: str) -> dict[str, Any] | None:
    """A recording's indexed row, or None (detection asks; no refusal to raise)."""
    return rows.recording(conn, recording_id)


def hook_provenance(
    conn: sqlite3.Connection, node: str, user: str, grant_id: str | None, at: datetime
) -> Provenance:
    """How a hook event's user was learned: the node's word, unless a grant of that user
    on that node covers the event."""
    grant = None
    if grant_id and grant_id not in ("-", provenance.BREAK_GLASS):
        grant = _span(rows.grant_of(conn, grant_id, user, node))
    return provenance.judge_hook(node, user, grant_id, at, grant)


def _span(found: tuple[str, str, str] | None) -> GrantSpan | None:
    return None if found is None else GrantSpan(found[0], from_text(found[1]), from_text(found[2]))


def recorded_user(conn: sqlite3.Connection, name: str) -> bool:
    """Whether the sessions index knows this exact user: how a user who has left the
    directory is still found for `broker sessions list --user` (broker.core.users)."""
    return rows.has_user(conn, name)


def one(conn: sqlite3.Connection, recording_id: str) -> dict[str, Any]:
    iolog.seq_path(recording_id)  # validates the id
    row = rows.recording(conn, recording_id)
    if row is None:
        raise RefusedError(f"no recorded session {recording_id}", fix="see `broker sessions list`")
    return _labelled(conn, row)


def context(conn: sqlite3.Connection, row: dict[str, Any]) -> dict[str, Any]:
    """The grant (reason, approvers), the node's own session open/close events, the drift the
    session left and the alerts raised about it."""
    out: dict[str, Any] = {
        "grant": None, "hook_events": [], "drift": None, "alerts": [], "ending": None
    }  # fmt: skip
    out["drift"] = rows.drift(conn, row["id"])
    out["alerts"] = rows.alert_ids(conn, row["id"])
    if row["grant_id"]:
        out["grant"] = rows.grant_summary(conn, row["grant_id"])
    if row["started_at"] and row["node"]:
        start = from_text(row["started_at"])
        end = from_text(row["ended_at"]) if row["ended_at"] else start + timedelta(days=1)
        out["hook_events"] = rows.hook_events(
            conn, row["node"], row["user"], start - timedelta(seconds=10), end
        )
        out["ending"] = ending(out["hook_events"], start)
    return out


def ending(events: list[dict[str, Any]], started: datetime) -> dict[str, Any] | None:
    """How the recorded session ended and what it used, from the node's events: the open
    event nearest before the recording's start names the sudo (its pid); its close says how
    the sudo ended, the usage event of its cgroup how the cgroup ended (an exit, or a kill
    of what the session left running) and what it used. None: the node said nothing."""
    # Node times are whole seconds: an open in the recording's own second comes before it.
    opens = [e for e in events if e["kind"] == "open" and from_text(e["at"]) <= started]
    if not opens:
        return None
    pid = opens[-1]["pid"]
    close = next((e for e in events if e["kind"] == "close" and e["pid"] == pid), None)
    usage = next((e for e in events if e["kind"] == "usage" and e["pid"] == pid), None)
    if close is None and usage is None:
        return None
    closed_by = (close or {}).get("ended_by") or ("exit" if close else None)
    cpu = (usage or {}).get("cpu_usec")
    return {
        "pid": pid,
        "closed_by": closed_by,
        "ended_by": (usage or {}).get("ended_by") or closed_by,
        "killed": ((close or {}).get("killed") or 0) + ((usage or {}).get("killed") or 0),
        "contained": True if usage is not None else (close or {}).get("contained"),
        "cpu_seconds": None if cpu is None else round(cpu / 1e6, 3),
        "memory_peak": (usage or {}).get("memory_peak"),
        "pids_peak": (usage or {}).get("pids_peak"),
    }


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
        audited = rows.audited_recording(conn, recording_id)
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

    def search(
        self, text: str, streams: tuple[str, ...], f: Filters, mode: Mode = "regex"
    ) -> SearchResult:
        """Sessions whose chosen streams match a bytes regex (with the first match), or
        whose typed lines hold a word, prefix or phrase; narrowed by the text index
        (search.py)."""
        conn = self._store.conn
        return Search(conn, self._open_or_none, lambda row: _labelled(conn, row)).run(
            text, streams, f, mode
        )

    def audited_search(
        self, actor: str, now: datetime, text: str, streams: tuple[str, ...], f: Filters,
        mode: Mode = "regex",
    ) -> SearchResult:  # fmt: skip
        """`search`, recorded as one `session.search` event (ok, or refused with a usage
        error): who looked, how, under which filters and what it found, by counts. Neither
        the pattern nor any matched text is recorded: a search for a leaked password would
        otherwise copy it into the chain."""
        details: dict[str, Any] = {
            "mode": mode,
            "streams": list(streams),
            "filters": {k: v for k, v in asdict(f).items() if v not in (None, False)},
        }
        try:
            found = self.search(text, streams, f, mode)
        except UsageError:
            self._audit_search(actor, now, "refused", {**details, "error": "usage"})
            raise
        counts = {"hits": len(found.hits), "read": found.read, "narrowed": found.narrowed,
                  "complete": found.complete}  # fmt: skip
        self._audit_search(actor, now, "ok", {**details, **counts})
        return found

    def _audit_search(self, actor: str, now: datetime, outcome: str, details: Any) -> None:
        with self._store.transaction() as tx:
            writer.record(
                tx, writer.EventInput(actor, "session.search", "sessions", outcome, details), now
            )

    def _open_or_none(self, row: dict[str, Any]) -> int | None:
        try:
            return self._open(row)
        except (FailedError, RefusedError):
            return None

    def purge(self, retention_days: int, now: datetime, actor: str) -> list[str]:
        """Remove finished recordings older than the retention; rows stay, marked purged."""
        old = rows.purgeable(self._store.conn, now - timedelta(days=retention_days))
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
                rows.mark_purged(tx, purged, now)
                rows.drop_text(tx, purged)
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
            if not self._store.checkpoint_truncate():
                log.warning(
                    "purge: a reader kept the WAL from being truncated; old frames"
                    " stay until the next checkpoint overwrites them"
                )
        return purged
