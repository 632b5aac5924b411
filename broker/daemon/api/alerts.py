"""Alerts and node quarantine (docs/detection.md).

Alerts are for operators and the incident-response group. Quarantine and
release change who may be root on a node, so they need a directory account
from one of those two, with its MFA code, and are audited by the service.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field

from broker.core.errors import RefusedError
from broker.core.identity import Account
from broker.core.timeutil import from_text
from broker.daemon.api.grants import ReasonText
from broker.daemon.api.mfa import CodeText
from broker.daemon.api.names import HostlistText, UtcTimeText
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Empty
from broker.detect import alerts
from broker.policy.detection_rules import Severity
from broker.wire.alerts import (
    AlertOut,
    MarkOut,
    QuarantinedOut,
    QuarantineOut,
)
from broker.wire.base import from_domain

NoteText = Annotated[str, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$")]
RuleName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9-]+$")]


def _responder(
    ctx: Context[Any], *, mfa_purpose: str | None = None, code: str | None = None
) -> None:
    """Operators and incident-response members only; with a purpose, their own MFA too."""
    caller = ctx.caller
    policy = ctx.app.policy().active()
    group = policy.incident_response_group if policy is not None else None
    member = caller.account is not None and group is not None and group in caller.account.groups
    if not (caller.operator or member):
        raise RefusedError(
            f"{caller.display} is neither a broker operator nor in the incident-response group",
            fix=f"ask a member of {group or 'incident_response_group (unset in the policy)'}",
        )
    if mfa_purpose is None:
        return
    account: Account | None = caller.account
    if account is None:
        raise RefusedError(
            f"{mfa_purpose} needs a directory account's MFA; {caller.display} has none",
            fix="run it as your own directory account (not as root)",
        )
    ctx.app.mfa().require(account, code, mfa_purpose, caller.actor)


class AlertsQuery(Body):
    since: UtcTimeText | None = None
    severity: Severity | None = None
    unacked: bool = False
    rule: RuleName | None = None
    limit: int = Field(default=200, ge=1, le=10_000)


ALERT_ID_MAX = 2**63 - 1  # SQLite's INTEGER range: a larger id is a usage error, not a 500


class AlertPath(Body):
    id: int = Field(ge=1, le=ALERT_ID_MAX)


class AckIn(Body):
    id: int = Field(ge=1, le=ALERT_ID_MAX)
    note: NoteText = ""


def alert_out(a: alerts.Alert) -> AlertOut:
    return from_domain(AlertOut, a)


@REGISTRY.add(
    "GET",
    "/v1/alerts",
    request=AlertsQuery,
    response=list[AlertOut],
    access=Access.SELF_OR_OPERATOR,
    summary="Alerts, newest first (operators and incident response)",
)
def list_alerts(ctx: Context[AlertsQuery]) -> list[AlertOut]:
    _responder(ctx)
    p = ctx.params
    found = alerts.alerts(
        ctx.app.ready_store().conn,
        since=None if p.since is None else from_text(p.since),
        severity=p.severity,
        unacked=p.unacked,
        rule=p.rule,
        limit=p.limit,
    )
    return [alert_out(a) for a in found]


@REGISTRY.add(
    "GET",
    "/v1/alerts/{id}",
    request=AlertPath,
    response=AlertOut,
    access=Access.SELF_OR_OPERATOR,
    summary="One alert with what was done about it",
)
def show_alert(ctx: Context[AlertPath]) -> AlertOut:
    _responder(ctx)
    return alert_out(alerts.alert(ctx.app.ready_store().conn, ctx.params.id))


@REGISTRY.add(
    "POST",
    "/v1/alerts/{id}/ack",
    request=AckIn,
    response=AlertOut,
    access=Access.SELF_OR_OPERATOR,
    summary="Acknowledge an alert (audited; once)",
)
def ack_alert(ctx: Context[AckIn]) -> AlertOut:
    _responder(ctx)
    store = ctx.app.ready_store()
    with store.transaction() as conn:
        alerts.ack(conn, ctx.params.id, by=ctx.caller.actor, note=ctx.params.note, now=ctx.now)
    return alert_out(alerts.alert(store.conn, ctx.params.id))


# ---------------------------------------------------------------- quarantine


class QuarantineIn(Body):
    nodes: HostlistText
    reason: ReasonText
    code: CodeText | None = None


class ReleaseIn(Body):
    nodes: HostlistText
    code: CodeText | None = None


@REGISTRY.add(
    "POST",
    "/v1/nodes/quarantine",
    request=QuarantineIn,
    response=QuarantineOut,
    access=Access.USER,
    summary="Quarantine nodes: grants revoked, sessions ended, elevation refused (MFA)",
)
def quarantine(ctx: Context[QuarantineIn]) -> QuarantineOut:
    _responder(ctx, mfa_purpose="quarantine", code=ctx.params.code)
    result = ctx.app.quarantines().quarantine(
        ctx.params.nodes, reason=ctx.params.reason, actor=ctx.caller.actor, now=ctx.now
    )
    return from_domain(QuarantineOut, result)


@REGISTRY.add(
    "POST",
    "/v1/nodes/release",
    request=ReleaseIn,
    response=list[MarkOut],
    access=Access.USER,
    summary="Release quarantined nodes (MFA)",
)
def release(ctx: Context[ReleaseIn]) -> list[MarkOut]:
    _responder(ctx, mfa_purpose="release", code=ctx.params.code)
    marks = ctx.app.quarantines().release(ctx.params.nodes, actor=ctx.caller.actor, now=ctx.now)
    return [from_domain(MarkOut, m) for m in marks]


@REGISTRY.add(
    "GET",
    "/v1/nodes/quarantined",
    request=Empty,
    response=list[QuarantinedOut],
    access=Access.SELF_OR_OPERATOR,
    summary="Nodes under quarantine, and whether each node has its marker",
)
def list_quarantined(ctx: Context[Empty]) -> list[QuarantinedOut]:
    _responder(ctx)
    return [from_domain(QuarantinedOut, q) for q in ctx.app.quarantines().listed()]
