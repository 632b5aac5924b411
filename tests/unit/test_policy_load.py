"""Loading policy files: what an operator sees for each kind of mistake, always as file:line."""

from __future__ import annotations

import tomllib
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.policy.lint import lint
from broker.policy.load import PolicyError, load_policy
from broker.policy.names import POLICY_NAME, cmnd_alias, command
from tests.unit.policy_samples import (
    EXAMPLE_POLICY,
    LAB_GROUPS,
    LAB_POLICY,
    errors,
    line_of,
    load,
)


def edit(old: str, new: str, text: str = LAB_POLICY) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def only_error(text: str, known: tuple[str, ...] | None = None) -> str:
    found = errors(text, known)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------- good files


def test_the_documented_example_is_clean_and_lint_free() -> None:
    loaded = load(EXAMPLE_POLICY, known=LAB_GROUPS)
    policy = loaded.policy
    assert list(policy.zones) == ["access", "management", "compute", "storage"]
    assert len(policy.zones["compute"].nodes) == 512
    assert policy.zone_of["gpu512"] == "compute" and policy.zone_of["prov01"] == "management"
    assert lint(policy) == []


def test_lab_policy_values_and_defaults() -> None:
    policy = load(known=LAB_GROUPS).policy
    gpu = policy.roles["gpu-root"]
    assert gpu.runas == "root" and gpu.all_commands and gpu.mfa and gpu.record_sessions
    assert gpu.default_duration == timedelta(hours=1) and gpu.max_duration == timedelta(hours=4)
    assert gpu.approvals.count == 1 and gpu.approvals.groups == ("hpc-approvers",)
    assert gpu.approvals.expires_after == timedelta(minutes=30)
    assert gpu.approvals.self_approval is False
    assert not gpu.workloads and gpu.max_sessions_per_node == 1
    diag = policy.roles["node-diag"]
    assert diag.command_sets == ("node-diag",) and not diag.all_commands
    assert policy.command_sets["node-diag"].alias == "BROKER_NODE_DIAG"
    slurm = policy.service_accounts["svc-slurm"]
    assert slurm.account == "svc-slurm" and slurm.mode == 0o600
    assert slurm.enctypes == ("aes256-cts-hmac-sha1-96", "aes128-cts-hmac-sha1-96")
    assert slurm.rotate_every == timedelta(days=30) and slurm.keep_old_kvnos == 1


def test_group_names_are_compared_without_case() -> None:
    text = edit('group = "gpu-admins"', 'group = "GPU-Admins"')
    policy = load(text, known=LAB_GROUPS).policy
    assert policy.roles_of_group["gpu-admins"] == ("gpu-root", "node-diag")


def test_a_role_without_a_maximum_is_capped_at_its_default() -> None:
    policy = load(edit('max_duration = "2h"\n', "")).policy
    assert policy.roles["storage-root"].longest == timedelta(minutes=30)


def test_keytab_mode_may_be_an_integer_or_octal_text() -> None:
    for spelled in ("0o640", '"0640"', '"640"', '"0440"'):
        text = edit('owner = "slurm"', f'owner = "slurm"\nmode = {spelled}')
        assert load(text).policy.service_accounts["svc-slurm"].mode in (0o640, 0o440)


# ---------------------------------------------------------------- each error class, located


def test_bad_duration_names_file_line_key_value_and_fix() -> None:
    text = edit('max_duration = "4h"', 'max_duration = "90x"')
    assert only_error(text) == (
        f"policy.toml:{line_of(text, '90x')}: roles.gpu-root.max_duration = '90x': bad "
        "duration '90x'; write it as a number with units d, h, m, s in that order, "
        "e.g. 30m, 2h, 1h30m"
    )


def test_duration_out_of_range() -> None:
    text = edit('max_duration = "8h"', 'max_duration = "60d"')
    assert "roles.node-diag.max_duration = '60d': expected from 1m to 30d" in only_error(text)


def test_unknown_keys_with_a_suggestion() -> None:
    text = edit('max_duration = "8h"', 'max_duraton = "8h"')
    assert only_error(text) == (
        f"policy.toml:{line_of(text, 'max_duraton')}: roles.node-diag.max_duraton: unknown "
        "key; did you mean max_duration? (see docs/policy.md)"
    )
    top = "colour = 1\n" + LAB_POLICY
    assert only_error(top).startswith("policy.toml:1: colour: unknown key;")


