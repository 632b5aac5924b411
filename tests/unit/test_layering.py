"""The package graph's contracts (pyproject.toml [tool.importlinter]) hold, and they bite.

lint-imports runs on the real tree, then on a copy where `core` imports `cli`: a contract
that cannot fail on an upward import would check nothing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports over the `broker` package found in `tree`, with the project's contracts."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", str(tree / "pyproject.toml")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_tree(tmp_path: Path) -> Path:
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "broker", tree / "broker", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


def test_the_real_tree_keeps_every_contract(tmp_path: Path) -> None:
    result = lint_imports(copy_tree(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_an_upward_import_breaks_the_layers(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    errors = tree / "broker" / "core" / "errors.py"
    errors.write_text(
        errors.read_text() + "\n\ndef _upward() -> None:\n    import broker.cli.main\n"
    )
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "broker.core.errors -> broker.cli.main" in result.stdout


def test_a_sibling_import_breaks_independence(tmp_path: Path) -> None:
    tree = copy_tree(tmp_path)
    codes = tree / "broker" / "mfa" / "codes.py"
    codes.write_text(codes.read_text() + "\nfrom broker.grants import grantfile  # noqa\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    assert "broker.mfa.codes -> broker.grants.grantfile" in result.stdout
