"""The lock files match pyproject: what CI and the Debian package install is what we declare.

A dependency added to pyproject but not re-locked would make `pip install --require-hashes`
fail on a site's build; a lock pinning a version outside the declared range would ship code
never tested against what pyproject promises. deploy/lock.sh regenerates both files.
"""

from __future__ import annotations

import importlib.util
import re
import tomllib
from pathlib import Path
from types import ModuleType

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)\s*\\?$")


def _pins(lock: Path) -> dict[str, tuple[Version, int]]:
    """Canonical name -> (pinned version, number of sha256 hashes) for each pin in `lock`."""
    pins: dict[str, tuple[Version, int]] = {}
    current = ""
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line)
        if match:
            current = canonicalize_name(match.group(1))
            assert current not in pins, f"{lock.name} pins {current} twice"
            pins[current] = (Version(match.group(2)), 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            version, hashes = pins[current]
            pins[current] = (version, hashes + 1)
        elif line.strip() and not line.lstrip().startswith("#"):
            assert line.startswith("    "), f"{lock.name}: unexpected line {line!r}"
    return pins


def _declared(extra: str | None = None) -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    specs = project["optional-dependencies"][extra] if extra else project["dependencies"]
    return [Requirement(spec) for spec in specs]


@pytest.mark.parametrize(
    ("lock", "extra"),
    [
        ("requirements.lock", None),
        ("requirements-dev.lock", None),
        ("requirements-dev.lock", "dev"),
    ],
)
def test_every_declared_dependency_is_locked_within_its_range(lock: str, extra: str | None) -> None:
    pins = _pins(ROOT / lock)
    for req in _declared(extra):
        name = canonicalize_name(req.name)
        assert name in pins, (
            f"{req.name} is declared in pyproject but not in {lock}: deploy/lock.sh"
        )
        version, _ = pins[name]
        assert req.specifier.contains(version, prereleases=True), (
            f"{lock} pins {req.name}=={version}, outside pyproject's {req.specifier}"
        )


def test_every_pin_carries_hashes_and_the_dev_lock_holds_the_runtime_lock() -> None:
    runtime = _pins(ROOT / "requirements.lock")
    dev = _pins(ROOT / "requirements-dev.lock")
    for lock, pins in (("requirements.lock", runtime), ("requirements-dev.lock", dev)):
        unhashed = sorted(name for name, (_, hashes) in pins.items() if hashes == 0)
        assert not unhashed, f"{lock} pins without a hash: {unhashed}"
    for name, (version, _) in runtime.items():
        assert name in dev, f"requirements-dev.lock lacks the runtime pin {name}"
        assert dev[name][0] == version, f"{name}: {version} at runtime but {dev[name][0]} in dev"


def test_sqlite_utils_is_neither_declared_nor_locked_nor_imported() -> None:
    """It was declared and never used (docs/architecture.md, "The store", says why not)."""
    assert "sqlite-utils" not in {canonicalize_name(req.name) for req in _declared()}
    assert "sqlite-utils" not in _pins(ROOT / "requirements.lock")
    users = [p for p in (ROOT / "broker").rglob("*.py") if "sqlite_utils" in p.read_text()]
    assert users == []


def _floors_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("floors", ROOT / "deploy" / "floors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_floors_ci_tests_are_the_declared_minimums() -> None:
    pins = _floors_module().floors()
    expected = [f"{req.name}=={next(iter(req.specifier)).version}" for req in _declared()]
    assert pins == expected
    assert "typer==0.29.2" in pins


def test_a_dependency_without_a_floor_stops_the_floor_check(tmp_path: Path) -> None:
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\ndependencies = ["rich>=13.8.0", "jinja2"]\n')
    with pytest.raises(SystemExit, match="'jinja2' declares no 'name>=floor'"):
        _floors_module().floors(pyproject)
