"""Helpers shared by unit and lab tests: run the real `broker` executable, build configs."""

from __future__ import annotations

import contextlib
import importlib
import importlib.machinery
import importlib.util
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from broker.store.migrations import MIGRATIONS

# `broker init` on an empty state directory writes one event per migration and one for itself.
INIT_EVENTS = len(MIGRATIONS) + 1

BROKER = str(Path(sys.executable).parent / "broker")
REPO = Path(__file__).resolve().parent.parent


def run_broker(
    *args: str,
    config: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    stdin: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as an operator would (STDIN typed into it)."""
    full_env = dict(os.environ)
    full_env.pop("BROKER_CONFIG", None)
    full_env["COLUMNS"] = "200"
    if env:
        full_env.update(env)
    argv = [BROKER]
    if config is not None:
        argv += ["--config", str(config)]
    return subprocess.run(
        [*argv, *args],
        input=stdin,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        check=False,
    )


def write_config(directory: Path, extra: str = "") -> Path:
    """A minimal broker.toml whose state lives under `directory`."""
    config = directory / "broker.toml"
    config.write_text(
        f'[broker]\nstate_dir = "{directory / "state"}"\nservice_user = "root"\n\n'
        f'[daemon]\nsocket = "{directory / "run" / "broker.sock"}"\n\n'
        f"[audit]\nsyslog = false\n{extra}\n"
    )
    return config


@contextlib.contextmanager
def serving(config: Path, *, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run `broker serve` for this config until the block ends; fail if it does not come up."""
    full_env = dict(os.environ)
    full_env.pop("BROKER_CONFIG", None)
    if env:
        full_env.update(env)
    log = (config.parent / "daemon.log").open("a")
    proc = subprocess.Popen(
        [BROKER, "--config", str(config), "serve"],
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=full_env,
    )
    try:
        _wait_for_socket(daemon_socket_of(config), proc, config)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def daemon_socket_of(config: Path) -> Path:
    import tomllib

    data = tomllib.loads(config.read_text())
    return Path(data.get("daemon", {}).get("socket", "/run/broker/broker.sock"))


def _wait_for_socket(path: Path, proc: subprocess.Popen[str], config: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(
                f"broker serve exited {proc.returncode}: "
                + (config.parent / "daemon.log").read_text()[-2000:]
            )
        if path.exists():
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
            finally:
                probe.close()
        time.sleep(0.05)
    raise AssertionError(f"broker serve did not listen on {path} within 30 s")


def load_node_script(name: str, module: str) -> ModuleType:
    """A node-side program from pam/ as a module (some have no .py name: launchers)."""
    loader = importlib.machinery.SourceFileLoader(module, str(REPO / "pam" / name))
    spec = importlib.util.spec_from_loader(module, loader)
    assert spec is not None
    loaded = importlib.util.module_from_spec(spec)
    loader.exec_module(loaded)
    return loaded


def load_node_package() -> ModuleType:
    """pam/broker_node/ as the package `broker_node`, the way the launchers import it
    (from its directory, not from the broker's packages); loaded once per test run."""
    if "broker_node" not in sys.modules:
        directory = REPO / "pam" / "broker_node"
        spec = importlib.util.spec_from_file_location(
            "broker_node", directory / "__init__.py", submodule_search_locations=[str(directory)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["broker_node"] = module
        spec.loader.exec_module(module)
    return sys.modules["broker_node"]


def load_node_module(name: str) -> ModuleType:
    """One module of the node package (`drift`, `install`, ...), for what the package does
    not re-export; the package itself loads the commands' modules only when they run."""
    load_node_package()
    return importlib.import_module(f"broker_node.{name}")
