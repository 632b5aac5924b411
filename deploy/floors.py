"""What deploy/check-floors.sh needs from the project: the declared floors, and every command.

Why a script and not a hand-kept list: the floors CI tests must be the ones pyproject declares,
and the commands it smoke-tests must be every one the CLI has, or a new floor or command goes
untested. `floors` runs on the build machine's python3 (stdlib only); `commands` runs inside the
floor venv, where it imports the CLI at the floor versions.

    python3 deploy/floors.py floors     # one 'name==floor' line per runtime dependency
    python3 deploy/floors.py commands   # one command path per line ('' is `broker` itself)
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# Only `name>=floor` (an optional upper bound after a comma): anything else has no floor to test.
_SPEC = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][0-9A-Za-z.]*)\s*(?:,\s*<[^,;]+)?$")


def floors(pyproject: Path = PYPROJECT) -> list[str]:
    """'name==floor' for each [project] dependency; SystemExit if one declares no floor."""
    declared = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["dependencies"]
    pins = []
    for spec in declared:
        match = _SPEC.match(spec.strip())
        if match is None:
            raise SystemExit(f"floors: {spec!r} declares no 'name>=floor' (pyproject.toml)")
        pins.append(f"{match.group(1)}=={match.group(2)}")
    return pins


def commands() -> list[str]:
    """Every visible command path below `broker`, as the man pages see the tree."""
    import typer  # the floor venv's, only in this mode

    from broker.cli.manpages import walk
    from broker.cli.root import app

    root = typer.main.get_command(app)
    ctx = typer.Context(root, info_name="broker")
    return [" ".join(c.command_path.split()[1:]) for _, c in walk(root, ctx)]


if __name__ == "__main__":
    mode = sys.argv[1] if len(sys.argv) == 2 else ""
    if mode not in ("floors", "commands"):
        raise SystemExit("usage: floors.py floors|commands")
    print("\n".join(floors() if mode == "floors" else commands()))
