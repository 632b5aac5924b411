"""The responder: carries out what alerts ask for, and the drift checks, retrying what fails.

Actions are rows (alert_actions) written with their alert, so a restart picks
up whatever was not done; each is idempotent (locking a locked account,
revoking a revoked grant, ending sessions already gone are no-ops). Network
work happens outside store transactions.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from broker.audit import writer
from broker.core.errors import BrokerError
from broker.core.identity import Snapshot
from broker.core.timeutil import from_text
from broker.core.users import NamedUser
from broker.detect import alerts, drift, evidence
from broker.detect.engine import Finding
from broker.fleet import inventory, nodeprog, quarantine
from broker.fleet.pool import SshPool
from broker.grants.quarantine import Quarantines
from broker.grants.service import GrantService
from broker.mfa import service as mfa_service
from broker.mfa.model import MfaIdentity
from broker.policy.detection_rules import DriftRule
from broker.policy.model import Policy
from broker.sessions import service as sessions_service
from broker.sessions.provenance import Provenance
from broker.sessions.spools import SpoolCollector
from broker.store.db import Store

log = logging.getLogger("broker.detect")

# The broker's own sudoers drop-ins come and go with grants: its doing, not the session's.
BROKER_DROP_INS = "/etc/sudoers.d/broker_g*"
MAX_ATTEMPTS = 5
RETRY_BASE = timedelta(seconds=5)
BATCH = 50


@dataclass
class RespondReport:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    retried: list[str] = field(default_factory=list)
    alerts: list[int] = field(default_factory=list)


class ActionError(Exception):
    """An action that did not work this time (retried), with a one-line reason."""


@dataclass(frozen=True)
class ResponderParts:
    """What the responder acts through; the composition root (app.py) fills it in.
    Services are built on first use, as they are needed only when an action asks."""

    store: Callable[[], Store]
    pool: Callable[[], SshPool]
    snapshot: Callable[[datetime], Snapshot]
    mfa_lockout: timedelta
    grants: Callable[[], GrantService]
    quarantines: Callable[[], Quarantines]
    policy: Callable[[], Policy | None]
    spools: Callable[[], SpoolCollector]  # hook events of a node, collected on demand


class Responder:
    def __init__(self, parts: ResponderParts, enqueue: Callable[..., None] | None = None) -> None:
        self._parts = parts
        self._enqueue = enqueue
        self._kinds: dict[str, Callable[[int | None, str, datetime], str]] = {
            "lock_mfa": self._lock_mfa,
            "revoke_grants": self._revoke_grants,
            "end_session": self._end_session,
            "quarantine_node": self._quarantine_node,
            "drift_baseline": self._drift_baseline,
            "drift_check": self._drift_check,
        }

    def run_once(self, now: datetime) -> RespondReport:
        report = RespondReport()
        store = self._parts.store()
        for due in alerts.due_actions(store.conn, now, BATCH):
            alert_id, kind, target = due.alert_id, due.kind, due.target
            result, state, outcome = self._attempt(due, now, report)
            later = now + RETRY_BASE * (2**due.attempts)
            with store.transaction() as conn:
                alerts.action_tried(conn, due.id, state, result[:500], later, now)
                if alert_id is not None and kind not in ("drift_baseline", "drift_check"):
                    writer.record(
                        conn,
                        writer.EventInput(
                            alerts.DETECTOR,
                            f"alert.action.{kind}",
                            target,
                            outcome,
                            {"alert": alert_id, "result": result[:300]},
                        ),
                        now,
                    )
        return report

    def _attempt(
        self, due: alerts.DueAction, now: datetime, report: RespondReport
    ) -> tuple[str, str, str]:
        """(result, state, audit outcome) of one try. An action whose evidence is only a
        node's word is withheld (failed at once, outcome refused): evidence.py."""
        alert_id, kind, target = due.alert_id, due.kind, due.target
        label = f"{kind} {target}"
        work = self._kinds.get(kind)
        try:
            if work is None:
                raise ActionError(f"unknown action {kind}")
            refusal = self._withheld(alert_id, kind, target, now) if alert_id is not None else None
            if refusal is not None:
                report.failed.append(label)
                log.warning("action %s (alert %s) %s", label, alert_id, refusal)
                return refusal, "failed", "refused"
            result = work(alert_id, target, now)
            report.done.append(label)
            return result, "done", "ok"
        except Exception as exc:  # one action's failure must never block the others
            if not isinstance(exc, ActionError | BrokerError | OSError | ValueError):
                log.exception("action %s (alert %s) raised", label, alert_id)
            result = exc.one_line() if isinstance(exc, BrokerError) else str(exc) or repr(exc)
            state = "failed" if due.attempts + 1 >= MAX_ATTEMPTS or work is None else "pending"
            (report.failed if state == "failed" else report.retried).append(label)
            log.warning("action %s (alert %s) failed: %s", label, alert_id, result)
            return result, state, "failed"

    def _withheld(self, alert_id: int, kind: str, target: str, now: datetime) -> str | None:
        """Why this alert's action must not act (None: it may). Asked before every try."""
        conn = self._parts.store().conn
        origin = alerts.alert_origin(conn, alert_id)
        if origin is None:
            return "withheld: the alert is gone"
        basis = evidence.basis_of(
            origin.source, origin.recording_id, origin.actor, origin.action, origin.details
        )
        proof = None
        if basis.kind == "recording" and basis.recording_id:
            proof = self._recording_proof(basis.recording_id, now)
        elif basis.kind == "hook" and basis.reporter and kind in evidence.USER_ACTIONS:
            details = origin.details or {}
            at = str(details.get("at") or origin.at or "")
            proof = sessions_service.hook_provenance(
                conn, basis.reporter, str(details.get("user", "")), origin.target,
                from_text(at) if at else now,
            )  # fmt: skip
        return evidence.withheld(kind, target, basis, proof)

    def _recording_proof(self, recording_id: str, now: datetime) -> Provenance | None:
        """The recording's provenance; when not yet corroborated, its node's spool is
        collected first (over the pinned channel), so a real session's hook event is in."""
        conn = self._parts.store().conn
        row = sessions_service.recorded_row(conn, recording_id)
        if row is None:
            return None
        proof = sessions_service.recording_provenance(conn, row)
        if proof.corroborated or not row.get("node"):
            return proof
        self._parts.spools().collect_nodes([str(row["node"])], now)
        return sessions_service.recording_provenance(self._parts.store().conn, row)

    def _reason(self, alert_id: int | None) -> str:
        if alert_id is None:
            return "detection"
        rule = alerts.alert_rule(self._parts.store().conn, alert_id)
        return f"alert {alert_id}: {rule or '?'}"

    # ------------------------------------------------------------ alert actions

    def _lock_mfa(self, alert_id: int | None, user: str, now: datetime) -> str:
        """Lock for the MFA lockout time counted from the finding's event, unless an operator
        reset the account's MFA since then (a human decision a late lock must not undo)."""
        account = self._parts.snapshot(now).account(user)
        if account is None:
            raise ActionError(f"{user} is not in the directory snapshot")
        store = self._parts.store()
        since = alerts.alert_moment(store.conn, alert_id) or now
        until = since + self._parts.mfa_lockout
        if until <= now:
            return "the lockout time since the finding has passed: not locked"
        return mfa_service.lock_after_finding(
            store,
            ident=MfaIdentity(sid=account.sid, name=user),
            since=since,
            until=until,
            actor=alerts.DETECTOR,
            cause=self._reason(alert_id),
            now=now,
        )

    def _revoke_grants(self, alert_id: int | None, user: str, now: datetime) -> str:
        # The grants of the account (by objectSid) and any recorded under the event's name.
        account = self._parts.snapshot(now).account(user)
        who = NamedUser(user, None if account is None else account.sid)
        result = self._parts.grants().revoke(
            user=who, actor=alerts.DETECTOR, reason=self._reason(alert_id), now=now
        )
        if result.pending:
            raise ActionError(
                f"revoked {len(result.revoked)}; still to remove: "
                + ", ".join(f"{g}@{n}" for g, n in result.pending[:5])
            )
        killed = sum(o.killed for o in result.outcomes)
        return (
            f"revoked {', '.join(result.revoked) or 'nothing active'}; {killed} process(es) ended"
        )

    def _end_session(self, alert_id: int | None, target: str, now: datetime) -> str:
        node, _, grant_id = target.partition(":")
        found = inventory.targets_known(self._parts.store(), [node])
        if not found:
            raise ActionError(f"{node} is not an enrolled node")
        reply = nodeprog.call(
            self._parts.pool(), found[0], "end-sessions", {"grant_ids": [grant_id]}
        )
        if not reply.ok or reply.data is None:
            raise ActionError(f"{node}: {reply.error}")
        killed, errors = reply.data.get("killed"), reply.data.get("errors")
        if not isinstance(killed, list) or not all(isinstance(p, int) for p in killed):
            raise ActionError(f"{node}: an answer without the ended processes")
        if errors:
            raise ActionError(f"{node}: {str(errors)[:200]}")
        return f"ended {len(killed)} process(es) on {node}"

    def _quarantine_node(self, alert_id: int | None, node: str, now: datetime) -> str:
        conn = self._parts.store().conn
        if quarantine.held(conn, node):
            return f"{node} is already quarantined (its marker is retried by the scheduler)"
        if alerts.released_since(conn, alert_id, node):
            return f"{node} was released by a person since this alert: not quarantined again"
        result = self._parts.quarantines().quarantine(
            [node], reason=self._reason(alert_id), actor=alerts.DETECTOR, now=now
        )
        failed = [m for m in result.marks if not m.ok]
        if failed:
            raise ActionError(f"{node} quarantined, marker not placed yet: {failed[0].error}")
        return f"{node} quarantined; revoked {', '.join(result.revoked) or 'nothing'}"

    # ------------------------------------------------------------ drift

    def _scan(self, node: str) -> drift.Manifest:
        found = inventory.targets_known(self._parts.store(), [node])
        if not found:
            raise ActionError(f"{node} is not an enrolled node")
        reply = nodeprog.call(self._parts.pool(), found[0], "drift-scan", {})
        if not reply.ok or reply.data is None:
            raise ActionError(f"{node}: {reply.error}")
        return drift.parse_scan(reply.data)

    def _drift_baseline(self, alert_id: int | None, target: str, now: datetime) -> str:
        grant_id, _, node = target.partition("@")
        manifest = self._scan(node)
        with self._parts.store().transaction() as conn:
            alerts.put_baseline(conn, grant_id, node, now, manifest.to_json())
        return f"baseline of {len(manifest.entries)} entries"

    def _drift_check(self, alert_id: int | None, recording_id: str, now: datetime) -> str:
        """Compare the node with the baseline its grant's push left; the scan becomes the
        next baseline, and what the rule does not expect is a finding."""
        conn = self._parts.store().conn
        node, user, grant_id = alerts.session_subject(conn, recording_id) or (None, None, None)
        if not node or not grant_id:
            return "no grant behind this session: nothing to compare"
        proof = self._recording_proof(recording_id, now)
        if proof is None or not proof.corroborated:
            # The baseline is not moved on a node's word: a forged recording naming another
            # node must not hide what a real session there leaves behind.
            why = "not indexed" if proof is None else proof.reason
            with self._parts.store().transaction() as tx:
                _store_drift(tx, recording_id, grant_id, node, now, [], 0,
                             f"not compared: the recording is uncorroborated ({why})")  # fmt: skip
            return f"uncorroborated: {why}"
        base = alerts.baseline(conn, grant_id, node)
        if base is None:
            with self._parts.store().transaction() as tx:
                _store_drift(tx, recording_id, grant_id, node, now, [], 0, "no baseline was taken")
            return "no baseline"
        current = self._scan(node)
        session = _Session(recording_id, user, node, grant_id)
        if current.truncated:
            return self._drift_truncated(session, now)
        return self._drift_compare(session, drift.Manifest.from_json(base), current, now)

    def _drift_truncated(self, session: _Session, now: datetime) -> str:
        """Root can force a truncated scan (flooding a scanned directory): never move the
        baseline past it, and say so loudly."""
        rule = self._drift_rule()
        finding = None
        if rule.enabled:
            finding = _drift_finding(
                rule,
                session,
                f"drift check of session {session.recording_id} of {session.user} on"
                f" {session.node} is incomplete: the node's scan was truncated",
                now,
            )
        with self._parts.store().transaction() as tx:
            _store_drift(tx, *session.keys(), now, [], 0, "scan truncated")
            if finding is not None:
                alerts.raise_alert(tx, finding, now, self._enqueue)
        return "scan truncated: baseline kept"

    def _drift_compare(
        self, session: _Session, base: drift.Manifest, current: drift.Manifest, now: datetime
    ) -> str:
        rule = self._drift_rule()
        changes = [
            c for c in drift.diff(base, current) if not fnmatch.fnmatchcase(c.path, BROKER_DROP_INS)
        ]
        odd = drift.unexpected(changes, rule.expected)
        alert_id = None
        with self._parts.store().transaction() as tx:
            alerts.move_baseline(tx, session.grant_id, session.node, now, current.to_json())
            _store_drift(tx, *session.keys(), now, changes, len(odd), None)
            if odd and rule.enabled:
                finding = _drift_finding(
                    rule,
                    session,
                    f"session {session.recording_id} of {session.user} on {session.node} left"
                    f" {len(odd)} unexpected change(s): {odd[0].kind} {odd[0].path}"[:500],
                    now,
                    # Paths only: the lines (a cron entry may hold a token) stay with the
                    # session's drift record (`broker sessions show`).
                    {"changes": [f"{c.kind} {c.path}" for c in odd[:50]]},
                )
                alert_id = alerts.raise_alert(tx, finding, now, self._enqueue)
        return f"{len(changes)} change(s), {len(odd)} unexpected" + (
            f"; alert {alert_id}" if alert_id else ""
        )

    def _drift_rule(self) -> DriftRule:
        policy = self._parts.policy()
        return policy.detection.drift if policy is not None else DriftRule()


@dataclass(frozen=True)
class _Session:
    """The elevated session a drift check is about."""

    recording_id: str
    user: str | None
    node: str
    grant_id: str

    def keys(self) -> tuple[str, str, str]:
        return self.recording_id, self.grant_id, self.node


def _drift_finding(
    rule: DriftRule,
    session: _Session,
    message: str,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> Finding:
    return Finding(
        "drift",
        rule.severity,
        rule.actions,
        message,
        now.timestamp(),
        f"session:{session.recording_id}:drift",
        user=session.user,
        node=session.node,
        grant_id=session.grant_id,
        recording_id=session.recording_id,
        details=details or {},
    )


def _store_drift(
    conn: sqlite3.Connection,
    recording_id: str,
    grant_id: str,
    node: str,
    now: datetime,
    changes: list[drift.Change],
    unexpected: int,
    error: str | None,
) -> None:
    alerts.put_session_drift(
        conn, recording_id, grant_id, node, now, [_change_json(c) for c in changes],
        unexpected, error,
    )  # fmt: skip


def _change_json(change: drift.Change) -> dict[str, Any]:
    data = dataclasses.asdict(change)
    data["summary"] = change.summary()
    return data
