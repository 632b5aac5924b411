"""A store with a month of broker activity, written through the services' own rows modules
and MFA's refusal path, and a report document of the shape `broker report` writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from broker.audit import writer
from broker.core.errors import RefusedError
from broker.core.timeutil import to_text
from broker.grants import rows as grant_rows
from broker.grants.model import Grant, Request
from broker.keytabs import rows as keytab_rows
from broker.mfa import attempts
from broker.mfa.model import MfaIdentity, MfaRules
from broker.sessions import rows as session_rows
from broker.store.db import Store
from broker.store.migrations import MIGRATIONS, apply

UNTIL = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SINCE = UNTIL - timedelta(days=30)
ZONE_OF = {"cn01": "compute", "cn02": "compute", "st01": "storage", "mg01": "management"}


def day(n: int, hour: int = 10, minute: int = 0) -> datetime:
    """`n` days before the period's end, at hh:mm."""
    return (UNTIL - timedelta(days=n)).replace(hour=hour, minute=minute)


def open_store(path: Path) -> Store:
    store = Store.open(path, owner=None)
    with store.transaction() as conn:
        for migration in MIGRATIONS:
            apply(conn, migration, "2026-01-01T00:00:00.000000Z")
    return store


def _grant(grant_id: str, created: datetime, request_id: str | None = None) -> Grant:
    return Grant(
        id=grant_id, user="alice", sid="S-1-5-21-1", role="admin", runas="root",
        commands="ALL", command_sets=(), nodes="-", not_before=created,
        not_after=created + timedelta(hours=1), reason="maintenance", approvers=(),
        policy_sha256="0" * 64, login=True, workloads=False, max_sessions=1,
        request_id=request_id, created_at=created, created_by="alice", state="expired",
    )  # fmt: skip


# (grant, created, nodes): g1 and g2 on day 20 (g2 spans two zones), g3 on an unzoned node,
# g4 before the period.
GRANTS = (
    ("g1", day(20), ("cn01", "cn02")),
    ("g2", day(20, 14), ("cn01", "st01")),
    ("g3", day(10), ("xx99",)),
    ("g4", day(40), ("cn01",)),
)


def _requests(conn: Any) -> None:
    """r1 waited 7 minutes for g1, r2 two hours for g3; r3 was denied; r4 decided earlier."""

    def request(rid: str, created: datetime) -> Request:
        return Request(
            id=rid, user="alice", sid="S-1-5-21-1", nodes="-", role="admin", runas="root",
            commands="ALL", duration_s=3600, reason="maintenance", policy_sha256="0" * 64,
            approvals_needed=1, approver_groups=("ops",), state="pending",
            created_at=created, expires_at=created + timedelta(days=1), decided_at=None,
            decided_by=None, decision_reason=None, grant_id=None,
        )  # fmt: skip

    for rid, created, decided, state, grant in (
        ("r1", day(20, 9, 53), day(20), "granted", "g1"),
        ("r2", day(10, 8), day(10), "granted", "g3"),
        ("r3", day(10, 8), day(10, 9), "denied", None),
        ("r4", day(40, 8), day(40), "granted", "g4"),
    ):
        grant_rows.insert_request(conn, request(rid, created))
        grant_rows.decide_request(
            conn, rid, state, by="bob", reason="ok", now=decided, grant_id=grant
        )


def _sessions(conn: Any) -> None:
    """30 s on cn01, 20 min on st01, one still running on cn02."""
    for rid, node, start, seconds in (
        ("s1", "cn01", day(19), 30),
        ("s2", "st01", day(19, 11), 1200),
        ("s3", "cn02", day(1), None),
    ):
        end = None if seconds is None else start + timedelta(seconds=seconds)
        values: dict[str, object] = {
            "state": "running" if end is None else "complete",
            "node": node,
            "user": "alice",
            "started_at": to_text(start),
            "ended_at": None if end is None else to_text(end),
        }
        session_rows.upsert(conn, rid, f"/var/log/sudo-io/{rid}", start, values)


