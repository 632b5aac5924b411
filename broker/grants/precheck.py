"""What a grant's drop-in needs, checked when the grant is asked for, not when it is pushed.

The renderer's allow-lists (broker/sudoers/render.py) refuse, for instance, an AD
account named `ALL` (folded to `all`, sudoers' wildcard). Checked only at push
time, such a request would be opened, approved and audited as ok, or cost the
requester a TOTP code, before being refused. So the plan's drop-in is rendered
once, with a placeholder id (and every node name checked as its host field), before approvals are asked or a code is used.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from broker.core.errors import RefusedError, UsageError
from broker.core.identity import Account
from broker.grants.plan import ElevationPlan, plan_elevation
from broker.policy.model import Policy
from broker.sudoers.render import SudoersGrant, check_hosts, render_grant

_PLACEHOLDER_ID = "g" + "0" * 16


def planned(
    policy: Policy,
    account: Account,
    nodes: Sequence[str],
    *,
    role: str | None,
    duration: timedelta | None,
    commands: Sequence[str] | None,
    now: datetime,
) -> ElevationPlan:
    """`plan_elevation`, refused (RefusedError) when its drop-in could not be rendered."""
    plan = plan_elevation(
        policy, account, nodes, role=role, duration=duration, commands=commands, now=now
    )
    require_renderable(account.name, plan, now)
    return plan


def require_renderable(user: str, plan: ElevationPlan, now: datetime) -> None:
    """Render the drop-in the grant would get; the renderer's refusal, as a refusal now."""
    start = now.replace(microsecond=0)
    try:
        render_grant(
            SudoersGrant(
                grant_id=_PLACEHOLDER_ID,
                user=user,
                runas=plan.role.runas,
                not_before=start,
                not_after=start + plan.duration,
                command_sets=plan.command_sets,
                host=plan.nodes[0],
            )
        )
        check_hosts(plan.nodes)  # the copies differ only in the host field
    except UsageError as exc:
        raise RefusedError(
            f"{user} may not elevate: no sudoers rule can be written for it: {exc.message}",
            fix=exc.fix,
        ) from None
