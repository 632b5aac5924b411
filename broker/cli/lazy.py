"""The command tree, loaded on demand, and the global options every command accepts.

Why lazy: importing every command module pulls in pydantic, the wire records, the
policy reader and rich, which made `broker --version` take 0.75 s and each Tab 1.1 s.
The root group knows each command's name, module and one-line summary; a module is
imported only when its command runs, is completed below the top level, or is
documented (`--help`, man pages). Imports by name keep the import-linter layers
intact: every module named here is inside broker.cli.

Why global options on every command: `broker grants list --config X` is how people
and scripts write it; click only parses an option on the command that declares it,
so the root's options are added to each command below it when that command loads.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import dataclass
from typing import Any

import typer
from typer import _click as click  # typer >= 0.29 vendors click
from typer._click.shell_completion import CompletionItem
from typer.core import TyperGroup


@dataclass(frozen=True)
class Entry:
    """A top-level command: `attr` in `module` is a typer.Typer (a group) or a function."""

    module: str
    attr: str
    summary: str


_CLI = "broker.cli."

# Order is the order of `broker --help`. `summary` is what Tab completion shows without
# importing the module; tests/unit/test_cli_scripting.py checks it against the help.
COMMANDS: dict[str, Entry] = {
    "audit": Entry(_CLI + "audit_cmds", "app", "The tamper-evident audit chain."),
    "report": Entry(
        _CLI + "report_cmds",
        "app",
        "Evidence for auditors: the controls report, signed, and its verification.",
    ),
    "db": Entry(_CLI + "db_cmds", "app", "The broker's store (SQLite, or PostgreSQL)."),
    "config": Entry(_CLI + "config_cmds", "app", "The broker's configuration file."),
    "directory": Entry(_CLI + "directory_cmds", "app", "Active Directory over LDAPS and Kerberos."),
    "node": Entry(_CLI + "node_cmds", "app", "Cluster nodes."),
    "accounts": Entry(
        _CLI + "accounts_cmds", "app", "Cluster accounts from the directory snapshot."
    ),
    "policy": Entry(
        _CLI + "policy_cmds", "app", "The access policy: zones, roles, bindings, service accounts."
    ),
    "mfa": Entry(_CLI + "mfa_cmds", "app", "TOTP multi-factor authentication."),
    "sync": Entry(
        _CLI + "sync_cmds",
        "sync",
        "Read AD (users, groups, account state, POSIX ids) into the snapshot, in one transaction.",
    ),
    "elevate": Entry(
        _CLI + "grant_cmds",
        "elevate",
        "Become root (or the role's runas) on NODES for a while: MFA, maybe approvals, then a time-boxed sudo rule pushed to every node.",
    ),
    "approve": Entry(
        _CLI + "grant_cmds",
        "approve",
        "Approve a request (you must be in one of its approver groups and not its requester).",
    ),
    "deny": Entry(
        _CLI + "grant_cmds", "deny", "Deny a request (approver groups only, not the requester)."
    ),
    "revoke": Entry(
        _CLI + "grant_cmds",
        "revoke",
        "End grants now: their sudo rules are removed and their running sessions killed.",
    ),
    "grants": Entry(_CLI + "grant_cmds", "grants_app", "Grants: list, show, retry."),
    "requests": Entry(
        _CLI + "grant_cmds", "requests_app", "Elevation requests waiting for approval."
    ),
    "keytab": Entry(
        _CLI + "keytab_cmds",
        "app",
        "Service-account keytabs: create, rotate without outage, status, verify.",
    ),
    "sessions": Entry(
        _CLI + "session_cmds",
        "app",
        "Recorded elevated sessions: list, show, replay, search, verify.",
    ),
    "alerts": Entry(
        _CLI + "alert_cmds", "app", "Alerts raised by detection rules and drift checks."
    ),
    "init": Entry(
        _CLI + "system_cmds",
        "init",
        "Create the state directory, the audit signing, SSH and MFA keys and the schema (idempotent).",
    ),
    "whoami": Entry(
        _CLI + "system_cmds",
        "whoami",
        "Who the daemon says you are: Unix user or Kerberos principal, directory account, operator or not.",
    ),
    "health": Entry(
        _CLI + "system_cmds",
        "health",
        "The daemon's health: the store, each background thread, the directory snapshot's age and the log server.",
    ),
    "api-schema": Entry(
        _CLI + "system_cmds",
        "api_schema",
        "Print the daemon API's OpenAPI 3.1 description (docs/openapi.json is this output).",
    ),
    "serve": Entry(
        _CLI + "system_cmds",
        "serve",
        "Run the broker daemon in the foreground (systemd: deploy/systemd/broker.service).",
    ),
}


_ROOT_ONLY = ("install_completion", "show_completion")
GLOBAL_OPTIONS = ("config", "broker_url", "ca_file", "no_headers")


def _set_global(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """A global option given after the subcommand: it wins over one given before it."""
    if value is None or value is False or param.name is None:
        return
    root = ctx.find_root().obj
    if root is not None and hasattr(root, param.name):
        setattr(root, param.name, value)


def global_options(root: click.Command) -> list[click.Parameter]:
    """The root's options as each command below it accepts them: the same declarations,
    types and checks, but no environment fallback (that is the root's job, and it must
    not override a value given before the subcommand)."""
    clones: list[click.Parameter] = []
    for param in root.params:
        if param.name in GLOBAL_OPTIONS:
            clone = copy.copy(param)
            clone.expose_value = False
            clone.callback = _set_global
            clone.envvar = None
            clones.append(clone)
    return clones


def add_global_options(command: click.Command, root: click.Command) -> click.Command:
    """Give `command` and every command below it the global options it does not declare."""
    taken = {opt for param in command.params for opt in param.opts}
    for option in global_options(root):
        if not taken.intersection(option.opts):
            command.params.append(option)
    if isinstance(command, TyperGroup):
        for sub in command.commands.values():
            add_global_options(sub, root)
    return command


def load(name: str, root: click.Command) -> click.Command:
    """Import one top-level command and build its click command (with the global options)."""
    entry = COMMANDS[name]
    target = getattr(importlib.import_module(entry.module), entry.attr)
    command: click.Command
    if isinstance(target, typer.Typer):
        command = typer.main.get_group(target)  # a group even with one command (config check)
    else:
        single = typer.Typer()
        single.command(name)(target)
        command = typer.main.get_command(single)
    command.name = name
    # get_command() treats each sub-app as a program of its own and gives it typer's
    # --install-completion/--show-completion: those belong to `broker` alone
    command.params = [p for p in command.params if p.name not in _ROOT_ONLY]
    return add_global_options(command, root)


class LazyGroup(TyperGroup):
    """The root group: names and summaries known up front, modules imported on use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*COMMANDS, *(n for n in super().list_commands(ctx) if n not in COMMANDS)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS:
            if cmd_name not in self.commands:
                self.commands[cmd_name] = load(cmd_name, self)
            return self.commands[cmd_name]
        return super().get_command(ctx, cmd_name)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[CompletionItem]:
        """Top-level Tab completion from the table above: no command module is imported."""
        if incomplete.startswith("-"):
            return super().shell_complete(ctx, incomplete)
        return [
            CompletionItem(name, help=entry.summary)
            for name, entry in COMMANDS.items()
            if name.startswith(incomplete)
        ]
