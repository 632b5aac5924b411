"""What one rotation (or a check) of one service account came to: the API's answer and the
scheduler's log line are made from it."""

from __future__ import annotations

from dataclasses import dataclass, field

from broker.keytabs.distribute import NodeResult


@dataclass
class RotationReport:
    name: str
    outcome: str  # rotated, verified, resumed, skipped, abandoned, failed, waiting, superseded
    from_kvno: int | None = None
    kvno: int | None = None
    nodes: list[NodeResult] = field(default_factory=list)
    message: str = ""
