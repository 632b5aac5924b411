"""The pam-auth-update profile (pam/pam-configs/broker) as Debian's own pam-auth-update
applies it: run in a private mount namespace over copies of /etc/pam.d, /var/lib/pam and
/usr/share/pam-configs, so the host's PAM configuration is never touched."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.helpers import REPO

MODULE = "/usr/lib/broker/pam_broker.so"
PROFILE = REPO / "pam" / "pam-configs" / "broker"
APPLY = """set -e
mount --bind "$1/pam.d" /etc/pam.d
mount --bind "$1/lib-pam" /var/lib/pam
mount --bind "$1/pam-configs" /usr/share/pam-configs
DEBIAN_FRONTEND=noninteractive pam-auth-update --package --enable broker
cat /etc/pam.d/common-auth; echo ==; cat /etc/pam.d/common-account; echo ==
cat /etc/pam.d/common-session
"""


def test_the_profile_names_the_module_like_the_blocks() -> None:
    text = PROFILE.read_text()
    lines = [line.split() for line in text.splitlines() if line.startswith("\t")]
    assert lines == [
        ["requisite", MODULE],
        ["requisite", MODULE],
        ["optional", MODULE],
    ]
    for block in ("sudo", "sshd", "joblaunch"):
        assert MODULE in (REPO / "pam" / "pam.d" / f"{block}.block").read_text()


def test_pam_auth_update_puts_the_module_after_the_primary_modules(tmp_path: Path) -> None:
    shutil.copytree("/etc/pam.d", tmp_path / "pam.d", symlinks=True)
    shutil.copytree("/var/lib/pam", tmp_path / "lib-pam", symlinks=True)
    shutil.copytree("/usr/share/pam-configs", tmp_path / "pam-configs", symlinks=True)
    shutil.copy(PROFILE, tmp_path / "pam-configs" / "broker")
    done = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", APPLY, "sh", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    auth, account, session = done.stdout.split("==\n")
    for stack, control in ((auth, "requisite"), (account, "requisite"), (session, "optional")):
        rules = [line.split() for line in stack.splitlines() if line and not line.startswith("#")]
        ours = [i for i, rule in enumerate(rules) if MODULE in rule]
        assert len(ours) == 1, stack
        assert rules[ours[0]][1] == control
        # after the primary block (pam_unix and its pam_deny/pam_permit fence)
        unix = [i for i, rule in enumerate(rules) if "pam_unix.so" in rule]
        assert unix and ours[0] > unix[0], stack
    # and the host's own files are as they were
    assert MODULE not in Path("/etc/pam.d/common-account").read_text()
