"""Keytab rotation: status, rotate (one, due, all), create, verify. Operators only."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import Field, model_validator

from broker.core.errors import UsageError
from broker.core.timeutil import to_second_text
from broker.daemon.caller import Access
from broker.daemon.routing import REGISTRY, Body, Context, Empty
from broker.keytabs.report import RotationReport
from broker.keytabs.status import AccountStatus
from broker.wire.base import from_domain
from broker.wire.keytabs import (
    AccountStatusOut,
    KeytabNodeStatusOut,
    RotationOut,
)

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


def rotation_out(report: RotationReport) -> RotationOut:
    return from_domain(RotationOut, report)


def status_out(item: AccountStatus) -> AccountStatusOut:
    """Times as second-precision UTC text, as the status view has always shown them."""
    return from_domain(
        AccountStatusOut,
        item,
        last_rotated_at=_time(item.last_rotated_at),
        next_due_at=_time(item.next_due_at),
        last_verified_at=_time(item.last_verified_at),
        retry_after=_time(item.retry_after),
        nodes=[
            from_domain(KeytabNodeStatusOut, n, checked_at=_time(n.checked_at)) for n in item.nodes
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
