"""MFA flows on a real store: enrollment, verification, replay, lockout, recovery, reset."""

from __future__ import annotations

import json
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.app import App
from broker.config.loader import load_settings
from broker.core.errors import IntegrityError, RefusedError
from broker.mfa import codes, recovery, service
from broker.mfa.service import (
    MfaIdentity,
    MfaRules,
    activate,
    begin_enrollment,
    reset,
    status,
    use_recovery_code,
    verify,
)
from broker.store.db import Store
from tests.helpers import write_config

T0 = datetime(2026, 11, 22, 10, 0, 15, tzinfo=UTC)  # mid-step
ALICE = MfaIdentity("S-1-5-21-1111-2222-3333-1104", "alice")
BOB = MfaIdentity("S-1-5-21-1111-2222-3333-1105", "bob")
RULES = MfaRules()
ACTOR = "unix:test"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[App]:
    app = App(load_settings(write_config(tmp_path)))
    app.setup().init(ACTOR)
    yield app
    app.close()


def enroll(app: App, ident: MfaIdentity = ALICE, at: datetime = T0) -> tuple[str, list[str]]:
    """Enroll and activate `ident` at `at`; the secret and the recovery codes."""
    store, key = app.ready_store(), app.mfa_key()
    started = begin_enrollment(store, key=key, ident=ident, rules=RULES, actor=ACTOR, now=at)
    code = codes.code_at(started.secret, codes.time_step(at))
    shown = activate(store, key=key, ident=ident, code=code, rules=RULES, actor=ACTOR, now=at)
    return started.secret, shown


def code(secret: str, at: datetime, offset: int = 0) -> str:
    return codes.code_at(secret, codes.time_step(at) + offset)


def check(app: App, text: str, at: datetime, ident: MfaIdentity = ALICE) -> int:
    return verify(
        app.ready_store(),
        key=app.mfa_key(),
        ident=ident,
        code=text,
        rules=RULES,
        actor=ACTOR,
        now=at,
        purpose="elevate",
    )


def events(app: App, action: str) -> list[tuple[str, str, dict[str, object]]]:
    rows = app.ready_store().conn.execute(
        "SELECT target, outcome, details FROM audit_events WHERE action = ? ORDER BY seq", (action,)
    )
    return [(t, o, json.loads(d)) for t, o, d in rows]


def wrong(secret: str, at: datetime) -> str:
    """A well-formed code no step in the window shows."""
    near = {code(secret, at, d) for d in range(-2, 3)}
    return next(c for c in ("000000", "111111", "222222", "333333") if c not in near)


def test_init_creates_a_private_key_once(app: App) -> None:
    path = app.settings.mfa_key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(app.mfa_key()) == 32
    assert app.mfa_key() is app.mfa_key()
    assert app.setup().init(ACTOR).created == [] and path.read_bytes() == app.mfa_key()
    path.chmod(0o644)
    fresh = App(app.settings)
    with pytest.raises(RefusedError, match="mode 0644"):
        fresh.mfa_key()


def test_rules_come_from_settings(tmp_path: Path) -> None:
    extra = '[mfa]\nmax_failures = 3\nwindow_steps = 2\nlockout = "1h"\nissuer = "Lab"\n'
    rules = App(load_settings(write_config(tmp_path, extra))).mfa_rules()
    assert (rules.max_failures, rules.window_steps, rules.issuer) == (3, 2, "Lab")
    assert rules.lockout == timedelta(hours=1) and rules.failure_window == timedelta(minutes=15)