def test_unknown_zone_is_located_at_the_array_element() -> None:
    text = edit('zones = ["compute", "storage"]', 'zones = ["compute",\n  "storgae"]')
    assert only_error(text) == (
        f"policy.toml:{line_of(text, 'storgae')}: roles.node-diag.zones[1] = 'storgae': "
        "unknown zone; did you mean storage?"
    )


def test_unknown_group_against_the_directory_snapshot() -> None:
    text = edit('group = "storage-admins"', 'group = "storage-admns"')
    assert load(text).policy  # no snapshot: not checkable, so not an error
    message = only_error(text, known=LAB_GROUPS)
    assert message.startswith(
        f"policy.toml:{line_of(text, 'storage-admns')}: bindings[1].group = 'storage-admns': "
        "unknown group: not in the directory snapshot"
    )
    assert "did you mean storage-admins?" in message


def test_unknown_approver_and_owner_groups() -> None:
    text = edit('groups = ["hpc-approvers"]', 'groups = ["approvers"]')
    text = edit('managed_by = "svc-owners"\n\n', 'managed_by = "owners"\n\n', text)
    found = errors(text, known=LAB_GROUPS)
    assert [f.split(": ")[1] for f in found] == [
        "roles.gpu-root.approvals.groups[0] = 'approvers'",
        "service_accounts.svc-slurm.managed_by = 'owners'",
    ]


def test_a_node_in_two_zones() -> None:
    text = edit('nodes = "stor01"\n\n[command', 'nodes = "stor01,gpu02"\n\n[command')
    assert only_error(text) == (
        f"policy.toml:{line_of(text, 'stor01,gpu02')}: zones.storage.nodes: gpu02 already in "
        "zone compute; a node belongs to exactly one zone"
    )


@pytest.mark.parametrize(
    ("hostlist", "says"),
    [
        ("gpu[01-", "bad node list 'gpu[01-'"),
        ("GPU01", "bad node list 'GPU01'"),
        ("gpu_01", "bad node list 'gpu_01'"),
        ("gpü01", "bad node list 'gpü01'"),
        ("", "bad node list ''"),
    ],
)
def test_bad_hostlists(hostlist: str, says: str) -> None:
    text = edit('nodes = "gpu[01-02]"', f'nodes = "{hostlist}"')
    message = only_error(text)
    zone_nodes = line_of(text, 'kind = "compute"') + 1
    assert message.startswith(f"policy.toml:{zone_nodes}: ")
    assert f"zones.compute.nodes = {hostlist!r}: {says}" in message


def test_role_nodes_must_sit_in_a_zone() -> None:
    text = edit('zones = ["storage"]', 'zones = ["storage"]\nnodes = "stor[01-03]"')
    assert only_error(text).endswith(
        "roles.storage-root.nodes: stor[02-03] in no zone; add them to a zone's nodes first"
    )


def test_unknown_command_set_and_unknown_role() -> None:
    text = edit('commands = ["node-diag"]', 'commands = ["node-diags"]')
    text = edit('roles = ["gpu-root", "node-diag"]', 'roles = ["gpu-rot", "node-diag"]', text)
    assert [e.split(": ", 1)[1] for e in errors(text)] == [
        "roles.node-diag.commands[0] = 'node-diags': unknown command set; did you mean node-diag?",
        "bindings[0].roles[0] = 'gpu-rot': unknown role; did you mean gpu-root?",
    ]


def test_all_inside_an_array_is_refused_with_the_fix() -> None:
    text = edit('commands = "ALL"\nmax_duration = "4h"', 'commands = ["ALL"]\nmax_duration = "4h"')
    assert 'write commands = "ALL" on its own' in only_error(text)


def test_not_valid_toml_is_located_by_the_parser() -> None:
    text = edit('kind = "storage"', 'kind = "storage')
    broken = line_of(text, 'kind = "storage')
    assert only_error(text).startswith(f"policy.toml:{broken}: not valid TOML: ")


