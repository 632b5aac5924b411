"""A rotation's record: every state change of a keytab rotation, committed in one store
transaction with its audit event (keytab_rotations, keytab_accounts, the chain).

The state machine (service.py) decides; this module writes down what it decided, so the
write-ahead rule (the intent is committed before a node or AD is touched) is kept in one
place and the service holds no transactions of its own.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from broker.audit import writer
from broker.core.errors import BrokerError, RefusedError
from broker.core.hostlist import fold
from broker.core.timeutil import to_text
from broker.keytabs import claims, plan, rows
from broker.store.db import Store

log = logging.getLogger("broker.keytabs")


def event(
    actor: str, action: str, name: str, outcome: str = "ok", **details: Any
) -> writer.EventInput:
    return writer.EventInput(actor, action, f"keytab:{name}", outcome, details)


class RotationJournal:
    """The rotation's store writes for one worker. Every write that advances a rotation is
    made only while this worker still holds the account's claim (claims.py), and refreshes
    it: a worker whose claim was taken over stops at its next step, before AD or a node."""

    def __init__(self, store: Store, clock: Callable[[], datetime]) -> None:
        self._store = store
        self._clock = clock
        self._owners: dict[str, str] = {}  # account name -> this worker's claim on it

    def claim(self, name: str, actor: str) -> str:
        """Take the account's rotation claim (claims.py); returns the holder text to release
        it with. Held by a live worker, or no holder text can be made: audited, then raised."""
        now = self._clock()
        try:
            owner = claims.new_owner()
        except RefusedError as exc:
            with self._store.transaction() as conn:
                writer.record(
                    conn, event(actor, "keytab.busy", name, "refused", reason=exc.message), now
                )
            raise
        with self._store.transaction() as conn:
            held = rows.claim_of(conn, name)
            if held is None or not claims.is_live(held[0], held[1], now):
                rows.set_claim(conn, name, owner, now)
                self._owners[name] = owner
                return owner
            since = to_text(held[1])
            reason = f"a rotation of {name} is already running ({claims.holder(held[0])})"
            writer.record(
                conn, event(actor, "keytab.busy", name, "refused", reason=reason, since=since), now
            )
        raise RefusedError(reason, fix="wait for it to end; `broker keytab status` shows it")

    def release(self, name: str, owner: str) -> None:
        """Drop this worker's claim (one taken over meanwhile stays with its new holder)."""
        if self._owners.get(name) == owner:
            del self._owners[name]
        with self._store.transaction() as conn:
            rows.drop_claim(conn, name, owner)

    @contextmanager
    def claimed(self, name: str, actor: str) -> Iterator[None]:
        """The account's claim for the length of the block: no other worker, thread or
        process, rotates it meanwhile."""
        owner = self.claim(name, actor)
        try:
            yield
        finally:
            try:
                self.release(name, owner)
            except (BrokerError, sqlite3.Error) as exc:
                # Left behind: it lapses when this process ends (claims.py).
                log.warning("keytab %s: claim not released: %s", name, exc)

    @contextmanager
    def _step(self, name: str, actor: str) -> Iterator[tuple[sqlite3.Connection, datetime]]:
        """One transaction advancing `name`'s rotation, entered only while this worker still
        holds the claim (its `claimed_at` refreshed in it). Not held any more: nothing of the
        step is written; the loss is audited (keytab.claim_lost) and refused (exit 1)."""
        now = self._clock()
        owner = self._owners.get(name)
        with self._store.transaction() as conn:
            if owner is not None and rows.refresh_claim(conn, name, owner, now):
                yield conn, now
                return
            held = rows.claim_of(conn, name)
            by = claims.holder(held[0]) if held else "nobody"
            reason = f"{name}: this worker's rotation claim was taken over (now {by})"
            writer.record(
                conn, event(actor, "keytab.claim_lost", name, "refused", reason=reason), now
            )
        log.warning("keytab %s: claim lost; stopped before the next AD or node step", name)
        raise RefusedError(
            f"{reason}; stopped before touching AD or the nodes again",
            fix="`broker keytab status` shows the rotation; its new holder carries it on",
        )

    def hold(self, name: str, actor: str) -> None:
        """Before an AD or node step that no state change precedes: still ours (refreshed)."""
        with self._step(name, actor):
            pass

    def open_rotation(self, name: str, account: str, actor: str) -> rows.Rotation | None:
        """The account's row kept current; a rotation a crash (or a node) left open, if any."""
        with self._step(name, actor) as (conn, _now):
            rows.upsert_account(conn, name, account)
            return rows.open_rotation(conn, name)

    def start(
        self,
        name: str,
        account: str,
        current: int,
        target_kvno: int,
        nodes: Sequence[str],
        principals: Sequence[str],
        actor: str,
    ) -> tuple[int, dict[str, rows.NodeView]]:
        """Commit the intent before anything is touched; what each node was last seen to hold."""
        with self._step(name, actor) as (conn, now):
            views = rows.node_views(conn, name)
            rotation_id = rows.start_rotation(
                conn, name, current, target_kvno, list(nodes), actor, now
            )
            details: dict[str, Any] = {
                "account": account,
                "from_kvno": current,
                "target_kvno": target_kvno,
                "nodes": fold(list(nodes)),
                "principals": principals,
            }
            writer.record(conn, event(actor, "keytab.plan", name, **details), now)
        return rotation_id, views

    def move(
        self,
        name: str,
        rotation_id: int,
        state: str,
        entry: writer.EventInput,
        *,
        error: str | None = None,
        ad_kvno: int | None = None,
        target_kvno: int | None = None,
    ) -> None:
        with self._step(name, entry.actor) as (conn, now):
            rows.move(
                conn,
                rotation_id,
                state,
                now,
                error=error,
                ad_kvno=ad_kvno,
                target_kvno=target_kvno,
            )
            writer.record(conn, entry, now)

    def end(
        self,
        rotation_id: int,
        state: str,
        actor: str,
        name: str,
        error: str,
        *,
        retry: bool = False,
    ) -> None:
        """Abandoned, failed or superseded; with `retry`, the account waits out a backoff."""
        with self._step(name, actor) as (conn, now):
            account = rows.account(conn, name)
            attempts = (account.attempts if account else 0) + 1
            rows.move(conn, rotation_id, state, now, error=error)
            rows.record_failure(conn, name, error, now + plan.backoff(attempts) if retry else None)
            action = {"abandoned": "keytab.abandon", "failed": "keytab.fail"}.get(
                state, "keytab.supersede"
            )
            writer.record(conn, event(actor, action, name, "failed", error=error), now)

    def ad_unconfirmed(self, name: str, actor: str, error: str) -> None:
        """Not known whether AD applied the password: the rotation stays ad_pending."""
        with self._step(name, actor) as (conn, now):
            rows.record_failure(conn, name, error, now + plan.backoff(1))
            writer.record(
                conn, event(actor, "keytab.ad_unconfirmed", name, "failed", error=error), now
            )

    def ad_set(
        self, name: str, rotation_id: int, retired: int, kvno: int, actor: str, **details: Any
    ) -> None:
        """AD took the password: its version is current, the one before it retired."""
        with self._step(name, actor) as (conn, now):
            rows.retire(conn, name, retired, now)
            rows.set_kvno(conn, name, kvno)
            rows.move(conn, rotation_id, "ad_set", now, ad_kvno=kvno)
            writer.record(conn, event(actor, "keytab.ad_set", name, kvno=kvno, **details), now)

    def verify_failed(
        self, name: str, rotation_id: int, kvno: int, error: str, actor: str, now: datetime
    ) -> None:
        """Some node rejected the new keys: the rotation stays open, retried after a backoff."""
        with self._step(name, actor) as (conn, _now):
            account = rows.account(conn, name)
            attempts = (account.attempts if account else 0) + 1
            rows.record_failure(conn, name, error, now + plan.backoff(attempts))
            rows.move(conn, rotation_id, "ad_set", now, error=error)
            writer.record(
                conn,
                event(actor, "keytab.verify", name, "failed", kvno=kvno, error=error),
                now,
            )

    def done(
        self,
        name: str,
        rotation_id: int,
        kvno: int,
        nodes: Sequence[str],
        actor: str,
        now: datetime,
    ) -> None:
        with self._step(name, actor) as (conn, _now):
            rows.move(conn, rotation_id, "done", now)
            rows.record_success(conn, name, kvno, now, rotated=True)
            writer.record(
                conn, event(actor, "keytab.verify", name, kvno=kvno, nodes=fold(list(nodes))), now
            )

    def abandoned_after_crash(
        self, name: str, rotation_id: int, state: str, kvno: int, actor: str
    ) -> None:
        with self._step(name, actor) as (conn, now):
            rows.move(conn, rotation_id, "abandoned", now, error="resumed after a crash")
            writer.record(
                conn,
                event(
                    actor,
                    "keytab.abandon",
                    name,
                    state=state,
                    kvno=kvno,
                    reason="the password was lost before AD changed; staged keys removed",
                ),
            )

    def account_created(self, name: str, actor: str, **details: Any) -> None:
        with self._store.transaction() as conn:
            writer.record(conn, event(actor, "keytab.account_create", name, **details))

    def verified(
        self, name: str, account: str, kvno: int, ok: bool, failed: list[str], actor: str
    ) -> None:
        """`broker keytab verify`: AD's version recorded, the stamp set when every node passed."""
        now = self._clock()
        with self._store.transaction() as conn:
            rows.upsert_account(conn, name, account)
            rows.set_kvno(conn, name, kvno)
            if ok:
                rows.mark_verified(conn, name, now)
            writer.record(
                conn,
                event(
                    actor, "keytab.verify", name, "ok" if ok else "failed", kvno=kvno, failed=failed
                ),
                now,
            )
