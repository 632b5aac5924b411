"""The hpc-access-broker-node package (packaging/node/) as bootstrap and the node see it:
the digest build.sh puts in the marker is the one this broker computes, a node whose package
carries this broker's node files is only enrolled, any other package is refused before
anything is written, the node program reports who installed it, and the package's prerm
will not take the module away from PAM files that still name it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from broker.core.errors import RefusedError
from broker.fleet.status import parse_status
from broker.provision import bootstrap, bundle, packaged
from tests.helpers import REPO, load_node_module
from tests.unit.test_fleet_bootstrap import LocalNode
from tests.unit.test_fleet_nodeprog import node_tree, reply, run_status

DIGEST = packaged.node_digest(REPO / "pam")


def marker(version: str = "0.1.0", digest: str | None = DIGEST, **extra: str) -> bytes:
    lines = ["# comment", "package=hpc-access-broker-node", f"version={version}"]
    lines += [f"digest={digest}", *(f"{k}={v}" for k, v in extra.items())]
    return ("\n".join(lines) + "\n").encode()


def test_build_sh_and_the_broker_agree_on_the_digest_of_the_node_files() -> None:
    done = subprocess.run(
        ["bash", str(REPO / "packaging" / "node" / "build.sh"), "--digest"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert DIGEST is not None and len(DIGEST) == 64
    assert done.stdout.strip() == DIGEST == bundle.load_bundle().digest


def test_the_digest_follows_every_node_file_and_needs_the_c_sources(tmp_path: Path) -> None:
    copy = tmp_path / "pam"
    shutil.copytree(REPO / "pam", copy, ignore=shutil.ignore_patterns("build", "fuzz"))
    assert packaged.node_digest(copy) == DIGEST
    contract = copy / "broker_node" / "contract.py"
    contract.write_text(contract.read_text() + "# changed\n")
    assert packaged.node_digest(copy) not in (None, DIGEST)
    shutil.rmtree(copy / "src")
    assert packaged.node_digest(copy) is None


def test_without_the_package_bootstrap_installs_everything_itself() -> None:
    assert packaged.package_owns_program(None, DIGEST, "0.1.0") is False


def test_a_package_built_from_these_node_files_keeps_them() -> None:
    assert packaged.package_owns_program(marker(), DIGEST, "0.1.0") is True
    # the version number alone decides nothing: the files do
    assert packaged.package_owns_program(marker("0.0.9"), DIGEST, "0.1.0") is True


def test_a_package_of_other_node_files_is_refused_with_what_to_install() -> None:
    with pytest.raises(RefusedError) as info:
        packaged.package_owns_program(marker("0.0.9", "0" * 64), DIGEST, "0.1.0")
    assert "hpc-access-broker-node 0.0.9" in info.value.message
    assert "nothing was written" in info.value.message
    assert "0.1.0" in (info.value.fix or "")
    with pytest.raises(RefusedError, match="no pam/src"):
        packaged.package_owns_program(marker(), None, "0.1.0")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        marker().replace(b"hpc-access-broker-node", b"other-package"),
        marker(version="1.0; rm -rf /"),
        marker(digest="A" * 64),
        marker(digest="0" * 63),
        marker(extra="1"),
        marker() + b"version=0.2\n",
        marker() + b"no equals sign\n",
        b"\xff\xfe" + marker(),
    ],
)
def test_an_unreadable_marker_is_refused_not_guessed(data: bytes) -> None:
    with pytest.raises(RefusedError, match="PACKAGED is unreadable") as info:
        packaged.package_owns_program(data, DIGEST, "0.1.0")
    assert "apt install --reinstall hpc-access-broker-node" in (info.value.fix or "")


def test_bootstrap_reads_the_marker_from_the_node(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node: Any = LocalNode()
    loaded = bundle.load_bundle()
    where = tmp_path / "PACKAGED"
    monkeypatch.setattr(packaged, "MARKER", str(where))
    assert bootstrap._package_owns(node, None, loaded) is False
    where.write_bytes(marker())
    assert bootstrap._package_owns(node, None, loaded) is True
    where.write_bytes(marker(digest="f" * 64))
    with pytest.raises(RefusedError, match="other node files"):
        bootstrap._package_owns(node, None, loaded)
    where.write_bytes(marker() + b"#" * packaged.MAX_MARKER)
    with pytest.raises(RefusedError):
        bootstrap._package_owns(node, None, loaded)


def test_the_node_program_says_who_installed_it(tmp_path: Path) -> None:
    status = load_node_module("status")
    paths = load_node_module("contract").Paths(root=str(tmp_path))
    assert status._installed_by(paths) == {"installed_by": "push", "package_version": None}
    (tmp_path / "usr" / "lib" / "broker").mkdir(parents=True)
    (tmp_path / "usr" / "lib" / "broker" / "PACKAGED").write_bytes(marker("0.1.0+site1"))
    assert status._installed_by(paths) == {
        "installed_by": "package",
        "package_version": "0.1.0+site1",
    }
    (tmp_path / "usr" / "lib" / "broker" / "PACKAGED").write_bytes(marker("x\x1b[31m"))
    found = status._installed_by(paths)
    assert found["installed_by"] == "package" and found["package_version"] is None
    assert "unreadable" in found["package_problem"]


PRERM = """set -e
mount --bind "$1/pam.d" /etc/pam.d
mount --bind "$1/lib-pam" /var/lib/pam
mount --bind "$1/pam-configs" /usr/share/pam-configs
mount --bind "$1/run-systemd" /run/systemd
DEBIAN_FRONTEND=noninteractive pam-auth-update --package --enable broker
grep -c pam_broker.so /etc/pam.d/common-account
sh "$1/prerm" remove && echo removed || echo refused
grep -c pam_broker.so /etc/pam.d/common-account || true
"""


@pytest.mark.parametrize("blocked", [True, False])
def test_prerm_keeps_the_module_while_a_pam_file_names_it(tmp_path: Path, blocked: bool) -> None:
    """Run as dpkg would on `apt remove`, in a private mount namespace over copies of the
    PAM configuration (and no systemd), so this machine is never touched."""
    shutil.copytree("/etc/pam.d", tmp_path / "pam.d", symlinks=True)
    shutil.copytree("/var/lib/pam", tmp_path / "lib-pam", symlinks=True)
    shutil.copytree("/usr/share/pam-configs", tmp_path / "pam-configs", symlinks=True)
    shutil.copy(REPO / "pam" / "pam-configs" / "broker", tmp_path / "pam-configs" / "broker")
    shutil.copy(REPO / "packaging" / "node" / "prerm", tmp_path / "prerm")
    (tmp_path / "run-systemd").mkdir()
    sudo = tmp_path / "pam.d" / "sudo"
    text = sudo.read_text() if sudo.exists() else "#%PAM-1.0\n"
    if blocked:
        sudo.write_text(
            bundle.insert_block(text, "account requisite /usr/lib/broker/pam_broker.so")
        )
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRERM, "sh", str(tmp_path)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    before, verdict, after = done.stdout.split()
    assert before == "1"
    if blocked:
        assert (verdict, after) == ("refused", "1")
        assert done.stderr.count("\n") == 1 and "/etc/pam.d/sudo" in done.stderr
        assert "# BEGIN broker" in done.stderr
    else:
        assert (verdict, after) == ("removed", "0"), done.stderr


def test_broker_node_status_shows_the_package_from_the_real_program(tmp_path: Path) -> None:
    """The repository's node program over a packaged node tree, parsed as the broker does."""
    root = node_tree(tmp_path, bootstrapped=True)
    answer, sent, received = run_status(root)
    assert parse_status(answer, sent, received, 60).installed_by == "push"
    (root / "usr" / "lib" / "broker").mkdir(parents=True, exist_ok=True)
    (root / "usr" / "lib" / "broker" / "PACKAGED").write_bytes(marker("0.1.0"))
    answer, sent, received = run_status(root)
    assert parse_status(answer, sent, received, 60).installed_by == "package 0.1.0"


@pytest.mark.parametrize(
    ("fields", "shown"),
    [
        ({"installed_by": "package", "package_version": "0.2.0~rc1"}, "package 0.2.0~rc1"),
        ({"installed_by": "package", "package_version": "1\x1b[2J"}, "package"),
        ({"installed_by": "package; rm -rf /"}, None),
        ({}, None),
    ],
)
def test_the_broker_believes_only_allow_listed_installers(
    fields: dict[str, Any], shown: str | None
) -> None:
    assert parse_status(reply(**fields), 1000.0, 1000.2, max_skew=60).installed_by == shown
