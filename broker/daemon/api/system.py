"""Health, who the daemon thinks you are, and the store's status."""

from __future__ import annotations

from broker.audit.query import count_events
from broker.daemon.caller import Access
from broker.daemon.health import evaluate
from broker.daemon.liveness import HEARTBEATS
from broker.daemon.routing import REGISTRY, Context, Empty
from broker.store import migrations
from broker.wire.system import (
    DbStatus,
    Health,
    WhoAmI,
)


def _health_status(answer: Health) -> int:
    return 200 if answer.ok else 503


@REGISTRY.add(
    "GET",
    "/v1/health",
    response=Health,
    access=Access.ANYONE,
    summary="Store, threads, directory and log server; HTTP 503 naming each failed check",
    status=_health_status,
)
def health(ctx: Context[Empty]) -> Health:
    """Any caller learns whether the broker is healthy and which checks failed; only an
    operator sees the details (DC names, addresses, sync errors)."""
    answer = evaluate(ctx.app, HEARTBEATS, ctx.now)
    if ctx.caller.operator:
        return answer
    hidden = [c.model_copy(update={"detail": "(details for operators)"}) for c in answer.checks]
    return answer.model_copy(update={"checks": hidden})


@REGISTRY.add(
    "GET", "/v1/whoami", response=WhoAmI, access=Access.ANYONE, summary="The caller as identified"
)
def whoami(ctx: Context[Empty]) -> WhoAmI:
    c = ctx.caller
    return WhoAmI(
        actor=c.actor,
        unix_name=c.unix_name,
        uid=c.uid,
        principal=c.principal,
        account=None if c.account is None else c.account.name,
        sid=None if c.account is None else c.account.sid,
        operator=c.operator,
        directory_user=c.account is not None,
        problem=c.problem,
    )


@REGISTRY.add(
    "GET", "/v1/db/status", response=DbStatus, access=Access.OPERATOR, summary="The store"
)
def db_status(ctx: Context[Empty]) -> DbStatus:
    store = ctx.app.store()
    conn = store.conn
    done = sorted(migrations.applied_numbers(conn))
    events = count_events(conn) if done else 0
    return DbStatus(
        path=str(store.path),
        schema=done[-1] if done else 0,
        pending=[m.number for m in migrations.pending(conn)],
        journal_mode=store.journal_mode(),
        audit_events=events,
    )
