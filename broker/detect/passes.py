"""Detection passes with what is in force at each pass: the active policy's rules (the
built-ins before any policy) and the members of its incident-response group, who are
exempt from the quarantine rules."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from broker.detect.runner import DetectionRunner, PassReport
from broker.directory.snapshot import StoreSnapshot
from broker.policy.detection_rules import DEFAULT
from broker.policy.model import Policy


class DetectionPasses:
    def __init__(
        self,
        runner: DetectionRunner,
        policy: Callable[[], Policy | None],
        snapshot: Callable[[datetime], StoreSnapshot],
    ) -> None:
        self._runner = runner  # keeps its rule memory between passes
        self._policy = policy
        self._snapshot = snapshot

    def run(self, now: datetime) -> PassReport:
        policy = self._policy()
        detection = policy.detection if policy is not None else DEFAULT
        return self._runner.run_once(detection, now, self._responders(policy, now))

    def _responders(self, policy: Policy | None, now: datetime) -> frozenset[str]:
        group = policy.incident_response_group if policy is not None else None
        if group is None:
            return frozenset()
        return frozenset(self._snapshot(now).member_names(group))
