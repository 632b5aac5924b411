"""The composition root: settings in, wired services out. Nothing else builds adapters.

The CLI (and, later, the daemon) asks this object for the store, the
sealer and the keys, so every entry point shares one wiring and one set of
file-safety rules.
"""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import writer
from broker.audit.checkpoint import create_signing_key, load_signing_key
from broker.audit.query import verify_store
from broker.audit.verify import VerifyReport
from broker.config.settings import Settings
from broker.core.errors import UnavailableError
from broker.core.timeutil import to_text, utcnow
from broker.store import migrations
from broker.store.db import Store
from broker.store.files import ensure_private_dir, service_ids, write_private_file


def local_actor() -> str:
    """The audit actor for a local command: the real Unix user running it."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f"unix:{name}"


@dataclass(frozen=True)
class InitResult:
    state_dir: Path
    created: list[str]
    migrations: list[str]


class App:
    """Lazily built services for one process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._sealer: writer.Sealer | None = None
        if settings.kerberos.krb5_conf is not None:
            os.environ["KRB5_CONFIG"] = str(settings.kerberos.krb5_conf)

    @cached_property
    def owner(self) -> tuple[int, int] | None:
        return service_ids(self.settings.broker.service_user)

    @property
    def checkpoint_paths(self) -> list[Path]:
        paths = [self.settings.checkpoint_log]
        if self.settings.audit.checkpoint_copy is not None:
            paths.append(self.settings.audit.checkpoint_copy)
        return paths

    def store(self) -> Store:
        """The open store; its commits are sealed once the signing key exists."""
        if self._store is None:
            path = self.settings.db_path
            if not path.parent.exists():
                raise UnavailableError(
                    f"the broker state directory {path.parent} does not exist",
                    fix="run `broker init`",
                )
            self._store = Store.open(path, owner=self.owner)
            if self.settings.signing_key.exists():
                self._sealer = self._make_sealer()
                self._store.on_commit(self._seal_after_commit)
        return self._store

    def _seal_after_commit(self) -> None:
        if self._sealer is not None and self._store is not None:
            self._sealer.seal(self._store.conn)

    def ready_store(self) -> Store:
        """The store, refusing to work on a schema older than this code expects."""
        store = self.store()
        waiting = migrations.pending(store.conn)
        if waiting:
            raise UnavailableError(
                f"the store schema is missing migrations {[m.number for m in waiting]}",
                fix="run `broker db migrate`",
            )
        return store

    def _make_sealer(self) -> writer.Sealer:
        audit = self.settings.audit
        return writer.Sealer(
            load_signing_key(self.settings.signing_key),
            log_path=self.settings.checkpoint_log,
            copy_path=audit.checkpoint_copy,
            syslog_socket=audit.syslog_socket if audit.syslog else None,
            interval=audit.checkpoint_interval,
            owner=self.owner,
        )

    def init(self, actor: str) -> InitResult:
        """Create the state directory, the keys and the schema; keep whatever already exists."""
        created: list[str] = []
        state = self.settings.broker.state_dir
        if not state.exists():
            created.append(str(state))
        ensure_private_dir(state, self.owner)
        if not self.settings.signing_key.exists():
            create_signing_key(self.settings.signing_key, self.owner)
            created.append(str(self.settings.signing_key))
        if not self.settings.ssh_key.exists():
            self._create_ssh_key(self.settings.ssh_key)
            created.append(str(self.settings.ssh_key))
        applied = self.migrate(actor)
        if created:
            with self.store().transaction() as conn:
                writer.record(
                    conn,
                    writer.EventInput(
                        actor, "broker.init", str(state), details={"created": created}
                    ),
                )
        return InitResult(state, created, applied)

    def _create_ssh_key(self, path: Path) -> None:
        key = Ed25519PrivateKey.generate()
        private = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        )
        public = key.public_key().public_bytes(
            serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
        )
        write_private_file(path, private, self.owner, 0o600)
        write_private_file(
            path.with_name(path.name + ".pub"), public + b" broker\n", self.owner, 0o644
        )

    def migrate(self, actor: str) -> list[str]:
        """Apply pending migrations, each with its audit event in the same transaction."""
        store = self.store()
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

    def seal(self) -> int | None:
        store = self.ready_store()
        if self._sealer is None:
            raise UnavailableError(
                f"no audit signing key at {self.settings.signing_key}", fix="run `broker init`"
            )
        return self._sealer.seal(store.conn, force=True)

    def verify_audit(self) -> VerifyReport:
        store = self.ready_store()
        return verify_store(store.conn, self.settings.signing_key, self.checkpoint_paths)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