def test_enrollment_then_activation(app: App) -> None:
    store, key = app.ready_store(), app.mfa_key()
    started = begin_enrollment(store, key=key, ident=ALICE, rules=RULES, actor=ACTOR, now=T0)
    assert len(started.secret) == 32 and started.secret in started.uri
    assert started.uri.startswith("otpauth://totp/HPC%20Broker:alice?")
    assert started.secret not in repr(started) and started.secret not in str(started)
    pending = status(store.conn, ident=ALICE, now=T0)
    assert pending.pending and not pending.enrolled and pending.recovery_codes_left == 0
    shown = activate(
        store, key=key, ident=ALICE, code=code(started.secret, T0), rules=RULES, actor=ACTOR, now=T0
    )
    assert len(shown) == 10 and len(set(shown)) == 10
    done = status(store.conn, ident=ALICE, now=T0)
    assert done.enrolled and not done.pending and done.activated_at == T0
    assert done.recovery_codes_left == 10 and done.locked_until is None
    assert [e[:2] for e in events(app, "mfa.enroll.start")] == [("alice", "ok")]
    assert [e[:2] for e in events(app, "mfa.enroll.activate")] == [("alice", "ok")]
    # The activation code is spent: it cannot also pass a verification.
    with pytest.raises(RefusedError, match="already used"):
        check(app, code(started.secret, T0), T0)


def test_a_new_enrollment_replaces_a_pending_one_but_never_an_active_one(app: App) -> None:
    store, key = app.ready_store(), app.mfa_key()
    first = begin_enrollment(store, key=key, ident=ALICE, rules=RULES, actor=ACTOR, now=T0)
    second = begin_enrollment(store, key=key, ident=ALICE, rules=RULES, actor=ACTOR, now=T0)
    assert first.secret != second.secret
    with pytest.raises(RefusedError, match="wrong code"):
        activate(
            store,
            key=key,
            ident=ALICE,
            code=code(first.secret, T0),
            rules=RULES,
            actor=ACTOR,
            now=T0,
        )
    activate(
        store, key=key, ident=ALICE, code=code(second.secret, T0), rules=RULES, actor=ACTOR, now=T0
    )
    with pytest.raises(RefusedError) as caught:
        begin_enrollment(store, key=key, ident=ALICE, rules=RULES, actor=ACTOR, now=T0)
    assert str(caught.value) == (
        "MFA is already enrolled for alice; an operator can reset it with `broker mfa reset alice`"
    )
    assert events(app, "mfa.enroll.start")[-1][1] == "refused"
    later = T0 + timedelta(minutes=1)
    assert check(app, code(second.secret, later), later) == codes.time_step(later)


def test_activation_and_verification_need_an_enrollment(app: App) -> None:
    store, key = app.ready_store(), app.mfa_key()
    with pytest.raises(RefusedError, match="no MFA enrollment is pending for alice") as caught:
        activate(store, key=key, ident=ALICE, code="123456", rules=RULES, actor=ACTOR, now=T0)
    assert caught.value.fix == "start one with `broker mfa enroll`"
    with pytest.raises(RefusedError, match="MFA is not enrolled for alice") as caught:
        check(app, "123456", T0)
    assert caught.value.fix is not None and "broker mfa enroll" in caught.value.fix
    with pytest.raises(RefusedError, match="MFA is not enrolled"):
        use_recovery_code(
            store, ident=ALICE, code="abcd-efgh-jkmn", rules=RULES, actor=ACTOR, now=T0
        )
    assert status(store.conn, ident=ALICE, now=T0).recent_failures == 0  # not guesses


def test_window_of_one_step(app: App) -> None:
    secret, _ = enroll(app, at=T0 - timedelta(minutes=5))
    assert check(app, code(secret, T0, -1), T0) == codes.time_step(T0) - 1
    assert check(app, code(secret, T0, +1), T0) == codes.time_step(T0) + 1
    for offset in (-2, +2):
        later = T0 + timedelta(minutes=2)
        with pytest.raises(RefusedError, match="wrong code"):
            check(app, code(secret, later, offset), later)


@pytest.mark.parametrize("text", ["１２３４５６", "123 456", "12345", "1234567", "123456\n"])
def test_malformed_codes_are_refused_and_counted(app: App, text: str) -> None:
    enroll(app, at=T0 - timedelta(minutes=5))
    with pytest.raises(RefusedError, match="exactly six digits 0-9") as caught:
        check(app, text, T0)
    assert text.strip() not in str(caught.value)
    assert status(app.ready_store().conn, ident=ALICE, now=T0).recent_failures == 1
    assert events(app, "mfa.verify")[-1][2]["reason"] == "malformed code"


