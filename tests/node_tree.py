"""A node's files under a temporary root for the node program's tests, checked by the real
broker-grant-check (pam/build, from `make -C pam`): the C code the module runs."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.grants.grantfile import GrantFile, encode_signed, public_key_line
from tests.helpers import load_node_package

PAM_DIR = Path(__file__).resolve().parents[1] / "pam"
CHECKER = PAM_DIR / "build" / "broker-grant-check"
NODE = "gpu01"

bn = load_node_package()


def now_s() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def bn_now() -> int:
    return int(datetime.now(UTC).timestamp())


def checker() -> str:
    """The built checker; a missing one fails the test (it is built by `make -C pam`)."""
    assert CHECKER.is_file(), f"{CHECKER} is missing: run make -C pam (deploy/install-deps.sh)"
    return str(CHECKER)


class NodeTree:
    """A node's files under a temporary root, laid out as bootstrap leaves them."""

    def __init__(self, root: Path, *, gated: bool = True, group: str = "break-glass") -> None:
        self.root = root
        self.key = Ed25519PrivateKey.generate()
        self.paths = bn.Paths(str(root), checker=checker())
        for directory, mode in (
            ("etc/broker", 0o755),
            ("etc/sudoers.d", 0o750),
            ("etc/pam.d", 0o755),
            ("var/lib/broker/grants", 0o700),
            ("var/lib/broker/revoked", 0o700),
            ("var/lib/broker/sessions", 0o700),
            ("var/spool/broker/events", 0o700),
        ):
            path = root / directory
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(mode)
        self.write_conf(gated=gated, group=group)
        key_file = root / "etc/broker/grant-key.pub"
        key_file.write_text(public_key_line(self.key.public_key()))
        key_file.chmod(0o644)

    def write_conf(self, *, gated: bool = True, group: str = "break-glass") -> None:
        conf = self.root / "etc/broker/node.conf"
        conf.write_text(
            f"# written by the test\nnode={NODE}\nlogin_gated={int(gated)}\n"
            f"break_glass_group={group}\njoblaunch_service=slurm\n"
        )
        conf.chmod(0o644)

    def grant(self, **changes: Any) -> GrantFile:
        now = now_s()
        values: dict[str, Any] = {
            "id": "g" + os.urandom(8).hex(),
            "node": NODE,
            "user": "alice",
            "runas": "root",
            "commands": "ALL",
            "not_before": now - timedelta(minutes=1),
            "not_after": now + timedelta(minutes=30),
            "login": True,
            "workloads": False,
            "max_sessions": 2,
            "policy_sha256": "ab" * 32,
            "approvers": ("frank",),
            "reason": "INC-4711 replace NVLink switch",
            "issued_at": now - timedelta(minutes=1),
        }
        values.update(changes)
        return GrantFile(**values)

    def install(
        self, grant: GrantFile | None = None, *, text: str | None = None, name: str | None = None
    ) -> Path:
        grant = grant or self.grant()
        path = self.root / "var/lib/broker/grants" / (name or grant.id)
        path.write_text(text if text is not None else encode_signed(grant, self.key))
        path.chmod(0o600)
        return path

    def status_of(self, grant_id: str) -> dict[str, Any]:
        """The grant's entry in `status` (valid, problem, user, not_after)."""
        import io
        import json

        out = io.StringIO()
        assert bn.node_main(["status"], io.StringIO("{}"), out, self.paths) == 0
        [entry] = [g for g in json.loads(out.getvalue())["grants"] if g["id"] == grant_id]
        return dict(entry)
