"""`broker policy`: check, plan, apply, show and explain the policy file.

check exits 0 when the file is clean or has only warnings and notes, 1 when
it has errors (one line each, file:line first). plan and apply refuse
(exit 1) a file with errors. explain exits 0 when the verdict is allow and
1 when it is deny.

The CLI reads policy files on the caller's side and sends their text to the
daemon, which judges them against its store; `check --offline` judges a file
here, without a daemon or the directory (for a policy repository's CI).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client, state
from broker.core.durations import parse_duration
from broker.core.errors import EXIT_FAILED, UnavailableError, UsageError
from broker.core.hostlist import expand
from broker.core.identity import ACCOUNT_NAME, normalise_account_name
from broker.policy import names
from broker.policy.check import check_policy
from broker.policy.load import read_policy_file
from broker.wire.policy import (
    ApplyOut,
    CheckOut,
    CountsOut,
    ExplainOut,
    PlanOut,
    PlanSummaryOut,
    ShowOut,
)

app = typer.Typer(
    help="The access policy: zones, roles, bindings, service accounts.", no_args_is_help=True
)

FILE_ARGUMENT = typer.Argument(..., help="The policy file (TOML).", dir_okay=False)
OFFLINE_NOTE = "group names not checked against the directory (--offline)"


def _without(record: ShowOut | CheckOut | ApplyOut, exclude: Any) -> dict[str, Any]:
    """The JSON `--json` has always printed: the daemon's answer minus its display-only keys."""
    shown: dict[str, Any] = record.model_dump(mode="json", by_alias=True, exclude=exclude)
    return shown


def _counts(errors: int, warnings: int, notes: int) -> str:
    def n(count: int, word: str) -> str:
        return f"{count} {word}" + ("" if count == 1 else "s")

    return f"{n(errors, 'error')}, {n(warnings, 'warning')}, {n(notes, 'note')}"


def _sizes(counts: CountsOut) -> str:
    return (
        f"{counts.zones} zones ({counts.nodes} nodes), {counts.roles} roles, "
        f"{counts.bindings} bindings, {counts.service_accounts} service accounts"
    )


