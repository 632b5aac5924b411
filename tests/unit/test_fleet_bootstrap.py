"""Bootstrap's pure parts: PAM block insertion, node.conf from a policy, the bundle, the key line."""

from __future__ import annotations

import base64
import dataclasses
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.core.errors import RefusedError, UnavailableError, UsageError
from broker.policy.load import load_policy
from broker.provision import bootstrap
from broker.provision.bootstrap import BEGIN, END, insert_block, render_node_conf
from tests.helpers import REPO

DEBIAN_SUDO = Path("/etc/pam.d/sudo").read_text() if Path("/etc/pam.d/sudo").exists() else (
    "#%PAM-1.0\n\nsession    required   pam_limits.so\n\n@include common-auth\n"
    "@include common-account\n@include common-session-noninteractive\n"
)  # fmt: skip
BLOCK = "account  requisite  pam_exec.so quiet seteuid /usr/bin/python3 -I -S /x/pam-hook\n"
POLICY = load_policy((REPO / "tests" / "data" / "lab-policy.toml").read_text(), "lab").policy


def test_the_block_goes_first_after_the_pam_header_and_only_once() -> None:
    once = insert_block(DEBIAN_SUDO, BLOCK)
    lines = once.splitlines()
    start = 1 if DEBIAN_SUDO.startswith("#%PAM") else 0
    assert lines[start : start + 3] == [BEGIN, BLOCK.strip(), END]
    assert lines[:start] == DEBIAN_SUDO.splitlines()[:start]
    assert insert_block(once, BLOCK) == once  # idempotent: a second bootstrap changes nothing
    assert once.replace(f"{BEGIN}\n{BLOCK}{END}\n", "") == DEBIAN_SUDO


def test_an_old_block_is_replaced_not_duplicated_and_moved_to_the_top() -> None:
    old = "auth sufficient pam_old_broker.so\n"
    text = "#%PAM-1.0\n@include common-auth\n" + f"{BEGIN}\n{old}{END}\n" + "@include common-x\n"
    new = insert_block(text, BLOCK)
    assert new == f"#%PAM-1.0\n{BEGIN}\n{BLOCK}{END}\n@include common-auth\n@include common-x\n"
    assert new.count(BEGIN) == 1 and "pam_old_broker" not in new


def test_missing_files_get_the_block_and_the_tail_and_odd_endings_are_kept() -> None:
    assert insert_block(None, BLOCK, "@include common-account\n") == (
        f"{BEGIN}\n{BLOCK}{END}\n@include common-account\n"
    )
    assert insert_block("@include common-auth", BLOCK) == (
        f"{BEGIN}\n{BLOCK}{END}\n@include common-auth\n"
    )
    assert insert_block("", BLOCK) == f"{BEGIN}\n{BLOCK}{END}\n"


@pytest.mark.parametrize(
    "text",
    [
        f"{BEGIN}\nauth x\n",
        f"auth x\n{END}\n",
        f"{BEGIN}\n{BEGIN}\n{END}\n",
    ],
)
def test_broken_markers_are_refused_rather_than_guessed(text: str) -> None:
    with pytest.raises(RefusedError):
        insert_block(text, BLOCK)


def test_node_conf_from_the_lab_policy() -> None:
    # gpu-root (login = true) covers the compute zone; nothing with login covers storage.
    assert render_node_conf(POLICY, "gpu01", "slurm").splitlines()[1:] == [
        "node=gpu01",
        "login_gated=1",
        "break_glass_group=break-glass",
        "joblaunch_service=slurm",
    ]
    assert "login_gated=0" in render_node_conf(POLICY, "stor01", "slurm")
    assert "login_gated=0" in render_node_conf(POLICY, "mgmt01", "slurm")
    assert "login_gated=0" in render_node_conf(POLICY, "not-in-policy", "slurm")


