"""Cross-checks between the broker's grant writer (broker/grants/grantfile.py) and the node's C
code (pam/src, through pam/build/broker-grant-check, the same source as pam_broker.so): what
the broker signs verifies on the node; any other byte, key or node does not."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from broker.grants import grantfile

REPO = Path(__file__).resolve().parents[2]
CHECKER = REPO / "pam" / "build" / "broker-grant-check"
NOW = datetime(2026, 11, 23, 10, 5, tzinfo=UTC)


@pytest.fixture(scope="module")
def checker() -> Path:
    assert CHECKER.is_file(), "pam/build/broker-grant-check is missing: run make -C pam"
    return CHECKER


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
def node(tmp_path: Path, key: Ed25519PrivateKey) -> Path:
    """A node's files under a root-owned temporary root, as bootstrap writes them."""
    os.chmod(tmp_path, 0o755)
    etc = tmp_path / "etc" / "broker"
    etc.mkdir(parents=True)
    (etc / "node.conf").write_text("node=gpu01\nlogin_gated=0\nbreak_glass_group=\n")
    (etc / "grant-key.pub").write_text(grantfile.public_key_line(key.public_key()))
    for name in ("grants", "revoked"):
        (tmp_path / "var" / "lib" / "broker" / name).mkdir(parents=True, mode=0o700)
    return tmp_path


def grant(key: Ed25519PrivateKey, **changes: object) -> str:
    fields: dict[str, object] = {
        "id": "g0123456789abcdef",
        "node": "gpu01",
        "user": "alice",
        "runas": "root",
        "commands": "gpu-reset,nvidia-smi",
        "not_before": NOW - timedelta(minutes=5),
        "not_after": NOW + timedelta(minutes=25),
        "login": True,
        "workloads": False,
        "max_sessions": 3,
        "policy_sha256": "ab" * 32,
        "approvers": ("frank", "grace"),
        "reason": "INC-4711 swap NVLink – “now”",
        "issued_at": NOW - timedelta(minutes=5),
        **changes,
    }
    return grantfile.encode_signed(grantfile.GrantFile(**fields), key)  # type: ignore[arg-type]


