"""One detection pass: new audit events and new session bytes through the rules.

Incremental and restart-safe: the pass reads audit events after the stored
cursor and each recording's streams after their stored offsets, and commits
the alerts it raised together with the new cursor, offsets and rule memory.
A crash before that commit only means the next pass judges the same events
again from the same memory. The first pass ever starts at the present: the
detector watches from its deployment on, it does not rescan history.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.core.errors import UsageError
from broker.core.hostlist import expand
from broker.core.timeutil import to_text
from broker.detect import alerts
from broker.detect.engine import AuditEvent, Detector, Finding, Recording, new_memory
from broker.fleet import quarantine
from broker.policy.detection_rules import Detection
from broker.sessions import iolog
from broker.sessions.iolog import IologError
from broker.store.db import Store

log = logging.getLogger("broker.detect")

BATCH = 20_000  # audit events per pass at most (the rest next pass, at once)
READ_CHUNK = 1 << 20
PASS_BYTES = 256 << 20  # session bytes per pass at most
_INPUT = ("ttyin", "stdin")
_OUTPUT = ("ttyout", "stdout", "stderr")
WATCH_STALE = timedelta(days=1)
Enqueue = Callable[[sqlite3.Connection, int, datetime], None]


@dataclass
class PassReport:
    events: int = 0
    recordings: int = 0
    bytes: int = 0
    alerts: list[int] = field(default_factory=list)
    jobs: int = 0
    seconds: float = 0.0


@dataclass
class _Stream:
    offset: int = 0
    carry: bytes = b""
    dirty: bool = False


def _epoch(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def load_state(conn: sqlite3.Connection) -> dict[str, Any] | None:
    row = conn.execute("SELECT value FROM detect_state WHERE key = 'detector'").fetchone()
    return None if row is None else dict(json.loads(row[0]))


def save_state(conn: sqlite3.Connection, state: dict[str, Any]) -> None:
    conn.execute(
        "INSERT INTO detect_state (key, value) VALUES ('detector', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (json.dumps(state, separators=(",", ":")),),
    )


class DetectionRunner:
    """Runs passes over one store; the caller supplies the rules in force each pass."""

    def __init__(
        self,
        store: Store,
        session_root: str | None,
        *,
        enqueue: Enqueue | None = None,
        pass_bytes: int = PASS_BYTES,
    ) -> None:
        self._store = store
        self._root = session_root
        self._enqueue = enqueue
        self._pass_bytes = pass_bytes

    def run_once(
        self, detection: Detection, now: datetime, exempt_users: Iterable[str] = ()
    ) -> PassReport:
        started = time.monotonic()
        report = PassReport()
        conn = self._store.conn
        state = load_state(conn)
        if state is None:  # the first pass: watch from now on
            top = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM audit_events").fetchone()[0]
            state = {"cursor": int(top), "since": to_text(now), "memory": new_memory()}
        detector = Detector(
            detection,
            state["memory"],
            quarantined=quarantine.in_force(conn),
            exempt_users=exempt_users,
        )
        findings: list[Finding] = []
        jobs: list[tuple[str, str]] = []
        cursor = int(state["cursor"])
        for row in conn.execute(
            "SELECT seq, ts, actor, action, target, outcome, details FROM audit_events"
            " WHERE seq > ? ORDER BY seq LIMIT ?",
            (cursor, BATCH),
        ):
            event = AuditEvent(
                row[0], _epoch(row[1]), row[2], row[3], row[4], row[5], json.loads(row[6])
            )
            findings.extend(detector.audit(event))
            jobs.extend(drift_jobs(event))
            cursor = event.seq
            report.events += 1
        state["cursor"] = cursor
        streams = self._scan_sessions(detector, state["since"], now, findings, report)
        detector.prune(now.timestamp())
        with self._store.transaction() as tx:
            for finding in findings:
                report.alerts.append(alerts.raise_alert(tx, finding, now, self._enqueue))
            for kind, target in jobs:
                alerts.queue_job(tx, kind, target, now)
            report.jobs = len(jobs)
            save_state(tx, state)
            for (rid, name), stream in streams.items():
                if stream.dirty:
                    tx.execute(
                        "INSERT INTO detect_streams (recording_id, stream, offset, carry, done)"
                        " VALUES (?, ?, ?, ?, ?) ON CONFLICT (recording_id, stream) DO UPDATE"
                        " SET offset = excluded.offset, carry = excluded.carry,"
                        " done = excluded.done",
                        (rid, name, stream.offset, stream.carry, int(name == "*")),
                    )
        report.seconds = time.monotonic() - started
        return report

    # ------------------------------------------------------------ sessions

    def _scan_sessions(
        self,
        detector: Detector,
        since: str,
        now: datetime,
        findings: list[Finding],
        report: PassReport,
    ) -> dict[tuple[str, str], _Stream]:
        """New bytes of every recording that is running or not yet read to its end."""
        streams: dict[tuple[str, str], _Stream] = {}
        if self._root is None:
            return streams
        conn = self._store.conn
        rows = conn.execute(
            "SELECT r.id, r.path, r.node, r.user, r.grant_id, r.state, r.command, r.argv,"
            " r.indexed_at"
            " FROM recordings r WHERE r.first_seen >= ? AND r.state IN"
            " ('running', 'complete', 'incomplete') AND NOT EXISTS (SELECT 1 FROM"
            " detect_streams d WHERE d.recording_id = r.id AND d.stream = '*')"
            " ORDER BY r.first_seen",
            (since,),
        ).fetchall()
        if not rows:
            return streams
        try:
            root_fd = iolog.open_store(self._root)
        except OSError:
            return streams
        budget = self._pass_bytes
        # Each recording gets its share of a pass: one session flooding its output must not
        # starve the others (a second session of the same attacker included).
        share = max(4 << 20, self._pass_bytes // len(rows))
        try:
            for rid, path, node, user, grant_id, state, command, argv, indexed_at in rows:
                rec = Recording(rid, node or "-", user or "-", grant_id)
                known = {
                    name: _Stream(offset, bytes(carry))
                    for name, offset, carry in conn.execute(
                        "SELECT stream, offset, carry FROM detect_streams WHERE recording_id = ?",
                        (rid,),
                    )
                }
                report.recordings += 1
                if "command" not in known:
                    findings.extend(
                        detector.command(rec, _command_text(command, argv), now.timestamp())
                    )
                    known["command"] = _Stream(dirty=True)
                try:
                    finished, used = _read_recording(
                        detector, root_fd, rec, path, known, min(budget, share), now, findings
                    )
                except IologError as exc:  # the indexer quarantines it; stop reading it
                    log.warning("detection skips recording %s: %s", rid, exc)
                    finished, used = True, 0
                budget -= used
                report.bytes += used
                # `incomplete` may be a session the indexer gave up on while it was idle
                # (a break-glass shell left open): keep watching it for a day.
                given_up = state == "incomplete" and indexed_at < to_text(now - WATCH_STALE)
                if finished and (state == "complete" or given_up):
                    known["*"] = _Stream(dirty=True)
                streams.update({(rid, name): s for name, s in known.items()})
                if budget <= 0:
                    break
        finally:
            os.close(root_fd)
        return streams


def _read_recording(
    detector: Detector,
    root_fd: int,
    rec: Recording,
    path: str,
    known: dict[str, _Stream],
    budget: int,
    now: datetime,
    findings: list[Finding],
) -> tuple[bool, int]:
    """Read each stream from its offset; True when every stream was read to its end."""
    used = 0
    at_end = True
    rec_fd = iolog.open_recording(root_fd, path)
    try:
        for name in (*_INPUT, *_OUTPUT):
            kind = "input" if name in _INPUT else "output"
            fd = iolog.open_file(rec_fd, name)
            if fd is None:
                continue
            stream = known.setdefault(name, _Stream())
            try:
                size = os.fstat(fd).st_size
                while stream.offset < size and used < budget:
                    data = os.pread(fd, min(READ_CHUNK, size - stream.offset), stream.offset)
                    if not data:
                        break
                    found, stream.carry = detector.stream(
                        rec, kind, data, stream.carry, now.timestamp(), stream.offset
                    )
                    findings.extend(found)
                    stream.offset += len(data)
                    stream.dirty = True
                    used += len(data)
                if stream.offset < size:
                    at_end = False
            finally:
                os.close(fd)
    finally:
        os.close(rec_fd)
    return at_end, used


def _command_text(command: str | None, argv: str | None) -> str:
    try:
        args = json.loads(argv) if argv else []
    except ValueError:
        args = []
    if isinstance(args, list) and args:
        return " ".join(str(a) for a in args)
    return command or ""


def drift_jobs(event: AuditEvent) -> list[tuple[str, str]]:
    """Drift work an event calls for: a baseline where a grant landed, a check where an
    elevated session's recording is finished."""
    if event.action == "grant.push":
        try:
            nodes = expand(str(event.details.get("live") or ""))
        except UsageError:
            return []
        return [("drift_baseline", f"{event.target}@{node}") for node in nodes]
    if event.action == "session.recorded" and event.details.get("grant"):
        return [("drift_check", event.target)]
    return []
