"""`broker elevate`, `broker requests`, `broker approve|deny`, `broker grants`, `broker revoke`.

The daemon decides everything; the CLI previews first (a refusal arrives
before you are asked for a code), prompts for the TOTP code (hidden; read
from stdin when it is not a terminal, never from argv), then shows the
per-node outcome. Exit 0 when every node took the change, 1 when anything
was refused or a node failed, 3 when the daemon is down.
"""

from __future__ import annotations

import time
from typing import Any

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.cli.mfa_cmds import _prompt
from broker.client.client import Client
from broker.core.durations import format_duration
from broker.core.errors import EXIT_FAILED
from broker.core.hostlist import expand, fold
from broker.wire.grants import (
    ElevationOut,
    GrantOut,
    NodeResultOut,
    PlanOut,
    ReapOut,
    RequestOut,
    RevokeOut,
)

CODE_LABEL = "Code from the authenticator (6 digits)"
WATCH_LIMIT_S = 900.0

grants_app = typer.Typer(help="Grants: list, show, retry.", no_args_is_help=True)
requests_app = typer.Typer(help="Elevation requests waiting for approval.", no_args_is_help=True)


def elevate(
    ctx: typer.Context,
    nodes: str = typer.Argument(..., help="Hostlist expression, e.g. gpu[01-04]."),
    duration: str | None = typer.Option(
        None, "--for", help="How long, e.g. 30m, 2h (default: the role's default)."
    ),
    reason: str = typer.Option(..., "--reason", help='Why, e.g. "INC-4711 replace NVLink switch".'),
    role: str | None = typer.Option(
        None, "--role", help="The role to use (default: the first that allows it)."
    ),
    commands: str | None = typer.Option(
        None, "--commands", help="Only these command sets of the role (comma-separated)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Become root (or the role's runas) on NODES for a while: MFA, maybe approvals, then a
    time-boxed sudo rule pushed to every node."""
    body: dict[str, Any] = {"nodes": nodes, "reason": reason}
    if duration is not None:
        body["duration"] = duration
    if role is not None:
        body["role"] = role
    if commands is not None:
        body["commands"] = [c.strip() for c in commands.split(",") if c.strip()]
    api = client(ctx)
    plan = api.post("/v1/elevate/preview", body, PlanOut)
    if not json_out:
        _say_plan(plan)
    if plan.mfa:
        body["code"] = _prompt(CODE_LABEL)
    watch = not json_out and output.err().is_terminal and len(expand(plan.nodes)) > 1
    body["wait"] = not watch
    with output.err().status(f"elevating on {plan.nodes}"):
        result = api.post("/v1/elevate", body, ElevationOut)
    if watch and result.grant is not None:
        result = result.model_copy(update={"results": _watch(api, result.grant)})
    _show_elevation(result, json_out)


def _say_plan(plan: PlanOut) -> None:
    output.say(
        f"{plan.user}: {plan.role} on {plan.nodes} as {plan.runas} for "
        f"{format_duration_s(plan.duration_s)}, commands {plan.commands}"
        + (
            f"; needs {plan.approvals_needed} approval(s) from {', '.join(plan.approver_groups)}"
            if plan.approvals_needed
            else ""
        )
    )


def _watch(api: Client, grant: GrantOut) -> list[NodeResultOut]:
    """A progress bar while the daemon pushes the grant; then each node's outcome."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    total = len(grant.node_states)
    deadline = time.monotonic() + WATCH_LIMIT_S
    states = grant.node_states
    with Progress(
        TextColumn(f"pushing {grant.id}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=output.err(),
        transient=True,
    ) as bar:
        task = bar.add_task("push", total=total)
        while time.monotonic() < deadline:
            states = api.get(f"/v1/grants/{grant.id}", GrantOut).node_states
            settled = sum(n.state != "pending" for n in states)
            bar.update(task, completed=settled)
            if settled == total:
                break
            time.sleep(0.25)
    return [n.as_result() for n in states]


def format_duration_s(seconds: int) -> str:
    from datetime import timedelta

    return format_duration(timedelta(seconds=seconds))


def _show_elevation(result: ElevationOut, json_out: bool) -> None:
    if json_out:
        output.print_json(result)
    grant, request, results = result.grant, result.request, result.results
    if grant is None and request is not None:
        if not json_out:
            output.say(
                f"request {request.id} is waiting for {request.approvals_needed} approval(s) "
                f"from {', '.join(request.approver_groups)} until {output.when(request.expires_at)}"
                f" (approvers: `broker approve {request.id}`)"
            )
        return
    if grant is None:
        return
    if not json_out:
        _results_table(results)
    failed = [r.node for r in results if not r.ok]
    live = [r.node for r in results if r.ok]
    if not json_out:
        if live:
            output.say(
                f"grant {grant.id}: {grant.user} may `sudo` as {grant.runas} on "
                f"{fold(live)} until {output.when(grant.not_after)}"
            )
        if failed:
            output.fail(
                f"grant {grant.id} did not land on {fold(failed)}; "
                f"retry with `broker grants retry {grant.id}`"
            )
    if failed:
        raise typer.Exit(EXIT_FAILED)


def _results_table(results: list[NodeResultOut]) -> None:
    output.table(
        None,
        ["node", "result", "ms", "problem"],
        [
            [r.node, "ok" if r.ok else "FAILED", f"{r.elapsed_ms:.0f}", r.error or ""]
            for r in results
        ],
    )


# ---------------------------------------------------------------- requests


@requests_app.command("list")
def list_requests(
    ctx: typer.Context,
    state: str | None = typer.Option(
        "pending", "--state", help="pending, granted, denied, expired, failed; '' for all."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Requests you may decide on (approvers, operators) or that you made."""
    query: dict[str, Any] = {}
    if state:
        query["state"] = state
    found = client(ctx).get_list("/v1/requests", RequestOut, **query)
    if json_out:
        output.print_json(found)
        return
    output.table(
        None,
        ["id", "user", "role", "nodes", "for", "reason", "approvals", "state", "expires"],
        [
            [
                r.id,
                r.user,
                r.role,
                r.nodes,
                format_duration_s(r.duration_s),
                r.reason,
                f"{r.approved}/{r.approvals_needed}",
                r.state,
                output.when(r.expires_at),
            ]
            for r in found
        ],
    )


def approve(
    ctx: typer.Context,
    request_id: str = typer.Argument(..., metavar="REQ", help="The request id (r...)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Approve a request (you must be in one of its approver groups and not its requester)."""
    code = _prompt(CODE_LABEL)
    api = client(ctx)
    watch = not json_out and output.err().is_terminal
    with output.err().status(f"approving {request_id}"):
        result = api.post(
            f"/v1/requests/{request_id}/approve", {"code": code, "wait": not watch}, ElevationOut
        )
    if watch and result.grant is not None:
        result = result.model_copy(update={"results": _watch(api, result.grant)})
    if result.grant is None and result.request is not None and not json_out:
        request = result.request
        output.say(f"approved: {request.approved} of {request.approvals_needed} approval(s)")
        return
    _show_elevation(result, json_out)


def deny(
    ctx: typer.Context,
    request_id: str = typer.Argument(..., metavar="REQ", help="The request id (r...)."),
    reason: str = typer.Option(..., "--reason", help="Why it is denied (the requester sees it)."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Deny a request (approver groups only, not the requester)."""
    code = _prompt(CODE_LABEL)
    result = client(ctx).post(
        f"/v1/requests/{request_id}/deny", {"reason": reason, "code": code}, RequestOut
    )
    if json_out:
        output.print_json(result)
        return
    output.say(f"request {result.id} of {result.user} denied")


# ---------------------------------------------------------------- grants


@grants_app.command("list")
def list_grants(
    ctx: typer.Context,
    user: str | None = typer.Option(None, "--user", help="Only this user's grants (operators)."),
    node: str | None = typer.Option(None, "--node", help="Only grants on this node."),
    active: bool = typer.Option(False, "--active", help="Only grants in force now."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Grants, newest first (yours, or everyone's for operators)."""
    query: dict[str, Any] = {"active": active}
    if user is not None:
        query["user"] = user
    if node is not None:
        query["node"] = node
    found = client(ctx).get_list("/v1/grants", GrantOut, **query)
    if json_out:
        output.print_json(found)
        return
    output.table(
        None,
        ["id", "user", "role", "nodes", "live on", "until", "state", "reason"],
        [
            [
                g.id,
                g.user,
                g.role,
                g.nodes,
                fold(g.live_on),
                output.when(g.not_after),
                g.shown_state,
                g.reason,
            ]
            for g in found
        ],
    )


@grants_app.command("show")
def show_grant(
    ctx: typer.Context,
    grant_id: str = typer.Argument(..., metavar="ID"),
    json_out: bool = JSON_OPTION,
) -> None:
    """One grant and its state on every node."""
    g = client(ctx).get(f"/v1/grants/{grant_id}", GrantOut)
    if json_out:
        output.print_json(g)
        return
    shown = g.model_dump(mode="json")  # times as the daemon states them
    output.table(
        None,
        ["", ""],
        [
            [k, shown[k]]
            for k in (
                "id",
                "user",
                "role",
                "runas",
                "commands",
                "nodes",
                "not_before",
                "not_after",
                "reason",
                "approvers",
                "state",
                "created_by",
                "end_reason",
            )
        ],
    )
    output.table(
        None,
        ["node", "state", "attempts", "problem"],
        [[n.node, n.state, n.attempts, n.drop_in_problem or n.error or ""] for n in g.node_states],
    )


@grants_app.command("retry")
def retry(
    ctx: typer.Context,
    grant_id: str = typer.Argument(..., metavar="ID"),
    json_out: bool = JSON_OPTION,
) -> None:
    """Push a grant again to the nodes where it did not land."""
    with output.err().status(f"pushing {grant_id} again"):
        results = client(ctx).post_list(f"/v1/grants/{grant_id}/retry", {}, NodeResultOut)
    if json_out:
        output.print_json(results)
    elif not results:
        output.say(f"grant {grant_id} is already live on all its nodes")
    else:
        _results_table(results)
    if any(not r.ok for r in results):
        raise typer.Exit(EXIT_FAILED)


def revoke(
    ctx: typer.Context,
    grant_ids: list[str] = typer.Argument(None, metavar="[ID]...", help="Grant ids."),
    user: str | None = typer.Option(None, "--user", help="Every active grant of this user."),
    node: str | None = typer.Option(None, "--node", help="Every active grant on this node."),
    reason: str = typer.Option(
        "revoked by an operator", "--reason", help="Recorded in the audit log."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """End grants now: their sudo rules are removed and their running sessions killed."""
    body: dict[str, Any] = {"ids": list(grant_ids or []), "reason": reason}
    if user is not None:
        body["user"] = user
    if node is not None:
        body["node"] = node
    if not body["ids"] and user is None and node is None:
        raise typer.BadParameter("name grant ids, --user or --node")
    with output.err().status("revoking"):
        result = client(ctx).post("/v1/revoke", body, RevokeOut)
    if json_out:
        output.print_json(result)
    else:
        _say_revoked(result)
    if result.pending:
        raise typer.Exit(EXIT_FAILED)


def _say_revoked(result: RevokeOut) -> None:
    if result.results:
        _results_table(result.results)
    output.say(
        f"revoked: {', '.join(result.revoked) or 'nothing active'}"
        + (
            f"; sessions ended: {sum(r.killed for r in result.results)} process(es)"
            if result.results
            else ""
        )
    )
    if result.pending:
        output.fail(
            f"not yet removed from {', '.join(result.pending)} (unreachable); "
            "the daemon retries until those nodes answer"
        )


@grants_app.command("reap")
def reap(ctx: typer.Context, json_out: bool = JSON_OPTION) -> None:
    """Run the daemon's scheduler tick now (operators): expire requests and grants, retry
    removals from nodes that were down, re-check grants, collect session events."""
    with output.err().status("reaping"):
        report = client(ctx).post("/v1/grants/reap", {}, ReapOut)
    if json_out:
        output.print_json(report)
        return
    output.say(
        f"expired {len(report.grants_expired)} grant(s) and "
        f"{len(report.requests_expired)} request(s); revoked {len(report.grants_revoked)}; "
        f"removed {len(report.removed)} from nodes; {report.events} session event(s)"
    )
    if report.still_pending:
        output.fail(f"still to remove (nodes unreachable): {', '.join(report.still_pending)}")
        raise typer.Exit(EXIT_FAILED)
