"""`broker alerts list|show|ack`: what detection found and what was done about it."""

from __future__ import annotations

from typing import Any

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.policy.detection_rules import SEVERITIES
from broker.wire.alerts import AlertOut

app = typer.Typer(help="Alerts raised by detection rules and drift checks.", no_args_is_help=True)


def _actions(a: AlertOut) -> str:
    """Each action and its state; one withheld for want of corroborated evidence
    (docs/detection.md, "What counts as evidence") reads `withheld`, not `failed`."""
    done = [
        f"{x.kind}:{'withheld' if (x.result or '').startswith('withheld:') else x.state}"
        for x in a.actions
    ]
    return ", ".join(done) or "-"


@app.command("list")
def list_alerts(
    ctx: typer.Context,
    since: str | None = typer.Option(None, help="Only since this time or duration ago (2h, 1d)."),
    severity: str | None = typer.Option(
        None, help=f"This severity or worse: {', '.join(SEVERITIES)}."
    ),
    unacked: bool = typer.Option(False, "--unacked", help="Only alerts nobody acknowledged."),
    rule: str | None = typer.Option(None, help="Only this rule's alerts."),
    limit: int = typer.Option(200, min=1, max=10_000, help="At most this many."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Alerts, newest first. Exit 0 even when there are some: this is a listing."""
    params: dict[str, Any] = {"limit": limit, "unacked": unacked}
    if since:
        params["since"] = output.moment(since)
    if severity:
        if severity not in SEVERITIES:
            raise typer.BadParameter(
                f"expected one of {', '.join(SEVERITIES)}", param_hint="--severity"
            )
        params["severity"] = severity
    if rule:
        params["rule"] = rule
    found = client(ctx).get_list("/v1/alerts", AlertOut, **params)
    if json_out:
        output.print_json(found)
        return
    output.table(
        None,
        ["id", "when", "severity", "rule", "user", "node", "message", "actions", "acked"],
        [
            [a.id, output.when(a.created_at), a.severity, a.rule, a.user or "-",
             a.node or "-", a.message, _actions(a), a.acked_by or "-"]
            for a in found
        ],
    )  # fmt: skip


@app.command("show")
def show(
    ctx: typer.Context,
    alert_id: int = typer.Argument(..., metavar="ID", min=1),
    json_out: bool = JSON_OPTION,
) -> None:
    """One alert: the finding, its subject, what it matched, and each action's outcome."""
    a = client(ctx).get(f"/v1/alerts/{alert_id}", AlertOut)
    if json_out:
        output.print_json(a)
        return
    rows: list[list[object]] = [
        ["alert", a.id],
        ["raised", output.when(a.created_at)],
        ["event at", output.when(a.event_at)],
        ["rule", a.rule],
        ["severity", a.severity],
        ["user", a.user or "-"],
        ["node", a.node or "-"],
        ["grant", a.grant_id or "-"],
        ["session", a.recording_id or "-"],
        ["message", a.message],
        ["source", a.source],
        ["acknowledged", f"{a.acked_by} {output.when(a.acked_at)} {a.ack_note or ''}"
         if a.acked_at else "no"],
    ]  # fmt: skip
    rows += [[f"detail {k}", v] for k, v in sorted(a.details.items())]
    output.table(None, ["", ""], rows)
    if a.actions:
        output.table(
            "actions",
            ["action", "target", "state", "result"],
            [[x.kind, x.target, x.state, x.result or ""] for x in a.actions],
        )


@app.command("ack")
def ack(
    ctx: typer.Context,
    alert_id: int = typer.Argument(..., metavar="ID", min=1),
    note: str = typer.Option("", "--note", help="What was found or done (one line)."),
) -> None:
    """Acknowledge an alert: it stays listed, marked with who handled it (audited)."""
    a = client(ctx).post(f"/v1/alerts/{alert_id}/ack", {"note": note}, AlertOut)
    output.say(f"alert {a.id} acknowledged by {a.acked_by}")
