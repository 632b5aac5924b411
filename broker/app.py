"""The composition root: settings in, wired services out. Nothing else builds adapters.

The CLI and the daemon ask this object for the store and the services, so every
entry point shares one wiring and one set of file-safety rules. It holds no domain
logic and changes nothing outside itself (Kerberos configuration is set by the
entry points: config/kerberos.py): each builder hands a service exactly what it
needs. Services are imported inside their builders: `broker init` and
`broker db migrate` build an App and should not load SSH, Kerberos and the
detection engine for it.
"""

from __future__ import annotations

import os
import pwd
import sqlite3
from datetime import datetime
from functools import cached_property
from typing import TYPE_CHECKING

from broker.audit import writer
from broker.audit.checkpoint import create_signing_key, load_signing_key
from broker.audit.refusals import RefusalRecorder, shared_limiter
from broker.audit.service import AuditService
from broker.audit.setup import KeyFile, StateFiles, StateSetup
from broker.config.settings import Settings
from broker.core.errors import UnavailableError
from broker.core.pubkeys import load_peer_keys
from broker.directory.service import DirectoryService
from broker.fleet.clientkey import create_client_key
from broker.grants.reader import GrantReader
from broker.keytabs.identity import broker_kerberos
from broker.mfa import sealing as mfa_sealing
from broker.mfa.gate import MfaService
from broker.mfa.model import MfaRules
from broker.policy.service import PolicyService
from broker.store import migrations
from broker.store.db import Store
from broker.store.files import service_ids

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from broker.detect.passes import DetectionPasses
    from broker.detect.respond import Responder
    from broker.detect.runner import Enqueue
    from broker.grants.integrity import DropInCheck
    from broker.grants.quarantine import Quarantines
    from broker.grants.revocation import Revocation
    from broker.grants.service import GrantService
    from broker.keytabs.service import KeytabService
    from broker.provision.nodes import NodeService
    from broker.report.service import ReportService
    from broker.sessions.certs import TunnelCerts
    from broker.sessions.index import Indexer as SessionIndexer
    from broker.sessions.service import Recordings
    from broker.sessions.spools import SpoolCollector


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