@app.command()
def check(
    ctx: typer.Context,
    file: Path | None = typer.Argument(
        None, help="Policy file (default: policy.path from the configuration).", dir_okay=False
    ),
    offline: bool = typer.Option(
        False,
        "--offline",
        help="Check here, without the daemon: group names are not checked against the "
        "directory (for a policy repository's CI).",
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Validate a policy file (schema, meaning, lint). Exit 0 clean or warnings only, 1 on errors."""
    path = file or state(ctx).settings().policy.path
    text = read_policy_file(path)
    if offline:
        report = CheckOut(**check_policy(text, str(path), known_groups=None), note=OFFLINE_NOTE)
    else:
        try:
            body = {"text": text, "source": str(path)}
            report = client(ctx).post("/v1/policy/check", body, CheckOut)
        except UnavailableError as exc:
            hint = "or check without the daemon: `broker policy check --offline`"
            raise UnavailableError(
                exc.message, fix=f"{exc.fix}; {hint}" if exc.fix else hint
            ) from exc
    note = report.note
    if json_out:
        output.print_json(_without(report, {"counts", "note"}))
    else:
        for row in report.findings:
            label = row.severity + (f" {row.control}" if row.control else "")
            output.say(f"{path}:{row.line}: {label}: {row.message}")
        if note:
            output.say(f"note: {note}")
        verdict = "INVALID" if report.errors else "valid"
        summary = _counts(report.errors, report.warnings, report.notes)
        if report.counts is not None:
            summary = f"{_sizes(report.counts)}; {summary}"
        output.say(f"{path}: {verdict}: {summary}")
    if report.errors:
        raise typer.Exit(EXIT_FAILED)


def _policy_file(path: Path, source: str) -> dict[str, str]:
    return {"text": read_policy_file(path), "source": source}


@app.command()
def plan(ctx: typer.Context, file: Path = FILE_ARGUMENT, json_out: bool = JSON_OPTION) -> None:
    """Who would gain and who would lose which rights where, against the active policy."""
    result = client(ctx).post("/v1/policy/plan", _policy_file(file, str(file)), PlanOut)
    if json_out:
        output.print_json(result)
        return
    for warning in result.warnings:
        output.warn(warning)
    old, new = result.old_sha256, result.new_sha256
    against = f"the active policy {old[:12]}" if old else "no active policy"
    output.say(f"plan: {file} (sha256 {(new or '-')[:12]}) against {against}")
    if old is not None and old == new:
        output.say("this file is the active policy: applying it would change nothing")
        return
    _print_plan(result)


def _print_plan(result: PlanSummaryOut) -> None:
    changes = result.changes
    if changes:
        output.table("settings", ["subject", "change"], [[c.subject, c.what] for c in changes])
    for title, rights, who in (
        ("gained by group", result.group_gains, "group"),
        ("lost by group", result.group_losses, "group"),
        ("gained by user", result.user_gains, "user"),
        ("lost by user", result.user_losses, "user"),
    ):
        if rights:
            output.table(
                title,
                [who, "role", "nodes", "count"],
                [[c.holder, c.role, c.nodes, c.count] for c in rights],
            )
    if result.eligible_accounts == 0:
        output.say(
            "note: the directory snapshot holds no account that may elevate, so no user "
            "gains or loses anything yet; the group tables show what the bindings give"
        )
    output.say(
        f"{result.users_gaining} users gain rights, {result.users_losing} lose rights; "
        f"{result.groups_gaining} groups gain, {result.groups_losing} lose; "
        f"{len(changes)} settings change"
    )


@app.command()
def apply(ctx: typer.Context, file: Path = FILE_ARGUMENT, json_out: bool = JSON_OPTION) -> None:
    """Activate a policy file atomically; the audit event records its sha256 and the plan."""
    body = _policy_file(file, str(file.absolute()))
    result = client(ctx).post("/v1/policy/apply", body, ApplyOut)
    if json_out:
        output.print_json(_without(result, {"applied_at", "actor"}))
        return
    for warning in result.warnings:
        output.warn(warning)
    short = result.sha256[:12]
    if not result.applied:
        output.say(
            f"policy {short} is already active (applied {result.applied_at} by "
            f"{result.actor}): nothing to do"
        )
        return
    if result.plan is not None:
        _print_plan(result.plan)
    output.say(f"applied policy {short} from {file} as version {result.version}")
    if result.revoked:
        output.say(f"revoked grants it no longer allows: {', '.join(result.revoked)}")


@app.command()
def show(
    ctx: typer.Context,
    text: bool = typer.Option(False, "--text", help="Print the active policy's exact text."),
    json_out: bool = JSON_OPTION,
) -> None:
    """The active policy: sha256, when and by whom it was applied, its zones and roles."""
    data = client(ctx).get("/v1/policy", ShowOut, text=text)
    version = data.active
    if version is None:
        if json_out:
            output.print_json({"active": None})
        else:
            output.say("no policy is active; apply one with `broker policy apply FILE`")
        return
    if text:
        typer.echo(data.text, nl=False)
        return
    if json_out:
        output.print_json(
            _without(data, {"text": True, "roles": {"__all__": {"where", "approval_groups"}}})
        )
        return
    zones, roles = data.zones or {}, data.roles or {}
    sizes = CountsOut(
        zones=len(zones),
        nodes=sum(z.count for z in zones.values()),
        roles=len(roles),
        bindings=data.bindings or 0,
        service_accounts=len(data.service_accounts or []),
    )
    output.say(
        f"active policy {version.sha256}\napplied {version.applied_at} by "
        f"{version.actor} from {version.source} (version {version.version})\n"
        f"{_sizes(sizes)}"
    )
    output.table(
        "zones",
        ["zone", "kind", "nodes", "count"],
        [[name, z.kind, z.nodes, z.count] for name, z in zones.items()],
    )
    output.table(
        "roles",
        ["role", "where", "runas", "commands", "default", "max", "mfa", "approvals", "groups"],
        [
            [
                name,
                r.where,
                r.runas,
                r.commands,
                r.default_duration,
                r.max_duration,
                "yes" if r.mfa else "NO",
                f"{r.approvals} of {', '.join(r.approval_groups)}" if r.approvals else "-",
                ", ".join(r.groups) or "-",
            ]
            for name, r in roles.items()
        ],
    )


def _user_arg(text: str) -> str:
    name = normalise_account_name(text)
    if not ACCOUNT_NAME.fullmatch(name):
        raise UsageError(f"bad user name {text!r}", fix="give an account name such as alice")
    return name


def _node_arg(text: str) -> str:
    nodes = expand(text)
    if len(nodes) != 1:
        raise UsageError(f"{text!r} names {len(nodes)} nodes", fix="explain one node at a time")
    return nodes[0]


@app.command()
def explain(
    ctx: typer.Context,
    user: str = typer.Argument(..., help="Account name (alice, HPC\\alice, alice@HPC.TEST)."),
    node: str = typer.Argument(..., help="One node name."),
    role: str | None = typer.Option(None, "--role", help="Judge this role only."),
    duration: str | None = typer.Option(None, "--duration", help="Asked grant length (2h)."),
    policy_file: Path | None = typer.Option(
        None, "--policy", help="Judge against this file instead of the active policy."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Every rule that decides whether USER may elevate on NODE, and the verdict (exit 0/1).

    Operators may ask about anyone; a directory user about themselves.
    """
    # Checked here for clear messages; the daemon checks every field again.
    name, node_name = _user_arg(user), _node_arg(node)
    if role is not None and names.policy_name(role) is not None:
        raise UsageError(f"bad role name {role!r}", fix="give a role name such as gpu-root")
    if duration is not None:
        parse_duration(duration)
    body: dict[str, Any] = {"user": name, "node": node_name, "role": role, "duration": duration}
    if policy_file is not None:
        body["policy_text"] = read_policy_file(policy_file)
        body["policy_source"] = str(policy_file)
    decision = client(ctx).post(
        "/v1/policy/explain", {k: v for k, v in body.items() if v is not None}, ExplainOut
    )
    _print_decision(decision, json_out)
    if decision.verdict != "allow":
        raise typer.Exit(EXIT_FAILED)


def _print_decision(decision: ExplainOut, json_out: bool) -> None:
    if json_out:
        output.print_json(decision)
        return
    sha = decision.policy_sha256
    output.table(
        f"{decision.user} on {decision.node}" + (f" (policy {sha[:12]})" if sha else ""),
        ["#", "rule", "role", "outcome", "detail"],
        [[i, c.rule, c.role or "-", c.outcome, c.detail] for i, c in enumerate(decision.checks, 1)],
    )
    output.say(f"verdict: {decision.verdict.upper()}: {decision.reason}")
