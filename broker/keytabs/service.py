"""Keytab rotation: the state machine over the store, AD and the nodes (docs/keytabs.md).

One rotation of one service account:

    planned     the intent (from and target key version, nodes) is committed first
    staged      every node holds the target version's keys beside the current ones
    ad_pending  committed just before the password goes to AD
    ad_set      AD took it; its key version is recorded (and re-derived for if it
                is not the staged one)
    done        every node accepted a fresh service ticket for every principal

or ends `abandoned` (AD never changed; staged keys removed), `failed` (AD refused
the password; staged keys removed) or `superseded` (AD changed but the keys are
lost with a crashed process: a new rotation follows at once). The password lives
in this process's memory only, so a rotation found open after a crash is never
continued with its password: plan.resume() decides between discarding, verifying
what the nodes already hold, and recovering with a new rotation.

Every transition is one store transaction with its audit event; SSH and LDAP
work happens between transactions. No password or key is ever logged, audited,
stored, put in an error or on a command line: keys reach a node only inside the
keytab the broker writes there over SFTP (distribute.py), in memory on this side.
"""

from __future__ import annotations

import copy
import logging
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from broker.core.errors import (
    BrokerError,
    FailedError,
    RefusedError,
    UnavailableError,
    UsageError,
)
from broker.core.hostlist import fold
from broker.core.timeutil import utcnow
from broker.fleet import inventory
from broker.fleet.pool import SshPool
from broker.fleet.ssh import NodeTarget
from broker.keytabs import batch, keys, plan, rows
from broker.keytabs.ad import AdAccount, Directory, PasswordNotSet, PasswordRefused
from broker.keytabs.journal import RotationJournal, event
from broker.keytabs.nodes import KeytabNodes, keytab_principals, keytab_spec, nodes_error
from broker.keytabs.report import RotationReport
from broker.keytabs.status import AccountStatus, account_status
from broker.keytabs.tickets import TokenSource
from broker.policy.model import Policy, ServiceAccount
from broker.store.db import Store

log = logging.getLogger("broker.keytabs")


@dataclass(frozen=True)
class KeytabRules:
    realm: str
    max_ticket_lifetime: timedelta
    accounts_ou: str | None = None