class App:
    """Lazily built services for one process (one thread in the daemon)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: Store | None = None
        self._sealer: writer.Sealer | None = None
        self._grants: GrantService | None = None  # built on first use (SSH, keys)
        self._keytabs: KeytabService | None = None
        self._quarantines: Quarantines | None = None
        self._detection: DetectionPasses | None = None

    @cached_property
    def owner(self) -> tuple[int, int] | None:
        return service_ids(self.settings.broker.service_user)

    def store(self) -> Store:
        """The open store; its commits are sealed once the signing key exists."""
        if self._store is None:
            path = self.settings.db_path
            if not path.parent.exists():
                raise UnavailableError(
                    f"the broker state directory {path.parent} does not exist",
                    fix="run `broker init`",
                )
            self._store = self._open_store()
            if self.settings.signing_key.exists():
                self._sealer = self._make_sealer()
                self._store.on_commit(self._seal_after_commit)
        return self._store

    def _open_store(self) -> Store:
        cfg = self.settings.store
        return Store.open(
            self.settings.db_path,
            owner=self.owner,
            busy_timeout=cfg.busy_timeout,
            max_size_mib=cfg.max_size_mib,
            url=self.settings.store_url,
        )

    def worker_store(self) -> Store:
        """Another connection to the store, for a worker thread of this App's (keytab
        rotations side by side): the same pragmas, the schema checked, and its commits
        sealed by a sealer of its own, as the App's own connection's are."""
        self.ready_store()  # the state directory exists and the schema is current
        store = self._open_store()
        if self.settings.signing_key.exists():
            sealer = self._make_sealer()

            def seal() -> None:
                sealer.seal(store.conn)

            store.on_commit(seal)
        return store

    def _seal_after_commit(self) -> None:
        if self._sealer is not None and self._store is not None:
            self._sealer.seal(self._store.conn)

    def commits(self) -> int:
        """Write transactions committed so far (0 before the store is opened)."""
        return 0 if self._store is None else self._store.commits

    def ready_store(self) -> Store:
        """The store, refusing to work on a schema older than this code expects."""
        store = self.store()
        migrations.require_current(store.conn)
        return store

    def _make_sealer(self) -> writer.Sealer:
        audit = self.settings.audit
        return writer.Sealer(
            load_signing_key(self.settings.signing_key),
            broker=self.settings.broker_name,
            log_path=self.settings.checkpoint_log,
            copy_path=audit.checkpoint_copy,
            syslog_socket=audit.syslog_socket if audit.syslog else None,
            interval=audit.checkpoint_interval,
            owner=self.owner,
        )

    def setup(self) -> StateSetup:
        """`broker init`, `broker db migrate` and the daemon's start-up check."""
        s = self.settings
        keys = (
            KeyFile(s.signing_key, create_signing_key),
            KeyFile(s.grant_key, create_signing_key),
            KeyFile(s.mfa_key, mfa_sealing.create_key, present=os.path.lexists),
            KeyFile(s.ssh_key, create_client_key),
        )
        files = StateFiles(
            state_dir=s.broker.state_dir,
            owner=self.owner,
            keys=keys,
            daemon_needs=(s.signing_key, s.grant_key),
            checkpoint_copy=s.audit.checkpoint_copy,
        )
        return StateSetup(self.store, files)

    def audit(self) -> AuditService:
        """Sealing on demand and verification of this process's store."""
        store = self.ready_store()  # opens the store, and with it the sealer
        return AuditService(
            store,
            self._sealer,
            signing_key=self.settings.signing_key,
            checkpoint_paths=self.settings.checkpoint_paths,
            trusted_keys=self.settings.audit.trusted_keys,
        )

    def policy(self) -> PolicyService:
        """The active policy; one per App, so each policy text is parsed once."""
        return self._policy

    @cached_property
    def _policy(self) -> PolicyService:
        return PolicyService(self.ready_store, lambda: self.directory().snapshot())

    def directory(self) -> DirectoryService:
        """AD and its snapshot; one per App, so sync subscribers stay registered."""
        return self._directory

    @cached_property
    def _directory(self) -> DirectoryService:
        return DirectoryService(
            self.ready_store, self.settings.directory, lambda: self.policy().mapped_groups()
        )

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

    def _grant_key_file(self) -> str:
        """What bootstrap writes to nodes' grant-key.pub: this broker's key, then the peers'
        in `grants.trusted_keys` (read now, so a key copied in later needs no restart)."""
        from broker.grants.grantfile import public_key_lines  # lazy: start-up (module doc)

        own = self._grant_key.public_key()
        peers = load_peer_keys(own, self.settings.grants.trusted_keys, "trusted grant key")
        return public_key_lines([own, *peers])

    def revocation(self) -> Revocation:
        """Ending grants (revoke, reap, re-check): the store and the shared pool, built on
        first use; no signing key and no MFA needed."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.grants.revocation import Revocation  # lazy: start-up (module doc)

        return Revocation(
            store=self.ready_store(),
            pool=lambda: shared_pool(self.settings),
            policy=self.policy().active_with_sha,
            snapshot=self.directory().snapshot,
        )

    def session_indexer(self) -> SessionIndexer:
        """Indexes sudo_logsrvd's store; recordings from relay zones are marked relayed."""
        from broker.sessions.index import Indexer  # lazy: start-up (module doc)

        return Indexer(
            self.ready_store(),
            str(self.settings.session_store),
            relayed_nodes=self.policy().nodes_in_zones(self.settings.sessions.relays),
            stale_after=self.settings.sessions.stale_after,
        )

    def recordings(self) -> Recordings:
        from broker.sessions.service import Recordings  # lazy: start-up (module doc)

        return Recordings(self.ready_store(), str(self.settings.session_store))

    def drop_ins(self) -> DropInCheck:
        """Drop-in integrity (grants.drop_in_integrity): the store, the shared pool, and a
        delivery built only when a repair pushes (it needs the grant signing key)."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.grants.delivery import Delivery, GrantRules  # lazy: start-up (module doc)
        from broker.grants.integrity import DropInCheck  # lazy: start-up (module doc)

        def delivery() -> Delivery:
            return Delivery(
                store=self.ready_store(),
                pool=shared_pool(self.settings),
                signing_key=self._grant_key,
                rules=GrantRules(
                    max_skew=self.settings.ssh.max_skew,
                    log_listen=self.settings.sessions.node_listen,
                    log_port=self.settings.sessions.node_port,
                ),
            )

        return DropInCheck(
            store=self.ready_store(),
            pool=lambda: shared_pool(self.settings),
            delivery=delivery,
            policy=self.settings.grants.drop_in_integrity,
            max_skew=self.settings.ssh.max_skew,
        )

    def nodes(self) -> NodeService:
        """The node inventory and the work on nodes, over the shared SSH pool."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.provision.nodes import NodeService  # lazy: start-up (module doc)

        return NodeService(
            store=self.ready_store(),
            pool=lambda: shared_pool(self.settings),
            settings=self.settings,
            owner=self.owner,
            policy=self.policy().require,
            grant_key_file=self._grant_key_file,
            drop_ins=self.drop_ins,
        )

    def tunnel_certs(self) -> TunnelCerts:
        """The session CA's CRL of revoked node certificates (the scheduler keeps it fresh)."""
        from broker.sessions.certs import TunnelCerts  # lazy: start-up (module doc)

        return TunnelCerts(self.settings, self.ready_store())

    def spool_collector(self) -> SpoolCollector:
        """Session events from node spools, over the shared SSH pool."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.sessions.spools import SpoolCollector  # lazy: start-up (module doc)

        return SpoolCollector(self.ready_store(), lambda: shared_pool(self.settings))

    def refusals(self) -> RefusalRecorder:
        """Refusals into the audit chain, rate-limited per caller across the process's threads."""
        store = self.ready_store()
        return RefusalRecorder(store, shared_limiter(str(self.settings.db_path)))

    def report(self) -> ReportService:
        """The controls report over this process's store, signed with the audit key."""
        from broker.report.service import ReportService  # lazy: start-up (module doc)

        return ReportService(
            self.ready_store(),
            self.settings,
            self.policy().active,
            self._zone_nodes,
        )

    def _zone_nodes(self, zone: str) -> frozenset[str] | None:
        """The nodes of `zone` in the active policy; None when it has no such zone."""
        policy = self.policy().active()
        if policy is None or zone not in policy.zones:
            return None
        return self.policy().nodes_in_zones([zone])

    def grant_reader(self) -> GrantReader:
        """Grants and requests to list and show (the store only: no SSH, no signing key)."""
        return GrantReader(self.ready_store())

    def grants(self) -> GrantService:
        """The grant flows, over this process's store and the daemon's shared SSH pool."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.grants.delivery import GrantRules  # lazy: start-up (module doc)
        from broker.grants.service import GrantService  # lazy: start-up (module doc)
        from broker.notify.notices import RequestNotices

        if self._grants is None:
            self._grants = GrantService(
                store=self.ready_store(),
                pool=shared_pool(self.settings),
                signing_key=self._grant_key,
                rules=GrantRules(
                    max_skew=self.settings.ssh.max_skew,
                    log_listen=self.settings.sessions.node_listen,
                    log_port=self.settings.sessions.node_port,
                ),
                policy=self.policy().active_with_sha,
                snapshot=self.directory().snapshot,
                mfa=self.mfa().require,
                refusals=self.refusals(),
                notices=RequestNotices(self.settings.notify),
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
                self.policy().incident_response_group,
            )
        return self._quarantines

    def _alert_queue(self) -> Enqueue:
        """Queues an alert for syslog and the webhook, inside the transaction that raised it."""
        from broker.detect import notify  # lazy: start-up (module doc)

        settings = self.settings

        def enqueue(conn: sqlite3.Connection, alert_id: int, now: datetime) -> None:
            notify.enqueue(conn, alert_id, now, settings)

        return enqueue

    def responder(self) -> Responder:
        """Carries out alerts' actions and drift jobs through the owning services."""
        from broker.detect.respond import Responder, ResponderParts  # lazy: start-up (module doc)
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)

        parts = ResponderParts(
            store=self.ready_store,
            pool=lambda: shared_pool(self.settings),
            snapshot=self.directory().snapshot,
            mfa_lockout=self.mfa_rules().lockout,
            grants=self.grants,
            quarantines=self.quarantines,
            policy=self.policy().active,
            spools=self.spool_collector,
        )
        return Responder(parts, self._alert_queue())

    def detection(self) -> DetectionPasses:
        """Detection passes over this process's store, one runner (and its memory) per App."""
        from broker.detect.passes import DetectionPasses  # lazy: start-up (module doc)
        from broker.detect.runner import DetectionRunner  # lazy: start-up (module doc)

        if self._detection is None:
            runner = DetectionRunner(
                self.ready_store(),
                str(self.settings.session_store),
                enqueue=self._alert_queue(),
            )
            self._detection = DetectionPasses(
                runner, self.policy().active, self.directory().snapshot
            )
        return self._detection

    def keytabs(self) -> KeytabService:
        """Keytab rotation over this process's store, the shared SSH pool and AD."""
        from broker.fleet.pool import shared_pool  # lazy: start-up (module doc)
        from broker.keytabs.ad import LdapDirectory  # lazy: start-up (module doc)
        from broker.keytabs.service import KeytabRules, KeytabService  # lazy: start-up (module doc)
        from broker.keytabs.tickets import verify_tokens_source  # lazy: start-up (module doc)

        if self._keytabs is None:
            directory = self.directory().settings()
            cfg = self.settings.keytabs
            own = broker_kerberos(directory, cfg.realm)
            self._keytabs = KeytabService(
                store=self.ready_store(),
                pool=shared_pool(self.settings),
                policy=self.policy().active,
                directory=lambda: LdapDirectory(directory),
                tokens=verify_tokens_source(own.principal, own.keytab),
                rules=KeytabRules(
                    realm=own.realm,
                    max_ticket_lifetime=cfg.max_ticket_lifetime,
                    accounts_ou=cfg.accounts_ou,
                ),
                open_store=self.worker_store,
                workers=cfg.rotate_workers,
            )
        return self._keytabs

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None
