"""SSH to nodes with pinned host keys only: unknown or changed keys are refused, never added.

The broker authenticates with its own key (no agent, no ~/.ssh lookups).
Commands are given as argv lists and quoted for the remote shell in one place
(pool.py, `SshPool.run`), so no caller ever builds a command line by string
concatenation.
"""

from __future__ import annotations

import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from broker.fleet.hostkeys import fingerprint

MAX_OUTPUT = 1 << 20


@dataclass(frozen=True)
class NodeTarget:
    name: str
    host: str
    port: int = 22


@dataclass(frozen=True)
class CommandResult:
    node: str
    exit_status: int | None
    stdout: str
    stderr: str
    error: str | None
    elapsed_ms: float

    @property
    def ok(self) -> bool:
        return self.error is None and self.exit_status == 0


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def explain(target: NodeTarget, exc: BaseException, known_hosts: Path) -> str:
    where = f"{target.name} ({target.host}:{target.port})"
    if isinstance(exc, paramiko.BadHostKeyException):
        seen = fingerprint(exc.key.asbytes())
        return (
            f"{where}: host key changed (now {seen}); refusing. If the node was reinstalled, "
            f"check that key on its console and re-pin it: `broker node enroll {target.name} "
            f"--replace --fingerprint {seen}`"
        )
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return (
            f"{where}: host key is not pinned in {known_hosts}; refusing an unknown key "
            f"(`broker node enroll {target.name}`)"
        )
    if isinstance(exc, paramiko.AuthenticationException):
        return f"{where}: the node refused the broker's SSH key; authorize it for root there"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"{where}: timed out; check the node is up"
    return f"{where}: {str(exc) or type(exc).__name__}"
