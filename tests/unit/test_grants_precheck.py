"""A grant whose drop-in could not be written is refused when it is asked for (issue 20):
before a request is opened, approvals are asked or a TOTP code is used up."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from broker.audit.query import EventFilter, iter_events
from broker.core.errors import RefusedError
from broker.core.identity import Account
from broker.grants import rows
from tests.unit.policy_samples import NOW, account
from tests.unit.test_grants_service import World, world  # noqa: F401 (fixture)

# AD's `ALL` folds to `all`: a valid Unix name, and sudoers' wildcard.
EVERYONE = account("all", "gpu-admins", "hpc-admins")


def elevate(w: World, who: Account, role: str) -> Any:
    return w.service.elevate(
        who, nodes="gpu01", duration=timedelta(minutes=30), reason="INC-1", role=role,
        commands=None, code="123456", actor=f"unix:{who.name}", now=NOW,
    )  # fmt: skip


def test_an_account_named_all_is_refused_before_a_request_is_opened(
    world: World,  # noqa: F811
) -> None:
    with pytest.raises(RefusedError) as caught:
        elevate(world, EVERYONE, "gpu-root")
    line = caught.value.one_line()
    assert line.startswith("all may not elevate: no sudoers rule can be written for it:")
    assert "ALL is sudoers' wildcard" in line
    assert rows.requests(world.store.conn) == []
    (event,) = iter_events(world.store.conn, EventFilter(action="*refused"))
    assert event.details_obj()["reason"] == line
    assert world.nodes.calls == []


def test_without_approvals_the_code_is_not_used_up(world: World) -> None:  # noqa: F811
    used: list[str] = []
    world.service._mfa = lambda account, code, purpose, actor: used.append(purpose)
    with pytest.raises(RefusedError, match="no sudoers rule can be written"):
        elevate(world, EVERYONE, "node-diag")
    assert used == [] and world.nodes.calls == []
    elevate(world, account("carol", "gpu-admins"), "node-diag")
    assert used == ["elevate"]
