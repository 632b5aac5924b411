"""Bootstrap's pure parts: PAM block insertion, node.conf from a policy, the bundle, the key line."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paramiko
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.core.errors import RefusedError, UnavailableError, UsageError
from broker.policy.load import load_policy
from broker.provision import bootstrap, bundle
from broker.provision.bundle import BEGIN, END, insert_block, render_node_conf
from tests.helpers import REPO, load_node_package
from tests.unit.local_sftp import local_sftp

DEBIAN_SUDO = Path("/etc/pam.d/sudo").read_text() if Path("/etc/pam.d/sudo").exists() else (
    "#%PAM-1.0\n\nsession    required   pam_limits.so\n\n@include common-auth\n"
    "@include common-account\n@include common-session-noninteractive\n"
)  # fmt: skip
BLOCK = "account  requisite  /usr/lib/broker/pam_broker.so\n"
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


def test_the_node_program_reads_the_node_conf_bootstrap_writes(tmp_path: Path) -> None:
    node_program = load_node_package()
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


def test_the_grant_key_file_is_checked() -> None:
    line = key_line()
    assert bundle.check_key_file(line) == line
    assert bundle.check_key_file(line.rstrip("\n")) == line
    assert bundle.check_key_file(line + key_line()).count("\n") == 2  # a broker and its peer
    for bad in ("", line.replace("v1", "v2"), line[:-3] + "\n", line + "extra\n", "x " + line):
        with pytest.raises(UsageError):
            bundle.check_key_file(bad)


def test_the_bundle_comes_from_pam_and_refuses_to_be_incomplete(tmp_path: Path) -> None:
    with pytest.raises(UnavailableError, match="missing") as info:
        bundle.load_bundle(tmp_path)
    assert "broker_node/__init__.py" in str(info.value) and "sudo.block" in str(info.value)
    loaded = bundle.load_bundle()
    assert bundle.pam_source_dir() == REPO / "pam"
    remote = {path: mode for path, _data, mode in loaded.files}
    package = REPO / "pam" / "broker_node"
    assert remote == {
        **{f"/usr/libexec/broker/broker_node/{p.name}": 0o644 for p in package.glob("*.py")},
        "/usr/libexec/broker/broker-node": 0o755,
        "/usr/libexec/broker/broker_keytab.py": 0o644,
        "/usr/libexec/broker/broker_keytab_gss.py": 0o644,
        "/usr/libexec/broker/broker-keytab": 0o755,
        "/usr/libexec/broker/broker-relay-flush": 0o755,
        "/usr/lib/broker/pam_broker.so": 0o644,
        "/usr/libexec/broker/broker-grant-check": 0o755,
        "/etc/systemd/system/broker-node-watch.service": 0o644,
    }
    for block in loaded.blocks.values():
        assert block.startswith(BEGIN + "\n") and block.endswith(END + "\n")
        assert "/usr/lib/broker/pam_broker.so" in block and "pam_exec" not in block
    assert loaded.compat is not None and loaded.compat.machine == os.uname().machine


def test_without_a_built_module_bootstrap_says_how_to_build_it(tmp_path: Path) -> None:
    shutil.copytree(REPO / "pam", tmp_path / "pam", ignore=shutil.ignore_patterns("build"))
    with pytest.raises(UnavailableError, match="the PAM module is not built") as info:
        bundle.load_bundle(tmp_path / "pam")
    assert "make -C" in (info.value.fix or "")


@pytest.mark.parametrize(
    ("machine", "libc", "fits"),
    [
        ("x86_64\n", "glibc 2.36\n", True),
        ("x86_64", "glibc 2.34", True),
        ("x86_64", "glibc 2.28", False),
        ("aarch64", "glibc 2.36", False),
        ("x86_64", "", False),  # musl or no getconf: not glibc
        ("x86_64", "glibc 2.x", False),
    ],
)
def test_the_module_goes_only_where_it_can_load(machine: str, libc: str, fits: bool) -> None:
    compat = bundle.Compat.parse("machine=x86_64\nglibc=2.34\nneeds=libc.so.6 libpam.so.0\n")
    assert compat.glibc == (2, 34) and compat.needs == ("libc.so.6", "libpam.so.0")
    problem = compat.problem(machine, libc)
    assert (problem is None) == fits
    if not fits:
        assert problem is not None and "make -C pam install" in problem


def test_pam_services_and_directories_follow_the_contract() -> None:
    assert bundle.pam_services("slurm") == [
        ("sudo", "sudo", True),
        ("sudo-i", "sudo", False),
        ("sshd", "sshd", True),
        ("slurm", "joblaunch", False),
    ]
    modes = dict(bundle.NODE_DIRS)
    assert modes["/var/lib/broker/grants"] == 0o700 and modes["/etc/broker"] == 0o755
    assert all(m == 0o700 for p, m in modes.items() if p.startswith(("/var/", "/var/log")))
    assert os.path.dirname(bundle.NODE_PKG) == bundle.LIBEXEC
    assert modes[bundle.NODE_PKG] == 0o755


def test_every_module_of_the_node_package_is_installed_init_last() -> None:
    package = REPO / "pam" / "broker_node"
    assert sorted(bundle.NODE_MODULES) == sorted(p.stem for p in package.glob("*.py"))
    assert bundle.NODE_MODULES[-1] == "__init__"
    installed = [path for _name, path, _mode in bundle.PROGRAM_FILES]
    assert bundle.STALE_FILES[0] not in installed
    assert installed.index(f"{bundle.NODE_PKG}/__init__.py") == len(bundle.NODE_MODULES) - 1
    # a wheel ships them too (pyproject's data-files), for bootstrap from an installation
    data_files = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = data_files["data-files"]["share/hpc-access-broker/pam/broker_node"]
    assert sorted(shipped) == sorted(f"pam/broker_node/{p.name}" for p in package.glob("*.py"))


class FilesOnly:
    """Just what _compiled and _remove_stale use of an SFTP client, over a set of paths."""

    def __init__(self, paths: set[str]) -> None:
        self.paths = paths

    def listdir(self, directory: str) -> list[str]:
        prefix = directory + "/"
        names = [p[len(prefix) :] for p in self.paths if p.startswith(prefix)]
        if not names:
            raise FileNotFoundError(directory)
        return [name for name in names if "/" not in name]

    def lstat(self, path: str) -> object:
        if path not in self.paths:
            raise FileNotFoundError(path)
        return object()

    def remove(self, path: str) -> None:
        self.paths.remove(path)


def test_an_older_single_file_node_program_goes_and_every_module_is_compiled() -> None:
    lib, package = bundle.LIBEXEC, bundle.NODE_PKG
    node = FilesOnly(
        {
            f"{lib}/broker_node.py",
            f"{lib}/__pycache__/broker_node.cpython-39.pyc",
            f"{lib}/broker_keytab.py",
            f"{lib}/__pycache__/broker_keytab.cpython-39.pyc",
            *(path for _name, path, _mode in bundle.PROGRAM_FILES),
        }
    )
    sftp: Any = node
    changed: list[str] = []
    bootstrap._remove_stale(sftp, changed)
    assert changed == [
        f"removed {lib}/broker_node.py",
        f"removed {lib}/__pycache__/broker_node.cpython-39.pyc",
    ]
    assert f"{lib}/__pycache__/broker_keytab.cpython-39.pyc" in node.paths
    bootstrap._remove_stale(sftp, changed)
    assert len(changed) == 2, "a second run finds nothing to remove"
    assert not bootstrap._compiled(sftp)
    for name in bundle.NODE_MODULES[:-1]:
        node.paths.add(f"{package}/__pycache__/{name}.cpython-39.pyc")
    assert not bootstrap._compiled(sftp), "__init__ has no .pyc yet"
    node.paths.add(f"{package}/__pycache__/__init__.cpython-39.pyc")
    assert not bootstrap._compiled(sftp), "broker_keytab_gss has no .pyc yet"
    node.paths.add(f"{lib}/__pycache__/broker_keytab_gss.cpython-39.pyc")
    assert bootstrap._compiled(sftp)


def test_the_python_hook_goes_once_the_blocks_name_the_module() -> None:
    lib, package = bundle.LIBEXEC, bundle.NODE_PKG
    left = {
        f"{lib}/pam-hook",
        f"{package}/hook.py",
        f"{package}/ed25519.py",
        f"{package}/__pycache__/hook.cpython-39.pyc",
        f"{package}/__pycache__/ed25519.cpython-39.pyc",
        f"{package}/__pycache__/ed25519.cpython-39.opt-1.pyc",
    }
    kept = {f"{package}/grants.py", f"{package}/__pycache__/grants.cpython-39.pyc"}
    node = FilesOnly(left | kept)
    sftp: Any = node
    changed: list[str] = []
    bootstrap._remove_obsolete(sftp, changed)
    assert sorted(changed) == sorted(f"removed {path}" for path in left)
    assert node.paths == kept
    bootstrap._remove_obsolete(sftp, changed)
    assert len(changed) == len(left), "a second run finds nothing to remove"
    assert not {"hook", "ed25519"} & set(bundle.NODE_MODULES)
    assert all("pam-hook" not in name for name, _path, _mode in bundle.PROGRAM_FILES)


class LocalNode:
    """The pool's two doors onto a node, served locally: a real SFTP conversation over this
    machine's files (tests/unit/local_sftp.py) and commands run here as argv lists."""

    @contextlib.contextmanager
    def sftp(self, target: object) -> Iterator[paramiko.SFTPClient]:
        with local_sftp() as (client, _recorder):
            yield client

    def run(self, target: object, argv: list[str]) -> Any:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        return dataclasses.make_dataclass("Ran", ["ok", "error", "stderr"])(
            done.returncode == 0, None, done.stderr
        )


