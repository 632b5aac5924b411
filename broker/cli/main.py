"""The `broker` console script.

Why so little here: shells run `broker --version` and Tab completion often, and
scripts run `broker` in loops. Those two answer before typer, pydantic or any
command module is imported; everything else goes through broker/cli/root.py.
"""

from __future__ import annotations

import os
import sys

COMPLETE_VAR = "_BROKER_COMPLETE"


def run(argv: list[str] | None = None) -> None:
    """Console-script entry point: usage errors exit 2; ours map to 1 or 3."""
    args = sys.argv[1:] if argv is None else argv
    if args == ["--version"]:
        from broker import __version__

        sys.stdout.write(f"broker {__version__}\n")
        sys.exit(0)
    if os.environ.get(COMPLETE_VAR):
        from broker.cli.complete import top_level  # answers the first word from the table

        answer = top_level(os.environ)
        if answer is not None:
            if answer:
                sys.stdout.write(answer + "\n")
            sys.exit(0)

    import logging

    logging.basicConfig(level=logging.WARNING, format="broker: %(levelname)s: %(message)s")
    os.umask(0o077)
    if os.environ.get("NO_COLOR"):
        # typer's help and its own messages: no terminal styling at all (bold and dim too)
        os.environ.setdefault("_TYPER_FORCE_DISABLE_TERMINAL", "1")
    from broker.cli.root import invoke

    try:
        sys.exit(invoke(argv))
    except KeyboardInterrupt:
        sys.exit(130)
