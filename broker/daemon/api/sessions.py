"""Recorded elevated sessions: list, show, replay data, search, verify, index, purge.

Operators only: a recording holds everything root typed and saw on a node.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any, Literal

from pydantic import Field

from broker.core.errors import UsageError
from broker.daemon.api.names import UserText, UtcTimeText
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Empty
from broker.sessions import iolog
from broker.sessions import service as sessions
from broker.wire.sessions import (
    CommandOut,
    DriftOut,
    EndingOut,
    GrantContextOut,
    HookEventOut,
    IndexOut,
    MatchOut,
    PurgeOut,
    ReplayOut,
    SearchHitOut,
    SearchOut,
    SessionDetailOut,
    SessionOut,
    VerifyOut,
)

RecordingId = Annotated[str, Field(pattern=r"^[0-9A-Z]{6}$")]
NodeName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")]
GrantId = Annotated[str, Field(pattern=r"^(?:g[0-9a-f]{16}|break-glass)$")]
REPLAY_LIMIT = 256 * 1024 * 1024


class SessionsQuery(Body):
    user: UserText | None = None
    node: NodeName | None = None
    grant: GrantId | None = None
    since: UtcTimeText | None = None
    until: UtcTimeText | None = None
    running: bool = False
    exit: int | None = Field(default=None, ge=0, le=255)
    limit: int = Field(default=200, ge=1, le=10_000)

    def filters(self, user: str | None) -> sessions.Filters:
        return sessions.Filters(
            user=user,
            node=self.node,
            grant=self.grant,
            since=self.since,
            until=self.until,
            running=self.running,
            exit_value=self.exit,
            limit=self.limit,
        )


class SessionPath(Body):
    id: RecordingId


class ReplayQuery(Body):
    id: RecordingId
    streams: Literal["output", "input", "all"] = "output"


class SearchIn(Body):
    # regex: an RE2 regular expression over the chosen streams' bytes; word, prefix,
    # phrase: text looked up in the typed command lines (never FTS5 syntax).
    pattern: str = Field(min_length=1, max_length=sessions.MAX_PATTERN)
    mode: Literal["regex", "word", "prefix", "phrase"] = "regex"
    streams: Literal["input", "output", "all"] = "all"
    user: UserText | None = None
    node: NodeName | None = None
    grant: GrantId | None = None
    since: UtcTimeText | None = None
    until: UtcTimeText | None = None
    exit: int | None = Field(default=None, ge=0, le=255)
    limit: int = Field(default=100, ge=1, le=10_000)


def session_out(row: dict[str, Any]) -> SessionOut:
    return SessionOut(**row)


def _user(ctx: Context[Any], text: str | None) -> str | None:
    """The account name sessions are recorded under, for any spelling the snapshot knows;
    a user who has left the directory by their exact name in the sessions or the grants."""
    if text is None:
        return None
    conn = ctx.app.ready_store().conn
    grants = ctx.app.grant_reader()

    def recorded(name: str) -> bool:
        return sessions.recorded_user(conn, name) or grants.has_user(name)

    return ctx.app.directory().resolve_user(text, ctx.now, recorded).name


_STREAMS = {"output": iolog.OUTPUT, "input": iolog.INPUT, "all": iolog.OUTPUT + iolog.INPUT}


@REGISTRY.add(
    "GET",
    "/v1/sessions",
    request=SessionsQuery,
    response=list[SessionOut],
    access=Access.OPERATOR,
    summary="Recorded elevated sessions, newest first, filtered",
)
def list_sessions(ctx: Context[SessionsQuery]) -> list[SessionOut]:
    user = _user(ctx, ctx.params.user)
    rows = sessions.listing(ctx.app.ready_store().conn, ctx.params.filters(user))
    return [session_out(r) for r in rows]


@REGISTRY.add(
    "GET",
    "/v1/sessions/{id}",
    request=SessionPath,
    response=SessionDetailOut,
    access=Access.OPERATOR,
    summary="One session: who, as whom, where, its grant and reason, times, exit, commands",
)
def show_session(ctx: Context[SessionPath]) -> SessionDetailOut:
    conn = ctx.app.ready_store().conn
    row = sessions.one(conn, ctx.params.id)
    more = sessions.context(conn, row)
    timeline: list[CommandOut] = []
    if row["state"] not in ("quarantined", "purged"):
        timeline = [
            CommandOut(offset_s=round(at, 3), text=text)
            for at, text in sessions.command_lines(
                ctx.app.recordings().timeline(row["id"], iolog.INPUT, REPLAY_LIMIT)
            )
        ]
    return SessionDetailOut(
        session=session_out(row),
        grant=None if more["grant"] is None else GrantContextOut(**more["grant"]),
        hook_events=[HookEventOut(**e) for e in more["hook_events"]],
        timeline=timeline,
        drift=None if more["drift"] is None else DriftOut(**more["drift"]),
        alerts=more["alerts"],
        ending=None if more["ending"] is None else EndingOut(**more["ending"]),
    )


@REGISTRY.add(
    "GET",
    "/v1/sessions/{id}/replay",
    request=ReplayQuery,
    response=ReplayOut,
    access=Access.OPERATOR,
    summary="The recorded bytes with their timing, for `broker sessions replay`",
)
def replay(ctx: Context[ReplayQuery]) -> ReplayOut:
    row = sessions.one(ctx.app.ready_store().conn, ctx.params.id)
    recordings = ctx.app.recordings()
    chunks = [
        (round(delay, 6), stream, base64.b64encode(data).decode("ascii"))
        for delay, stream, data in recordings.timeline(
            row["id"], _STREAMS[ctx.params.streams], REPLAY_LIMIT
        )
    ]
    info = recordings.info(row["id"])
    return ReplayOut(
        id=row["id"],
        columns=info.columns,
        lines=info.lines,
        complete=row["state"] != "running",
        chunks=chunks,
    )


@REGISTRY.add(
    "POST",
    "/v1/sessions/search",
    request=SearchIn,
    response=SearchOut,
    access=Access.OPERATOR,
    summary="Sessions whose input or output matches a regular expression, or whose typed"
    " lines hold a word, prefix or phrase; narrowed by the text index",
)
def search(ctx: Context[SearchIn]) -> SearchOut:
    p = ctx.params
    if p.mode != "regex" and p.streams != "all":
        raise UsageError(
            f"a {p.mode} query searches the typed command lines; streams do not apply",
            fix="drop --input/--output, or search with a regular expression",
        )
    filters = sessions.Filters(
        user=_user(ctx, p.user), node=p.node, grant=p.grant, since=p.since, until=p.until,
        exit_value=p.exit, limit=p.limit,
    )  # fmt: skip
    found = ctx.app.recordings().audited_search(
        ctx.caller.actor, ctx.now, p.pattern, _STREAMS[p.streams], filters, p.mode
    )
    hits = [
        SearchHitOut(
            session=session_out({k: v for k, v in h.items() if k != "match"}),
            match=MatchOut(**h["match"]),
        )
        for h in found.hits
    ]
    return SearchOut(
        hits=hits, mode=found.mode, narrowed=found.narrowed, literals=found.literals,
        read=found.read, complete=found.complete, note=found.note,
    )  # fmt: skip


@REGISTRY.add(
    "POST",
    "/v1/sessions/{id}/verify",
    request=SessionPath,
    response=VerifyOut,
    access=Access.OPERATOR,
    summary="Recompute a recording's SHA-256; compare with the index and the audit chain",
)
def verify(ctx: Context[SessionPath]) -> VerifyOut:
    return VerifyOut(**ctx.app.recordings().verify(ctx.params.id))


@REGISTRY.add(
    "POST",
    "/v1/sessions/index",
    request=Empty,
    response=IndexOut,
    access=Access.OPERATOR,
    summary="Index the log server's store now (the scheduler does it every few seconds)",
)
def index(ctx: Context[Empty]) -> IndexOut:
    report = ctx.app.session_indexer().run(ctx.now)
    return IndexOut(
        seen=report.seen,
        new=report.new,
        finished=report.finished,
        quarantined=report.quarantined,
        bytes_read=report.bytes_read,
        seconds=report.seconds,
        backfilled=report.backfilled,
    )


@REGISTRY.add(
    "POST",
    "/v1/sessions/purge",
    request=Empty,
    response=PurgeOut,
    access=Access.OPERATOR,
    summary="Remove recordings older than sessions.retention_days (audited)",
)
def purge(ctx: Context[Empty]) -> PurgeOut:
    days = ctx.app.settings.sessions.retention_days
    return PurgeOut(purged=ctx.app.recordings().purge(days, ctx.now, ctx.caller.actor))
