"""TOTP codes, recovery codes and sealed secrets: the pure parts and the key file."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyotp
import pytest

from broker.core.errors import IntegrityError, RefusedError, UnavailableError
from broker.mfa import codes, recovery, sealing

NOW = datetime(2026, 11, 22, 10, 0, 15, tzinfo=UTC)
SECRET = "JBSWY3DPEHPK3PXPKRUGS2LTMFZWK4TF"  # fixed, so the window cases are deterministic
OTHER = "MFRGGZDFMZTWQ2LKNNWG23TPOBYXE43U"

REFUSED_CODES = [
    "１２３４５６",  # full-width digits
    "١٢٣٤٥٦",  # Arabic-Indic digits
    "۱۲۳۴۵۶",  # extended Arabic-Indic digits
    "123 456",
    " 123456",
    "123456 ",
    "123456\n",
    "\t123456",
    "12345",
    "1234567",
    "",
    "12345a",
    "+12345",
    "-12345",
    "12_345",
    "¹²³⁴⁵⁶",  # superscripts: isdigit() is True for these
]


@pytest.mark.parametrize("text", REFUSED_CODES)
def test_only_six_ascii_digits_are_a_code(text: str) -> None:
    with pytest.raises(RefusedError) as caught:
        codes.parse_code(text)
    assert str(caught.value).startswith("a TOTP code is exactly six digits 0-9")
    if text.strip():
        assert text.strip() not in str(caught.value)


@pytest.mark.parametrize("text", ["012345", "000000", "999999"])
def test_six_ascii_digits_pass_unchanged(text: str) -> None:
    assert codes.parse_code(text) == text


def test_time_step_is_unix_time_over_30_s() -> None:
    assert codes.time_step(datetime(1970, 1, 1, 0, 0, 59, tzinfo=UTC)) == 1
    assert codes.time_step(NOW) == int(NOW.timestamp()) // 30
    with pytest.raises(ValueError, match="naive"):
        codes.time_step(datetime(2026, 1, 1))


def test_codes_match_an_independent_totp() -> None:
    assert codes.code_at(SECRET, codes.time_step(NOW)) == pyotp.TOTP(SECRET).at(NOW)


@pytest.mark.parametrize(
    ("offset", "window", "accepted"),
    [
        (0, 0, True),
        (1, 0, False),
        (-1, 1, True),
        (1, 1, True),
        (-2, 1, False),
        (2, 1, False),
        (2, 2, True),
        (-3, 2, False),
    ],
)
def test_window(offset: int, window: int, accepted: bool) -> None:
    step = codes.time_step(NOW) + offset
    code = codes.code_at(SECRET, step)
    others = {codes.code_at(SECRET, codes.time_step(NOW) + d) for d in range(-3, 4) if d != offset}
    assert code not in others  # the fixed secret shows no repeated code around NOW
    found = codes.matching_step(SECRET, code, NOW, window)
    assert found == (step if accepted else None)


def test_another_secret_does_not_match() -> None:
    code = codes.code_at(SECRET, codes.time_step(NOW))
    assert code not in {codes.code_at(OTHER, codes.time_step(NOW) + d) for d in (-1, 0, 1)}
    assert codes.matching_step(OTHER, code, NOW, 1) is None


def test_matching_refuses_a_malformed_code() -> None:
    with pytest.raises(RefusedError):
        codes.matching_step(SECRET, "１２３４５６", NOW, 1)


def test_provisioning_uri() -> None:
    uri = codes.provisioning_uri(SECRET, "HPC\\alice", "HPC Broker")
    assert uri.startswith("otpauth://totp/HPC%20Broker:HPC%5Calice?")
    assert f"secret={SECRET}" in uri and "issuer=HPC%20Broker" in uri


# Recovery codes


def test_recovery_codes_are_readable_and_distinct() -> None:
    made = recovery.generate()
    assert len(made) == 10 and len(set(made)) == 10
    for code in made:
        groups = code.split("-")
        assert [len(g) for g in groups] == [4, 4, 4]
        assert not set("".join(groups)) & set("0o1li")
        assert set("".join(groups)) <= set(recovery.ALPHABET)
    assert len(recovery.generate(3)) == 3


def test_recovery_normalise() -> None:
    code = "abcd-efgh-jkmn"
    for typed in ("abcd-efgh-jkmn", "ABCD-EFGH-JKMN", "abcdefghjkmn", "AbCdefgh-JKmn"):
        assert recovery.normalise(typed) == code
    for bad in (
        "abcd efgh jkmn",
        " abcd-efgh-jkmn",
        "abcd-efgh-jkmn\n",
        "abcd-efgh-jkm",
        "abcd-efgh-jkmnp",
        "abcd--efgh-jkmn",
        "abcd-efgh-jk0n",  # ambiguous characters are never in a code
        "abcd-efgh-jkmＮ",  # full-width N
        "abcd-efgh-\u212amn",  # Kelvin sign: lower() would make it a 'k'
        "ab-cdefgh-jkmn",
    ):
        with pytest.raises(RefusedError, match="a recovery code is twelve") as caught:
            recovery.normalise(bad)
        assert bad.strip() not in str(caught.value)


def test_recovery_hashes_are_salted_scrypt() -> None:
    code = recovery.generate(1)[0]
    first, second = recovery.hash_code(code), recovery.hash_code(code)
    assert first != second and first.startswith("scrypt$")
    _scheme, salt, digest = first.split("$")
    assert len(bytes.fromhex(salt)) == 16 and len(bytes.fromhex(digest)) == 32
    assert code not in first and code.replace("-", "") not in first
    assert recovery.matches(code, first) and recovery.matches(code.upper().replace("-", ""), second)
    assert not recovery.matches(recovery.generate(1)[0], first)
    for broken in ("", "scrypt$zz$00", "md5$" + salt + "$" + digest, "scrypt$00$" + digest):
        with pytest.raises(IntegrityError):
            recovery.matches(code, broken)


# Sealing


def test_seal_round_trip_and_tampering() -> None:
    key = os.urandom(32)
    blob = sealing.seal(key, SECRET.encode(), b"S-1-5-21-1-2-3-1104")
    assert SECRET.encode() not in blob and len(blob) == 12 + len(SECRET) + 16
    assert sealing.seal(key, SECRET.encode(), b"x") != sealing.seal(key, SECRET.encode(), b"x")
    assert sealing.unseal(key, blob, b"S-1-5-21-1-2-3-1104") == SECRET.encode()
    flipped = bytes([blob[0]]) + bytes([blob[1] ^ 1]) + blob[2:]
    for bad_blob, aad, bad_key in (
        (flipped, b"S-1-5-21-1-2-3-1104", key),
        (blob[:-1] + bytes([blob[-1] ^ 0x80]), b"S-1-5-21-1-2-3-1104", key),
        (blob, b"S-1-5-21-1-2-3-1105", key),  # another account's row
        (blob, b"S-1-5-21-1-2-3-1104", os.urandom(32)),
        (blob[:5], b"S-1-5-21-1-2-3-1104", key),
    ):
        with pytest.raises(IntegrityError, match="failed its integrity check") as caught:
            sealing.unseal(bad_key, bad_blob, aad)
        assert SECRET not in str(caught.value)


def test_key_file_is_private_and_never_replaced(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "mfa.key"
    key = sealing.create_key(path, None)
    assert len(key) == 32 and path.read_bytes() == key
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sealing.load_key(path) == key
    with pytest.raises(RefusedError, match="already exists"):
        sealing.create_key(path, None)
    assert path.read_bytes() == key


def test_loose_or_linked_or_wrong_size_keys_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "mfa.key"
    with pytest.raises(UnavailableError, match="run `broker init`"):
        sealing.load_key(path)
    sealing.create_key(path, None)
    path.chmod(0o644)
    with pytest.raises(RefusedError, match="mode 0644, wider than 0600"):
        sealing.load_key(path)
    path.chmod(0o600)
    link = tmp_path / "link.key"
    link.symlink_to(path)
    with pytest.raises(RefusedError, match="not a regular file"):
        sealing.load_key(link)
    with pytest.raises(RefusedError, match="already exists"):
        sealing.create_key(link, None)
    for size in (31, 33, 0):
        path.write_bytes(os.urandom(size))
        with pytest.raises(IntegrityError, match="is not 32 bytes"):
            sealing.load_key(path)


def test_a_step_boundary() -> None:
    start = datetime(2026, 11, 22, 10, 0, 0, tzinfo=UTC)
    assert codes.time_step(start) == codes.time_step(start + timedelta(seconds=29.999))
    assert codes.time_step(start + timedelta(seconds=30)) == codes.time_step(start) + 1
