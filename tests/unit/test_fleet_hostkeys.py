"""Host keys: fingerprints as ssh-keygen prints them, known_hosts matching, the pin decision."""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path

import pytest

from broker.core.errors import RefusedError, UnavailableError, UsageError
from broker.fleet import hostkeys
from broker.fleet.hostkeys import Expected, HostKey, decide


def keygen(tmp_path: Path, key_type: str, name: str = "key") -> tuple[str, str, str]:
    """A fresh host key from ssh-keygen: (type, base64, fingerprint as `ssh-keygen -lf` says)."""
    path = tmp_path / name
    subprocess.run(
        ["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", "", "-f", str(path)], check=True
    )
    kind, b64 = (tmp_path / f"{name}.pub").read_text().split()[:2]
    listed = subprocess.run(
        ["ssh-keygen", "-l", "-E", "sha256", "-f", str(tmp_path / f"{name}.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[1]
    return kind, b64, listed


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_fingerprint_is_what_ssh_keygen_prints(tmp_path: Path, key_type: str) -> None:
    kind, b64, listed = keygen(tmp_path, key_type)
    key = HostKey.from_blob(hostkeys.decode_key(kind, b64))
    assert key.fingerprint == listed and key.key_type == kind and key.key_b64 == b64
    assert hostkeys.check_fingerprint(listed) == listed


@pytest.mark.parametrize(
    "text",
    [
        "MD5:16:27:ac:a5:76:28:2d:36:63:1b:56:4d:eb:df:a6:48",
        "SHA256:short",
        "sha256:" + "A" * 43,
        "SHA256:" + "A" * 43 + "=",
        "SHA256:" + "A" * 42 + "\n",
    ],
)
def test_only_sha256_fingerprints_are_accepted(text: str) -> None:
    with pytest.raises(UsageError, match="bad fingerprint"):
        hostkeys.check_fingerprint(text)


def test_a_key_claiming_another_type_is_refused(tmp_path: Path) -> None:
    _kind, b64, _ = keygen(tmp_path, "ed25519")
    with pytest.raises(RefusedError, match="not ssh-rsa"):
        hostkeys.decode_key("ssh-rsa", b64)
    with pytest.raises(RefusedError, match="not supported"):
        hostkeys.decode_key("ssh-dss", b64)
    with pytest.raises(RefusedError, match="not base64"):
        hostkeys.decode_key("ssh-ed25519", b64 + "$")


def test_known_hosts_lines_are_matched_by_name_address_or_bracketed_port(tmp_path: Path) -> None:
    kind, b64, fp = keygen(tmp_path, "ed25519", "a")
    _, other, _ = keygen(tmp_path, "ed25519", "b")
    text = (
        "# comment\n\n"
        f"gpu01.example,10.0.0.1 {kind} {b64}\n"
        f"[10.0.0.1]:2222 {kind} {other}\n"
        f"gpu02 {kind} {other}\n"
        "garbage line\n"
        f"gpu01 ssh-ed25519 not-base64!\n"
    )
    pinned, revoked = hostkeys.known_keys(text, "gpu01", "10.0.0.1", 22)
    assert [k.fingerprint for k in pinned] == [fp] and revoked == []
    pinned, _ = hostkeys.known_keys(text, "gpu01", "10.0.0.1", 2222)
    assert [k.key_b64 for k in pinned] == [other]  # a bare entry is for port 22 only
    pinned, _ = hostkeys.known_keys(text, "gpu09", "10.0.0.9", 22)
    assert pinned == []


def test_hashed_entries_match_and_wildcards_or_negations_do_not_pin(tmp_path: Path) -> None:
    kind, b64, fp = keygen(tmp_path, "ed25519")
    hosts = tmp_path / "known_hosts"
    hosts.write_text(f"gpu01 {kind} {b64}\n[gpu01]:2222 {kind} {b64}\n")
    subprocess.run(["ssh-keygen", "-q", "-H", "-f", str(hosts)], check=True, capture_output=True)
    hashed = hosts.read_text()
    assert "gpu01" not in hashed and hashed.startswith("|1|")
    assert [k.fingerprint for k in hostkeys.known_keys(hashed, "gpu01", "10.9.9.9", 22)[0]] == [fp]
    assert len(hostkeys.known_keys(hashed, "gpu01", "10.9.9.9", 2222)[0]) == 1
    assert hostkeys.known_keys(hashed, "gpu02", "10.9.9.8", 22)[0] == []
    assert hostkeys.known_keys(f"gpu* {kind} {b64}\n", "gpu01", "a", 22)[0] == []
    negated = f"gpu01,!10.0.0.1 {kind} {b64}\n"
    assert hostkeys.known_keys(negated, "gpu01", "10.0.0.1", 22)[0] == []


def test_revoked_and_ca_lines(tmp_path: Path) -> None:
    kind, b64, _ = keygen(tmp_path, "ed25519", "a")
    _, b64_b, fp_b = keygen(tmp_path, "ed25519", "b")
    path = tmp_path / "known_hosts"
    path.write_text(
        f"@cert-authority gpu01 {kind} {b64}\n"
        f"gpu01 {kind} {b64}\n@revoked gpu01 {kind} {b64}\n"
        f"gpu01 {kind} {b64_b}\n"
    )
    assert hostkeys.read_known_hosts(str(path), "gpu01", "10.0.0.1", 22) == [
        Expected(fp_b, "ssh-ed25519")
    ]
    path.write_text(f"gpu01 {kind} {b64}\n@revoked * {kind} {b64}\n@revoked gpu01 {kind} {b64}\n")
    with pytest.raises(UsageError, match="no usable key for gpu01"):
        hostkeys.read_known_hosts(str(path), "gpu01", "10.0.0.1", 22)
    with pytest.raises(UsageError, match="cannot read"):
        hostkeys.read_known_hosts(str(tmp_path / "missing"), "gpu01", "10.0.0.1", 22)


FP_A = "SHA256:" + "A" * 43
FP_B = "SHA256:" + "B" * 43
SEEN = HostKey("ssh-ed25519", "AAAA", FP_A)


def test_decide_shows_pins_or_refuses() -> None:
    assert decide("gpu01", None, SEEN, [], confirm=False, replace=False) == "show"
    assert decide("gpu01", None, SEEN, [Expected(FP_A)], confirm=True, replace=False) == "pin"
    assert decide("gpu01", FP_A, SEEN, [], confirm=False, replace=False) == "same"
    with pytest.raises(RefusedError, match="not the expected") as info:
        decide("gpu01", None, SEEN, [Expected(FP_B)], confirm=True, replace=False)
    assert "impersonating" in str(info.value)
    with pytest.raises(UsageError, match="needs the fingerprint"):
        decide("gpu01", None, SEEN, [], confirm=True, replace=False)


def test_a_changed_key_is_refused_with_how_to_re_pin() -> None:
    with pytest.raises(RefusedError) as info:
        decide("gpu01", FP_B, SEEN, [], confirm=False, replace=False)
    message = str(info.value)
    assert f"pinned to {FP_B}" in message
    assert f"broker node enroll gpu01 --replace --fingerprint {FP_A}" in message
    assert decide("gpu01", FP_B, SEEN, [Expected(FP_A)], confirm=True, replace=True) == "pin"


def test_fetch_from_a_closed_port_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UnavailableError, match=f"127.0.0.1:{port}"):
        hostkeys.fetch("127.0.0.1", port, timeout=2)
