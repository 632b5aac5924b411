"""SSH to nodes with pinned host keys only: unknown or changed keys are refused, never added.

The broker authenticates with its own key (no agent, no ~/.ssh lookups).
Commands are given as argv lists and quoted for the remote shell here, so
no caller ever builds a command line by string concatenation.
"""

from __future__ import annotations

import shlex
import socket
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import paramiko

from broker.core.errors import UnavailableError

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


class SshRunner:
    """Runs commands on nodes over SSH, one fresh connection per call (pooling comes with grants)."""

    def __init__(self, *, key_path: Path, known_hosts: Path, user: str, timeout: timedelta) -> None:
        self._key_path = key_path
        self._known_hosts = known_hosts
        self._user = user
        self._timeout = timeout.total_seconds()

    def _client(self, target: NodeTarget) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        try:
            client.load_host_keys(str(self._known_hosts))
        except FileNotFoundError:
            raise UnavailableError(
                f"no pinned host keys at {self._known_hosts}", fix="pin the node's host key first"
            ) from None
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        client.connect(
            hostname=target.host,
            port=target.port,
            username=self._user,
            key_filename=str(self._key_path),
            allow_agent=False,
            look_for_keys=False,
            timeout=self._timeout,
            banner_timeout=self._timeout,
            auth_timeout=self._timeout,
        )
        return client

    def run(self, target: NodeTarget, argv: Sequence[str]) -> CommandResult:
        started = time.monotonic()
        try:
            client = self._client(target)
        except (TimeoutError, paramiko.SSHException, OSError) as exc:
            return CommandResult(
                target.name, None, "", "", _explain(target, exc, self._known_hosts), _ms(started)
            )
        try:
            _stdin, stdout, stderr = client.exec_command(shlex.join(argv), timeout=self._timeout)
            out = stdout.read(MAX_OUTPUT).decode("utf-8", "replace")
            err = stderr.read(MAX_OUTPUT).decode("utf-8", "replace")
            status = stdout.channel.recv_exit_status()
        except (TimeoutError, paramiko.SSHException, OSError) as exc:
            return CommandResult(target.name, None, "", "", f"{target.name}: {exc}", _ms(started))
        finally:
            client.close()
        return CommandResult(target.name, status, out, err, None, _ms(started))

    def run_many(
        self,
        targets: Sequence[NodeTarget],
        argv: Sequence[str],
        *,
        workers: int = 32,
        on_done: Callable[[CommandResult], None] | None = None,
    ) -> list[CommandResult]:
        """Run on every target in parallel; results come back in target order."""

        def one(target: NodeTarget) -> CommandResult:
            result = self.run(target, argv)
            if on_done is not None:
                on_done(result)
            return result

        with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
            return list(pool.map(one, targets))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _explain(target: NodeTarget, exc: BaseException, known_hosts: Path) -> str:
    where = f"{target.name} ({target.host}:{target.port})"
    if isinstance(exc, paramiko.BadHostKeyException):
        return (
            f"{where}: host key changed (got {exc.key.get_fingerprint().hex()}); refusing. "
            f"If the node was reinstalled, re-pin its key in {known_hosts}"
        )
    if isinstance(exc, paramiko.SSHException) and "not found in known_hosts" in str(exc):
        return f"{where}: host key is not pinned in {known_hosts}; refusing an unknown key"
    if isinstance(exc, paramiko.AuthenticationException):
        return f"{where}: the node refused the broker's SSH key; bootstrap the node"
    if isinstance(exc, TimeoutError | socket.timeout):
        return f"{where}: timed out; check the node is up"
    return f"{where}: {exc}"
