"""The lab, started once per test session for tests marked `lab`, and removed at the end.

BROKER_LAB_KEEP=1 reuses a lab that is already up and leaves it up afterwards.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.helpers import REPO


def load_lab_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("broker_lab", REPO / "deploy" / "lab" / "lab.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["broker_lab"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def lab_module() -> ModuleType:
    return load_lab_module()


@pytest.fixture(scope="session")
def lab(lab_module: ModuleType) -> Iterator[dict[str, Any]]:
    root = Path(os.environ.get("BROKER_LAB_ROOT", "/var/lib/broker-lab"))
    keep = os.environ.get("BROKER_LAB_KEEP") == "1"
    reuse = keep and (root / "lab.json").exists() and lab_module.status(root).get("up")
    if not reuse:
        lab_module.up(root=root)
    info: dict[str, Any] = lab_module.load_info(root)
    yield info
    if not keep:
        lab_module.down(root)
        lab_module.assert_host_clean(root)


def private_daemon_config(text: str, directory: Path) -> Path:
    """The lab's broker.toml (changed as given) with its own socket and no TLS listener, so
    `tests.helpers.serving` can run a second daemon for it beside the lab's."""
    head = text.split("\n[daemon]\n", 1)[0]
    config = directory / "broker.toml"
    config.write_text(f'{head}\n[daemon]\nsocket = "{directory / "run" / "broker.sock"}"\n')
    return config
