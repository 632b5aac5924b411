"""Write the fuzzers' seed corpora (pam/fuzz/corpus/): real grant files written and signed by
broker/grants/grantfile.py, and key, key-list, node.conf and quarantine files as bootstrap and the node
program write them. The grants are signed with RFC 8032's TEST 2 key, the key fuzz_grant.c
trusts, so the fuzzer reaches the signature check with valid inputs too.

Run from the repository: `.venv/bin/python pam/fuzz/make_corpus.py`.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.grants import grantfile

HERE = Path(__file__).resolve().parent / "corpus"
RFC8032_TEST2 = bytes.fromhex("4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb")


def grants(key: Ed25519PrivateKey) -> dict[str, str]:
    start = datetime(2026, 11, 23, 10, 0, tzinfo=timezone.utc)
    shapes = {
        "root-all": {},
        "command-sets": {"commands": "gpu-reset,nvidia-smi", "runas": "svc-gpu"},
        "login-workloads": {"login": True, "workloads": True, "max_sessions": 16},
        "no-approvers": {"approvers": ()},
        "unicode-reason": {"reason": "INC-4711 swap NVLink – node ≠ ok “now”"},
        "long-reason": {"reason": "x" * 200},
    }
    out = {}
    for number, (name, extra) in enumerate(shapes.items()):
        fields = {
            "id": f"g{number:016x}",
            "node": "gpu01",
            "user": "alice",
            "runas": "root",
            "commands": "ALL",
            "not_before": start,
            "not_after": start + timedelta(minutes=30),
            "login": False,
            "workloads": False,
            "max_sessions": 1,
            "policy_sha256": "ab" * 32,
            "approvers": ("frank", "grace"),
            "reason": "INC-4711 replace NVLink switch",
            "issued_at": start,
            **extra,
        }
        out[name] = grantfile.encode_signed(grantfile.GrantFile(**fields), key)  # type: ignore[arg-type]
    return out


def main() -> None:
    key = Ed25519PrivateKey.from_private_bytes(RFC8032_TEST2)
    other = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    files = {
        "grant": grants(key),
        "key": {
            "rfc8032-test2": grantfile.public_key_line(key.public_key()),
            "other": grantfile.public_key_line(other.public_key()),
        },
        # grant-key.pub as bootstrap writes it: this broker's key, then its peers' (docs/grants.md).
        "keys": {
            "one": grantfile.public_key_line(key.public_key()),
            "pair": grantfile.public_key_lines([key.public_key(), other.public_key()]),
            "eight": grantfile.public_key_lines(
                [
                    Ed25519PrivateKey.from_private_bytes(bytes([n]) * 32).public_key()
                    for n in range(8)
                ]
            ),
        },
        "conf": {
            "gated": "# Written by `broker node bootstrap`; changes are overwritten.\nnode=gpu01\n"
            "login_gated=1\nbreak_glass_group=break-glass\njoblaunch_service=slurm\n",
            "open": "node=stor01\nlogin_gated=0\nbreak_glass_group=\njoblaunch_service=\n",
        },
        "quarantine": {
            "marker": "# Written by the broker: this node is quarantined.\nnode=gpu01\n"
            "since=2026-11-20T10:00:00Z\ngroup=incident-response\nreason=INC-9%20exfil%20seen\n",
            "no-group": "node=gpu02\nsince=2026-11-20T10:00:00Z\ngroup=\nreason=drift\n",
        },
        # `.cgroup` as `broker-node watch` writes it (systemd's delegation, and the lab's).
        "cgroup": {
            "systemd": "/sys/fs/cgroup/system.slice/broker-node-watch.service/sessions\n",
            "hybrid": "/sys/fs/cgroup/unified/broker-lab/gpu01/sessions\n",
        },
    }
    for kind, entries in files.items():
        (HERE / kind).mkdir(parents=True, exist_ok=True)
        for name, text in entries.items():
            (HERE / kind / name).write_bytes(text.encode("ascii"))


if __name__ == "__main__":
    main()