@pytest.mark.parametrize(
    ("old", "new", "says"),
    [
        ("login = true", 'login = "yes"', "roles.gpu-root.login = 'yes': expected true or false"),
        (
            'max_duration = "2h"',
            'max_duration = "2h"\nmax_sessions_per_node = 0',
            "roles.storage-root.max_sessions_per_node = 0: expected 1 to 16",
        ),
        (
            'default_duration = "30m"',
            'default_duration = "3h"',
            "roles.storage-root.default_duration = '3h': longer than max_duration",
        ),
        (
            'zones = ["storage"]\n',
            "",
            "roles.storage-root: a role needs zones or nodes (or both)",
        ),
        (
            'max_duration = "2h"',
            'max_duration = "2h"\nrunas = "root;ALL"',
            "roles.storage-root.runas = 'root;ALL': bad Unix name",
        ),
        ("version = 1", "version = 2", "version = 2: unsupported policy format"),
    ],
)
def test_types_ranges_and_shapes(old: str, new: str, says: str) -> None:
    found = errors(edit(old, new))
    assert any(says in line for line in found), found


def test_bindings_must_be_an_array_of_tables() -> None:
    found = errors('bindings = { group = "gpu-admins", roles = ["gpu-root"] }\n')
    assert found == [
        "policy.toml:1: bindings: expected [[bindings]] entries, each with group and roles"
    ]


def test_approvals_never_allow_self_approval() -> None:
    text = edit('expires_after = "30m" }', 'expires_after = "30m", self_approval = true }')
    assert "self-approval is never allowed (AC-5)" in only_error(text)


def test_approvals_need_groups() -> None:
    text = edit('count = 1, groups = ["hpc-approvers"], ', "count = 2, ")
    assert only_error(text).endswith(
        "roles.gpu-root.approvals: count = 2 needs groups: who may approve"
    )


@pytest.mark.parametrize(
    ("mode", "says"),
    [
        ('"0644"', "never be readable or writable by everyone"),
        ("0o606", "never be readable or writable by everyone"),
        ('"0700"', "no execute or special bits"),
        ('"4600"', "no execute or special bits"),
        ('"0660"', "at most group-readable"),
        ('"rw-------"', 'expected an octal mode such as "0600"'),
    ],
)
def test_keytab_modes_that_leak_or_execute_are_refused(mode: str, says: str) -> None:
    text = edit('owner = "slurm"', f'owner = "slurm"\nmode = {mode}')
    message = only_error(text)
    assert message.startswith(
        f"policy.toml:{line_of(text, 'mode =')}: service_accounts.svc-slurm.mode"
    )
    assert says in message


@pytest.mark.parametrize(
    "path", ["etc/krb5.keytab", "/etc/../root/x.keytab", "/etc//krb5.keytab", "/etc/", "/etc/.k"]
)
def test_keytab_paths_must_be_plain_absolute(path: str) -> None:
    text = edit('keytab = "/etc/krb5.keytab"', f'keytab = "{path}"')
    assert "service_accounts.svc-nfs.keytab" in only_error(text)


def test_weak_enctypes_only_when_explicitly_allowed() -> None:
    weak = 'enctypes = ["aes256-cts-hmac-sha1-96", "rc4-hmac"]'
    text = edit('keytab = "/etc/krb5.keytab"', f'keytab = "/etc/krb5.keytab"\n{weak}')
    assert "weak enctype (DES/RC4) refused" in only_error(text)
    allowed = edit(weak, weak + "\nallow_weak_enctypes = true", text)
    service = load(allowed).policy.service_accounts["svc-nfs"]
    assert service.enctypes == ("aes256-cts-hmac-sha1-96", "rc4-hmac")
    alias = edit(weak, 'enctypes = ["aes256-cts"]', text)
    assert "write the full name aes256-cts-hmac-sha1-96" in only_error(alias)
    unknown = edit(weak, 'enctypes = ["rot13"]', text)
    assert "unknown enctype" in only_error(unknown)


