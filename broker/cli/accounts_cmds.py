"""`broker accounts`: who exists, in which groups, with which roles, and where they may elevate."""

from __future__ import annotations

from urllib.parse import quote

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.core.durations import format_duration, parse_duration
from broker.core.errors import EXIT_FAILED
from broker.wire.accounts import AccountList, AccountOut, FindingOut

app = typer.Typer(help="Cluster accounts from the directory snapshot.", no_args_is_help=True)


def _when(account: AccountOut) -> str:
    seen = account.last_logon
    return "never" if seen is None else seen.strftime("%Y-%m-%d %H:%M")


@app.command("show")
def show(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Account: alice, HPC\\alice or alice@HPC.TEST."),
    json_out: bool = JSON_OPTION,
) -> None:
    """An account's AD groups, the cluster roles they give it, and where it may elevate.

    Operators may look at any account; a directory user at their own.
    """
    a = client(ctx).get(f"/v1/accounts/{_path_part(name)}", AccountOut)
    if json_out:
        output.print_json(a)
        return
    ids = f"{a.uid}/{a.gid}" if a.uid is not None else "unmapped"
    state_text = a.state + ("" if a.eligible else " (not eligible)")
    if a.problem:
        state_text += f": {a.problem}"
    direct = set(a.direct_groups)
    rows = [
        ["account", f"{a.name} ({a.upn or 'no UPN'})"],
        ["state", state_text + (", stale" if a.stale else "")],
        ["uid/gid", ids],
        ["sid", a.sid],
        ["dn", a.dn],
        ["last logon", _when(a)],
        [
            "groups",
            ", ".join(g + ("" if g in direct else " (nested)") for g in a.groups) or "none",
        ],
        [
            "roles",
            ", ".join(f"{r.role} (via {r.via})" for r in a.roles) or a.no_roles_reason,
        ],
        [
            "may elevate",
            "; ".join(f"{s.role} on {s.nodes} for up to {s.max_duration}" for s in a.may_elevate)
            or "nowhere",
        ],
    ]
    output.table(None, ["", a.name], rows)


def _path_part(name: str) -> str:
    return quote(name, safe="")


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
    """List accounts in the snapshot, filtered (operators)."""
    if stale_after is not None:
        parse_duration(stale_after)
    data = client(ctx).get(
        "/v1/accounts",
        AccountList,
        group=group,
        role=role,
        disabled=disabled,
        stale=stale,
        stale_after=stale_after,
    )
    rows = data.accounts
    if json_out:
        output.print_json(rows)
        return
    after = format_duration(parse_duration(data.stale_after))
    output.table(
        f"{len(rows)} accounts" + (f" (stale: no logon in {after})" if stale else ""),
        ["account", "state", "uid", "gid", "roles", "last logon", "groups"],
        [
            [
                a.name,
                a.state + (" (stale)" if a.stale else ""),
                a.uid if a.uid is not None else "-",
                a.gid if a.gid is not None else "-",
                ",".join(r.role for r in a.roles),
                _when(a),
                len(a.groups),
            ]
            for a in rows
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
    if stale_after is not None:
        parse_duration(stale_after)
    findings = client(ctx).get_list("/v1/reviews/accounts", FindingOut, stale_after=stale_after)
    if json_out:
        output.print_json(findings)
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
