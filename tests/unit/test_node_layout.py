"""The node package's layout (pam/broker_node/): small modules, short functions, and the
two modules due to be replaced by compiled code (hook, ed25519) removable whole."""

from __future__ import annotations

import ast
import binascii
from pathlib import Path

import pytest

from tests.helpers import REPO, load_node_module

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


def test_hook_and_ed25519_can_be_deleted_whole() -> None:
    users = {path.stem: imported(path) for path in MODULES}
    assert [name for name, uses in users.items() if "hook" in uses] == ["__init__"]
    assert sorted(name for name, uses in users.items() if "ed25519" in uses) == [
        "__init__",
        "store",
    ]
    assert users["ed25519"] == {"contract"}


@pytest.mark.parametrize(
    "text",
    [
        "A" * 43,  # no padding
        "A" * 43 + "==",
        "A" * 42 + "B=",  # trailing bits set: not the canonical encoding
        " " + "A" * 42 + "=",
        "A" * 42 + "\n=",
        "A" * 42 + "-=",  # URL-safe alphabet
        "A" * 40 + "=AA=",
        "A" * 43 + "=\n",
        "Ä" * 43 + "=",
    ],
)
def test_key_base64_is_only_the_canonical_padded_form(text: str) -> None:
    contract = load_node_module("contract")
    canonical = binascii.b2a_base64(bytes(32), newline=False).decode()
    assert contract._b64decode(canonical, 32) == bytes(32)
    assert contract._b64decode(text, 32) is None
    assert contract._b64decode(canonical, 31) is None
