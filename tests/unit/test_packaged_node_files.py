"""A wheel (and the host .deb built from it) carries every pam/ file bootstrap installs on
nodes: a file missing from pyproject's data-files only shows when an installed broker
bootstraps a node."""

from __future__ import annotations

import tomllib
from pathlib import Path

from broker.provision.bundle import PROGRAM_FILES

REPO = Path(__file__).resolve().parents[2]


def test_every_node_program_file_is_in_the_wheels_data_files() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    shipped = {
        f"{directory.removeprefix('share/hpc-access-broker/pam').strip('/')}/{Path(f).name}".lstrip(
            "/"
        )
        for directory, files in config["tool"]["setuptools"]["data-files"].items()
        if directory.startswith("share/hpc-access-broker/pam")
        for f in files
    }
    missing = sorted(source for source, _, _ in PROGRAM_FILES if source not in shipped)
    assert not missing, (
        f"pam/ files bootstrap needs but pyproject's data-files leave out: {missing}"
    )
