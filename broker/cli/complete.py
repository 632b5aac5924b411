"""Tab completion of the first word (`broker <TAB>`) without building the command tree.

Why: completing through typer parses the root's options, and typer coerces them with
pydantic TypeAdapters, which costs more than all the rest of start-up. The first
word is the common case and its answers are fixed: the command table in lazy.py.
Anything deeper (a subcommand's words, options) returns None and goes the normal
way. The shells' wire formats are typer's own classes, so the output is identical.
"""

from __future__ import annotations

from collections.abc import Mapping

import typer
from typer import _completion_classes as shells
from typer._click.shell_completion import CompletionItem, ShellComplete

from broker.cli.lazy import COMMANDS

_SHELLS: dict[str, type[ShellComplete]] = {
    "bash": shells.BashComplete,
    "zsh": shells.ZshComplete,
    "fish": shells.FishComplete,
    "pwsh": shells.PowerShellComplete,
    "powershell": shells.PowerShellComplete,
}


def top_level(environ: Mapping[str, str]) -> str | None:
    """The shell's completion answer for the first word, or None to let typer answer."""
    instruction, _, shell = environ.get("_BROKER_COMPLETE", "").partition("_")
    base = _SHELLS.get(shell)
    if instruction != "complete" or base is None:
        return None
    from broker.cli.root import app  # the root only: building it parses nothing

    cli = typer.main.get_command(app)
    probe = base(cli, {}, "broker", "_BROKER_COMPLETE")
    args, incomplete = probe.get_completion_args()
    if args or incomplete.startswith("-"):
        return None
    items = [
        CompletionItem(name, help=entry.summary)
        for name, entry in COMMANDS.items()
        if name.startswith(incomplete)
    ]

    class Top(base):  # type: ignore[valid-type,misc]
        def get_completions(self, args: list[str], incomplete: str) -> list[CompletionItem]:
            return items

    answer = Top(cli, {}, "broker", "_BROKER_COMPLETE").complete()
    return answer if isinstance(answer, str) else None
