"""Man pages generated from the command tree: one roff page per command, man/broker*.1.

Why generated: the help text in the code is the one description of each command;
pages written by hand would drift. `python -m broker.cli.manpages man` rewrites
man/ (deploy/test.sh and tests/unit/test_cli_scripting.py check it is current).
Pages carry no date, so the same code always gives the same bytes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import typer
from typer import _click as click  # typer >= 0.29 vendors click
from typer.core import TyperGroup

from broker import __version__
from broker.cli.root import app

ENVIRONMENT = [
    ("BROKER_CONFIG", "Configuration file when --config is not given."),
    (
        "BROKER_URL",
        "Reach the daemon at https://HOST:PORT (Kerberos) instead of its socket; a"
        " comma-separated list: the first broker a connection can be made to.",
    ),
    ("BROKER_CA_FILE", "CA bundle the client trusts for the daemon's TLS (as --ca-file)."),
    (
        "BROKER_FORMAT",
        "json: every listing and show answers JSON, as with --json; "
        "tsv: tab-separated even on a terminal; table (default): rich tables on a terminal, "
        "tab-separated otherwise.",
    ),
    ("NO_COLOR", "When set and not empty, no terminal escapes at all (no colour, bold or dim)."),
]
EXIT_STATUS = [
    ("0", "Success."),
    ("1", "Refused or failed."),
    ("2", "Usage: bad arguments, a bad environment value or configuration."),
    ("3", "Unavailable: the daemon, directory, a node or the store cannot be reached."),
]


def walk(
    command: click.Command, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    """Every visible command under `command`, itself first, with its context."""
    yield command, ctx
    if isinstance(command, TyperGroup):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is not None and not sub.hidden:
                yield from walk(sub, typer.Context(sub, info_name=name, parent=ctx))


def _roff(text: str) -> str:
    """Text made safe for roff: backslashes, hyphens and control lines escaped."""
    out = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in out.split("\n"))


def _option_label(param: click.Parameter) -> str:
    opts = ", ".join(f"\\fB{_roff(opt)}\\fR" for opt in param.opts)
    if param.param_type_name == "argument":
        return f"\\fI{_roff((param.name or 'arg').upper())}\\fR"
    if getattr(param, "is_flag", False):
        return opts
    return f"{opts} \\fI{_roff((param.name or 'value').upper())}\\fR"


def page(command: click.Command, ctx: click.Context) -> str:
    """The roff source of one command's page."""
    path = ctx.command_path
    name = path.replace(" ", "-")
    lines = [
        f'.TH "{name.upper()}" "1" "" "broker {__version__}" "broker manual"',
        ".SH NAME",
        f"{_roff(name)} \\- {_roff(command.get_short_help_str(limit=200))}",
        ".SH SYNOPSIS",
        f".B {_roff(path)}",
        _roff(" ".join(command.collect_usage_pieces(ctx))),
        ".SH DESCRIPTION",
        _roff(command.help or ""),
    ]
    params = [p for p in command.params if not getattr(p, "hidden", False)]
    if params:
        lines.append(".SH OPTIONS")
        for param in params:
            lines += [".TP", _option_label(param), _roff(getattr(param, "help", None) or "")]
    if isinstance(command, TyperGroup):
        lines.append(".SH COMMANDS")
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is not None and not sub.hidden:
                see = f"{name}-{sub_name}(1)"
                lines += [
                    ".TP",
                    f"\\fB{_roff(sub_name)}\\fR",
                    _roff(f"{sub.get_short_help_str(limit=200)} See {see}."),
                ]
    if ctx.parent is None:
        lines.append(".SH ENVIRONMENT")
        for var, what in ENVIRONMENT:
            lines += [".TP", f"\\fB{var}\\fR", _roff(what)]
    lines.append(".SH EXIT STATUS")
    for code, what in EXIT_STATUS:
        lines += [".TP", code, _roff(what)]
    lines += [".SH SEE ALSO", "\\fBbroker\\fR(1)" if ctx.parent is not None else "README.md"]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """File name -> roff source, for every visible command."""
    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="broker")
    return {
        sub_ctx.command_path.replace(" ", "-") + ".1": page(command, sub_ctx)
        for command, sub_ctx in walk(root, ctx)
    }


def write(directory: Path) -> list[Path]:
    """Rewrite `directory`'s broker*.1 pages: stale pages of removed commands go too."""
    directory.mkdir(parents=True, exist_ok=True)
    wanted = pages()
    for old in directory.glob("broker*.1"):
        if old.name not in wanted:
            old.unlink()
    written = []
    for file_name, text in wanted.items():
        target = directory / file_name
        tmp = target.with_suffix(".1.tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.chmod(0o644)
        tmp.replace(target)
        written.append(target)
    return written


if __name__ == "__main__":
    out_dir = Path(sys.argv[1] if len(sys.argv) > 1 else "man")
    print(f"{len(write(out_dir))} pages in {out_dir}")