def test_service_accounts_must_not_share_principals_or_keytabs() -> None:
    text = edit('principals = ["nfs/stor01.hpc.test"]', 'principals = ["slurm/mgmt01.hpc.test"]')
    assert "already a principal of service_accounts.svc-slurm" in only_error(text)
    text = edit(
        'nodes = "stor01"\nkeytab = "/etc/krb5.keytab"',
        'nodes = "mgmt01"\nkeytab = "/etc/slurm/slurm.keytab"',
    )
    assert "service_accounts.svc-slurm writes the same keytab on mgmt01" in only_error(text)


@pytest.mark.parametrize(
    "bad",
    [
        "nvidia-smi",
        "/usr/bin/",
        "/usr/bin/*",
        "/usr/bin/systemctl restart *",
        "/usr/bin/tee /etc/sudoers,/bin/sh",
        "/usr/bin/env VAR=1",
        '/usr/bin/echo \\"',
        "/usr/bin/../bin/sh",
        "/usr/bin/systemctl  status",
        "/usr/bin/ls\\n/bin/sh",
        "/usr/bin/ls !/bin/sh",
    ],
)
def test_commands_are_absolute_paths_without_sudoers_metacharacters(bad: str) -> None:
    text = edit('"/usr/bin/nvidia-smi -q"', f'"{bad}"')
    assert "command_sets.node-diag.commands[0]" in only_error(text)


@pytest.mark.parametrize(
    "name",
    [
        'gpu\\"root',
        "gpu\\nroot",
        "gpu root",
        "GPU-root",
        "gpu_root",
        "gpu--root",
        "-gpu",
        "gрu-root",  # Cyrillic 'р'
        "gpu-root\\u202e",
        "a" * 49,
    ],
)
def test_hostile_role_names_are_refused_on_one_line(name: str) -> None:
    text = edit("[roles.storage-root]", f'[roles."{name}"]')
    text = text.replace('"storage-root"', f'"{name}"')
    found = errors(text)
    header = line_of(text, '[roles."')
    assert any(e.startswith(f"policy.toml:{header}: roles.") and "bad name" in e for e in found)
    assert all("\n" not in e and "\u202e" not in e for e in found)


def test_every_problem_is_reported_in_file_order() -> None:
    text = edit('max_duration = "4h"', 'max_duration = "90x"')
    text = edit('kind = "access"', 'kind = "acess"', text)
    text = edit('owner = "slurm"', 'owner = "Slurm"', text)
    with pytest.raises(PolicyError) as info:
        load_policy(text, "policy.toml")
    lines = [int(p.split(":")[1]) for p in info.value.message.split("\n")]
    assert len(lines) == 3 and lines == sorted(lines)
    assert info.value.exit_code == 1


# ---------------------------------------------------------------- properties


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=60))
def test_any_role_name_either_passes_the_allow_list_or_is_refused(name: str) -> None:
    key = (
        '"'
        + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}" for c in name)
        + '"'
    )
    if any(0xD800 <= ord(c) <= 0xDFFF for c in name):
        return
    text = LAB_POLICY + f'\n[roles.{key}]\nzones = ["compute"]\ncommands = "ALL"\n'
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return  # the name collides with an existing role: duplicate table
    found = errors(text)
    if POLICY_NAME.fullmatch(name) and len(name) <= 48:
        assert found == []
        assert cmnd_alias(name).replace("_", "").isalnum()
    else:
        assert len(found) == 1 and "bad name" in found[0]
        assert found[0].startswith(f"policy.toml:{line_of(text, '[roles.' + key)}: ")


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=40))
def test_accepted_commands_carry_no_sudoers_metacharacters(text: str) -> None:
    if command(text) is None:
        assert text.startswith("/") and text.isascii() and text.isprintable()
        assert not set(text) & set(",:=\\!\"'#()*?[]{}<>;|&$`~\t\n")
        assert "/../" not in text + "/" and "//" not in text and not text.endswith("/")


@pytest.mark.parametrize("text", ["two\\nlines", "bidi \\u202e trick", "bell \\u0007", "x" * 201])
def test_descriptions_are_one_plain_line(text: str) -> None:
    policy = edit('kind = "access"', f'kind = "access"\ndescription = "{text}"')
    assert "zones.access.description" in only_error(policy)
    assert load(edit('kind = "access"', 'kind = "access"\ndescription = "Zoë\'s login nodes"'))
