"""Lint: findings carry the control they protect; root without MFA or recording is an error."""

from __future__ import annotations

import pytest

from broker.policy import names
from broker.policy.lint import Finding, lint
from tests.unit.policy_samples import LAB_POLICY, line_of, load


def findings(text: str) -> list[Finding]:
    return lint(load(text).policy)


def by_rule(text: str) -> dict[str, Finding]:
    return {f.rule: f for f in findings(text)}


def test_the_lab_policy_has_no_errors_or_warnings() -> None:
    assert [f for f in findings(LAB_POLICY) if f.severity != "note"] == []


def test_root_without_mfa_is_an_ia2_error_naming_the_zone() -> None:
    text = LAB_POLICY.replace('default_duration = "30m"', 'default_duration = "30m"\nmfa = false')
    found = by_rule(text)["root-without-mfa"]
    assert (found.control, found.severity) == ("IA-2", "error")
    assert found.text().startswith("error IA-2: root without MFA on zone storage")
    loaded = load(text)
    assert loaded.lines.line(found.path) == line_of(text, "mfa = false")


def test_root_without_session_recording_is_an_au14_error() -> None:
    text = LAB_POLICY.replace('max_duration = "4h"', 'max_duration = "4h"\nrecord_sessions = false')
    found = by_rule(text)["root-without-recording"]
    assert (found.control, found.severity) == ("AU-14", "error")
    assert "role gpu-root runs as root without session recording on zone compute" in found.message


def test_non_root_elevation_without_mfa_or_recording_is_a_warning() -> None:
    text = LAB_POLICY.replace(
        'commands = ["node-diag"]',
        'commands = ["node-diag"]\nrunas = "slurm"\nmfa = false\nrecord_sessions = false',
    )
    found = by_rule(text)
    assert found["elevation-without-mfa"].severity == "warning"
    assert found["elevation-without-recording"].severity == "warning"
    assert "zones compute, storage" in found["elevation-without-mfa"].message


def test_all_as_root_without_a_maximum_is_an_ac6_warning() -> None:
    text = LAB_POLICY.replace('max_duration = "4h"\n', "")
    found = by_rule(text)["all-without-maximum"]
    assert (found.control, found.severity) == ("AC-6", "warning")
    assert found.message.startswith(
        "role gpu-root grants ALL as root with no maximum duration (requests are capped at "
        "its default, 1h)"
    )


def test_long_root_workloads_sessions_and_management_without_approval() -> None:
    text = LAB_POLICY.replace('max_duration = "4h"', 'max_duration = "1d"\nworkloads = true')
    text = text.replace(
        'zones = ["storage"]', 'zones = ["storage", "management"]\nmax_sessions_per_node = 4'
    )
    found = by_rule(text)
    assert found["long-root"].control == "AC-6" and "up to 1d" in found["long-root"].message
    assert found["root-and-workloads"].control == "AC-6"
    assert found["many-sessions"].control == "AC-10"
    assert found["management-without-approval"].control == "CM-5"
    assert "management zone management" in found["management-without-approval"].message


def test_shells_and_editors_in_a_command_set_are_as_wide_as_all() -> None:
    text = LAB_POLICY.replace(
        '"/usr/bin/nvidia-smi -q"', '"/usr/bin/nvidia-smi -q", "/usr/bin/vim"'
    )
    found = by_rule(text)["escape-hatch"]
    assert found.control == "AC-6" and "allows vim" in found.message
    assert found.path == ("command_sets", "node-diag", "commands", 1)


def test_emergency_groups_missing_or_bound_to_everyday_roles() -> None:
    text = LAB_POLICY.replace('break_glass_group = "break-glass"\n', "")
    text = text.replace('incident_response_group = "incident-response"\n', "")
    found = by_rule(text)
    assert found["no-break-glass-group"].severity == "warning"
    assert found["no-incident-response-group"].control == "IR-4"
    bound = LAB_POLICY + '\n[[bindings]]\ngroup = "break-glass"\nroles = ["gpu-root"]\n'
    assert by_rule(bound)["break-glass-bound"].control == "AC-6"


def test_weak_enctypes_and_slow_rotation_warn() -> None:
    text = LAB_POLICY.replace(
        'keytab = "/etc/krb5.keytab"',
        'keytab = "/etc/krb5.keytab"\nenctypes = ["rc4-hmac"]\nallow_weak_enctypes = true\n'
        'rotate_every = "180d"',
    )
    found = by_rule(text)
    assert found["weak-enctype"].control == "SC-13" and "rc4-hmac" in found["weak-enctype"].message
    assert found["long-rotation"].control == "IA-5"


def test_notes_for_unbound_roles_and_unused_command_sets() -> None:
    text = LAB_POLICY + (
        '\n[command_sets.spare]\ncommands = ["/usr/bin/true"]\n'
        '\n[roles.orphan]\nzones = ["access"]\ncommands = ["node-diag"]\nmax_duration = "1h"\n'
    )
    found = by_rule(text)
    assert found["unbound-role"].severity == "note" and found["unbound-role"].control == "AC-2"
    assert found["unused-command-set"].control == "CM-7"


def test_errors_come_first() -> None:
    text = LAB_POLICY.replace('max_duration = "4h"\n', "mfa = false\n")
    severities = [f.severity for f in findings(text)]
    assert severities == sorted(severities, key=["error", "warning", "note"].index)
    assert severities[0] == "error"


@pytest.mark.parametrize(
    ("command", "why"),
    [
        ("/home/alice/sudoedit", "privilege tools"),
        ("/usr/bin/sudo -u root id", "privilege tools"),
        ("/usr/bin/su", "privilege tools"),
        ("/tmp/fix", "outside the system directories"),
        ("/home/alice/bin/fix --all", "outside the system directories"),
    ],
)
def test_commands_that_are_sudo_itself_or_user_writable_are_refused(command: str, why: str) -> None:
    message = names.command(command)
    assert message is not None and why in message


def test_versioned_interpreters_and_argument_free_tools_are_flagged() -> None:
    text = LAB_POLICY.replace(
        'commands = ["/usr/bin/nvidia-smi -q", "/usr/bin/systemctl --no-pager status slurmd"]',
        'commands = ["/usr/bin/python3.11", "/usr/sbin/dmidecode", "/usr/sbin/dmidecode -t memory"]',
    )
    assert text != LAB_POLICY
    found = [
        f.text() for f in lint(load(text).policy) if "escape" in f.rule or "allows" in f.text()
    ]
    assert any("python3.11" in f for f in found)
    assert any("dmidecode with any arguments" in f for f in found)
    assert not any("dmidecode -t" in f for f in found)
