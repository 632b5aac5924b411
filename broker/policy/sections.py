"""Reading the sections of a policy document: zones, command sets, roles, approvals, bindings.

`Loader` walks the parsed TOML once, records every problem with its key
path and, when there is none, builds the `Policy`. Service accounts are
read by `service_accounts`, with the same loader.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from broker.core.errors import UsageError
from broker.core.hostlist import count, fold_some
from broker.policy import detection, names, service_accounts
from broker.policy.model import (
    ALL_COMMANDS,
    ZONE_KINDS,
    Approvals,
    Binding,
    CommandSet,
    Policy,
    Role,
    Zone,
    ZoneKind,
)
from broker.policy.positions import Path as KeyPath
from broker.policy.reader import Hosts, Problems, Table, suggest

FORMAT_VERSION = 1
MAX_GRANT = timedelta(days=30)
MAX_APPROVAL_WAIT = timedelta(days=7)
# Node names all the hostlists of one policy may name, counted before any is expanded:
# expanding, checking and indexing cost time and memory per name (one list is capped
# at hostlist.MAX_NODES, but a policy may hold any number of lists).
MAX_POLICY_NODES = 200_000
_NODE_SECTIONS = ("zones", "roles", "service_accounts")

_TOP_KEYS = (
    "version",
    "break_glass_group",
    "incident_response_group",
    "zones",
    "command_sets",
    "roles",
    "bindings",
    "service_accounts",
    "detect",
)
_ROLE_KEYS = (
    "description",
    "zones",
    "nodes",
    "runas",
    "commands",
    "default_duration",
    "max_duration",
    "mfa",
    "record_sessions",
    "approvals",
    "login",
    "workloads",
    "max_sessions_per_node",
)


class Loader:
    """One pass over the parsed document; fills `problems` and builds the model if clean."""

    def __init__(self, problems: Problems, known_groups: frozenset[str] | None) -> None:
        self.problems = problems
        self.known_groups = known_groups
        self.zone_names: set[str] = set()
        self.set_names: set[str] = set()
        self.role_names: set[str] = set()
        self.zones_ok = True
        self.zone_of: dict[str, str] = {}
        self.expand_hostlists = True  # False once the policy is known to name too many nodes

    def policy(self, data: dict[str, Any]) -> Policy | None:
        top = Table(self.problems, (), data, _TOP_KEYS)
        version = data.get("version", FORMAT_VERSION)
        if version != FORMAT_VERSION or isinstance(version, bool):
            self.problems.add(
                ("version",),
                f"unsupported policy format; this broker reads version = {FORMAT_VERSION}",
                version,
            )
        break_glass = self.group(top, "break_glass_group")
        incident = self.group(top, "incident_response_group")
        self._count_nodes(data)
        zones = self._zones(top.table("zones", hint="[zones.NAME] with kind and nodes") or {})
        sets = self._command_sets(
            top.table("command_sets", hint="[command_sets.NAME] with commands") or {}
        )
        roles = self._roles(top.table("roles", hint="[roles.NAME]") or {})
        bindings = self._bindings(data.get("bindings"))
        services = service_accounts.read(
            self, top.table("service_accounts", hint="[service_accounts.NAME]") or {}
        )
        detect = detection.read(
            self.problems, top.table("detect", hint="[detect.rules.NAME], [detect.drift]") or {}
        )
        if self.problems.items:
            return None
        return Policy.build(
            zones=zones,
            command_sets=sets,
            roles=roles,
            bindings=tuple(bindings),
            service_accounts=services,
            break_glass_group=break_glass,
            incident_response_group=incident,
            detection=detect,
        )

    # ------------------------------------------------------------ shared

    def entries(
        self, section: str, data: Mapping[str, Any], what: str
    ) -> Iterable[tuple[str, KeyPath, dict[str, Any]]]:
        """Named sub-tables of a section, each name checked against the allow-list."""
        for name, value in data.items():
            path: KeyPath = (section, name)
            reason = names.policy_name(name)
            if reason is not None:
                self.problems.add(path, f"{reason} ({what} names end up in sudoers)")
                continue
            if not isinstance(value, dict):
                self.problems.add(path, f"expected a table [{section}.{name}]", value)
                continue
            yield name, path, value

    def group(self, table: Table, key: str, *, required: bool = False) -> str | None:
        value = table.text(key, required=required, check=names.group_name)
        if value is None:
            return None
        return self._known_group((*table.path, key), value)

    def _known_group(self, path: KeyPath, name: str) -> str | None:
        lowered = name.lower()
        if self.known_groups is not None and lowered not in self.known_groups:
            self.problems.add(
                path,
                "unknown group: not in the directory snapshot; check the spelling, or sync "
                f"the directory if the group is new ({suggest(lowered, self.known_groups)})",
                name,
            )
            return None
        return lowered

    def _groups(self, table: Table, key: str, *, required: bool) -> list[str] | None:
        items = table.strings(key, required=required, check=names.group_name)
        if items is None:
            return None
        found = [self._known_group(path, name) for path, name in items]
        return [g for g in found if g is not None] if None not in found else None

    def hostlist(self, table: Table, key: str, *, required: bool) -> Hosts | None:
        """`table`'s hostlists, expanded unless the policy names too many nodes in all."""
        return table.hostlist(key, required=required, expand_names=self.expand_hostlists)

    def _count_nodes(self, data: Mapping[str, Any]) -> None:
        """Refuse a policy naming more than MAX_POLICY_NODES in all, before expanding any list.

        The problem is reported at the list that goes over the limit; the other
        lists are then only checked, not expanded. Lists that are bad on their
        own are skipped here and reported where they are read.
        """
        total = 0
        over: tuple[KeyPath, str] | None = None
        for path, expression in _hostlists(data):
            try:
                total += count(expression)
            except UsageError:
                continue
            if over is None and total > MAX_POLICY_NODES:
                over = (path, expression)
        if over is not None:
            self.problems.add(
                over[0],
                f"the hostlists of this policy name {total} nodes in all, more than "
                f"{MAX_POLICY_NODES} (counted before expanding; this list goes over the limit)",
                over[1],
            )
            self.expand_hostlists = False
            self.zones_ok = False

    def zoned(self, path: KeyPath, nodes: set[str]) -> bool:
        """Every node must sit in a zone, so its kind (and the lint rules for it) is known."""
        if not self.zones_ok:
            return False
        loose = sorted(n for n in nodes if n not in self.zone_of)
        if loose:
            self.problems.add(
                path, f"{fold_some(loose)} in no zone; add them to a zone's nodes first"
            )
            return False
        return True

    # ------------------------------------------------------------ sections

    def _zones(self, data: Mapping[str, Any]) -> dict[str, Zone]:
        zones: dict[str, Zone] = {}
        self.zone_names = set(data)
        for name, path, raw in self.entries("zones", data, "zone"):
            table = Table(self.problems, path, raw, ("kind", "nodes", "description"))
            kind = table.text("kind", required=True, check=_zone_kind)
            hosts = self.hostlist(table, "nodes", required=True)
            description = table.text("description", check=names.description) or ""
            if kind is None or hosts is None:
                self.zones_ok = False
                continue
            clash: dict[str, list[str]] = {}
            for node in hosts.names:
                other = self.zone_of.setdefault(node, name)
                if other != name:
                    clash.setdefault(other, []).append(node)
            for other, nodes_there in clash.items():
                self.problems.add(
                    (*path, "nodes"),
                    f"{fold_some(nodes_there)} already in zone {other}; a node belongs to exactly "
                    "one zone",
                )
            kind_value: ZoneKind = next(k for k in ZONE_KINDS if k == kind)
            zones[name] = Zone(name, kind_value, frozenset(hosts.names), hosts.text, description)
        if len(zones) != len(data):
            self.zones_ok = False
        return zones

    def _command_sets(self, data: Mapping[str, Any]) -> dict[str, CommandSet]:
        sets: dict[str, CommandSet] = {}
        self.set_names = set(data)
        for name, path, raw in self.entries("command_sets", data, "command set"):
            table = Table(self.problems, path, raw, ("commands", "description"))
            commands = table.strings("commands", required=True, check=names.command)
            description = table.text("description", check=names.description) or ""
            if commands is not None:
                sets[name] = CommandSet(name, tuple(c for _, c in commands), description)
        return sets

    def _roles(self, data: Mapping[str, Any]) -> dict[str, Role]:
        roles: dict[str, Role] = {}
        self.role_names = set(data)
        for name, path, raw in self.entries("roles", data, "role"):
            roles[name] = self._role(name, Table(self.problems, path, raw, _ROLE_KEYS))
        return roles

    def _role(self, name: str, table: Table) -> Role:
        zones = table.strings("zones", check=self._zone_ref) or []
        hosts = self.hostlist(table, "nodes", required=False)
        if hosts is not None:
            self.zoned((*table.path, "nodes"), hosts.names)
        if not table.has("zones") and not table.has("nodes"):
            self.problems.add(table.path, "a role needs zones or nodes (or both)")
        runas = table.text("runas", check=names.posix_name) or "root"
        all_commands, command_sets = self._commands(table)
        default = table.duration(
            "default_duration", timedelta(hours=1), low=timedelta(minutes=1), high=MAX_GRANT
        )
        longest = table.duration("max_duration", None, low=timedelta(minutes=1), high=MAX_GRANT)
        if default is not None and longest is not None and default > longest:
            if table.has("default_duration"):
                self.problems.add(
                    (*table.path, "default_duration"),
                    "longer than max_duration; make the default at most the maximum",
                    table.data["default_duration"],
                )
            else:
                self.problems.add(
                    (*table.path, "max_duration"),
                    "shorter than the default duration (1h); set default_duration too",
                    table.data["max_duration"],
                )
        sessions = table.integer("max_sessions_per_node", 1, 1, 16)
        approvals = self._approvals(table)
        role = Role(
            name=name,
            zones=tuple(z for _, z in zones),
            nodes=frozenset(hosts.names if hosts else ()),
            hostlist=hosts.text if hosts else "",
            runas=runas,
            all_commands=all_commands,
            command_sets=command_sets,
            default_duration=default or timedelta(hours=1),
            max_duration=longest,
            mfa=table.flag("mfa", True),
            record_sessions=table.flag("record_sessions", True),
            approvals=approvals or Approvals(),
            login=table.flag("login", False),
            workloads=table.flag("workloads", False),
            max_sessions_per_node=sessions or 1,
            description=table.text("description", check=names.description) or "",
        )
        return role

    def _zone_ref(self, zone: str) -> str | None:
        if zone not in self.zone_names:
            return f"unknown zone; {suggest(zone, self.zone_names)}"
        return None

    def _commands(self, table: Table) -> tuple[bool, tuple[str, ...]]:
        value = table.data.get("commands")
        if value == ALL_COMMANDS:
            return True, ()
        if isinstance(value, str):
            table.problems.add(
                (*table.path, "commands"),
                'expected "ALL" or an array of command set names',
                value,
            )
            return False, ()
        if isinstance(value, list) and ALL_COMMANDS in value:
            table.problems.add(
                (*table.path, "commands", value.index(ALL_COMMANDS)),
                'write commands = "ALL" on its own, not inside an array',
                ALL_COMMANDS,
            )
            return False, ()
        listed = table.strings("commands", required=True, check=self._set_ref)
        return False, tuple(s for _, s in listed or ())

    def _set_ref(self, name: str) -> str | None:
        if name not in self.set_names:
            return f"unknown command set; {suggest(name, self.set_names)}"
        return None

    def _approvals(self, role: Table) -> Approvals | None:
        raw = role.table("approvals", hint="count, groups, expires_after")
        if raw is None:
            return None
        path = (*role.path, "approvals")
        table = Table(
            self.problems, path, raw, ("count", "groups", "expires_after", "self_approval")
        )
        count = table.integer("count", 1, 0, 10)
        groups = self._groups(table, "groups", required=False)
        wait = table.duration(
            "expires_after", timedelta(hours=1), low=timedelta(minutes=1), high=MAX_APPROVAL_WAIT
        )
        if table.flag("self_approval", False):
            self.problems.add(
                (*path, "self_approval"),
                "self-approval is never allowed (AC-5); remove the key: a requester never "
                "counts as an approver",
                True,
            )
        if count and not table.has("groups"):
            self.problems.add(path, f"count = {count} needs groups: who may approve")
        if count == 0 and table.has("groups"):
            self.problems.add((*path, "count"), "0 approvals with approver groups; drop one", 0)
        if count is None or wait is None or (groups is None and table.has("groups")):
            return None
        return Approvals(count, tuple(groups or ()), wait)

    def _bindings(self, raw: object) -> list[Binding]:
        if raw is None:
            return []
        if not isinstance(raw, list) or not all(isinstance(item, dict) for item in raw):
            self.problems.add(
                ("bindings",), "expected [[bindings]] entries, each with group and roles"
            )
            return []
        bindings: list[Binding] = []
        for index, item in enumerate(raw):
            table = Table(
                self.problems, ("bindings", index), item, ("group", "roles", "description")
            )
            group = self.group(table, "group", required=True)
            roles = table.strings("roles", required=True, check=self._role_ref)
            description = table.text("description", check=names.description) or ""
            if group is not None and roles is not None:
                bindings.append(Binding(group, tuple(r for _, r in roles), description))
        return bindings

    def _role_ref(self, name: str) -> str | None:
        if name not in self.role_names:
            return f"unknown role; {suggest(name, self.role_names)}"
        return None


def _hostlists(data: Mapping[str, Any]) -> Iterable[tuple[KeyPath, str]]:
    """Every hostlist expression under a `nodes` key of the raw document, with its key path."""
    for section in _NODE_SECTIONS:
        entries = data.get(section)
        if not isinstance(entries, dict):
            continue
        for name, entry in entries.items():
            value = entry.get("nodes") if isinstance(entry, dict) else None
            if isinstance(value, str):
                yield (section, name, "nodes"), value
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    if isinstance(item, str):
                        yield (section, name, "nodes", index), item


def _zone_kind(value: str) -> str | None:
    if value not in ZONE_KINDS:
        return f"unknown zone kind; expected one of {', '.join(ZONE_KINDS)}"
    return None
