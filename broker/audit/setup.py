"""The broker's state on disk: created by `broker init`, migrated, checked before serving.

Lives with the audit chain because every step it takes is audited: each migration
commits with its `store.migrate` event and `broker init` records what it created.
The keys it makes belong to other packages (the checkpoint key here, the MFA key
to mfa, the SSH key to fleet), so the composition root hands them in as `KeyFile`s
and this module never imports those packages.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker.audit import writer
from broker.core.errors import UnavailableError
from broker.core.timeutil import to_text, utcnow
from broker.store import migrations
from broker.store.db import Store
from broker.store.files import ensure_private_dir

Owner = tuple[int, int] | None


@dataclass(frozen=True)
class KeyFile:
    """A key `broker init` creates when `present(path)` says it is missing."""

    path: Path
    create: Callable[[Path, Owner], object]
    present: Callable[[Path], bool] = Path.exists


@dataclass(frozen=True)
class InitResult:
    state_dir: Path
    created: list[str]
    migrations: list[str]


@dataclass(frozen=True)
class StateFiles:
    """Where the state lives and what the daemon refuses to start without."""

    state_dir: Path
    owner: Owner
    keys: Sequence[KeyFile]
    daemon_needs: Sequence[Path]
    checkpoint_copy: Path | None = None


class StateSetup:
    """Init, migrate and the daemon's start-up check, over the store (opened on demand)."""

    def __init__(self, store: Callable[[], Store], files: StateFiles) -> None:
        self._store = store
        self._files = files

    def init(self, actor: str) -> InitResult:
        """Create the state directory, the keys and the schema; keep whatever already exists."""
        files = self._files
        created: list[str] = []
        if not files.state_dir.exists():
            created.append(str(files.state_dir))
        ensure_private_dir(files.state_dir, files.owner)
        for key in files.keys:
            if not key.present(key.path):
                key.create(key.path, files.owner)
                created.append(str(key.path))
        applied = self.migrate(actor)
        if created:
            with self._store().transaction() as conn:
                writer.record(
                    conn,
                    writer.EventInput(
                        actor, "broker.init", str(files.state_dir), details={"created": created}
                    ),
                )
        return InitResult(files.state_dir, created, applied)

    def migrate(self, actor: str) -> list[str]:
        """Apply pending migrations, each with its audit event in the same transaction."""
        store = self._store()
        applied: list[str] = []
        for migration in migrations.pending(store.conn):
            with store.transaction() as conn:
                if migration.number not in migrations.applied_numbers(conn):
                    migrations.apply(conn, migration, to_text(utcnow()))
                    writer.record(
                        conn,
                        writer.EventInput(
                            actor,
                            "store.migrate",
                            str(store.path),
                            details={"number": migration.number, "name": migration.name},
                        ),
                    )
                    applied.append(f"{migration.number} {migration.name}")
        return applied

    def ready_for_daemon(self, actor: str) -> list[str]:
        """What `broker serve` checks before it listens: state, keys, schema (migrated here)."""
        files = self._files
        if not files.state_dir.is_dir():
            raise UnavailableError(
                f"the broker state directory {files.state_dir} does not exist",
                fix="run `broker init`",
            )
        for path in files.daemon_needs:
            if not path.exists():
                raise UnavailableError(f"{path} is missing", fix="run `broker init`")
        copy = files.checkpoint_copy
        if copy is not None:
            target = copy if copy.exists() else copy.parent
            if not os.access(target, os.W_OK):
                # Under broker.service only /var/lib/broker is writable: a copy elsewhere
                # would fail at every seal, quietly. Refuse to start instead.
                raise UnavailableError(
                    f"audit.checkpoint_copy {copy}: {target} is not writable by the daemon",
                    fix=f"allow it: `systemctl edit broker`, add ReadWritePaths={copy.parent}",
                )
        return self.migrate(actor)
