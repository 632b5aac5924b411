"""One attempt at a second factor: its audit events, failure counting and lockout.

A flow's transaction body returns either its result or the refusal to raise;
`committed` commits first and raises after, so a failure row, its audit event
and any lock survive the refusal they belong to.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from broker.audit import writer
from broker.core import counters
from broker.core.errors import IntegrityError, RefusedError
from broker.core.timeutil import to_sentence, to_text
from broker.mfa import codes, rows, sealing
from broker.mfa.model import MfaIdentity, MfaRules
from broker.store.db import Store

T = TypeVar("T")


@dataclass(frozen=True)
class Attempt:
    """Who is trying what; carried through one flow for its audit events."""

    ident: MfaIdentity
    rules: MfaRules
    actor: str
    now: datetime
    action: str
    purpose: str | None = None

    def audit(self, outcome: str, **details: Any) -> writer.EventInput:
        info: dict[str, Any] = {"sid": self.ident.sid}
        if self.purpose is not None:
            info["purpose"] = self.purpose
        info.update(details)
        return writer.EventInput(self.actor, self.action, self.ident.name, outcome, info)


def committed(store: Store, body: Callable[[sqlite3.Connection], T | RefusedError]) -> T:
    """Run `body` in a write transaction; commit, then raise the refusal it returned, if any."""
    with store.transaction() as conn:
        outcome = body(conn)
    if isinstance(outcome, RefusedError):
        raise outcome
    return outcome


def when(moment: datetime) -> str:
    """A lock's end as people read it, in UTC like every broker time."""
    return to_sentence(moment)


def lock_error(name: str, lock: rows.Lock, message: str | None = None) -> RefusedError:
    text = f"MFA for {name} is locked until {when(lock.until)} after {lock.failures} failed codes"
    return RefusedError(
        text if message is None else f"{message}; {text}",
        fix=f"wait, or ask an operator for `broker mfa reset {name}`",
    )


def refuse(
    conn: sqlite3.Connection, attempt: Attempt, reason: str, error: RefusedError, *, count: bool
) -> RefusedError:
    """Audit a refusal; a counted one may lock the account. Returns the error to raise."""
    writer.record(conn, attempt.audit("refused", reason=reason), attempt.now)
    if not count:
        return error
    rules, sid = attempt.rules, attempt.ident.sid
    counters.bump(counters.MFA_FAILURE)
    failures = rows.add_failure(conn, sid, attempt.now, rules.failure_window)
    if failures < rules.max_failures:
        return error
    lock = rows.Lock(attempt.now + rules.lockout, failures)
    rows.set_lock(conn, sid, lock.until, failures)
    counters.bump(counters.MFA_LOCK)
    event = writer.EventInput(
        attempt.actor,
        "mfa.lock",
        attempt.ident.name,
        details={"sid": sid, "until": to_text(lock.until), "failures": failures},
    )
    writer.record(conn, event, attempt.now)
    return lock_error(attempt.ident.name, lock, error.message)


def refuse_if_locked(conn: sqlite3.Connection, attempt: Attempt) -> RefusedError | None:
    lock = rows.active_lock(conn, attempt.ident.sid, attempt.now)
    if lock is None:
        return None
    return refuse(conn, attempt, "locked", lock_error(attempt.ident.name, lock), count=False)


def open_secret(key: bytes, ident: MfaIdentity, factor: rows.Factor) -> str:
    try:
        return sealing.unseal(key, factor.sealed, ident.sid.encode("utf-8")).decode("ascii")
    except (IntegrityError, UnicodeDecodeError):
        raise IntegrityError(
            f"the stored MFA secret of {ident.name} failed its integrity check",
            fix=f"check `broker audit verify`; then `broker mfa reset {ident.name}` and re-enroll",
        ) from None


def totp_step(
    conn: sqlite3.Connection, key: bytes, code: str, attempt: Attempt, state: str
) -> int | RefusedError:
    """The accepted step for `code` against the factor in `state`, or the refusal."""
    name = attempt.ident.name
    locked = refuse_if_locked(conn, attempt)
    if locked is not None:
        return locked
    factor = rows.factor(conn, attempt.ident.sid)
    if factor is None or factor.state != state:
        if state == "pending":
            missing = RefusedError(
                f"no MFA enrollment is pending for {name}", fix="start one with `broker mfa enroll`"
            )
        else:
            missing = RefusedError(
                f"MFA is not enrolled for {name}", fix="enroll with `broker mfa enroll`"
            )
        reason = "no pending enrollment" if state == "pending" else "not enrolled"
        return refuse(conn, attempt, reason, missing, count=False)
    try:
        codes.parse_code(code)
    except RefusedError as exc:
        return refuse(conn, attempt, "malformed code", exc, count=True)
    secret = open_secret(key, attempt.ident, factor)
    step = codes.matching_step(secret, code, attempt.now, attempt.rules.window_steps)
    if (
        step is None
        and factor.last_step is not None
        and codes.shown_at(secret, code, factor.last_step)
    ):
        step = factor.last_step  # the last code accepted, now out of the window: a replay
    if step is None:
        wrong = RefusedError(
            "wrong code", fix="type the code your authenticator shows now (check its clock)"
        )
        return refuse(conn, attempt, "wrong code", wrong, count=True)
    if factor.last_step is not None and step <= factor.last_step:
        replay = RefusedError("this code was already used; wait for the next one")
        return refuse(conn, attempt, "replayed code", replay, count=True)
    return step