def test_a_code_is_accepted_once_also_after_a_restart(app: App) -> None:
    secret, _ = enroll(app, at=T0 - timedelta(minutes=5))
    now_code = code(secret, T0)
    check(app, now_code, T0)
    with pytest.raises(RefusedError, match="this code was already used; wait for the next one"):
        check(app, now_code, T0 + timedelta(seconds=5))
    app.close()
    again = App(app.settings)
    try:
        with pytest.raises(RefusedError, match="already used"):
            check(again, now_code, T0 + timedelta(seconds=10))
        # An older step after a newer one is a replay too.
        check(again, code(secret, T0, +1), T0)
        with pytest.raises(RefusedError, match="already used"):
            check(again, code(secret, T0), T0)
        assert status(again.ready_store().conn, ident=ALICE, now=T0).recent_failures == 3
        # Typed again minutes later, out of the window: still named a replay, not "wrong".
        with pytest.raises(RefusedError, match="already used"):
            check(again, code(secret, T0, +1), T0 + timedelta(minutes=3))
    finally:
        again.close()


def test_a_refusal_is_committed_before_it_is_raised(app: App) -> None:
    secret, _ = enroll(app, at=T0 - timedelta(minutes=5))
    with pytest.raises(RefusedError, match="wrong code"):
        check(app, wrong(secret, T0), T0)
    other = Store.open(app.settings.db_path, owner=None)
    try:
        assert other.conn.execute("SELECT count(*) FROM mfa_failures").fetchone()[0] == 1
        row = other.conn.execute(
            "SELECT outcome, details FROM audit_events WHERE action = 'mfa.verify'"
        ).fetchone()
        assert row[0] == "refused" and json.loads(row[1]) == {
            "sid": ALICE.sid,
            "purpose": "elevate",
            "reason": "wrong code",
        }
    finally:
        other.close()


def test_five_failures_lock_for_fifteen_minutes(app: App) -> None:
    secret, _ = enroll(app, at=T0 - timedelta(minutes=5))
    for i in range(4):
        with pytest.raises(RefusedError, match=r"^wrong code"):
            check(app, wrong(secret, T0), T0 + timedelta(minutes=i))
    fifth = T0 + timedelta(minutes=4)
    with pytest.raises(RefusedError) as caught:
        check(app, wrong(secret, fifth), fifth)
    assert str(caught.value).startswith(
        "wrong code; MFA for alice is locked until 2026-11-22 10:19:15 UTC after 5 failed codes"
    )
    assert [e[2]["failures"] for e in events(app, "mfa.lock")] == [5]
    # While locked, even the right code is refused (and the refusal is not another failure).
    during = fifth + timedelta(minutes=14, seconds=59)
    with pytest.raises(RefusedError) as caught:
        check(app, code(secret, during), during)
    assert str(caught.value) == (
        "MFA for alice is locked until 2026-11-22 10:19:15 UTC after 5 failed codes;"
        " wait, or ask an operator for `broker mfa reset alice`"
    )
    assert events(app, "mfa.verify")[-1][1:] == (
        "refused",
        {"sid": ALICE.sid, "purpose": "elevate", "reason": "locked"},
    )
    state = status(app.ready_store().conn, ident=ALICE, now=fifth + timedelta(minutes=1))
    assert state.locked_until == fifth + timedelta(minutes=15) and state.recent_failures == 5
    after = fifth + timedelta(minutes=15)
    assert status(app.ready_store().conn, ident=ALICE, now=after).locked_until is None
    assert check(app, code(secret, after), after) == codes.time_step(after)
    # The failures that caused the lock do not count again: one typo does not relock.
    with pytest.raises(RefusedError, match=r"^wrong code; type the code"):
        check(app, wrong(secret, after), after + timedelta(seconds=1))
    assert status(app.ready_store().conn, ident=ALICE, now=after).recent_failures <= 1


