"""The policy as typed, frozen values, with the indexes deciding needs built once at load.

Everything here has already been validated by `load`: names passed their
allow-lists, hostlists were expanded, references resolved. Group names are
lower-cased, as `Account.groups` holds them. Where each value was written
is not part of the model: `load.LoadedPolicy.lines` maps key paths to lines.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import PurePosixPath
from typing import Literal

from broker.core.durations import format_duration
from broker.policy.detection_rules import DEFAULT as DEFAULT_DETECTION
from broker.policy.detection_rules import Detection
from broker.policy.names import STRONG_ENCTYPES, cmnd_alias

ZoneKind = Literal["access", "management", "compute", "storage"]
ZONE_KINDS: tuple[ZoneKind, ...] = ("access", "management", "compute", "storage")
ALL_COMMANDS = "ALL"


@dataclass(frozen=True)
class Zone:
    name: str
    kind: ZoneKind
    nodes: frozenset[str]
    hostlist: str  # folded, for people
    description: str = ""


@dataclass(frozen=True)
class CommandSet:
    """Named commands, rendered into sudoers as one Cmnd_Alias."""

    name: str
    commands: tuple[str, ...]
    description: str = ""

    @property
    def alias(self) -> str:
        return cmnd_alias(self.name)


@dataclass(frozen=True)
class Approvals:
    """How many people from which groups must approve before a grant is issued.

    `self_approval` is always False: the requester never counts towards `count`,
    even when in an approver group (the loader refuses anything else; grants
    enforce it). A request nobody approves within `expires_after` is denied.
    """

    count: int = 0
    groups: tuple[str, ...] = ()
    expires_after: timedelta = timedelta(hours=1)
    self_approval: Literal[False] = False

    @property
    def required(self) -> bool:
        return self.count > 0


@dataclass(frozen=True)
class Role:
    name: str
    zones: tuple[str, ...]
    nodes: frozenset[str]  # named in addition to the zones'
    hostlist: str  # `nodes` folded, for people (precomputed: deciding must stay fast)
    runas: str
    all_commands: bool
    command_sets: tuple[str, ...]
    default_duration: timedelta
    max_duration: timedelta | None  # None: written without one; capped at default_duration
    mfa: bool = True
    record_sessions: bool = True
    approvals: Approvals = Approvals()
    login: bool = False
    workloads: bool = False
    max_sessions_per_node: int = 1
    description: str = ""

    @property
    def longest(self) -> timedelta:
        """The longest grant this role allows; never unbounded (fail closed)."""
        return self.max_duration if self.max_duration is not None else self.default_duration

    @property
    def as_root(self) -> bool:
        return self.runas == "root"

    @property
    def commands_text(self) -> str:
        return ALL_COMMANDS if self.all_commands else ", ".join(self.command_sets)

    def scope_text(self) -> str:
        parts = [f"zone {z}" for z in self.zones]
        if self.hostlist:
            parts.append(f"nodes {self.hostlist}")
        return ", ".join(parts)


@dataclass(frozen=True)
class Binding:
    """Members of an AD group (transitively) hold these roles."""

    group: str
    roles: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class ServiceAccount:
    """An AD service account whose keytab the broker rotates on `nodes`."""

    name: str
    account: str
    principals: tuple[str, ...]
    nodes: frozenset[str]
    keytab: PurePosixPath
    owner: str = "root"
    group: str = "root"
    mode: int = 0o600
    enctypes: tuple[str, ...] = STRONG_ENCTYPES
    allow_weak_enctypes: bool = False
    rotate_every: timedelta = timedelta(days=30)
    keep_old_kvnos: int = 1
    managed_by: str | None = None  # the AD group accountable for it
    description: str = ""


@dataclass(frozen=True)
class Policy:
    """One whole policy, with lookup indexes; build it with `Policy.build`."""

    zones: Mapping[str, Zone]
    command_sets: Mapping[str, CommandSet]
    roles: Mapping[str, Role]
    bindings: tuple[Binding, ...]
    service_accounts: Mapping[str, ServiceAccount]
    break_glass_group: str | None = None
    incident_response_group: str | None = None
    detection: Detection = DEFAULT_DETECTION
    # Indexes (derived): node -> zone name, group -> role names in policy order,
    # role -> groups bound to it, role -> its position in the file.
    zone_of: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)
    roles_of_group: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    groups_of_role: Mapping[str, tuple[str, ...]] = field(
        default_factory=dict, compare=False, repr=False
    )
    role_rank: Mapping[str, int] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        *,
        zones: Mapping[str, Zone],
        command_sets: Mapping[str, CommandSet],
        roles: Mapping[str, Role],
        bindings: tuple[Binding, ...],
        service_accounts: Mapping[str, ServiceAccount],
        break_glass_group: str | None = None,
        incident_response_group: str | None = None,
        detection: Detection = DEFAULT_DETECTION,
    ) -> Policy:
        zone_of = {node: zone.name for zone in zones.values() for node in zone.nodes}
        order = {name: i for i, name in enumerate(roles)}
        by_group: dict[str, set[str]] = {}
        by_role: dict[str, list[str]] = {name: [] for name in roles}
        for binding in bindings:
            for role in binding.roles:
                by_group.setdefault(binding.group, set()).add(role)
                if binding.group not in by_role[role]:
                    by_role[role].append(binding.group)
        return cls(
            zones=dict(zones),
            command_sets=dict(command_sets),
            roles=dict(roles),
            bindings=bindings,
            service_accounts=dict(service_accounts),
            break_glass_group=break_glass_group,
            incident_response_group=incident_response_group,
            detection=detection,
            zone_of=zone_of,
            roles_of_group={
                g: tuple(sorted(r, key=order.__getitem__)) for g, r in by_group.items()
            },
            groups_of_role={r: tuple(g) for r, g in by_role.items()},
            role_rank=order,
        )

    def covers(self, role: Role, node: str) -> bool:
        """Does `role` reach `node` (through one of its zones, or by name)?"""
        return self.zone_of.get(node) in role.zones or node in role.nodes

    def role_nodes(self, role: Role) -> frozenset[str]:
        """Every node `role` reaches."""
        nodes = set(role.nodes)
        for zone in role.zones:
            nodes.update(self.zones[zone].nodes)
        return frozenset(nodes)

    def role_zones_of_kind(self, role: Role) -> dict[str, ZoneKind]:
        """Zones the role reaches, with their kind (named nodes count by their zone)."""
        names = list(role.zones) + sorted({self.zone_of[n] for n in role.nodes})
        return {name: self.zones[name].kind for name in dict.fromkeys(names)}


def describe_duration(value: timedelta | None) -> str:
    return "none" if value is None else format_duration(value)
