"""The node package's layout (pam/broker_node/): small modules, short functions, and no
grant parsing or elliptic-curve code of its own (broker-grant-check, built from pam/src, is
the node's one implementation of the grant contract)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "pam" / "broker_node"
MODULES = sorted(PACKAGE.glob("*.py"))


def imported(path: Path) -> set[str]:
    """The package modules a module imports (`from .x import ...`), wherever it does."""
    tree = ast.parse(path.read_text())
    return {
        node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.level == 1 and node.module
    }


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_modules_and_functions_stay_small(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= 600
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            assert length <= 60, f"{node.name} has {length} lines"


def test_no_grant_parser_or_signature_code_in_python() -> None:
    names = {path.stem for path in MODULES}
    assert not names & {"hook", "ed25519"}
    assert not (REPO / "pam" / "pam-hook").exists()
    for path in MODULES:
        text = path.read_text().lower()
        for word in ("ed25519", "parse_grant", "verify", "b64decode", "a2b_base64"):
            assert word not in text, f"{path.name} mentions {word}"


def test_only_grants_runs_the_checker() -> None:
    users = {path.stem: imported(path) for path in MODULES}
    assert sorted(name for name, uses in users.items() if "grants" in uses) == [
        "__init__",
        "install",
        "revoke",
        "status",
        "watch",  # reaps expired grants between broker visits, through the same checker
    ]
    assert users["grants"] == {"contract"}
