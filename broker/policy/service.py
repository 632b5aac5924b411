"""The active policy as a service: read (parsed once per sha256), applied, asked about.

Everything that needs "the policy in force" gets one of these methods from the
composition root, so the parse cache, the refusal when none is active and the
rule that a broken policy must not stop the directory sync live in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from broker.core.errors import RefusedError
from broker.core.identity import Snapshot
from broker.core.timeutil import utcnow
from broker.policy import versions
from broker.policy.load import load_policy
from broker.policy.model import Policy
from broker.policy.rights import directory_groups, mapped_groups
from broker.store.db import Store


class PolicyService:
    """The active policy of one store; `snapshot` is the directory, for apply's checks."""

    def __init__(self, store: Callable[[], Store], snapshot: Callable[[], Snapshot]) -> None:
        self._store = store
        self._snapshot = snapshot
        self._parsed: tuple[str, Policy] | None = None  # (sha256, parsed) of the active one

    def version(self) -> versions.PolicyVersion | None:
        """The active policy's stored record (sha256, text, when, by whom); None before any."""
        return versions.active_version(self._store().conn)

    def active(self) -> Policy | None:
        """The active policy, parsed once per sha256; None before the first apply."""
        version = self.version()
        if version is None:
            return None
        if self._parsed is None or self._parsed[0] != version.sha256:
            self._parsed = (version.sha256, versions.parse_version(version).policy)
        return self._parsed[1]

    def active_with_sha(self) -> tuple[str, Policy] | None:
        """The active policy with its sha256 (grants record which policy allowed them)."""
        version = self.version()
        policy = self.active()
        if version is None or policy is None:
            return None
        return version.sha256, policy

    def require(self) -> Policy:
        """The active policy; refuses when none has been applied."""
        policy = self.active()
        if policy is None:
            raise RefusedError(
                "no policy is active", fix="apply one with `broker policy apply FILE`"
            )
        return policy

    def mapped_groups(self) -> frozenset[str] | None:
        """Groups whose membership changes are audited: those the active policy names.

        None (audit every group) when no policy is active, or when the stored one cannot
        be used: a bad policy must never stop the sync that carries revocations.
        """
        try:
            policy = self.active()
        except RefusedError:
            return None
        return None if policy is None else mapped_groups(policy)

    def incident_response_group(self) -> str | None:
        """The group still allowed onto quarantined nodes; None without a policy."""
        policy = self.active()
        return policy.incident_response_group if policy is not None else None

    def nodes_in_zones(self, zones: Iterable[str]) -> frozenset[str]:
        """Nodes the active policy places in `zones` (empty without a policy)."""
        policy = self.active()
        wanted = set(zones)
        if policy is None:
            return frozenset()
        return frozenset(node for node, zone in policy.zone_of.items() if zone in wanted)

    def apply(self, text: str, source: str, actor: str) -> versions.ApplyResult:
        """Validate (groups against the snapshot), lint and activate a policy, atomically."""
        snapshot = self._snapshot()
        loaded = load_policy(text, source, known_groups=directory_groups(snapshot))
        return versions.activate(self._store(), loaded, snapshot, actor=actor, now=utcnow())