def test_failures_older_than_the_window_do_not_count(app: App) -> None:
    secret, _ = enroll(app, at=T0 - timedelta(minutes=5))
    for i in range(4):
        with pytest.raises(RefusedError):
            check(app, wrong(secret, T0), T0 + timedelta(seconds=i))
    later = T0 + timedelta(minutes=16)
    for i in range(4):
        with pytest.raises(RefusedError, match=r"^wrong code; type the code"):
            check(app, wrong(secret, later), later + timedelta(seconds=i))
    state = status(app.ready_store().conn, ident=ALICE, now=later + timedelta(seconds=4))
    assert state.locked_until is None and state.recent_failures == 4
    assert check(app, code(secret, later), later + timedelta(seconds=5))
    with pytest.raises(RefusedError, match="locked until"):
        check(app, wrong(secret, later), later + timedelta(seconds=6))


def test_counters_are_per_sid_not_per_name(app: App) -> None:
    alice_secret, _ = enroll(app, ALICE, T0 - timedelta(minutes=5))
    bob_secret, _ = enroll(app, BOB, T0 - timedelta(minutes=5))
    for who, secret in ((ALICE, alice_secret), (BOB, bob_secret)):
        for i in range(4):
            with pytest.raises(RefusedError, match=r"^wrong code; type the code"):
                check(app, wrong(secret, T0), T0 + timedelta(seconds=i), who)
    # The same account under another spelling shares alice's counter, not bob's.
    spelled = MfaIdentity(ALICE.sid, "alice@HPC.TEST")
    with pytest.raises(RefusedError, match="locked until"):
        check(app, wrong(alice_secret, T0), T0 + timedelta(seconds=5), spelled)
    with pytest.raises(RefusedError, match="locked"):
        check(
            app,
            code(alice_secret, T0),
            T0 + timedelta(seconds=6),
            MfaIdentity(ALICE.sid, "HPC\\alice"),
        )
    assert check(app, code(bob_secret, T0), T0 + timedelta(seconds=6), BOB)
    conn = app.ready_store().conn
    assert status(conn, ident=BOB, now=T0).locked_until is None


def test_recovery_codes_work_once(app: App) -> None:
    _, shown = enroll(app)
    store = app.ready_store()

    def use(text: str, at: datetime = T0) -> int:
        return use_recovery_code(store, ident=ALICE, code=text, rules=RULES, actor=ACTOR, now=at)

    assert use(shown[3]) == 9
    assert use(shown[4].upper().replace("-", "")) == 8
    with pytest.raises(RefusedError, match="wrong or already used recovery code"):
        use(shown[3])
    with pytest.raises(RefusedError, match="a recovery code is twelve") as caught:
        use("hunter2 is my password")
    assert "hunter2" not in str(caught.value)
    fresh = recovery.generate(1)[0]
    assert fresh not in shown
    with pytest.raises(RefusedError, match="wrong or already used"):
        use(fresh)
    assert status(store.conn, ident=ALICE, now=T0).recent_failures == 3
    assert [e[1] for e in events(app, "mfa.recovery.use")] == ["ok", "ok"] + ["refused"] * 3
    assert events(app, "mfa.recovery.use")[1][2] == {"sid": ALICE.sid, "left": 8}
    # Locked out like TOTP: the 5th failure locks, then a good code is refused too.
    for _ in range(2):
        with pytest.raises(RefusedError):
            use(fresh)
    with pytest.raises(RefusedError, match="locked until"):
        use(shown[5])
    assert status(store.conn, ident=ALICE, now=T0).recovery_codes_left == 8


