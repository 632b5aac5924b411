"""Helpers shared by unit and lab tests: run the real `broker` executable, build configs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from broker.store.migrations import MIGRATIONS

# `broker init` on an empty state directory writes one event per migration and one for itself.
INIT_EVENTS = len(MIGRATIONS) + 1

BROKER = str(Path(sys.executable).parent / "broker")
REPO = Path(__file__).resolve().parent.parent


def run_broker(
    *args: str, config: Path | None = None, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as an operator would."""
    full_env = dict(os.environ)
    full_env.pop("BROKER_CONFIG", None)
    full_env["COLUMNS"] = "200"
    if env:
        full_env.update(env)
    argv = [BROKER]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, env=full_env, timeout=timeout, check=False
    )


def write_config(directory: Path, extra: str = "") -> Path:
    """A minimal broker.toml whose state lives under `directory`."""
    config = directory / "broker.toml"
    config.write_text(
        f'[broker]\nstate_dir = "{directory / "state"}"\nservice_user = "root"\n\n'
        f"[audit]\nsyslog = false\n{extra}\n"
    )
    return config
