"""`broker accounts`: who exists, in which groups, with which roles, and where they may elevate."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import typer

from broker.accounts.view import AccountView, account_views, review
from broker.cli import output
from broker.cli.context import JSON_OPTION, state
from broker.core.durations import format_duration, parse_duration
from broker.core.errors import EXIT_FAILED, RefusedError, UsageError
from broker.core.timeutil import to_text, utcnow

app = typer.Typer(help="Cluster accounts from the directory snapshot.", no_args_is_help=True)


def _when(view: AccountView) -> str:
    seen = view.account.last_logon
    return "never" if seen is None else to_text(seen)[:16].replace("T", " ")


def _stale_after(ctx: typer.Context, text: str | None) -> timedelta:
    if text is not None:
        return parse_duration(text)
    return state(ctx).app().directory_settings().stale_after


def _as_json(view: AccountView, stale: bool) -> dict[str, Any]:
    a = view.account
    return {
        "name": a.name,
        "upn": a.upn,
        "sid": a.sid,
        "dn": a.dn,
        "uid": a.uid if a.uid >= 0 else None,
        "gid": a.gid if a.gid >= 0 else None,
        "state": a.state,
        "eligible": a.eligible,
        "problem": a.problem,
        "stale": stale,
        "last_logon": None if a.last_logon is None else to_text(a.last_logon),
        "expires_at": None if a.expires_at is None else to_text(a.expires_at),
        "locked_until": None if a.locked_until is None else to_text(a.locked_until),
        "groups": sorted(a.groups),
        "direct_groups": sorted(a.direct_groups),
        "service_principals": list(a.service_principals),
        "roles": [{"role": r.role, "via": r.via} for r in view.roles],
        "may_elevate": [
            {"role": s.role, "nodes": s.nodes, "max_duration": s.max_duration} for s in view.scope
        ],
    }


@app.command("show")
def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Account: alice, HPC\\alice or alice@HPC.TEST."),
    json_out: bool = JSON_OPTION,
) -> None:
    """An account's AD groups, the cluster roles they give it, and where it may elevate."""
    cli_app = state(ctx).app()
    now = utcnow()
    snapshot = cli_app.snapshot(now)
    account = snapshot.account(name)
    if account is None:
        raise RefusedError(
            f"no account {name!r} in the directory snapshot",
            fix="check the name, or run `broker sync` if it was created recently",
        )
    [view] = account_views([account], cli_app.active_policy())
    stale = account.stale(now, cli_app.directory_settings().stale_after)
    if json_out:
        output.print_json(_as_json(view, stale))
        return
    ids = f"{account.uid}/{account.gid}" if account.uid >= 0 else "unmapped"
    state_text = account.state + ("" if account.eligible else " (not eligible)")
    if account.problem:
        state_text += f": {account.problem}"
    rows = [
        ["account", f"{account.name} ({account.upn or 'no UPN'})"],
        ["state", state_text + (", stale" if stale else "")],
        ["uid/gid", ids],
        ["sid", account.sid],
        ["dn", account.dn],
        ["last logon", _when(view)],
        [
            "groups",
            ", ".join(
                g + ("" if g in account.direct_groups else " (nested)")
                for g in sorted(account.groups)
            )
            or "none",
        ],
        ["roles", ", ".join(f"{r.role} (via {r.via})" for r in view.roles) or view.no_roles_reason],
        [
            "may elevate",
            "; ".join(f"{s.role} on {s.nodes} for up to {s.max_duration}" for s in view.scope)
            or "nowhere",
        ],
    ]
    output.table(None, ["", account.name], rows)


@app.command("list")
def list_accounts(
    ctx: typer.Context,
    group: str | None = typer.Option(None, "--group", help="Only members (nested too) of GROUP."),
    role: str | None = typer.Option(None, "--role", help="Only holders of ROLE (active policy)."),
    disabled: bool = typer.Option(
        False, "--disabled", help="Only accounts that are disabled, expired or locked."
    ),
    stale: bool = typer.Option(
        False, "--stale", help="Only accounts with no logon within directory.stale_after."
    ),
    stale_after: str | None = typer.Option(
        None, "--stale-after", help="Override directory.stale_after, e.g. 30d."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """List accounts in the snapshot, filtered."""
    cli_app = state(ctx).app()
    now = utcnow()
    after = _stale_after(ctx, stale_after)
    policy = cli_app.active_policy()
    if role is not None and policy is None:
        raise UsageError(
            "--role needs an active policy", fix="apply one with `broker policy apply`"
        )
    snapshot = cli_app.snapshot(now)
    if group is not None and snapshot.group(group) is None:
        raise RefusedError(f"no group {group!r} in the directory snapshot", fix="check the name")
    views = account_views(snapshot.accounts(), policy)
    rows = []
    for view in views:
        a = view.account
        if group is not None and group.lower() not in a.groups:
            continue
        if role is not None and role not in {r.role for r in view.roles}:
            continue
        if disabled and a.eligible:
            continue
        is_stale = a.stale(now, after)
        if stale and not is_stale:
            continue
        rows.append((view, is_stale))
    if json_out:
        output.print_json([_as_json(v, s) for v, s in rows])
        return
    output.table(
        f"{len(rows)} accounts"
        + (f" (stale: no logon in {format_duration(after)})" if stale else ""),
        ["account", "state", "uid", "gid", "roles", "last logon", "groups"],
        [
            [
                v.account.name,
                v.account.state + (" (stale)" if s else ""),
                v.account.uid if v.account.uid >= 0 else "-",
                v.account.gid if v.account.gid >= 0 else "-",
                ",".join(r.role for r in v.roles),
                _when(v),
                len(v.account.groups),
            ]
            for v, s in rows
        ],
    )


@app.command("review")
def review_cmd(
    ctx: typer.Context,
    stale_after: str | None = typer.Option(
        None, "--stale-after", help="Override directory.stale_after, e.g. 30d."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """AC-2 account review: role holders that are disabled or stale, service accounts without
    an owner, mapped groups that are empty or missing.

    Exit 0 when there is nothing to review, 1 when there are findings.
    """
    cli_app = state(ctx).app()
    now = utcnow()
    findings = review(
        cli_app.snapshot(now), cli_app.require_policy(), now, _stale_after(ctx, stale_after)
    )
    if json_out:
        output.print_json([f.as_dict() for f in findings])
    elif findings:
        output.table(
            f"{len(findings)} findings",
            ["control", "kind", "subject", "finding"],
            [[f.control, f.kind, f.subject, f.message] for f in findings],
        )
    else:
        output.say("account review: nothing to report")
    if findings:
        raise typer.Exit(EXIT_FAILED)
