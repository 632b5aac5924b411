"""Judgement on a valid policy: findings that name the NIST SP 800-53 control they protect.

Root without MFA (IA-2) and root without session recording (AU-14) are
errors: `check` fails and `apply` refuses. Everything else is a warning
(worth fixing) or a note (worth knowing). Each finding carries the key
path it is about, so the caller can print file:line.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from broker.core.durations import format_duration
from broker.policy.model import Policy, Role
from broker.policy.names import (
    ESCAPE_HATCHES,
    NEEDS_ARGUMENTS,
    WEAK_ENCTYPES,
    base_program,
    program_name,
)
from broker.policy.positions import Path

Severity = Literal["error", "warning", "note"]
SEVERITIES: tuple[Severity, ...] = ("error", "warning", "note")

LONG_ROOT = timedelta(hours=12)
LONG_ROTATION = timedelta(days=90)
MANY_ROOT_SESSIONS = 2


@dataclass(frozen=True)
class Finding:
    rule: str
    control: str
    severity: Severity
    message: str
    path: Path

    def text(self) -> str:
        return f"{self.severity} {self.control}: {self.message}"


Rule = Callable[[Policy], Iterator[Finding]]


def lint(policy: Policy) -> list[Finding]:
    """Every finding of every rule, errors first, then in file order of their subject."""
    found = [finding for rule in RULES for finding in rule(policy)]
    return sorted(found, key=lambda f: SEVERITIES.index(f.severity))


def _where(policy: Policy, role: Role) -> str:
    zones = policy.role_zones_of_kind(role)
    return ("zone " if len(zones) == 1 else "zones ") + ", ".join(zones)


def _root_without_mfa(policy: Policy) -> Iterator[Finding]:
    for role in policy.roles.values():
        if role.as_root and not role.mfa:
            yield Finding(
                "root-without-mfa",
                "IA-2",
                "error",
                f"root without MFA on {_where(policy, role)}: role {role.name} sets mfa = false; "
                "remove it (MFA is on by default)",
                ("roles", role.name, "mfa"),
            )
        elif not role.mfa:
            yield Finding(
                "elevation-without-mfa",
                "IA-2",
                "warning",
                f"role {role.name} elevates to {role.runas} without MFA on {_where(policy, role)}",
                ("roles", role.name, "mfa"),
            )


def _root_without_recording(policy: Policy) -> Iterator[Finding]:
    for role in policy.roles.values():
        if not role.record_sessions:
            yield Finding(
                "root-without-recording" if role.as_root else "elevation-without-recording",
                "AU-14",
                "error" if role.as_root else "warning",
                f"role {role.name} runs as {role.runas} without session recording on "
                f"{_where(policy, role)}; remove record_sessions = false",
                ("roles", role.name, "record_sessions"),
            )


def _all_without_maximum(policy: Policy) -> Iterator[Finding]:
    for role in policy.roles.values():
        if not (role.as_root and role.all_commands):
            continue
        if role.max_duration is None:
            yield Finding(
                "all-without-maximum",
                "AC-6",
                "warning",
                f"role {role.name} grants ALL as root with no maximum duration (requests are "
                f"capped at its default, {format_duration(role.default_duration)}); "
                "set max_duration",
                ("roles", role.name),
            )
        elif role.max_duration > LONG_ROOT:
            yield Finding(
                "long-root",
                "AC-6",
                "warning",
                f"role {role.name} grants ALL as root for up to "
                f"{format_duration(role.max_duration)}, more than {format_duration(LONG_ROOT)}",
                ("roles", role.name, "max_duration"),
            )


def _root_and_workloads(policy: Policy) -> Iterator[Finding]:
    for role in policy.roles.values():
        if role.as_root and role.workloads:
            yield Finding(
                "root-and-workloads",
                "AC-6",
                "warning",
                f"role {role.name} lets holders run workloads on nodes where they hold root, "
                "next to other users' jobs",
                ("roles", role.name, "workloads"),
            )


def _management_without_approval(policy: Policy) -> Iterator[Finding]:
    for role in policy.roles.values():
        kinds = policy.role_zones_of_kind(role)
        managed = [zone for zone, kind in kinds.items() if kind == "management"]
        if role.as_root and role.all_commands and managed and not role.approvals.required:
            yield Finding(
                "management-without-approval",
                "CM-5",
                "warning",
                f"role {role.name} grants ALL as root on management zone {', '.join(managed)} "
                "with no approval",
                ("roles", role.name),
            )


def _many_sessions(policy: Policy) -> Iterator[Finding]:
    for role in policy.roles.values():
        if role.as_root and role.max_sessions_per_node > MANY_ROOT_SESSIONS:
            yield Finding(
                "many-sessions",
                "AC-10",
                "warning",
                f"role {role.name} allows {role.max_sessions_per_node} root sessions at once "
                f"per user on one node (more than {MANY_ROOT_SESSIONS})",
                ("roles", role.name, "max_sessions_per_node"),
            )


def _escape_hatches(policy: Policy) -> Iterator[Finding]:
    for command_set in policy.command_sets.values():
        for index, command in enumerate(command_set.commands):
            program = program_name(command)
            bare = " " not in command and base_program(program) in NEEDS_ARGUMENTS
            if base_program(program) in ESCAPE_HATCHES or bare:
                yield Finding(
                    "escape-hatch",
                    "AC-6",
                    "warning",
                    f"command set {command_set.name} allows {program}"
                    + (" with any arguments" if bare else "")
                    + ", which can run any command or write any file: the set is as wide as ALL",
                    ("command_sets", command_set.name, "commands", index),
                )


def _unbound_roles(policy: Policy) -> Iterator[Finding]:
    for role in policy.roles.values():
        if not policy.groups_of_role.get(role.name):
            yield Finding(
                "unbound-role",
                "AC-2",
                "note",
                f"role {role.name} is bound to no group: nobody holds it",
                ("roles", role.name),
            )


def _unused_command_sets(policy: Policy) -> Iterator[Finding]:
    used = {name for role in policy.roles.values() for name in role.command_sets}
    for name in policy.command_sets:
        if name not in used:
            yield Finding(
                "unused-command-set",
                "CM-7",
                "note",
                f"command set {name} is used by no role",
                ("command_sets", name),
            )


def _emergency_groups(policy: Policy) -> Iterator[Finding]:
    if policy.break_glass_group is None:
        yield Finding(
            "no-break-glass-group",
            "AC-2",
            "warning",
            "no break_glass_group: nobody is named for emergency access when the broker is down",
            (),
        )
    elif policy.break_glass_group in policy.roles_of_group:
        yield Finding(
            "break-glass-bound",
            "AC-6",
            "warning",
            f"the break-glass group {policy.break_glass_group} is also bound to everyday roles "
            f"({', '.join(policy.roles_of_group[policy.break_glass_group])}); keep emergency "
            "access separate",
            ("break_glass_group",),
        )
    if policy.incident_response_group is None:
        yield Finding(
            "no-incident-response-group",
            "IR-4",
            "warning",
            "no incident_response_group: nobody may quarantine nodes or accounts",
            (),
        )


def _service_accounts(policy: Policy) -> Iterator[Finding]:
    for service in policy.service_accounts.values():
        weak = [e for e in service.enctypes if e in WEAK_ENCTYPES]
        if weak:
            yield Finding(
                "weak-enctype",
                "SC-13",
                "warning",
                f"service account {service.name} keeps weak enctypes {', '.join(weak)} "
                "(allow_weak_enctypes = true); move the service to AES",
                ("service_accounts", service.name, "enctypes"),
            )
        if service.rotate_every > LONG_ROTATION:
            yield Finding(
                "long-rotation",
                "IA-5",
                "warning",
                f"service account {service.name} rotates its key every "
                f"{format_duration(service.rotate_every)}, less often than every "
                f"{format_duration(LONG_ROTATION)}",
                ("service_accounts", service.name, "rotate_every"),
            )


RULES: tuple[Rule, ...] = (
    _root_without_mfa,
    _root_without_recording,
    _all_without_maximum,
    _root_and_workloads,
    _management_without_approval,
    _many_sessions,
    _escape_hatches,
    _unbound_roles,
    _unused_command_sets,
    _emergency_groups,
    _service_accounts,
)