def load_node_program() -> ModuleType:
    spec = importlib.util.spec_from_file_location("broker_node", REPO / "pam" / "broker_node.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_node_program_reads_the_node_conf_bootstrap_writes(tmp_path: Path) -> None:
    node_program = load_node_program()
    etc = tmp_path / "etc" / "broker"
    etc.mkdir(parents=True)
    for directory in (tmp_path, tmp_path / "etc", etc):
        directory.chmod(0o755)
    conf = etc / "node.conf"
    conf.write_text(render_node_conf(POLICY, "gpu01", "slurm"))
    conf.chmod(0o644)
    parsed = node_program.load_conf(node_program.Paths(str(tmp_path)))
    assert not isinstance(parsed, str), parsed
    assert (parsed.node, parsed.login_gated) == ("gpu01", True)
    assert (parsed.break_glass_group, parsed.joblaunch_service) == ("break-glass", "slurm")


def test_node_conf_refuses_what_the_node_could_not_use() -> None:
    with pytest.raises(UsageError, match="joblaunch_service"):
        render_node_conf(POLICY, "gpu01", "sshd")
    with pytest.raises(UsageError, match="joblaunch_service"):
        render_node_conf(POLICY, "gpu01", "slurm\nlogin_gated=0")
    with pytest.raises(UsageError, match="bad node name"):
        render_node_conf(POLICY, "gpu01\nlogin_gated=0", "slurm")
    spaced = dataclasses.replace(POLICY, break_glass_group="domain admins")
    with pytest.raises(RefusedError, match="break_glass_group"):
        render_node_conf(spaced, "gpu01", "slurm")
    assert "break_glass_group=\n" in render_node_conf(
        dataclasses.replace(POLICY, break_glass_group=None), "gpu01", "slurm"
    )


def key_line() -> str:
    raw = (
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return f"broker-grant-key-v1 {base64.b64encode(raw).decode()}\n"


def test_the_grant_key_line_is_checked() -> None:
    line = key_line()
    assert bootstrap.check_key_line(line) == line
    assert bootstrap.check_key_line(line.rstrip("\n")) == line
    for bad in ("", line.replace("v1", "v2"), line[:-3] + "\n", line + "extra\n", "x " + line):
        with pytest.raises(UsageError):
            bootstrap.check_key_line(bad)


def test_the_bundle_comes_from_pam_and_refuses_to_be_incomplete(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="missing") as info:
        bootstrap.load_bundle(tmp_path)
    assert "broker_node.py" in str(info.value) and "sudo.block" in str(info.value)
    bundle = bootstrap.load_bundle()
    assert bootstrap.pam_source_dir() == REPO / "pam"
    remote = {path: mode for path, _data, mode in bundle.files}
    assert remote == {
        "/usr/libexec/broker/broker_node.py": 0o644,
        "/usr/libexec/broker/pam-hook": 0o755,
        "/usr/libexec/broker/broker-node": 0o755,
        "/usr/libexec/broker/broker_keytab.py": 0o644,
        "/usr/libexec/broker/broker-keytab": 0o755,
        "/usr/libexec/broker/broker-relay-flush": 0o755,
    }
    for block in bundle.blocks.values():
        assert block.startswith(BEGIN + "\n") and block.endswith(END + "\n")
        assert "/usr/libexec/broker/pam-hook" in block


def test_pam_services_and_directories_follow_the_contract() -> None:
    assert bootstrap.pam_services("slurm") == [
        ("sudo", "sudo", True),
        ("sudo-i", "sudo", False),
        ("sshd", "sshd", True),
        ("slurm", "joblaunch", False),
    ]
    modes = dict(bootstrap.NODE_DIRS)
    assert modes["/var/lib/broker/grants"] == 0o700 and modes["/etc/broker"] == 0o755
    assert all(m == 0o700 for p, m in modes.items() if p.startswith(("/var/", "/var/log")))
    assert os.path.dirname(bootstrap.NODE_PY) == bootstrap.LIBEXEC