def test_secrets_and_codes_are_never_stored_or_audited_in_clear(app: App) -> None:
    secret, shown = enroll(app)
    used = shown[0]
    use_recovery_code(app.ready_store(), ident=ALICE, code=used, rules=RULES, actor=ACTOR, now=T0)
    later = T0 + timedelta(minutes=1)
    accepted = code(secret, later)
    check(app, accepted, later)
    app.close()
    state = app.settings.db_path.parent
    stored = b"".join(p.read_bytes() for p in state.glob("broker.db*"))
    assert len(stored) > 0
    for needle in (secret, *shown, *(c.replace("-", "") for c in shown)):
        assert needle.encode() not in stored, needle
    audit = App(app.settings)
    try:
        text = "\n".join(
            " ".join(map(str, row))
            for row in audit.ready_store().conn.execute(
                "SELECT actor, action, target, details FROM audit_events"
            )
        )
    finally:
        audit.close()
    for needle in (secret, *shown, accepted):
        assert needle not in text


def test_tampered_or_moved_secrets_are_refused(app: App) -> None:
    alice_secret, _ = enroll(app, ALICE, T0 - timedelta(minutes=5))
    bob_secret, _ = enroll(app, BOB, T0 - timedelta(minutes=5))
    conn = app.ready_store().conn
    # Alice's sealed secret copied onto bob's row: the AAD (bob's sid) does not match.
    conn.execute(
        "UPDATE mfa_factors SET secret = (SELECT secret FROM mfa_factors WHERE sid = ?)"
        " WHERE sid = ?",
        (ALICE.sid, BOB.sid),
    )
    with pytest.raises(IntegrityError, match="stored MFA secret of bob failed") as caught:
        check(app, code(alice_secret, T0), T0, BOB)
    assert alice_secret not in str(caught.value) and bob_secret not in str(caught.value)
    blob = bytearray(
        conn.execute("SELECT secret FROM mfa_factors WHERE sid = ?", (ALICE.sid,)).fetchone()[0]
    )
    blob[20] ^= 1
    conn.execute("UPDATE mfa_factors SET secret = ? WHERE sid = ?", (bytes(blob), ALICE.sid))
    with pytest.raises(IntegrityError, match="stored MFA secret of alice failed"):
        check(app, code(alice_secret, T0), T0)


def test_reset_is_audited_and_clears_the_lock(app: App) -> None:
    store = app.ready_store()
    assert reset(store, ident=ALICE, actor="unix:root", now=T0) is False
    secret, _ = enroll(app, at=T0 - timedelta(minutes=5))
    for i in range(5):
        with pytest.raises(RefusedError):
            check(app, wrong(secret, T0), T0 + timedelta(seconds=i))
    assert status(store.conn, ident=ALICE, now=T0).locked_until is not None
    assert reset(store, ident=ALICE, actor="unix:root", now=T0) is True
    assert events(app, "mfa.reset")[-1] == ("alice", "ok", {"sid": ALICE.sid, "removed": True})
    cleared = status(store.conn, ident=ALICE, now=T0)
    assert cleared == type(cleared)(False, False, None, None, 0, None, 0)
    for table in ("mfa_factors", "mfa_recovery", "mfa_failures", "mfa_locks"):
        assert store.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0] == 0
    with pytest.raises(RefusedError, match="not enrolled"):
        check(app, code(secret, T0), T0)
    new_secret, _ = enroll(app, at=T0 + timedelta(seconds=10))
    assert new_secret != secret
    later = T0 + timedelta(minutes=1)
    assert check(app, code(new_secret, later), later)
    assert app.audit().verify().ok


def test_the_audit_chain_verifies_after_every_flow(app: App) -> None:
    secret, shown = enroll(app, at=T0 - timedelta(minutes=5))
    check(app, code(secret, T0), T0)
    for i in range(6):
        with pytest.raises(RefusedError):
            check(app, wrong(secret, T0), T0 + timedelta(seconds=i))
    with pytest.raises(RefusedError):
        use_recovery_code(
            app.ready_store(), ident=ALICE, code=shown[0], rules=RULES, actor=ACTOR, now=T0
        )
    reset(app.ready_store(), ident=ALICE, actor="unix:root", now=T0)
    report = app.audit().verify()
    assert report.ok and report.count > 10
    actions = [
        e.split(".")[0]
        for e in (r[0] for r in app.ready_store().conn.execute("SELECT action FROM audit_events"))
    ]
    assert actions.count("mfa") >= 11


