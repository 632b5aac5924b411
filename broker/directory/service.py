"""The directory as a service: the configured section, the stored snapshot, the sync.

Who is told about access changes after a sync (grants revoke on them) subscribes
here, so the sync's callers never pass the subscribers themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from broker.config.settings import DirectorySection
from broker.core.errors import BrokerError, ConfigError
from broker.core.identity import AccessChange
from broker.core.timeutil import utcnow
from broker.core.users import Domain, NamedUser, resolve_user
from broker.directory import sync as directory_sync
from broker.directory.freshness import require_fresh
from broker.directory.snapshot import StoreSnapshot, load_state
from broker.directory.sync import SyncReport
from broker.store.db import Store

Subscriber = Callable[[list[AccessChange]], None]


class DirectoryService:
    """AD for one store; `mapped_groups` says which groups' membership changes to audit."""

    def __init__(
        self,
        store: Callable[[], Store],
        section: DirectorySection | None,
        mapped_groups: Callable[[], frozenset[str] | None],
    ) -> None:
        self._store = store
        self._section = section
        self._mapped_groups = mapped_groups
        self._subscribers: list[Subscriber] = []
        self._last_error: str | None = None  # the last failed sync's line, until one succeeds

    def settings(self) -> DirectorySection:
        """The [directory] section; refuses when the configuration has none."""
        if self._section is None:
            raise ConfigError(
                "no [directory] section in the configuration",
                fix="add one (see deploy/examples/broker.toml)",
            )
        return self._section

    def snapshot(self, now: datetime | None = None) -> StoreSnapshot:
        """The last committed directory snapshot, evaluated at `now`."""
        return StoreSnapshot(self._store().conn, now or utcnow())

    def require_fresh(self, now: datetime) -> None:
        """Refuse (unavailable) when the snapshot is older than `max_snapshot_age`: decisions
        that grant access by AD membership must not outlive AD. Without a [directory] section
        nothing syncs, so there is no age to bound."""
        if self._section is None:
            return
        state = load_state(self._store().conn)
        require_fresh(state, self._section.max_snapshot_age, now, self._last_error)

    def resolve_user(
        self, text: str, now: datetime, recorded: Callable[[str], bool] | None = None
    ) -> NamedUser:
        """The user an operator named, by the snapshot (broker.core.users has the rule);
        `recorded` finds users who have left the directory in the caller's own records."""
        return resolve_user(text, self.snapshot(now), recorded, self._domain())

    def require_own_domain(self, text: str) -> None:
        """Refuse a spelling whose DOMAIN\\ prefix or @REALM suffix names another domain."""
        domain = self._domain()
        if domain is not None:
            domain.require_own(text)  # any text: accounts show names non-POSIX accounts too

    def _domain(self) -> Domain | None:
        """The names a spelling's DOMAIN\\ prefix and @REALM suffix must match."""
        if self._section is None:
            return None
        labels = [
            part.split("=", 1)[1]
            for part in self._section.base_dn.split(",")
            if part.strip().upper().startswith("DC=")
        ]
        if not labels:
            return None
        realm = ".".join(labels).upper()
        return Domain(self._section.netbios_domain or labels[0].upper(), realm)

    def subscribe(self, callback: Subscriber) -> None:
        """Be told, after each committed sync, what changed for access (grants revoke on it)."""
        self._subscribers.append(callback)

    def _publish(self, changes: list[AccessChange]) -> None:
        for callback in self._subscribers:
            callback(changes)

    def sync(self, actor: str, *, full: bool = False) -> SyncReport:
        """Bring the directory snapshot up to date (one transaction; unchanged on failure);
        a failure's line is kept for the refusal `require_fresh` gives once the snapshot ages."""
        try:
            report = directory_sync.sync(
                self._store(),
                self.settings(),
                actor,
                full=full,
                mapped_groups=self._mapped_groups(),
                publish=self._publish,
            )
        except BrokerError as exc:
            self._last_error = " ".join(exc.message.split())
            raise
        self._last_error = None
        return report
