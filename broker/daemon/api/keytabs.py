"""Keytab rotation: status, rotate (one, due, all), create, verify. Operators only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, model_validator

from broker.core.errors import UsageError
from broker.core.timeutil import to_second_text
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Empty, Out
from broker.keytabs.service import RotationReport
from broker.keytabs.status import AccountStatus

# A service account's name in the policy (the policy's allow-list for table keys).
ServiceName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")]


def _time(value: datetime | None) -> str | None:
    return None if value is None else to_second_text(value)


class KeytabPath(Body):
    name: ServiceName


class RotateIn(Body):
    name: ServiceName | None = None
    due: bool = False
    all: bool = False
    force: bool = False

    @model_validator(mode="after")
    def _one_choice(self) -> RotateIn:
        if sum((self.name is not None, self.due, self.all)) != 1:
            raise UsageError("give exactly one of a service account name, due or all")
        return self


class CreateIn(Body):
    name: ServiceName
    create_account: bool = False


class StatusIn(Body):
    live: bool = False


class KeytabNodeOut(Out):
    node: str
    ok: bool
    error: str | None
    kvnos: list[int]


class RotationOut(Out):
    name: str
    outcome: str
    from_kvno: int | None
    kvno: int | None
    message: str
    nodes: list[KeytabNodeOut]


class KeytabNodeStatusOut(Out):
    node: str
    kvnos: list[int]
    verified_kvno: int | None
    checked_at: str | None
    error: str | None
    stale: bool


class AccountStatusOut(Out):
    name: str
    account: str
    ad_kvno: int | None
    ad_error: str | None
    last_rotated_at: str | None
    next_due_at: str | None
    last_verified_at: str | None
    rotation_state: str | None
    last_error: str | None
    retry_after: str | None
    nodes: list[KeytabNodeStatusOut]


def rotation_out(report: RotationReport) -> RotationOut:
    return RotationOut(
        name=report.name,
        outcome=report.outcome,
        from_kvno=report.from_kvno,
        kvno=report.kvno,
        message=report.message,
        nodes=[
            KeytabNodeOut(node=n.node, ok=n.ok, error=n.error, kvnos=list(n.kvnos))
            for n in report.nodes
        ],
    )


def status_out(item: AccountStatus) -> AccountStatusOut:
    return AccountStatusOut(
        name=item.name,
        account=item.account,
        ad_kvno=item.ad_kvno,
        ad_error=item.ad_error,
        last_rotated_at=_time(item.last_rotated_at),
        next_due_at=_time(item.next_due_at),
        last_verified_at=_time(item.last_verified_at),
        rotation_state=item.rotation_state,
        last_error=item.last_error,
        retry_after=_time(item.retry_after),
        nodes=[
            KeytabNodeStatusOut(
                node=n.node,
                kvnos=list(n.kvnos),
                verified_kvno=n.verified_kvno,
                checked_at=_time(n.checked_at),
                error=n.error,
                stale=n.stale,
            )
            for n in item.nodes
        ],
    )


@REGISTRY.add(
    "POST",
    "/v1/keytabs/status",
    request=StatusIn,
    response=list[AccountStatusOut],
    access=Access.OPERATOR,
    summary="Every service account: key version in AD and on each node, age, next due, verification",
)
def status(ctx: Context[StatusIn]) -> list[AccountStatusOut]:
    return [status_out(s) for s in ctx.app.keytabs().status(live=ctx.params.live)]


@REGISTRY.add(
    "POST",
    "/v1/keytabs/rotate",
    request=RotateIn,
    response=list[RotationOut],
    access=Access.OPERATOR,
    summary="Rotate one service account, every due one, or all: pre-stage, change in AD, verify",
)
def rotate(ctx: Context[RotateIn]) -> list[RotationOut]:
    service = ctx.app.keytabs()
    actor = ctx.caller.actor
    if ctx.params.name is not None:
        return [rotation_out(service.rotate(ctx.params.name, actor=actor, force=ctx.params.force))]
    return [rotation_out(r) for r in service.rotate_due(actor=actor, every=ctx.params.all)]


@REGISTRY.add(
    "POST",
    "/v1/keytabs/{name}/create",
    request=CreateIn,
    response=RotationOut,
    access=Access.OPERATOR,
    summary="Make a service account's keytab on its nodes (optionally creating the AD account)",
)
def create(ctx: Context[CreateIn]) -> RotationOut:
    report = ctx.app.keytabs().create(
        ctx.params.name, actor=ctx.caller.actor, create_account=ctx.params.create_account
    )
    return rotation_out(report)


@REGISTRY.add(
    "POST",
    "/v1/keytabs/{name}/verify",
    request=KeytabPath,
    response=RotationOut,
    access=Access.OPERATOR,
    summary="Check that every node's keytab accepts a fresh ticket for every principal",
)
def verify(ctx: Context[KeytabPath]) -> RotationOut:
    return rotation_out(ctx.app.keytabs().verify(ctx.params.name, actor=ctx.caller.actor))


__all__ = ["Empty", "create", "rotate", "status", "verify"]
