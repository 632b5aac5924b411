"""MFA flows over the store: enroll, activate, verify, recovery codes, reset, status.

Every state change runs in one `Store.transaction()` (BEGIN IMMEDIATE) with
its audit event, so reading `last_step` and writing the accepted one cannot
interleave with another process: a code is accepted once, even across
restarts. Refusals are committed (failure, audit, maybe a lock) before they
are raised. Secrets and codes never reach audit details, messages or reprs.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime

import pyotp

from broker.audit import writer
from broker.audit.query import happened_since
from broker.core.errors import RefusedError
from broker.core.timeutil import from_text, to_text
from broker.mfa import attempts, codes, recovery, rows, sealing
from broker.mfa.attempts import Attempt
from broker.mfa.model import Enrollment, MfaIdentity, MfaRules, MfaStatus
from broker.store.db import Store

__all__ = [
    "Enrollment",
    "MfaIdentity",
    "MfaRules",
    "MfaStatus",
    "activate",
    "begin_enrollment",
    "lock_after_finding",
    "reset",
    "status",
    "use_recovery_code",
    "verify",
]


def status(
    conn: sqlite3.Connection, *, ident: MfaIdentity, now: datetime, rules: MfaRules | None = None
) -> MfaStatus:
    """What `broker mfa status` shows; reads only."""
    window = (rules or MfaRules()).failure_window
    factor = rows.factor(conn, ident.sid)
    lock = rows.active_lock(conn, ident.sid, now)
    active = factor is not None and factor.state == "active"
    return MfaStatus(
        enrolled=active,
        pending=factor is not None and factor.state == "pending",
        activated_at=from_text(factor.activated_at) if factor and factor.activated_at else None,
        last_used_at=from_text(factor.last_used_at) if factor and factor.last_used_at else None,
        recovery_codes_left=rows.recovery_left(conn, ident.sid) if active else 0,
        locked_until=lock.until if lock else None,
        recent_failures=rows.recent_failures(conn, ident.sid, now, window),
    )


def begin_enrollment(
    store: Store, *, key: bytes, ident: MfaIdentity, rules: MfaRules, actor: str, now: datetime
) -> Enrollment:
    """A new pending secret (replacing an older pending one); refused over an active factor."""
    secret = str(pyotp.random_base32(32))
    sealed = sealing.seal(key, secret.encode("ascii"), ident.sid.encode("utf-8"))
    enrollment = Enrollment(secret, codes.provisioning_uri(secret, ident.name, rules.issuer))
    attempt = Attempt(ident, rules, actor, now, "mfa.enroll.start")

    def body(conn: sqlite3.Connection) -> Enrollment | RefusedError:
        factor = rows.factor(conn, ident.sid)
        if factor is not None and factor.state == "active":
            error = RefusedError(
                f"MFA is already enrolled for {ident.name}",
                fix=f"an operator can reset it with `broker mfa reset {ident.name}`",
            )
            return attempts.refuse(conn, attempt, "already enrolled", error, count=False)
        rows.put_pending(conn, ident.sid, ident.name, sealed, now)
        writer.record(conn, attempt.audit("ok"), now)
        return enrollment

    return attempts.committed(store, body)


def _plausible_activation(store: Store, ident: MfaIdentity, code: str, now: datetime) -> bool:
    """A cheap read-only guess whether activation can succeed (worth hashing codes for)."""
    try:
        codes.parse_code(code)
    except RefusedError:
        return False
    factor = rows.factor(store.conn, ident.sid)
    pending = factor is not None and factor.state == "pending"
    return pending and rows.active_lock(store.conn, ident.sid, now) is None


def activate(
    store: Store,
    *,
    key: bytes,
    ident: MfaIdentity,
    code: str,
    rules: MfaRules,
    actor: str,
    now: datetime,
) -> list[str]:
    """Activate the pending factor with a first code; the 10 recovery codes, shown once."""
    fresh = recovery.generate()
    # scrypt takes ~30 ms a code: hash before taking the write lock, when it looks worth it.
    hashes = (
        [recovery.hash_code(c) for c in fresh]
        if _plausible_activation(store, ident, code, now)
        else None
    )
    attempt = Attempt(ident, rules, actor, now, "mfa.enroll.activate")

    def body(conn: sqlite3.Connection) -> list[str] | RefusedError:
        step = attempts.totp_step(conn, key, code, attempt, "pending")
        if isinstance(step, RefusedError):
            return step
        stored = hashes if hashes is not None else [recovery.hash_code(c) for c in fresh]
        rows.activate(conn, ident.sid, step, now, stored)
        writer.record(conn, attempt.audit("ok", recovery_codes=len(stored)), now)
        return fresh

    return attempts.committed(store, body)


def verify(
    store: Store,
    *,
    key: bytes,
    ident: MfaIdentity,
    code: str,
    rules: MfaRules,
    actor: str,
    now: datetime,
    purpose: str,
) -> int:
    """Accept a TOTP code once; the accepted time step. Refusals are counted and audited."""
    attempt = Attempt(ident, rules, actor, now, "mfa.verify", purpose)

    def body(conn: sqlite3.Connection) -> int | RefusedError:
        step = attempts.totp_step(conn, key, code, attempt, "active")
        if isinstance(step, RefusedError):
            return step
        rows.accept_step(conn, ident.sid, step, now)
        writer.record(conn, attempt.audit("ok"), now)
        return step

    return attempts.committed(store, body)


# Recovery codes cost ~30 ms of scrypt each, held under the GIL, and an attempt hashes
# every unused code: bound how many attempts hash at once, so guesses cannot starve the
# daemon's other requests. One check per sid at a time (a second is refused at once);
# at most RECOVERY_CHECKS_AT_ONCE in the process (others wait up to RECOVERY_WAIT_S).
RECOVERY_CHECKS_AT_ONCE = 2
RECOVERY_WAIT_S = 10.0
_recovery_hashing = threading.BoundedSemaphore(RECOVERY_CHECKS_AT_ONCE)
_recovery_sids: set[str] = set()
_recovery_sids_lock = threading.Lock()


@contextmanager
def _recovery_turn(sid: str) -> Iterator[bool]:
    """Whether this is the only recovery code check of `sid` in progress; held while inside."""
    with _recovery_sids_lock:
        busy = sid in _recovery_sids
        _recovery_sids.add(sid)
    try:
        yield not busy
    finally:
        if not busy:
            with _recovery_sids_lock:
                _recovery_sids.discard(sid)


def _plausible_recovery(store: Store, ident: MfaIdentity, now: datetime) -> bool:
    """A short read: an active factor and no lock (worth hashing codes for)."""
    factor = rows.factor(store.conn, ident.sid)
    active = factor is not None and factor.state == "active"
    return active and rows.active_lock(store.conn, ident.sid, now) is None


def _matching_recovery(store: Store, sid: str, canonical: str) -> tuple[int, str] | None:
    """The unused code `canonical` is, hashing against every one (no early exit)."""
    matched: tuple[int, str] | None = None
    for idx, digest in rows.unused_recovery(store.conn, sid):
        if recovery.matches(canonical, digest):
            matched = (idx, digest)
    return matched


def use_recovery_code(
    store: Store,
    *,
    ident: MfaIdentity,
    code: str,
    rules: MfaRules,
    actor: str,
    now: datetime,
    purpose: str | None = None,
) -> int:
    """Accept one unused recovery code, once; how many are left.

    Codes are hashed only for an account that has an active factor and no
    lock (a locked or unenrolled account is refused without hashing), one
    check per account at a time and a few per process.
    """
    try:
        canonical: str | None = recovery.normalise(code)
        malformed: RefusedError | None = None
    except RefusedError as exc:
        canonical, malformed = None, exc
    attempt = Attempt(ident, rules, actor, now, "mfa.recovery.use", purpose)
    check = _RecoveryCheck(attempt, malformed, _plausible_recovery(store, ident, now))
    if not check.plausible:  # locked or not enrolled: refused (and audited) without hashing
        return attempts.committed(store, check.judge)
    with _recovery_turn(ident.sid) as mine:
        if not mine:
            busy = RefusedError(
                f"another recovery code check for {ident.name} is in progress",
                fix="wait for it to finish, then try again",
            )
            return _refused_at_once(store, attempt, "check in progress", busy)
        if canonical is not None:
            # scrypt outside the write lock; `judge` re-checks the row is still unused.
            if not _recovery_hashing.acquire(timeout=RECOVERY_WAIT_S):
                crowded = RefusedError(
                    "too many recovery code checks are in progress", fix="try again in a minute"
                )
                return _refused_at_once(store, attempt, "busy", crowded)
            try:
                check.matched = _matching_recovery(store, ident.sid, canonical)
            finally:
                _recovery_hashing.release()
        # Still this sid's turn: the failure is counted before its next check starts.
        return attempts.committed(store, check.judge)


@dataclass
class _RecoveryCheck:
    """One recovery code attempt, judged inside the write transaction."""

    attempt: Attempt
    malformed: RefusedError | None
    plausible: bool  # active factor, no lock, before hashing
    matched: tuple[int, str] | None = None  # (index, hash) of the code it matched, if any

    def judge(self, conn: sqlite3.Connection) -> int | RefusedError:
        """Codes left, or the refusal (recorded, counted as a failure where it is a guess)."""
        attempt, ident, now = self.attempt, self.attempt.ident, self.attempt.now
        locked = attempts.refuse_if_locked(conn, attempt)
        if locked is not None:
            return locked
        factor = rows.factor(conn, ident.sid)
        if factor is None or factor.state != "active":
            missing = RefusedError(
                f"MFA is not enrolled for {ident.name}", fix="enroll with `broker mfa enroll`"
            )
            return attempts.refuse(conn, attempt, "not enrolled", missing, count=False)
        if self.malformed is not None:
            return attempts.refuse(
                conn, attempt, "malformed recovery code", self.malformed, count=True
            )
        if not self.plausible:
            # Locked or unenrolled a moment ago, so nothing was hashed: not a guess.
            changed = RefusedError(
                f"the MFA state of {ident.name} changed during the check", fix="try again"
            )
            return attempts.refuse(conn, attempt, "state changed", changed, count=False)
        if self.matched is None or not rows.use_recovery(conn, ident.sid, *self.matched, now):
            wrong = RefusedError(
                "wrong or already used recovery code", fix="each code works once; try another"
            )
            return attempts.refuse(conn, attempt, "wrong recovery code", wrong, count=True)
        left = rows.recovery_left(conn, ident.sid)
        writer.record(conn, attempt.audit("ok", left=left), now)
        return left


def _refused_at_once(store: Store, attempt: Attempt, reason: str, error: RefusedError) -> int:
    """Refuse (audited, not counted as a failure) before any code was checked."""
    return attempts.committed(
        store, lambda conn: attempts.refuse(conn, attempt, reason, error, count=False)
    )


def reset(store: Store, *, ident: MfaIdentity, actor: str, now: datetime) -> bool:
    """Remove the factor, recovery codes, failures and lock (operator); whether any existed."""
    with store.transaction() as conn:
        removed = rows.delete_all(conn, ident.sid)
        event = writer.EventInput(
            actor, "mfa.reset", ident.name, details={"sid": ident.sid, "removed": removed}
        )
        writer.record(conn, event, now)
    return removed


def lock_after_finding(
    store: Store,
    *,
    ident: MfaIdentity,
    since: datetime,
    until: datetime,
    actor: str,
    cause: str,
    now: datetime,
) -> str:
    """Lock `ident` until `until` for a detection finding made at `since`; what was done.

    An operator's reset since the finding is a human decision a late lock must not undo,
    and a longer lock already in place stays.
    """
    with store.transaction() as conn:
        if happened_since(conn, "mfa.reset", ident.name, to_text(since)):
            return "MFA was reset by an operator since the finding: not locked again"
        current = rows.active_lock(conn, ident.sid, now)
        if current is not None and current.until >= until:
            return f"already locked until {to_text(current.until)}"
        failures = current.failures if current is not None else 0
        rows.set_lock(conn, ident.sid, until, failures)
        details = {"sid": ident.sid, "until": to_text(until), "cause": cause}
        writer.record(conn, writer.EventInput(actor, "mfa.lock", ident.name, details=details), now)
    return f"locked until {to_text(until)}"