def _dlopen_probe(staged: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "import ctypes, os, sys; ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW)",
        staged,
    ]


def test_a_module_that_cannot_load_on_the_node_never_replaces_the_live_one(
    tmp_path: Path,
) -> None:
    tmp_path.chmod(0o755)  # as /usr/lib/broker is: bootstrap leaves it alone
    live = tmp_path / "pam_broker.so"
    working = (REPO / "pam" / "build" / "pam_broker.so").read_bytes()
    live.write_bytes(working)
    probes = {str(live): _dlopen_probe}
    pool: Any = LocalNode()
    changed: list[str] = []
    with pytest.raises(RefusedError, match="does not run on the node") as info:
        bootstrap.install_built(
            pool, None, [(str(live), b"not an ELF file", 0o644)], changed, probes
        )
    assert "nothing was replaced" in info.value.message and "libsodium" in (info.value.fix or "")
    assert live.read_bytes() == working and changed == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pam_broker.so"], "staged file removed"
    # a build that loads goes in, through its staged name
    live.write_bytes(b"an older module")
    bootstrap.install_built(pool, None, [(str(live), working, 0o644)], changed, probes)
    assert live.read_bytes() == working and changed == [f"installed {live}"]
    assert stat.S_IMODE(live.stat().st_mode) == 0o644
    # nothing to do the second time
    bootstrap.install_built(pool, None, [(str(live), working, 0o644)], changed, probes)
    assert changed == [f"installed {live}"]
