"""Active Directory: reachability, the snapshot's state, and sync."""

from __future__ import annotations

from broker.core.errors import UnavailableError
from broker.core.timeutil import utcnow
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Empty
from broker.directory.connection import ping as ping_dcs
from broker.directory.snapshot import counts
from broker.wire.base import from_domain
from broker.wire.directory import (
    ChangeOut,
    DcOut,
    SnapshotStatus,
    SyncOut,
)


class SyncRequest(Body):
    full: bool = False


@REGISTRY.add(
    "POST",
    "/v1/directory/ping",
    response=list[DcOut],
    access=Access.OPERATOR,
    summary="Bind to every configured DC and report who it says the broker is",
)
def ping(ctx: Context[Empty]) -> list[DcOut]:
    return [
        DcOut(uri=r.uri, ok=r.ok, detail=r.detail, elapsed_ms=round(r.elapsed_ms, 1))
        for r in ping_dcs(ctx.app.directory().settings())
    ]


@REGISTRY.add(
    "GET",
    "/v1/directory/status",
    response=SnapshotStatus,
    access=Access.OPERATOR,
    summary="What the snapshot holds and when it was last synced",
)
def status(ctx: Context[Empty]) -> SnapshotStatus:
    state = ctx.app.directory().snapshot(ctx.now).state
    if state is None:
        raise UnavailableError("no directory snapshot yet", fix="run `broker sync`")
    users, groups = counts(ctx.app.ready_store().conn)
    return SnapshotStatus(
        dc_uri=state.dc_uri,
        dc_name=state.dc_name,
        highest_usn=state.highest_usn,
        domain_sid=state.domain_sid,
        users=users,
        groups=groups,
        last_full_sync=state.full_at,
        last_change=state.changed_at,
        last_checked=state.checked_at,
    )


@REGISTRY.add(
    "POST",
    "/v1/directory/sync",
    request=SyncRequest,
    response=SyncOut,
    access=Access.OPERATOR,
    summary="Bring the snapshot up to date (incremental unless full)",
)
def sync(ctx: Context[SyncRequest]) -> SyncOut:
    report = ctx.app.directory().sync(ctx.caller.actor, full=ctx.params.full)
    revoked = ctx.app.revocation().recheck(actor="broker", cause="directory", now=utcnow())
    return from_domain(
        SyncOut,
        report,
        revoked=revoked,
        elapsed_s=round(report.elapsed_s, 3),
        changes=[from_domain(ChangeOut, c, sid=c.user_sid) for c in report.changes],
    )
