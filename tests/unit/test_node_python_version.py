"""Everything under pam/ runs on the nodes' /usr/bin/python3, which is 3.9 on EL9: vermin
(as deploy/test.sh runs it) must find nothing newer, and must catch what would be."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.node_tree import PAM_DIR, NodeTree, checker

VERMIN = Path(sys.executable).parent / "vermin"
# The flags of deploy/test.sh: a violation of "3.9 or older" fails; annotations are read
# as if evaluated (stricter than `from __future__ import annotations` needs).
# pam/fuzz/ makes seed corpora on the build machine and never goes to a node.
FLAGS = ["--no-tips", "--violations", "-t=3.9-", "--eval-annotations", "--no-config-file"]
FLAGS += ["--exclude-regex", "/pam/fuzz/"]
LAUNCHERS = ("broker-node", "broker-keytab", "broker-relay-flush")


def node_sources() -> list[Path]:
    """pam/*.py, the node package and the extension-less launchers."""
    pam = REPO / "pam"
    return [*pam.glob("*.py"), *pam.glob("broker_node/*.py"), *(pam / n for n in LAUNCHERS)]


def vermin(path: Path) -> tuple[int, str]:
    assert VERMIN.exists(), "vermin is missing: pip install -e '.[dev]'"
    done = subprocess.run(
        [str(VERMIN), *FLAGS, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return done.returncode, done.stdout + done.stderr


def minimum(output: str) -> tuple[int, ...]:
    found = re.search(r"^Minimum required versions: (\S+)", output, re.MULTILINE)
    assert found is not None, output
    return tuple(int(part) for part in found.group(1).split("."))


def test_pam_needs_nothing_newer_than_python_3_9() -> None:
    code, output = vermin(REPO / "pam")
    assert code == 0, output
    assert minimum(output) <= (3, 9), output
    # the launchers have no .py name: vermin finds them by their python3 shebang
    analysed = re.search(r"^Analyzing (\d+) files", output, re.MULTILINE)
    assert analysed is not None and int(analysed.group(1)) == len(node_sources()), output


@pytest.mark.parametrize(
    "construct",
    [
        "pairs = list(zip('ab', 'cd', strict=True))\n",
        "def kind(value):\n    match value:\n        case 1:\n            return 'one'\n",
        "import binascii\nraw = binascii.a2b_base64(b'AA==', strict_mode=True)\n",
        "import bisect\nplace = bisect.bisect([], 1, key=len)\n",
    ],
    ids=["zip-strict", "match", "base64-strict-mode", "bisect-key"],
)
def test_vermin_catches_what_3_9_cannot_run(tmp_path: Path, construct: str) -> None:
    (tmp_path / "newer.py").write_text(construct)
    code, output = vermin(tmp_path)
    assert code == 1, output
    assert minimum(output) >= (3, 10), output


def runtime_unions(source: str) -> list[int]:
    """Lines with `X | Y` of types evaluated at run time (isinstance's second argument):
    3.10+, and vermin's own union-types check also flags int flags and annotations."""
    lines: list[int] = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name)
            and node.func.id in ("isinstance", "issubclass")
            and len(node.args) == 2
        ):
            inner = ast.walk(node.args[1])
            if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in inner):
                lines.append(node.lineno)
    return lines


def test_no_union_types_at_run_time() -> None:
    assert runtime_unions("ok = isinstance(1, (int, float)) and 1 | 2\n") == []
    assert runtime_unions("x = 1\nbad = isinstance(x, int | float)\n") == [2]
    for path in node_sources():
        assert runtime_unions(path.read_text()) == [], path


def python39() -> str | None:
    """A Python 3.9 interpreter on this machine, if there is one (pyenv's or the system's)."""
    pyenv = sorted((Path.home() / ".pyenv" / "versions").glob("3.9*/bin/python3.9"))
    candidates = [*map(str, pyenv), "/usr/bin/python3.9", "/usr/local/bin/python3.9"]
    return next((c for c in candidates if os.access(c, os.X_OK)), None)


@pytest.mark.skipif(python39() is None, reason="no Python 3.9 interpreter on this machine")
def test_the_node_program_runs_on_python_3_9(tmp_path: Path) -> None:
    node = NodeTree(tmp_path / "node")
    grant = node.grant()
    node.install(grant)
    code = (
        "import io, json, sys; sys.path.insert(0, sys.argv[1]); import broker_node as b\n"
        "paths = b.Paths(sys.argv[2], sys.argv[3]); out = io.StringIO()\n"
        "b.node_main(['status'], io.StringIO(''), out, paths)\n"
        "print(json.dumps([sys.version_info[:2], json.loads(out.getvalue())['grants']]))\n"
    )
    done = subprocess.run(
        [str(python39()), "-I", "-S", "-c", code, str(PAM_DIR), str(node.root), checker()],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    version, grants = json.loads(done.stdout)
    assert version == [3, 9]
    assert [(g["id"], g["valid"], g["problem"]) for g in grants] == [(grant.id, True, None)]