def check(checker: Path, root: Path, data: bytes, *extra: str) -> list[dict[str, str]]:
    done = subprocess.run(
        [str(checker), "--root", str(root), "--now", str(int(NOW.timestamp())), *extra],
        input=data,
        capture_output=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    blocks: list[dict[str, str]] = [{}]
    for line in done.stdout.decode("ascii").splitlines():
        if line == "end":
            blocks.append({})
        else:
            key, _, value = line.partition("=")
            blocks[-1][key] = value
    return [b for b in blocks if "valid" in b]


def test_a_grant_the_broker_signed_verifies_in_c_with_every_field(
    checker: Path, node: Path, key: Ed25519PrivateKey
) -> None:
    [seen] = check(checker, node, grant(key).encode("ascii"), "--stdin")
    assert seen["valid"] == "1", seen
    assert (seen["id"], seen["node"], seen["user"], seen["runas"]) == (
        "g0123456789abcdef",
        "gpu01",
        "alice",
        "root",
    )
    assert seen["commands"] == "gpu-reset,nvidia-smi" and seen["approvers"] == "frank,grace"
    assert int(seen["not_after"]) == int((NOW + timedelta(minutes=25)).timestamp())
    assert (seen["login"], seen["workloads"], seen["max_sessions"]) == ("1", "0", "3")
    assert seen["key_id"] == grantfile.key_id(key.public_key())


def test_every_single_byte_change_is_refused(
    checker: Path, node: Path, key: Ed25519PrivateKey
) -> None:
    text = grant(key).encode("ascii")
    accepted = []
    for at in range(len(text)):
        for flip in (0x01, 0x20):
            changed = bytearray(text)
            changed[at] ^= flip
            [seen] = check(checker, node, bytes(changed), "--stdin")
            if seen["valid"] != "0":
                accepted.append((at, flip))
    assert accepted == []


@pytest.mark.parametrize(
    ("changes", "reason", "problem"),
    [
        ({"node": "gpu02"}, "other_node", "for node gpu02, this is gpu01"),
        (
            {"not_before": NOW - timedelta(hours=2), "not_after": NOW - timedelta(hours=1)},
            "expired",
            "expired at 2026-11-23T09:05:00Z",
        ),
        (
            {"not_before": NOW + timedelta(hours=1), "not_after": NOW + timedelta(hours=2)},
            "not_yet_valid",
            "not valid before 2026-11-23T11:05:00Z",
        ),
    ],
)
def test_the_node_refuses_what_is_not_for_it_now(
    checker: Path,
    node: Path,
    key: Ed25519PrivateKey,
    changes: dict[str, object],
    reason: str,
    problem: str,
) -> None:
    [seen] = check(checker, node, grant(key, **changes).encode("ascii"), "--stdin")
    assert (seen["valid"], seen["reason"], seen["problem"]) == ("0", reason, problem)


def test_a_grant_not_yet_started_may_be_installed(
    checker: Path, node: Path, key: Ed25519PrivateKey
) -> None:
    later = {"not_before": NOW + timedelta(hours=1), "not_after": NOW + timedelta(hours=2)}
    [seen] = check(checker, node, grant(key, **later).encode("ascii"), "--stdin", "--any-start")
    assert seen["valid"] == "1"


def test_a_grant_signed_by_another_key_is_refused_even_claiming_ours(
    checker: Path, node: Path, key: Ed25519PrivateKey
) -> None:
    other = Ed25519PrivateKey.generate()
    [seen] = check(checker, node, grant(other).encode("ascii"), "--stdin")
    assert seen["reason"] == "bad_signature" and seen["problem"].startswith("signed by key ")
    body = grant(key).partition("signature=")[0]
    forged = body + "signature=" + grant(other).rpartition("signature=")[2]
    [seen] = check(checker, node, forged.encode("ascii"), "--stdin")
    assert (seen["reason"], seen["problem"]) == ("bad_signature", "bad signature")


def test_a_node_listing_two_brokers_keys_accepts_either_and_no_other(
    checker: Path, node: Path, key: Ed25519PrivateKey
) -> None:
    peer, stranger = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    keys = grantfile.public_key_lines([key.public_key(), peer.public_key()])
    (node / "etc" / "broker" / "grant-key.pub").write_text(keys)
    for signer in (key, peer):
        [seen] = check(checker, node, grant(signer).encode("ascii"), "--stdin")
        assert seen["valid"] == "1" and seen["key_id"] == grantfile.key_id(signer.public_key())
    [seen] = check(checker, node, grant(stranger).encode("ascii"), "--stdin")
    assert (seen["reason"], seen["problem"]) == (
        "bad_signature",
        f"signed by key {grantfile.key_id(stranger.public_key())}, "
        "which is not among the 2 keys this node trusts",
    )
    # a list nodes cannot trust (a key twice) stops every grant, naming the line
    (node / "etc" / "broker" / "grant-key.pub").write_text(keys + keys.splitlines()[0] + "\n")
    [seen] = check(checker, node, grant(key).encode("ascii"), "--stdin")
    assert (seen["valid"], seen["reason"]) == ("0", "bad_config")
    assert seen["problem"].startswith("grant-key.pub: line 3: key ")


def test_all_lists_the_grant_files_with_what_is_wrong_with_each(
    checker: Path, node: Path, key: Ed25519PrivateKey
) -> None:
    grants = node / "var" / "lib" / "broker" / "grants"
    good = grants / "g0123456789abcdef"
    good.write_text(grant(key))
    good.chmod(0o600)
    (node / "var" / "lib" / "broker" / "revoked" / "g1111111111111111").write_text("x\n")
    revoked = grants / "g1111111111111111"
    revoked.write_text(grant(key, id="g1111111111111111"))
    revoked.chmod(0o600)
    loose = grants / "g2222222222222222"
    loose.write_text(grant(key, id="g2222222222222222"))
    loose.chmod(0o644)
    (grants / "not-a-grant").write_text("x")
    (grants / ".broker-tmp-g3.abcd").write_text("half written")
    seen = {b["name"]: b for b in check(checker, node, b"", "--all")}
    assert set(seen) == {
        "g0123456789abcdef",
        "g1111111111111111",
        "g2222222222222222",
        "not-a-grant",
    }
    assert seen["g0123456789abcdef"]["valid"] == "1"
    assert seen["g1111111111111111"]["reason"] == "revoked"
    assert seen["g2222222222222222"]["problem"] == "mode 0644 is too open"
    assert seen["not-a-grant"]["problem"] == "not a grant id"


def test_a_broken_node_conf_makes_every_grant_invalid(
    checker: Path, node: Path, key: Ed25519PrivateKey
) -> None:
    conf = node / "etc" / "broker" / "node.conf"
    conf.write_text("node=gpu01\nlogin_gated=maybe\n")
    [seen] = check(checker, node, grant(key).encode("ascii"), "--stdin")
    assert (seen["valid"], seen["reason"]) == ("0", "bad_config")
    assert seen["problem"] == "node.conf: login_gated must be 0 or 1"
