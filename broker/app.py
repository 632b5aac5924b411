"""The composition root: settings in, wired services out. Nothing else builds adapters.

The CLI and the daemon ask this object for the store, the sealer, the keys and
the services, so every entry point shares one wiring and one set of file-safety
rules. Services are imported inside their builders: `broker init` and
`broker db migrate` build an App and should not load SSH, Kerberos and the
detection engine for it.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.audit import writer
from broker.audit.checkpoint import create_signing_key, load_signing_key
from broker.audit.query import verify_store
from broker.audit.verify import VerifyReport
from broker.config.settings import DirectorySection, Settings
from broker.core.errors import ConfigError, RefusedError, UnavailableError
from broker.core.identity import AccessChange
from broker.core.timeutil import to_text, utcnow
from broker.directory import sync as directory_sync
from broker.directory.snapshot import StoreSnapshot
from broker.directory.sync import SyncReport
from broker.grants.reader import GrantReader
from broker.mfa import sealing as mfa_sealing
from broker.mfa.gate import MfaService
from broker.mfa.model import MfaRules
from broker.policy import versions as policy_versions
from broker.policy.load import load_policy
from broker.policy.model import Policy
from broker.policy.rights import directory_groups
from broker.policy.rights import mapped_groups as policy_groups
from broker.store import migrations
from broker.store.db import Store
from broker.store.files import ensure_private_dir, service_ids, write_private_file

if TYPE_CHECKING:
    from broker.detect.passes import DetectionPasses
    from broker.detect.respond import Responder
    from broker.grants.quarantine import Quarantines
    from broker.grants.revocation import Revocation
    from broker.grants.service import GrantService
    from broker.keytabs.service import KeytabService
    from broker.provision.nodes import NodeService
    from broker.sessions.index import Indexer as SessionIndexer
    from broker.sessions.service import Recordings
    from broker.sessions.spools import SpoolCollector


def realm_of(base_dn: str) -> str:
    """DC=hpc,DC=example,DC=org -> HPC.EXAMPLE.ORG (the default Kerberos realm)."""
    return ".".join(part.split("=", 1)[1] for part in base_dn.split(",")).upper()


def local_actor() -> str:
    """The audit actor for a local command: the real Unix user running it."""
    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    return f"unix:{name}"


def close_shared() -> None:
    """Close what every App of the process shares (the SSH pools), at daemon shutdown."""
    from broker.fleet.pool import close_shared_pool  # lazy: start-up (module doc)

    close_shared_pool()


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
        self._subscribers: list[Callable[[list[AccessChange]], None]] = []
        self._policy: tuple[str, Policy] | None = None  # (sha256, parsed) of the active policy
        self._grants: GrantService | None = None  # built on first use (SSH, keys)
        self._keytabs: KeytabService | None = None
        self._quarantines: Quarantines | None = None
        self._detection: DetectionPasses | None = None

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

    def ready_for_daemon(self, actor: str) -> list[str]:
        """What `broker serve` checks before it listens: state, keys, schema (migrated here)."""
        state = self.settings.broker.state_dir
        if not state.is_dir():
            raise UnavailableError(
                f"the broker state directory {state} does not exist", fix="run `broker init`"
            )
        for path in (self.settings.signing_key, self.settings.grant_key):
            if not path.exists():
                raise UnavailableError(f"{path} is missing", fix="run `broker init`")
        copy = self.settings.audit.checkpoint_copy
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
        if not self.settings.grant_key.exists():
            create_signing_key(self.settings.grant_key, self.owner)
            created.append(str(self.settings.grant_key))
        if not os.path.lexists(self.settings.mfa_key):
            mfa_sealing.create_key(self.settings.mfa_key, self.owner)
            created.append(str(self.settings.mfa_key))
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

    def mfa_key(self) -> bytes:
        """The key sealing TOTP secrets, loaded (and its file checked) once per process."""
        return self._mfa_key

    @cached_property
    def _mfa_key(self) -> bytes:
        return mfa_sealing.load_key(self.settings.mfa_key)

    def mfa_rules(self) -> MfaRules:
        return MfaRules.from_settings(self.settings.mfa)

    def mfa(self) -> MfaService:
        """The MFA flows over this process's store, the sealing key and the configured rules."""
        return MfaService(self.ready_store(), self.mfa_key, self.mfa_rules())

    @cached_property
    def _grant_key(self) -> Ed25519PrivateKey:
        try:
            return load_signing_key(self.settings.grant_key).private
        except UnavailableError:
            raise UnavailableError(
                f"no grant signing key at {self.settings.grant_key}",
                fix="run `broker init` to create it",
            ) from None

    def grant_signing_key(self) -> Ed25519PrivateKey:
        """The key that signs grant files (nodes verify with its public half)."""
        return self._grant_key

    def grant_public_key_line(self) -> str:
        """The line `broker node bootstrap` installs as /etc/broker/grant-key.pub."""
        from broker.grants.grantfile import public_key_line  # lazy: start-up (module doc)

        return public_key_line(self._grant_key.public_key())

    def active_policy_with_sha(self) -> tuple[str, Policy] | None:
        version = self.active_policy_version()
        policy = self.active_policy()
        if version is None or policy is None:
            return None
        return version.sha256, policy

    def revocation(self) -> Revocation:
        """Ending grants (revoke, reap, re-check): the store and the shared pool, built on
        first use; no signing key and no MFA needed."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.grants.revocation import Revocation  # lazy: start-up (module doc)

        return Revocation(
            store=self.ready_store(),
            pool=lambda: shared_pool(self.settings),
            policy=self.active_policy_with_sha,
            snapshot=self.snapshot,
        )

    def session_indexer(self) -> SessionIndexer:
        """Indexes sudo_logsrvd's store; recordings from relay zones are marked relayed."""
        from broker.sessions.index import Indexer  # lazy: start-up (module doc)

        policy = self.active_policy()
        relay_zones = set(self.settings.sessions.relays)
        relayed = frozenset(
            node for node, zone in (policy.zone_of.items() if policy else ()) if zone in relay_zones
        )
        return Indexer(
            self.ready_store(),
            str(self.settings.session_store),
            relayed_nodes=relayed,
            stale_after=self.settings.sessions.stale_after,
        )

    def recordings(self) -> Recordings:
        from broker.sessions.service import Recordings  # lazy: start-up (module doc)

        return Recordings(self.ready_store(), str(self.settings.session_store))

    def nodes(self) -> NodeService:
        """The node inventory and the work on nodes, over the shared SSH pool."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.provision.nodes import NodeService  # lazy: start-up (module doc)

        return NodeService(
            store=self.ready_store(),
            pool=lambda: shared_pool(self.settings),
            settings=self.settings,
            owner=self.owner,
            policy=self.require_policy,
            grant_key_line=self.grant_public_key_line,
        )

    def spool_collector(self) -> SpoolCollector:
        """Session events from node spools, over the shared SSH pool."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.sessions.spools import SpoolCollector  # lazy: start-up (module doc)

        return SpoolCollector(self.ready_store(), lambda: shared_pool(self.settings))

    def grant_reader(self) -> GrantReader:
        """Grants and requests to list and show (the store only: no SSH, no signing key)."""
        return GrantReader(self.ready_store())

    def grants(self) -> GrantService:
        """The grant flows, over this process's store and the daemon's shared SSH pool."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.grants.delivery import GrantRules  # lazy: start-up (module doc)
        from broker.grants.service import GrantService  # lazy: start-up (module doc)

        if self._grants is None:
            self._grants = GrantService(
                store=self.ready_store(),
                pool=shared_pool(self.settings),
                signing_key=self.grant_signing_key(),
                rules=GrantRules(
                    max_skew=self.settings.ssh.max_skew,
                    log_listen=self.settings.sessions.node_listen,
                    log_port=self.settings.sessions.node_port,
                ),
                policy=self.active_policy_with_sha,
                snapshot=self.snapshot,
                mfa=self.mfa().require,
            )
        return self._grants

    def quarantines(self) -> Quarantines:
        """Node quarantine over this process's store and the shared SSH pool."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.grants.quarantine import Quarantines  # lazy: start-up (module doc)

        if self._quarantines is None:
            self._quarantines = Quarantines(
                self.ready_store(),
                lambda: shared_pool(self.settings),
                self.grants,
                lambda: p.incident_response_group if (p := self.active_policy()) else None,
            )
        return self._quarantines

    def responder(self) -> Responder:
        """Carries out alerts' actions and drift jobs through the owning services."""
        from broker.detect.respond import Responder, ResponderParts  # lazy: start-up (module doc)
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)

        parts = ResponderParts(
            store=self.ready_store,
            pool=lambda: shared_pool(self.settings),
            snapshot=self.snapshot,
            mfa_lockout=self.mfa_rules().lockout,
            grants=self.grants,
            quarantines=self.quarantines,
            policy=self.active_policy,
        )
        return Responder(parts, self.enqueue_alert)

    def enqueue_alert(self, conn: sqlite3.Connection, alert_id: int, now: datetime) -> None:
        """Queue an alert for syslog and the webhook (inside the transaction that raised it)."""
        from broker.detect import notify  # lazy: start-up (module doc)

        notify.enqueue(conn, alert_id, now, self.settings)

    def detection(self) -> DetectionPasses:
        """Detection passes over this process's store, one runner (and its memory) per App."""
        from broker.detect.passes import DetectionPasses  # lazy: start-up (module doc)
        from broker.detect.runner import DetectionRunner  # lazy: start-up (module doc)

        if self._detection is None:
            runner = DetectionRunner(
                self.ready_store(),
                str(self.settings.session_store),
                enqueue=self.enqueue_alert,
            )
            self._detection = DetectionPasses(runner, self.active_policy, self.snapshot)
        return self._detection

    def keytabs(self) -> KeytabService:
        """Keytab rotation over this process's store, the shared SSH pool and AD."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.keytabs.ad import LdapDirectory  # lazy: start-up (module doc)
        from broker.keytabs.service import KeytabRules, KeytabService  # lazy: start-up (module doc)
        from broker.keytabs.tickets import verify_tokens_source  # lazy: start-up (module doc)

        if self._keytabs is None:
            directory = self.directory_settings()
            if (
                directory.auth != "gssapi"
                or directory.keytab is None
                or directory.principal is None
            ):
                raise UnavailableError(
                    "keytab rotation needs the broker's own Kerberos keys",
                    fix="set directory.auth = 'gssapi' with directory.principal and directory.keytab",
                )
            cfg = self.settings.keytabs
            realm = cfg.realm or realm_of(directory.base_dn)
            self._keytabs = KeytabService(
                store=self.ready_store(),
                pool=shared_pool(self.settings),
                policy=self.active_policy,
                directory=lambda: LdapDirectory(directory),
                tokens=verify_tokens_source(directory.principal, directory.keytab),
                rules=KeytabRules(
                    realm=realm,
                    max_ticket_lifetime=cfg.max_ticket_lifetime,
                    accounts_ou=cfg.accounts_ou,
                ),
            )
        return self._keytabs

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

    def directory_settings(self) -> DirectorySection:
        if self.settings.directory is None:
            raise ConfigError(
                "no [directory] section in the configuration",
                fix="add one (see deploy/examples/broker.toml)",
            )
        return self.settings.directory

    def subscribe(self, callback: Callable[[list[AccessChange]], None]) -> None:
        """Be told, after each committed sync, what changed for access (grants revoke on it)."""
        self._subscribers.append(callback)

    def _publish(self, changes: list[AccessChange]) -> None:
        for callback in self._subscribers:
            callback(changes)

    def mapped_groups(self) -> frozenset[str] | None:
        """Groups whose membership changes are audited: those the active policy names.

        None (audit every group) when no policy is active, or when the stored one cannot
        be used: a bad policy must never stop the sync that carries revocations.
        """
        try:
            policy = self.active_policy()
        except RefusedError:
            return None
        return None if policy is None else policy_groups(policy)

    def sync_directory(self, actor: str, *, full: bool = False) -> SyncReport:
        """Bring the directory snapshot up to date (one transaction; unchanged on failure)."""
        return directory_sync.sync(
            self.ready_store(),
            self.directory_settings(),
            actor,
            full=full,
            mapped_groups=self.mapped_groups(),
            publish=self._publish,
        )

    def snapshot(self, now: datetime | None = None) -> StoreSnapshot:
        """The last committed directory snapshot, evaluated at `now`."""
        return StoreSnapshot(self.ready_store().conn, now or utcnow())

    def active_policy_version(self) -> policy_versions.PolicyVersion | None:
        """The active policy's stored record (sha256, text, when, by whom); None before any."""
        return policy_versions.active_version(self.ready_store().conn)

    def active_policy(self) -> Policy | None:
        """The active policy, parsed once per sha256; None before the first apply."""
        version = self.active_policy_version()
        if version is None:
            return None
        if self._policy is None or self._policy[0] != version.sha256:
            self._policy = (version.sha256, policy_versions.parse_version(version).policy)
        return self._policy[1]

    def require_policy(self) -> Policy:
        """The active policy; refuses when none has been applied."""
        policy = self.active_policy()
        if policy is None:
            raise RefusedError(
                "no policy is active", fix="apply one with `broker policy apply FILE`"
            )
        return policy

    def apply_policy(self, text: str, source: str, actor: str) -> policy_versions.ApplyResult:
        """Validate (groups against the snapshot), lint and activate a policy, atomically."""
        snapshot = self.snapshot()
        loaded = load_policy(text, source, known_groups=directory_groups(snapshot))
        return policy_versions.activate(
            self.ready_store(), loaded, snapshot, actor=actor, now=utcnow()
        )

    def verify_audit(self) -> VerifyReport:
        store = self.ready_store()
        return verify_store(store.conn, self.settings.signing_key, self.checkpoint_paths)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
