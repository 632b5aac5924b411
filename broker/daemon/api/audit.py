"""The audit chain: verify it, read it a page at a time, seal its head (AU-9)."""

from __future__ import annotations

from pydantic import Field

from broker.audit.query import PAGE_MAX, EventFilter, iter_events
from broker.daemon.api.names import ActionGlob, AuditActor, UtcTimeText
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Empty
from broker.wire.audit import (
    EventOut,
    SealOut,
    VerifyOut,
)
from broker.wire.base import from_domain

SEQ_MAX = 2**62  # far beyond any chain, and inside SQLite's INTEGER range


class EventsQuery(Body):
    """Events matching every given filter, one page (at most PAGE_MAX) at a time."""

    after_seq: int = Field(default=0, ge=0, le=SEQ_MAX)
    before_seq: int | None = Field(default=None, ge=1, le=SEQ_MAX)
    limit: int = Field(default=PAGE_MAX, ge=1, le=PAGE_MAX)
    newest_first: bool = False
    since: UtcTimeText | None = None
    until: UtcTimeText | None = None
    action: ActionGlob | None = None
    actor: AuditActor | None = None


@REGISTRY.add(
    "GET",
    "/v1/audit/verify",
    response=VerifyOut,
    access=Access.OPERATOR,
    summary="Check every hash and link, and the chain against the signed checkpoints",
)
def verify(ctx: Context[Empty]) -> VerifyOut:
    return from_domain(VerifyOut, ctx.app.audit().verify())


@REGISTRY.add(
    "GET",
    "/v1/audit/events",
    request=EventsQuery,
    response=list[EventOut],
    access=Access.OPERATOR,
    summary="Events in seq order (or newest first), filtered, one page at a time",
)
def events(ctx: Context[EventsQuery]) -> list[EventOut]:
    q = ctx.params
    filt = EventFilter(
        since=q.since,
        until=q.until,
        action=q.action,
        actor=q.actor,
        after_seq=q.after_seq,
        before_seq=q.before_seq,
        limit=q.limit,
        newest_first=q.newest_first,
    )
    return [EventOut(**e.as_dict()) for e in iter_events(ctx.app.ready_store().conn, filt)]


@REGISTRY.add(
    "POST",
    "/v1/audit/seal",
    response=SealOut,
    access=Access.OPERATOR,
    summary="Write a signed checkpoint of the current head now",
)
def seal(ctx: Context[Empty]) -> SealOut:
    return SealOut(sealed_seq=ctx.app.audit().seal())
