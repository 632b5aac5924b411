"""`broker policy`: check, plan, apply, show and explain the policy file.

check exits 0 when the file is clean or has only warnings and notes, 1 when
it has errors (one line each, file:line first). plan and apply refuse
(exit 1) a file with errors. explain exits 0 when the verdict is allow and
1 when it is deny.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from broker.app import App, local_actor
from broker.cli import output
from broker.cli.context import JSON_OPTION, state
from broker.core.durations import format_duration, parse_duration
from broker.core.errors import EXIT_FAILED, BrokerError, UsageError
from broker.core.hostlist import expand
from broker.core.identity import ACCOUNT_NAME, normalise_account_name
from broker.core.timeutil import utcnow
from broker.policy import names
from broker.policy.evaluate import Decision, decide, no_policy, unknown_account
from broker.policy.lint import Finding, lint
from broker.policy.load import LoadedPolicy, load_policy, parse_policy, read_policy_file
from broker.policy.model import Policy
from broker.policy.plan import Plan, RightChange, make_plan
from broker.policy.reader import key_text
from broker.policy.rights import directory_groups
from broker.policy.versions import PolicyVersion, located, refuse_lint_errors

app = typer.Typer(
    help="The access policy: zones, roles, bindings, service accounts.", no_args_is_help=True
)

FILE_ARGUMENT = typer.Argument(..., help="The policy file (TOML).", dir_okay=False)


def _directory_check(ctx: typer.Context) -> tuple[frozenset[str] | None, str | None]:
    """Group names from the snapshot, or why they cannot be checked (never fatal for check)."""
    try:
        groups = directory_groups(state(ctx).app().snapshot())
    except BrokerError as exc:
        return None, f"group names not checked against the directory: {exc.one_line()}"
    if groups is None:
        return None, "group names not checked: the directory snapshot is empty (sync it first)"
    return groups, None


def _counts(errors: int, warnings: int, notes: int) -> str:
    def n(count: int, word: str) -> str:
        return f"{count} {word}" + ("" if count == 1 else "s")

    return f"{n(errors, 'error')}, {n(warnings, 'warning')}, {n(notes, 'note')}"


@app.command()
def check(
    ctx: typer.Context,
    file: Path | None = typer.Argument(
        None, help="Policy file (default: policy.path from the configuration).", dir_okay=False
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """Validate a policy file (schema, meaning, lint). Exit 0 clean or warnings only, 1 on errors."""
    path = file or state(ctx).app().settings.policy.path
    text = read_policy_file(path)
    known, note = _directory_check(ctx)
    loaded, problems = parse_policy(text, str(path), known_groups=known)
    findings = lint(loaded.policy) if loaded is not None else []
    rows: list[dict[str, Any]] = [
        {
            "line": p.line,
            "severity": "error",
            "control": None,
            "rule": "schema",
            "key": p.key,
            "message": p.message,
        }
        for p in problems
    ]
    if loaded is not None:
        rows += [
            {
                "line": loaded.lines.line(f.path),
                "severity": f.severity,
                "control": f.control,
                "rule": f.rule,
                "key": key_text(f.path),
                "message": f.message,
            }
            for f in findings
        ]
    rows.sort(key=lambda r: r["line"])
    count = {s: sum(1 for r in rows if r["severity"] == s) for s in ("error", "warning", "note")}
    if json_out:
        output.print_json(
            {
                "file": str(path),
                "valid": count["error"] == 0,
                "sha256": loaded.sha256 if loaded else None,
                "errors": count["error"],
                "warnings": count["warning"],
                "notes": count["note"],
                "findings": rows,
                "groups_checked": known is not None,
            }
        )
    else:
        for row in rows:
            label = row["severity"] + (f" {row['control']}" if row["control"] else "")
            output.say(f"{path}:{row['line']}: {label}: {row['message']}")
        if note:
            output.say(f"note: {note}")
        verdict = "INVALID" if count["error"] else "valid"
        summary = _counts(count["error"], count["warning"], count["note"])
        if loaded is not None:
            summary = f"{_sizes(loaded.policy)}; {summary}"
        output.say(f"{path}: {verdict}: {summary}")
    if count["error"]:
        raise typer.Exit(EXIT_FAILED)


def _sizes(policy: Policy) -> str:
    nodes = len(policy.zone_of)
    return (
        f"{len(policy.zones)} zones ({nodes} nodes), {len(policy.roles)} roles, "
        f"{len(policy.bindings)} bindings, {len(policy.service_accounts)} service accounts"
    )


def _candidate(app_: App, file: Path, source: str) -> tuple[LoadedPolicy, list[Finding]]:
    """Load and lint a file the way apply will; errors refuse."""
    known = directory_groups(app_.snapshot())
    loaded = load_policy(read_policy_file(file), source, known_groups=known)
    return loaded, refuse_lint_errors(loaded)


@app.command()
def plan(ctx: typer.Context, file: Path = FILE_ARGUMENT, json_out: bool = JSON_OPTION) -> None:
    """Who would gain and who would lose which rights where, against the active policy."""
    app_ = state(ctx).app()
    loaded, warnings = _candidate(app_, file, str(file))
    active = app_.active_policy_version()
    result = make_plan(
        app_.active_policy(),
        loaded.policy,
        app_.snapshot(),
        old_sha256=active.sha256 if active else None,
        new_sha256=loaded.sha256,
    )
    if json_out:
        summary = result.summary(limit=None)
        summary["warnings"] = [located(loaded, f) for f in warnings]
        output.print_json(summary)
        return
    for warning in warnings:
        output.warn(located(loaded, warning))
    against = f"the active policy {active.short}" if active else "no active policy"
    output.say(f"plan: {file} (sha256 {loaded.sha256[:12]}) against {against}")
    if active is not None and active.sha256 == loaded.sha256:
        output.say("this file is the active policy: applying it would change nothing")
        return
    _print_plan(result)


def _print_plan(result: Plan) -> None:
    if result.changes:
        output.table(
            "settings", ["subject", "change"], [[c.subject, c.what] for c in result.changes]
        )
    for title, items, who in (
        ("gained by group", result.group_gains, "group"),
        ("lost by group", result.group_losses, "group"),
        ("gained by user", result.user_gains, "user"),
        ("lost by user", result.user_losses, "user"),
    ):
        if items:
            output.table(title, [who, "role", "nodes", "count"], _right_rows(items))
    if result.accounts == 0:
        output.say(
            "note: the directory snapshot holds no account that may elevate, so no user "
            "gains or loses anything yet; the group tables show what the bindings give"
        )
    summary = result.summary(limit=0)
    output.say(
        f"{summary['users_gaining']} users gain rights, {summary['users_losing']} lose rights; "
        f"{summary['groups_gaining']} groups gain, {summary['groups_losing']} lose; "
        f"{len(result.changes)} settings change"
    )


def _right_rows(items: tuple[RightChange, ...]) -> list[list[object]]:
    return [[c.holder, c.role, c.nodes, c.count] for c in items]


@app.command()
def apply(ctx: typer.Context, file: Path = FILE_ARGUMENT, json_out: bool = JSON_OPTION) -> None:
    """Activate a policy file atomically; the audit event records its sha256 and the plan."""
    app_ = state(ctx).app()
    text = read_policy_file(file)
    result = app_.apply_policy(text, str(file.absolute()), local_actor())
    version = result.version
    if json_out:
        output.print_json(
            {
                "applied": result.applied,
                "sha256": version.sha256,
                "version": version.id,
                "previous_sha256": result.previous.sha256
                if result.previous and result.applied
                else None,
                "plan": result.plan.summary(limit=None) if result.plan else None,
                "warnings": [w.text() for w in result.warnings],
            }
        )
        return
    for warning in result.warnings:
        output.warn(warning.text())
    if not result.applied:
        output.say(
            f"policy {version.short} is already active (applied {version.applied_at} by "
            f"{version.actor}): nothing to do"
        )
        return
    if result.plan is not None:
        _print_plan(result.plan)
    output.say(f"applied policy {version.short} from {file} as version {version.id}")


@app.command()
def show(
    ctx: typer.Context,
    text: bool = typer.Option(False, "--text", help="Print the active policy's exact text."),
    json_out: bool = JSON_OPTION,
) -> None:
    """The active policy: sha256, when and by whom it was applied, its zones and roles."""
    app_ = state(ctx).app()
    version = app_.active_policy_version()
    policy = app_.active_policy()
    if version is None or policy is None:
        if json_out:
            output.print_json({"active": None})
        else:
            output.say("no policy is active; apply one with `broker policy apply FILE`")
        return
    if text:
        typer.echo(version.text, nl=False)
        return
    if json_out:
        output.print_json({"active": _version_dict(version), **_policy_dict(policy)})
        return
    output.say(
        f"active policy {version.sha256}\napplied {version.applied_at} by {version.actor} "
        f"from {version.source} (version {version.id})\n{_sizes(policy)}"
    )
    output.table(
        "zones",
        ["zone", "kind", "nodes", "count"],
        [[z.name, z.kind, z.hostlist, len(z.nodes)] for z in policy.zones.values()],
    )
    output.table(
        "roles",
        ["role", "where", "runas", "commands", "default", "max", "mfa", "approvals", "groups"],
        [_role_row(policy, name) for name in policy.roles],
    )


def _role_row(policy: Policy, name: str) -> list[object]:
    role = policy.roles[name]
    approvals = role.approvals
    return [
        name,
        role.scope_text(),
        role.runas,
        role.commands_text,
        format_duration(role.default_duration),
        format_duration(role.longest),
        "yes" if role.mfa else "NO",
        f"{approvals.count} of {', '.join(approvals.groups)}" if approvals.required else "-",
        ", ".join(policy.groups_of_role.get(name, ())) or "-",
    ]


def _version_dict(version: PolicyVersion) -> dict[str, Any]:
    return {
        "sha256": version.sha256,
        "version": version.id,
        "applied_at": version.applied_at,
        "actor": version.actor,
        "source": version.source,
    }


def _policy_dict(policy: Policy) -> dict[str, Any]:
    return {
        "zones": {
            z.name: {"kind": z.kind, "nodes": z.hostlist, "count": len(z.nodes)}
            for z in policy.zones.values()
        },
        "roles": {
            name: {
                "zones": list(role.zones),
                "runas": role.runas,
                "commands": role.commands_text,
                "default_duration": format_duration(role.default_duration),
                "max_duration": format_duration(role.longest),
                "mfa": role.mfa,
                "record_sessions": role.record_sessions,
                "approvals": role.approvals.count,
                "groups": list(policy.groups_of_role.get(name, ())),
            }
            for name, role in policy.roles.items()
        },
        "bindings": len(policy.bindings),
        "service_accounts": sorted(policy.service_accounts),
        "break_glass_group": policy.break_glass_group,
        "incident_response_group": policy.incident_response_group,
    }


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
    """Every rule that decides whether USER may elevate on NODE, and the verdict (exit 0/1)."""
    name, node_name = _user_arg(user), _node_arg(node)
    if role is not None and names.policy_name(role) is not None:
        raise UsageError(f"bad role name {role!r}", fix="give a role name such as gpu-root")
    asked = parse_duration(duration) if duration is not None else None
    app_ = state(ctx).app()
    sha: str | None
    if policy_file is not None:
        loaded = load_policy(read_policy_file(policy_file), str(policy_file))
        policy: Policy | None = loaded.policy
        sha = loaded.sha256
    else:
        policy = app_.active_policy()
        version = app_.active_policy_version()
        sha = version.sha256 if version else None
    now = utcnow()
    account = app_.snapshot(now).account(name)
    if policy is None:
        decision = no_policy(name, node_name)
    elif account is None:
        decision = unknown_account(name, node_name)
    else:
        decision = decide(policy, account, node_name, role, asked, now=now)
    _print_decision(decision, sha, json_out)
    if not decision.allowed:
        raise typer.Exit(EXIT_FAILED)


def _print_decision(decision: Decision, sha: str | None, json_out: bool) -> None:
    if json_out:
        output.print_json(
            {
                "user": decision.user,
                "node": decision.node,
                "verdict": decision.verdict,
                "role": decision.role,
                "allowed_by": list(decision.allowed_by),
                "duration": format_duration(decision.duration) if decision.duration else None,
                "reason": decision.reason,
                "policy_sha256": sha,
                "checks": [
                    {"rule": c.rule, "role": c.role, "outcome": c.outcome, "detail": c.detail}
                    for c in decision.checks
                ],
            }
        )
        return
    output.table(
        f"{decision.user} on {decision.node}" + (f" (policy {sha[:12]})" if sha else ""),
        ["#", "rule", "role", "outcome", "detail"],
        [[i, c.rule, c.role or "-", c.outcome, c.detail] for i, c in enumerate(decision.checks, 1)],
    )
    output.say(f"verdict: {decision.verdict.upper()}: {decision.reason}")
