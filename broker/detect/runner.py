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

from broker.core.errors import UnavailableError
from broker.core.timeutil import to_text
from broker.detect import alerts
from broker.detect.engine import AuditEvent, Detector, Finding, Recording, new_memory
from broker.detect.eventdata import nodes_of
from broker.fleet import quarantine
from broker.policy.detection_rules import Detection
from broker.sessions import iolog
from broker.sessions.iolog import IologError
from broker.store.db import Store

log = logging.getLogger("broker.detect")

BATCH = 50_000  # audit sequence numbers per pass at most (the rest next pass, at once)
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
        # The state this runner committed last, as stored and as parsed: when the store
        # still holds exactly that text, the next pass reuses it (no 250 kB json.loads).
        self._saved: tuple[str, dict[str, Any]] | None = None

    def run_once(
        self, detection: Detection, now: datetime, exempt_users: Iterable[str] = ()
    ) -> PassReport:
        started = time.monotonic()
        report = PassReport()
        conn = self._store.conn
        state = self._load_state(conn, now)
        detector = Detector(
            detection,
            state["memory"],
            quarantined=quarantine.in_force(conn),
            exempt_users=exempt_users,
        )
        findings: list[Finding] = []
        jobs: list[tuple[str, str]] = []
        cursor = int(state["cursor"])
        # The next BATCH sequence numbers: only events some rule or drift job reads leave
        # SQLite (session closes, directory syncs and the like stay there), all are passed.
        top = min(cursor + BATCH, alerts.last_audit_seq(conn))
        actions, refused = detector.actions()
        audit = detector.audit
        for event in alerts.audit_between(conn, cursor, top, (*actions, *DRIFT), refused):
            findings.extend(audit(event))
            if event.action in DRIFT:
                jobs.extend(drift_jobs(event))
        report.events = max(0, top - cursor)
        state["cursor"] = max(cursor, top)
        streams = self._scan_sessions(detector, state["since"], now, findings, report)
        detector.prune(now.timestamp())
        with self._store.transaction() as tx:
            for finding in findings:
                report.alerts.append(alerts.raise_alert(tx, finding, now, self._enqueue))
            alerts.queue_jobs(tx, jobs, now)
            report.jobs = len(jobs)
            saved = alerts.save_state(tx, state)
            for (rid, name), stream in streams.items():
                if stream.dirty:
                    alerts.save_stream(tx, rid, name, stream.offset, stream.carry)
        self._saved = (saved, state)  # committed
        report.seconds = time.monotonic() - started
        if detector.content.unavailable is not None and self._root is not None:
            # Audit events were judged and committed; session bytes stay unread (their
            # offsets did not move) until the engine runs. Fail the pass, so the scheduler
            # logs why and /v1/health shows the detector stalled, rather than go quiet.
            raise UnavailableError(
                f"session content is not being judged: {detector.content.unavailable}",
                fix="install the locked hyperscan wheel on a CPU with SSSE3 (docs/detection.md)",
            )
        return report

    def _load_state(self, conn: sqlite3.Connection, now: datetime) -> dict[str, Any]:
        """The cursor, start and rule memory as committed; a first pass watches from now."""
        text = alerts.load_state_text(conn)
        saved, self._saved = self._saved, None  # mutated from here until committed again
        if text is None:
            top = alerts.last_audit_seq(conn)
            return {"cursor": top, "since": to_text(now), "memory": new_memory()}
        if saved is not None and saved[0] == text:
            return saved[1]
        return dict(json.loads(text))

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
        if self._root is None or detector.content.unavailable is not None:
            return streams
        unread = alerts.recordings_to_read(self._store.conn, since)
        if not unread:
            return streams
        try:
            root_fd = iolog.open_store(self._root)
        except OSError:
            return streams
        budget = self._pass_bytes
        # Each recording gets its share of a pass: one session flooding its output must not
        # starve the others (a second session of the same attacker included).
        share = max(4 << 20, self._pass_bytes // len(unread))
        try:
            for row in unread:
                known, used = self._scan_one(
                    detector, root_fd, row, min(budget, share), now, findings
                )
                budget -= used
                report.recordings += 1
                report.bytes += used
                streams.update({(row.id, name): s for name, s in known.items()})
                if budget <= 0:
                    break
        finally:
            os.close(root_fd)
        return streams

    def _scan_one(
        self,
        detector: Detector,
        root_fd: int,
        row: alerts.Unread,
        budget: int,
        now: datetime,
        findings: list[Finding],
    ) -> tuple[dict[str, _Stream], int]:
        """One recording: its command once, then each stream from where the last pass left
        it. Returns its streams (`*` once it is read through) and the bytes read."""
        rec = Recording(row.id, row.node or "-", row.user or "-", row.grant_id)
        known = {
            name: _Stream(offset, carry)
            for name, offset, carry in alerts.stream_offsets(self._store.conn, row.id)
        }
        if "command" not in known:
            text = _command_text(row.command, row.argv)
            findings.extend(detector.command(rec, text, now.timestamp()))
            known["command"] = _Stream(dirty=True)
        try:
            finished, used = _read_recording(
                detector, root_fd, rec, row.path, known, budget, now, findings
            )
        except IologError as exc:  # the indexer quarantines it; stop reading it
            log.warning("detection skips recording %s: %s", row.id, exc)
            finished, used = True, 0
        # `incomplete` may be a session the indexer gave up on while it was idle
        # (a break-glass shell left open): keep watching it for a day.
        given_up = row.state == "incomplete" and row.indexed_at < to_text(now - WATCH_STALE)
        if finished and (row.state == "complete" or given_up):
            known["*"] = _Stream(dirty=True)
        return known, used


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


DRIFT = ("grant.push", "session.recorded")  # the actions drift_jobs reads


def drift_jobs(event: AuditEvent) -> list[tuple[str, str]]:
    """Drift work an event calls for: a baseline where a grant landed, a check where an
    elevated session's recording is finished."""
    if event.action == "grant.push":
        nodes = nodes_of(str(event.details.get("live") or ""))
        return [("drift_baseline", f"{event.target}@{node}") for node in nodes]
    if event.action == "session.recorded" and event.details.get("grant"):
        return [("drift_check", event.target)]
    return []