def test_concurrent_verifications_of_one_code_accept_it_once(app: App) -> None:
    secret, _ = enroll(app, at=T0 - timedelta(minutes=5))
    key, path = app.mfa_key(), app.settings.db_path
    for round_ in range(4):
        at = T0 + timedelta(seconds=30 * round_)
        fresh = code(secret, at)
        barrier = threading.Barrier(2)
        results: list[str] = []

        def attempt(
            at: datetime = at,
            fresh: str = fresh,
            barrier: threading.Barrier = barrier,
            results: list[str] = results,
        ) -> None:
            store = Store.open(path, owner=None)
            try:
                barrier.wait()
                verify(
                    store,
                    key=key,
                    ident=ALICE,
                    code=fresh,
                    rules=RULES,
                    actor=ACTOR,
                    now=at,
                    purpose="elevate",
                )
                results.append("ok")
            except RefusedError as exc:
                results.append(exc.message)
            finally:
                store.close()

        threads = [threading.Thread(target=attempt) for _ in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(results) == ["ok", "this code was already used; wait for the next one"]
    assert app.audit().verify().ok


# ---------------------------------------------------------------- recovery codes: bounded work


def lock_out(app: App, secret: str, at: datetime) -> None:
    """Five wrong TOTP codes (cheap to check): the account is locked from `at`."""
    for i in range(5):
        with pytest.raises(RefusedError):
            check(app, wrong(secret, at), at + timedelta(seconds=i))


class Hashing:
    """Stands in for `recovery.matches`: counts calls, and can hold them until released."""

    def __init__(self, hold: bool = False) -> None:
        self.real = recovery.matches
        self.calls = 0
        self.hold = hold
        self.started = threading.Event()
        self.release = threading.Event()

    def __call__(self, code: str, stored: str) -> bool:
        self.calls += 1
        self.started.set()
        if self.hold:
            assert self.release.wait(timeout=30)
        return bool(self.real(code, stored))


def recover(path: Path, ident: MfaIdentity, text: str, out: list[str]) -> None:
    """One attempt on its own connection (as a daemon worker thread has), its outcome in `out`."""
    store = Store.open(path, owner=None)
    try:
        left = use_recovery_code(store, ident=ident, code=text, rules=RULES, actor=ACTOR, now=T0)
        out.append(f"ok {left}")
    except RefusedError as exc:
        out.append(exc.message)
    finally:
        store.close()


def test_a_locked_account_is_refused_without_hashing(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret, shown = enroll(app, at=T0 - timedelta(minutes=5))
    lock_out(app, secret, T0 - timedelta(minutes=1))
    hashing = Hashing()
    monkeypatch.setattr(recovery, "matches", hashing)
    store = app.ready_store()
    for text in (shown[0], "abcd-efgh-jkmn"):
        started = time.perf_counter()
        with pytest.raises(RefusedError, match=r"^MFA for alice is locked until"):
            use_recovery_code(store, ident=ALICE, code=text, rules=RULES, actor=ACTOR, now=T0)
        assert time.perf_counter() - started < 0.05  # ten scrypt hashes would be ~0.3 s
    assert hashing.calls == 0
    assert (
        events(app, "mfa.recovery.use")[-2:]
        == [("alice", "refused", {"sid": ALICE.sid, "reason": "locked"})] * 2
    )
    assert status(store.conn, ident=ALICE, now=T0).recovery_codes_left == 10
    # An account without MFA is refused without hashing too (and not counted, as before).
    with pytest.raises(RefusedError, match="MFA is not enrolled for bob"):
        use_recovery_code(store, ident=BOB, code=shown[1], rules=RULES, actor=ACTOR, now=T0)
    assert hashing.calls == 0


def test_one_recovery_check_per_account_at_a_time(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, shown = enroll(app)
    hashing = Hashing(hold=True)
    monkeypatch.setattr(recovery, "matches", hashing)
    first: list[str] = []
    worker = threading.Thread(target=recover, args=(app.settings.db_path, ALICE, shown[0], first))
    worker.start()
    try:
        assert hashing.started.wait(timeout=30)
        calls = hashing.calls
        store = app.ready_store()
        started = time.perf_counter()
        with pytest.raises(RefusedError) as caught:
            use_recovery_code(store, ident=ALICE, code=shown[1], rules=RULES, actor=ACTOR, now=T0)
        assert time.perf_counter() - started < 1  # at once, not after the first check
        assert caught.value.message == "another recovery code check for alice is in progress"
        assert hashing.calls == calls  # the second attempt hashed nothing
        assert status(store.conn, ident=ALICE, now=T0).recent_failures == 0  # not a guess
    finally:
        hashing.release.set()
        worker.join(timeout=60)
    assert first == ["ok 9"]
    assert [e[1:] for e in events(app, "mfa.recovery.use")] == [
        ("refused", {"sid": ALICE.sid, "reason": "check in progress"}),
        ("ok", {"sid": ALICE.sid, "left": 9}),
    ]
    # Its turn over, the account's next check runs as before.
    assert (
        use_recovery_code(
            app.ready_store(), ident=ALICE, code=shown[1], rules=RULES, actor=ACTOR, now=T0
        )
        == 8
    )


def test_at_most_two_recovery_checks_hash_at_once(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    carol = MfaIdentity("S-1-5-21-1111-2222-3333-1106", "carol")
    shown = {who: enroll(app, who)[1] for who in (ALICE, BOB, carol)}
    hashing = Hashing(hold=True)
    monkeypatch.setattr(recovery, "matches", hashing)
    monkeypatch.setattr(service, "RECOVERY_WAIT_S", 0.2)
    path = app.settings.db_path
    results: dict[str, list[str]] = {"alice": [], "bob": []}
    workers = [
        threading.Thread(target=recover, args=(path, who, shown[who][0], results[who.name]))
        for who in (ALICE, BOB)
    ]
    for worker in workers:
        worker.start()
    try:
        deadline = time.monotonic() + 30
        while service._recovery_sids != {ALICE.sid, BOB.sid} or hashing.calls < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        with pytest.raises(RefusedError, match="too many recovery code checks are in progress"):
            use_recovery_code(
                app.ready_store(),
                ident=carol,
                code=shown[carol][0],
                rules=RULES,
                actor=ACTOR,
                now=T0,
            )
    finally:
        hashing.release.set()
        for worker in workers:
            worker.join(timeout=60)
    assert results == {"alice": ["ok 9"], "bob": ["ok 9"]}
    assert status(app.ready_store().conn, ident=carol, now=T0).recent_failures == 0
    assert (
        use_recovery_code(
            app.ready_store(), ident=carol, code=shown[carol][0], rules=RULES, actor=ACTOR, now=T0
        )
        == 9
    )


def test_a_lock_that_appears_during_the_check_is_not_a_guess(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, shown = enroll(app)
    # The short read found the account locked (or unenrolled), so nothing was hashed; by
    # the write transaction that was no longer so. Refused, not counted: no code was judged.
    monkeypatch.setattr(service, "_plausible_recovery", lambda *_: False)
    store = app.ready_store()
    with pytest.raises(RefusedError, match="the MFA state of alice changed during the check"):
        use_recovery_code(store, ident=ALICE, code=shown[0], rules=RULES, actor=ACTOR, now=T0)
    assert status(store.conn, ident=ALICE, now=T0).recent_failures == 0
    assert status(store.conn, ident=ALICE, now=T0).recovery_codes_left == 10
