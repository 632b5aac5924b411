"""The broker host package's promises that hold without building it (packaging/broker/ci-check.sh
builds, installs and purges it for real in deploy/test.sh): every unit in deploy/systemd is
shipped and stopped on removal, the maintainer scripts are valid sh that never delete the
state, and no package of the lab is a runtime dependency."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from fnmatch import fnmatch
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "packaging" / "broker"
SCRIPTS = ("postinst", "prerm", "postrm")
UNIT_SUFFIXES = (".service", ".timer", ".path", ".socket", ".mount", ".target")
LAB_ONLY = {
    "samba",
    "samba-ad-dc",
    "samba-ad-provision",
    "winbind",
    "gcc",
    "pamtester",
    "clang",
    "postgresql-15",
}


def units() -> list[str]:
    return sorted(
        p.name for p in (ROOT / "deploy" / "systemd").iterdir() if p.suffix in UNIT_SUFFIXES
    )


def build_script() -> str:
    return (PKG / "build.sh").read_text()


@pytest.mark.parametrize("name", SCRIPTS)
def test_maintainer_scripts_are_valid_sh_and_stop_on_error(name: str) -> None:
    script = PKG / "debian" / name
    sh = shutil.which("sh") or "/bin/sh"
    done = subprocess.run([sh, "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert re.search(r"^set -e$", script.read_text(), re.M), f"{name} must stop at the first error"
    assert script.stat().st_mode & 0o111, f"{name} must be executable"


def test_every_unit_is_shipped() -> None:
    """A unit added to deploy/systemd without a glob in build.sh would silently not install."""
    line = next(x for x in build_script().splitlines() if "deploy/systemd/*.service" in x)
    globs = [w.removeprefix("deploy/systemd/") for w in line.split() if "deploy/systemd/*" in w]
    missing = [u for u in units() if not any(fnmatch(u, g) for g in globs)]
    assert not missing, f"build.sh does not install {missing}"


def test_removal_stops_and_disables_every_unit() -> None:
    text = (PKG / "debian" / "prerm").read_text()
    found = re.search(r'UNITS="([^"]*)"', text, re.S)
    assert found, "prerm names the units it stops in UNITS"
    assert set(found.group(1).split()) == set(units())


@pytest.mark.parametrize("name", SCRIPTS)
def test_no_maintainer_script_deletes_the_state(name: str) -> None:
    """Purge keeps /var/lib/broker and /etc/broker (the audit chain and the keys): the only
    thing a script may delete is the venv under /opt (and byte code inside it)."""
    for line in (PKG / "debian" / name).read_text().splitlines():
        if line.split()[:1] not in (["rm"], ["find"], ["rmdir"], ["userdel"], ["groupdel"]):
            continue
        words = shlex.split(line, comments=True)
        assert words[0] in {"rm", "find"}, f"{name}: {line.strip()}"
        paths = [w for w in words if w.startswith("/")]
        assert paths, f"{name}: {line.strip()}"
        assert all(p == "/opt/hpc-access-broker" for p in paths), f"{name}: {line.strip()}"


def test_no_lab_package_is_a_runtime_dependency() -> None:
    line = next(x for x in build_script().splitlines() if x.startswith("depends="))
    control = (PKG / "debian" / "control.in").read_text()
    fields = [
        m.group(1) for m in re.finditer(r"^(?:Depends|Recommends|Suggests): (.*)$", control, re.M)
    ]
    named = {
        re.split(r"[ (]", part.strip())[0]
        for text in [line.partition("=")[2].strip('"'), *fields]
        for part in text.split(",")
    }
    assert not named & LAB_ONLY, named & LAB_ONLY
    assert {"sudo", "stunnel4", "systemd", "libpq5"} <= named  # libpq5: psycopg (ctypes)
