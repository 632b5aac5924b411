"""The original one-call face of the fleet (`run`, `run_many`), a thin wrapper over the pool."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path

from broker.fleet.pool import Job, SshOptions, SshPool
from broker.fleet.ssh import CommandResult, NodeTarget


class SshRunner:
    """Runs argv on nodes through an `SshPool` of its own or a shared one."""

    def __init__(self, *, key_path: Path, known_hosts: Path, user: str, timeout: timedelta) -> None:
        self.pool = SshPool(
            SshOptions(
                key_path=key_path,
                known_hosts=known_hosts,
                user=user,
                connect_timeout=timeout.total_seconds(),
            )
        )

    @classmethod
    def over(cls, pool: SshPool) -> SshRunner:
        """A runner using an existing pool (the daemon's shared one)."""
        runner = cls.__new__(cls)
        runner.pool = pool
        return runner

    def run(self, target: NodeTarget, argv: Sequence[str]) -> CommandResult:
        return self.pool.run(target, argv)

    def run_many(
        self,
        targets: Sequence[NodeTarget],
        argv: Sequence[str],
        *,
        workers: int = 32,
        on_done: Callable[[CommandResult], None] | None = None,
    ) -> list[CommandResult]:
        """Run on every target in parallel; results come back in target order."""
        del workers  # bounded by the pool's own `workers`
        return self.pool.run_many([Job(t, argv) for t in targets], on_done)

    def close(self) -> None:
        self.pool.close()
