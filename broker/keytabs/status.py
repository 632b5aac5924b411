"""What `broker keytab status` shows of one service account: AD's key version, each node's,
the rotation's age, when the next is due and the last verification. Pure: the service
reads the store and AD, this module puts the answer together.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from broker.keytabs import plan, rows
from broker.policy.model import ServiceAccount


@dataclass(frozen=True)
class NodeStatus:
    node: str
    kvnos: tuple[int, ...]
    verified_kvno: int | None
    checked_at: datetime | None
    error: str | None
    stale: bool


@dataclass(frozen=True)
class AccountStatus:
    name: str
    account: str
    ad_kvno: int | None
    ad_error: str | None
    last_rotated_at: datetime | None
    next_due_at: datetime | None
    last_verified_at: datetime | None
    rotation_state: str | None
    last_error: str | None
    retry_after: datetime | None
    nodes: tuple[NodeStatus, ...]


def account_status(
    name: str,
    service: ServiceAccount,
    row: rows.AccountRow | None,
    views: Mapping[str, rows.NodeView],
    open_one: rows.Rotation | None,
    ad_kvno: int | None,
    ad_error: str | None,
) -> AccountStatus:
    """One account's status; a node is stale unless it holds the current key version."""
    last = row.last_rotated_at if row else None
    nodes = []
    for node in sorted(service.nodes):
        view = views.get(node)
        current = ad_kvno if ad_kvno is not None else (row.kvno if row else None)
        stale = (
            view is None or view.error is not None or current is None or current not in view.kvnos
        )
        nodes.append(
            NodeStatus(
                node,
                view.kvnos if view else (),
                view.verified_kvno if view else None,
                view.checked_at if view else None,
                view.error if view else "never seen",
                stale,
            )
        )
    return AccountStatus(
        name=name,
        account=service.account,
        ad_kvno=ad_kvno,
        ad_error=ad_error,
        last_rotated_at=last,
        next_due_at=plan.next_due(last, service.rotate_every),
        last_verified_at=row.last_verified_at if row else None,
        rotation_state=open_one.state if open_one else None,
        last_error=row.last_error if row else None,
        retry_after=row.retry_after if row else None,
        nodes=tuple(nodes),
    )