class KeytabService:
    """Rotation, creation, verification and status for the service accounts of the policy."""

    def __init__(
        self,
        *,
        store: Store,
        pool: SshPool,
        policy: Callable[[], Policy | None],
        directory: Callable[[], Directory],
        tokens: TokenSource,
        rules: KeytabRules,
        salts: Callable[[str, Sequence[int]], dict[int, keys.SaltInfo]] = keys.salt_of,
        derive: Callable[[keys.Secret, dict[int, keys.SaltInfo]], tuple[keys.Key, ...]] = (
            keys.derive
        ),
        enctype_number: Callable[[str], int] = keys.enctype_number,
        new_password: Callable[[], keys.Secret] = keys.new_password,
        clock: Callable[[], datetime] = utcnow,
        open_store: Callable[[], Store] | None = None,
        workers: int = 1,
    ) -> None:
        self._pool = pool
        self._policy = policy
        self._directory = directory
        self._tokens = tokens
        self._rules = rules
        self._salts = salts
        self._derive = derive
        self._enctype = enctype_number
        self._new_password = new_password
        self._clock = clock
        # Rotations of several accounts at once (batch.py): each worker opens its own store.
        self._open_store = open_store
        self._workers = workers if open_store is not None else 1
        self._bind(store)

    def _bind(self, store: Store) -> None:
        """Use `store` (this thread's connection) for the journal and the node records."""
        self._store = store
        self._journal = RotationJournal(store, self._clock)
        self._nodes = KeytabNodes(
            store=store,
            pool=self._pool,
            clock=self._clock,
            max_ticket_lifetime=self._rules.max_ticket_lifetime,
        )

    # ------------------------------------------------------------ policy

    def _active(self) -> Policy:
        policy = self._policy()
        if policy is None:
            raise RefusedError(
                "no policy is active: no service accounts are defined",
                fix="an operator applies one with `broker policy apply FILE`",
            )
        return policy

    def _accounts(self) -> Mapping[str, ServiceAccount]:
        return self._active().service_accounts

    def service_account(self, name: str) -> ServiceAccount:
        accounts = self._accounts()
        if name not in accounts:
            known = ", ".join(sorted(accounts)[:10]) or "none"
            raise RefusedError(
                f"no service account {name[:60]!r} in the active policy (known: {known})"
            )
        return accounts[name]

    def _targets(self, service: ServiceAccount) -> list[NodeTarget]:
        if not service.nodes:
            raise RefusedError(f"service account {service.name} has no nodes")
        return inventory.targets(self._store, sorted(service.nodes))

    # ------------------------------------------------------------ AD

    def _lookup(self, ad: Directory, service: ServiceAccount) -> AdAccount:
        found = ad.lookup(service.account)
        if found is None:
            raise RefusedError(
                f"AD has no account {service.account} (service account {service.name})",
                fix=f"create it: broker keytab create {service.name} --create-account",
            )
        return found

    def _keys_for(
        self, service: ServiceAccount, password: keys.Secret
    ) -> tuple[tuple[keys.Key, ...], dict[int, keys.SaltInfo]]:
        enctypes = [self._enctype(e) for e in service.enctypes]
        salts = self._salts(f"{service.account}@{self._rules.realm}", enctypes)
        return self._derive(password, salts), salts

    # ------------------------------------------------------------ rotate

    def rotate(self, name: str, *, actor: str, force: bool = False) -> RotationReport:
        """Rotate one account now (resuming a rotation a crash left open first).

        Raises RefusedError/FailedError/UnavailableError with one line; nothing is
        changed in AD unless every node holds the next keys first."""
        service = self.service_account(name)
        targets = self._targets(service)
        with self._journal.claimed(name, actor):
            ad = self._directory()
            try:
                return self._rotate(service, targets, ad, actor=actor, force=force)
            except sqlite3.IntegrityError:
                raise RefusedError(f"another process is rotating {name}") from None
            finally:
                ad.close()

    def _rotate(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        ad: Directory,
        *,
        actor: str,
        force: bool,
    ) -> RotationReport:
        name = service.name
        principals = keytab_principals(service, self._rules.realm)
        keytab_spec(service, principals)  # refused here, before anything is written
        account = self._lookup(ad, service)  # AD unreachable: raised before anything changes
        found = self._journal.open_rotation(name, service.account, actor)
        if found is not None:
            resumed = self._resume(service, targets, principals, ad, account, found, actor)
            if resumed.outcome in ("verified", "waiting") and not force:
                return resumed
            account = self._lookup(ad, service)
        return self._fresh(service, targets, principals, ad, account, actor)

    def _fresh(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        principals: list[str],
        ad: Directory,
        account: AdAccount,
        actor: str,
    ) -> RotationReport:
        name = service.name
        current, target_kvno = account.kvno, account.kvno + 1
        # 1. Write-ahead: the intent is committed before any node or AD is touched.
        rotation_id = self._plan(service, targets, principals, current, target_kvno, actor)
        # 2. A new password, keys derived with the KDC's salt.
        password = self._new_password()
        try:
            derived, salts = self._keys_for(service, password)
        except BrokerError as exc:
            self._journal.end(rotation_id, "abandoned", actor, name, exc.one_line())
            raise
        # 3. Pre-stage on every node.
        self._stage(service, targets, principals, rotation_id, current, target_kvno, derived, actor)
        # 4. AD: the password change, written ahead.
        after = self._set_in_ad(
            service, targets, principals, ad, account, password, rotation_id, current, actor
        )
        # 4b. AD's version or salt is not the staged one: derive again and redistribute.
        real_salts = self._salts(f"{service.account}@{self._rules.realm}", sorted(salts))
        if after.kvno != target_kvno or keys.salts_differ(real_salts, salts):
            derived = self._derive(password, real_salts)
            self._redistribute(
                service, targets, principals, rotation_id, after.kvno, target_kvno, derived, actor
            )
            target_kvno = after.kvno
        del password, derived
        # 5. Verify on every node.
        report = self._finish(service, targets, principals, rotation_id, target_kvno, actor)
        report.from_kvno = current
        if report.outcome == "verified":
            report.outcome = "rotated"
        return report

    def _plan(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        principals: list[str],
        current: int,
        target_kvno: int,
        actor: str,
    ) -> int:
        """Commit the rotation's intent and audit it; learn what unseen nodes hold."""
        nodes = [t.name for t in targets]
        rotation_id, views = self._journal.start(
            service.name, service.account, current, target_kvno, nodes, principals, actor
        )
        unknown = [t for t in targets if t.name not in views]
        if unknown:
            self._nodes.refresh(service, unknown, principals)
        return rotation_id

    def _stage(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        principals: list[str],
        rotation_id: int,
        current: int,
        target_kvno: int,
        derived: Sequence[keys.Key],
        actor: str,
    ) -> None:
        """Every node holds the next version's keys beside the current ones, or nothing
        changes anywhere (staged keys removed, the rotation abandoned and retried later)."""
        name = service.name
        self._journal.hold(name, actor)
        staged = self._nodes.install(
            service,
            targets,
            principals,
            current=current,
            staged=target_kvno,
            add=derived,
            add_kvno=target_kvno,
        )
        bad = [r for r in staged if not r.ok]
        if bad:
            self._journal.hold(name, actor)
            self._nodes.unstage(service, targets, principals, current)
            error = nodes_error("could not stage the next keys", bad)
            self._journal.end(rotation_id, "abandoned", actor, name, error, retry=True)
            raise UnavailableError(
                f"{name}: {error}; nothing was changed in AD",
                fix="the rotation is retried with backoff once the nodes answer",
            )
        nodes = fold([t.name for t in targets])
        self._journal.move(
            name,
            rotation_id,
            "staged",
            event(actor, "keytab.stage", name, kvno=target_kvno, nodes=nodes),
        )

    def _set_in_ad(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        principals: list[str],
        ad: Directory,
        account: AdAccount,
        password: keys.Secret,
        rotation_id: int,
        current: int,
        actor: str,
    ) -> AdAccount:
        """The password change in AD, written ahead (ad_pending) and recorded (ad_set) with
        the version AD gave it; what AD says afterwards about the account."""
        name = service.name
        target_kvno = current + 1
        self._journal.move(
            name,
            rotation_id,
            "ad_pending",
            event(actor, "keytab.ad_pending", name, kvno=target_kvno),
        )
        try:
            ad.set_password(account, password)
        except PasswordNotSet as exc:
            # AD answered: nothing changed there. Refused by policy: fix the policy first;
            # anything else (no right, busy): retried with backoff.
            self._journal.hold(name, actor)
            self._nodes.unstage(service, targets, principals, current)
            retry = not isinstance(exc, PasswordRefused)
            self._journal.end(rotation_id, "failed", actor, name, exc.one_line(), retry=retry)
            raise
        except BrokerError as exc:
            # Not known whether AD applied it: stays ad_pending; the next run decides.
            self._journal.ad_unconfirmed(name, actor, exc.one_line())
            raise
        after = self._lookup(ad, service)
        self._journal.ad_set(name, rotation_id, current, after.kvno, actor, expected=target_kvno)
        return after

    def _redistribute(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        principals: list[str],
        rotation_id: int,
        kvno: int,
        staged: int,
        derived: Sequence[keys.Key],
        actor: str,
    ) -> None:
        """Keys derived again for the version (or salt) AD actually used, to every node."""
        self._journal.hold(service.name, actor)
        again = self._nodes.install(
            service,
            targets,
            principals,
            current=kvno,
            staged=None,
            add=derived,
            add_kvno=kvno,
        )
        self._journal.move(
            service.name,
            rotation_id,
            "ad_set",
            event(
                actor,
                "keytab.redistribute",
                service.name,
                "ok" if all(r.ok for r in again) else "failed",
                kvno=kvno,
                staged=staged,
                nodes=fold([t.name for t in targets]),
            ),
            target_kvno=kvno,
        )

    def _finish(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        principals: list[str],
        rotation_id: int,
        kvno: int,
        actor: str,
    ) -> RotationReport:
        """Verify on every node; all good: done and prune; else stays open for a retry."""
        name = service.name
        self._journal.hold(name, actor)
        results = self._nodes.verify(service, targets, principals, self._tokens, kvno)
        bad = [r for r in results if not r.ok]
        now = self._clock()
        if bad:
            error = nodes_error("verification failed", bad)
            self._journal.verify_failed(name, rotation_id, kvno, error, actor, now)
            if all(r.unreachable for r in bad):
                return RotationReport(name, "waiting", kvno=kvno, nodes=results, message=error)
            raise FailedError(
                f"{name}: {error}",
                fix=f"check the keytab on those nodes; `broker keytab rotate {name} --force` "
                "starts a new rotation",
            )
        self._journal.done(name, rotation_id, kvno, [t.name for t in targets], actor, now)
        # Prune: keep what plan.keep_kvnos says now that the new version is current (nodes
        # whose last read-back holds nothing to remove are not asked).
        self._nodes.install(
            service, targets, principals, current=kvno, staged=None, skip_clean=True
        )
        return RotationReport(name, "verified", kvno=kvno, nodes=results)

    def _resume(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        principals: list[str],
        ad: Directory,
        account: AdAccount,
        found: rows.Rotation,
        actor: str,
    ) -> RotationReport:
        """A rotation left open by a crash (or a node that did not answer)."""
        name = service.name
        decision = plan.resume(
            plan.Found(found.state, found.from_kvno, found.target_kvno, found.ad_kvno, account.kvno)
        )
        log.info("keytab %s: open rotation %s in %s: %s", name, found.id, found.state, decision)
        if decision == "discard":
            self._journal.hold(name, actor)
            self._nodes.unstage(service, targets, principals, account.kvno)
            self._journal.abandoned_after_crash(
                name, found.id, found.state, found.target_kvno, actor
            )
            return RotationReport(name, "abandoned", kvno=account.kvno)
        if decision == "verify":
            if found.state == "ad_pending":
                self._journal.ad_set(
                    name, found.id, found.from_kvno, account.kvno, actor, resumed=True
                )
            try:
                return self._finish(service, targets, principals, found.id, account.kvno, actor)
            except FailedError:
                pass  # reachable nodes reject AD's keys: the password is not ours; recover
        self._journal.move(
            name,
            found.id,
            "superseded",
            event(
                actor,
                "keytab.supersede",
                name,
                "failed",
                state=found.state,
                ad_kvno=account.kvno,
                reason="AD changed but the keys are lost; a new rotation follows",
            ),
            error="superseded by a new rotation",
        )
        return RotationReport(name, "superseded", kvno=account.kvno)

    def rotate_due(self, *, actor: str, every: bool = False) -> list[RotationReport]:
        """Every account that is due (or every account), `keytabs.rotate_workers` at a time
        (batch.py): open rotations are resumed first; an account waiting for a retry
        (backoff) is skipped. One account's failure never stops the others. Reports in
        account order, whatever order they finished in."""
        policy = self._active()
        names, reports = batch.select(self._store, policy.service_accounts, self._clock(), every)
        workers = min(self._workers, len(names))
        if workers <= 1:
            reports.update(batch.one_by_one(names, lambda n: self.rotate(n, actor=actor)))
        else:
            reports.update(batch.in_parallel(names, workers, lambda: self._worker(policy, actor)))
        return [reports[name] for name in sorted(reports)]

    def _worker(self, policy: Policy, actor: str) -> tuple[batch.Rotate, Callable[[], None]]:
        """This service on a store connection of its own, for one worker thread, with the
        policy the run started with (the caller's policy reader uses the caller's store)."""
        assert self._open_store is not None
        store = self._open_store()
        worker = copy.copy(self)
        worker._policy = lambda: policy
        worker._bind(store)

        def rotate(name: str) -> RotationReport:
            return worker.rotate(name, actor=actor)

        return rotate, store.close

    # ------------------------------------------------------------ create, verify, status

    def create(self, name: str, *, actor: str, create_account: bool = False) -> RotationReport:
        """Make the account's keytab on its nodes; with `create_account`, first create the
        AD account with its SPNs (in keytabs.accounts_ou)."""
        service = self.service_account(name)
        targets = self._targets(service)
        keytab_spec(
            service, keytab_principals(service, self._rules.realm)
        )  # before an account is made in AD
        with self._journal.claimed(name, actor):
            return self._create(service, targets, actor=actor, create_account=create_account)

    def _create(
        self,
        service: ServiceAccount,
        targets: list[NodeTarget],
        *,
        actor: str,
        create_account: bool,
    ) -> RotationReport:
        name = service.name
        ad = self._directory()
        try:
            if ad.lookup(service.account) is None:
                if not create_account:
                    raise RefusedError(
                        f"AD has no account {service.account}",
                        fix=f"add --create-account to create it in {self._rules.accounts_ou or 'keytabs.accounts_ou'}",
                    )
                if self._rules.accounts_ou is None:
                    raise UsageError(
                        "keytabs.accounts_ou is not set",
                        fix="set it to the OU for service accounts",
                    )
                spns = [
                    p.partition("@")[0] for p in keytab_principals(service, self._rules.realm)[1:]
                ]
                self._journal.hold(name, actor)
                created = ad.create(
                    service.account, spns, self._rules.accounts_ou, self._new_password()
                )
                self._journal.account_created(
                    name, actor, account=service.account, dn=created.dn, spns=spns
                )
            return self._rotate(service, targets, ad, actor=actor, force=True)
        finally:
            ad.close()

    def verify(self, name: str, *, actor: str) -> RotationReport:
        """Fresh tickets for every principal, accepted on every node; recorded and audited."""
        service = self.service_account(name)
        targets = self._targets(service)
        principals = keytab_principals(service, self._rules.realm)
        ad = self._directory()
        try:
            account = self._lookup(ad, service)
        finally:
            ad.close()
        results = self._nodes.verify(service, targets, principals, self._tokens, account.kvno)
        self._nodes.refresh(service, targets, principals)
        ok = all(r.ok for r in results)
        failed = [r.node for r in results if not r.ok]
        self._journal.verified(name, service.account, account.kvno, ok, failed, actor)
        return RotationReport(
            name, "verified" if ok else "failed", kvno=account.kvno, nodes=results
        )

    def status(self, *, live: bool = False) -> list[AccountStatus]:
        """Every service account: AD's version, each node's, age, next due, verification."""
        accounts = self._accounts()
        ad_kvnos: dict[str, int | None] = {}
        ad_error: str | None = None
        try:
            ad = self._directory()
            try:
                for service in accounts.values():
                    found = ad.lookup(service.account)
                    ad_kvnos[service.name] = found.kvno if found else None
            finally:
                ad.close()
        except BrokerError as exc:
            ad_error = exc.one_line()
        out = []
        for name, service in sorted(accounts.items()):
            if live:
                try:
                    self._nodes.refresh(
                        service,
                        self._targets(service),
                        keytab_principals(service, self._rules.realm),
                    )
                except BrokerError as exc:
                    ad_error = ad_error or exc.one_line()
            with self._store.transaction() as conn:
                row = rows.account(conn, name)
                views = rows.node_views(conn, name)
                open_one = rows.open_rotation(conn, name)
            out.append(
                account_status(name, service, row, views, open_one, ad_kvnos.get(name), ad_error)
            )
        return out
