"""The controls report (issue 22): compute and sign it, verify one (AC-2 ... AU-10)."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import Field

from broker.core.errors import BadRequestError
from broker.core.timeutil import from_text, to_text
from broker.daemon.api.names import UtcTimeText
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context
from broker.wire.base import from_domain
from broker.wire.report import ReportOut, ReportVerifyOut

DEFAULT_PERIOD = timedelta(days=30)
ZoneName = Annotated[
    str, Field(min_length=1, max_length=48, pattern=r"^[a-z][a-z0-9]*(?:-[a-z0-9]+)*$")
]


class ControlsQuery(Body):
    """The period [since, until) (default: the 30 days before now) and an optional zone."""

    since: UtcTimeText | None = None
    until: UtcTimeText | None = None
    zone: ZoneName | None = None


class VerifyBody(Body):
    """A report document as `broker report controls --json` wrote it (or as the HTML embeds it)."""

    document: dict[str, Any]


@REGISTRY.add(
    "GET",
    "/v1/report/controls",
    request=ControlsQuery,
    response=ReportOut,
    access=Access.OPERATOR,
    summary="The controls report for a period, signed with the audit key",
)
def controls(ctx: Context[ControlsQuery]) -> ReportOut:
    q = ctx.params
    until = from_text(q.until) if q.until else ctx.now
    since = from_text(q.since) if q.since else until - DEFAULT_PERIOD
    if since >= until:
        raise BadRequestError(
            f"the period is empty: since {q.since} is not before until {to_text(until)}"
        )
    doc = ctx.app.report().controls(
        since=since, until=until, zone=q.zone, actor=ctx.caller.actor, now=ctx.now
    )
    return ReportOut.model_validate(doc)


@REGISTRY.add(
    "POST",
    "/v1/report/verify",
    request=VerifyBody,
    response=ReportVerifyOut,
    access=Access.OPERATOR,
    summary="Check a report's signature, its audit head against the chain, and the chain up to it",
)
def verify(ctx: Context[VerifyBody]) -> ReportVerifyOut:
    outcome = ctx.app.report().verify(ctx.params.document, actor=ctx.caller.actor, now=ctx.now)
    return from_domain(ReportVerifyOut, outcome)