def _mfa(store: Store) -> None:
    """Five wrong codes on day 5 (the fifth locks the account), one try while locked, and a
    refusal that is no failed factor (not enrolled)."""
    rules = MfaRules(max_failures=5)
    ident = MfaIdentity("S-1-5-21-2", "carol")
    for minute in range(5):
        attempt = attempts.Attempt(ident, rules, "carol", day(5, 9, minute), "mfa.verify")
        with store.transaction() as conn:
            attempts.refuse(conn, attempt, "wrong code", RefusedError("x"), count=True)
    locked = attempts.Attempt(ident, rules, "carol", day(5, 9, 6), "mfa.verify")
    with store.transaction() as conn:
        assert attempts.refuse_if_locked(conn, locked) is not None
    stranger = attempts.Attempt(MfaIdentity("S-9", "dave"), rules, "dave", day(2), "mfa.verify")
    with store.transaction() as conn:
        attempts.refuse(conn, stranger, "not enrolled", RefusedError("x"), count=False)


def _keytabs(conn: Any) -> None:
    """svc-a (on st01) finished a rotation 3 days before the end and one after it; svc-b (on
    cn01) was never rotated."""
    for name, node in (("svc-a", "st01"), ("svc-b", "cn01")):
        keytab_rows.upsert_account(conn, name, name)
        keytab_rows.record_node(conn, name, node, day(30), kvnos=[1])
    for done in (UNTIL - timedelta(days=3), UNTIL + timedelta(days=1)):
        rotation = keytab_rows.start_rotation(conn, "svc-a", 1, 2, ["st01"], "broker", done)
        keytab_rows.move(conn, rotation, "done", done)
        keytab_rows.record_success(conn, "svc-a", 2, done, rotated=True)


def seed(store: Store) -> None:
    with store.transaction() as conn:
        for grant_id, created, nodes in GRANTS:
            grant_rows.insert_grant(conn, _grant(grant_id, created), nodes)
            writer.record(conn, writer.EventInput("alice", "grant.issue", grant_id), created)
        _requests(conn)
        _sessions(conn)
        _keytabs(conn)
    _mfa(store)


def document(charts: dict[str, Any]) -> dict[str, Any]:
    """A report document of the shape `broker report controls` writes, with values that
    would break a careless page (markup, a closing script tag, quotes)."""
    return {
        "schema": "broker-report/1",
        "generated_at": "2026-11-30T12:00:05Z",
        "broker": "broker01.hpc.test",
        "period": {"since": "2026-10-31T12:00:00Z", "until": "2026-11-30T12:00:00Z"},
        "zone": None,
        "audit_head": {"seq": 1234, "hash": "9f" * 32},
        "controls": [
            {
                "id": "AC-2",
                "title": "Account management",
                "enforces": "Only accounts in mapped AD groups elevate; <b>not</b> others.",
                "status": "ok",
                "evidence": [
                    {"label": "accounts reviewed", "value": 42, "command": "broker accounts review"},
                    {"label": "share mapped", "value": 0.95, "command": "broker accounts list"},
                ],
                "attention": [],
                "details": {"reviewed": 42},
            },
            {
                "id": "IA-2",
                "title": "Identification and authentication",
                "enforces": "Every elevation needs a second factor.",
                "status": "attention",
                "evidence": [
                    {"label": "MFA failures", "value": 5, "command": "broker audit list --action mfa.verify"},
                ],
                "attention": [
                    {"item": "carol </script><script>alert(1)</script> locked", "command": "broker mfa status carol"},
                ],
                "details": {},
            },
            {
                "id": "SC-8",
                "title": "Transmission confidentiality",
                "enforces": "Recordings travel over TLS.",
                "status": "not applicable",
                "evidence": [],
                "attention": [],
                "details": {"note": "no log server configured & that's \"fine\""},
            },
        ],
        "charts": charts,
        "signature": {"alg": "ed25519", "key_id": "report-2026-a1b2", "value": "c2lnbmF0dXJl"},
    }  # fmt: skip
