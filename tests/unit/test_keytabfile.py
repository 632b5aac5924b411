"""The broker's keytab format module against MIT Kerberos (pykrb5, ktutil, klist) and the
node program's reader; merge and prune rules; malformed files refused with clear errors."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
from pathlib import Path

import krb5
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.keytabs import keytabfile as kf
from broker.keytabs.keytabfile import Entry, MalformedKeytab, Principal
from tests.helpers import load_node_script

P1, P2 = "HTTP/web.hpc.test@HPC.TEST", "svc-web@HPC.TEST"
HOST = "host/node.hpc.test@HPC.TEST"


bk = load_node_script("broker_keytab.py", "broker_keytab")


def entry(principal: str, kvno: int, enctype: int = 18, fill: int = 1) -> Entry:
    size = 32 if enctype == 18 else 16
    return kf.new_entry(principal, kvno, enctype, bytes([fill]) * size, 1700000000)


def mit_keytab(path: Path) -> list[tuple[str, int, int, bytes]]:
    """A keytab written by MIT Kerberos itself (krb5_kt_add_entry), with what went in."""
    ctx = krb5.init_context()
    kt = krb5.kt_resolve(ctx, f"FILE:{path}".encode())
    wrote = []
    for principal, kvno, enctype in (
        (P1, 7, 18),
        (P1, 7, 17),
        (P2, 300, 18),  # past 255: only the 32-bit field holds it
        ("a/b/c@OTHER.REALM", 2, 17),  # three components, another realm: not ours, kept
    ):
        key = krb5.c_string_to_key(ctx, enctype, b"secret", b"HPC.TESTsvc-web")
        krb5.kt_add_entry(ctx, kt, krb5.parse_name_flags(ctx, principal.encode()), kvno, 0, key)
        wrote.append((principal, kvno, enctype, bytes(key.data)))
    return wrote


# ---------------------------------------------------------------- against MIT Kerberos


def test_keytabs_mit_wrote_parse_and_serialize_byte_identically(tmp_path: Path) -> None:
    path = tmp_path / "mit.keytab"
    wrote = mit_keytab(path)
    data = path.read_bytes()
    parsed = kf.parse(data)
    assert [(str(e.principal), e.kvno, e.enctype, e.key) for e in parsed] == wrote
    assert kf.serialize(parsed) == data  # as read
    fresh = [dataclasses.replace(e, raw=None) for e in parsed]
    assert kf.serialize(fresh) == data  # and re-encoded from the fields: MIT's own layout
    # The node program's reader sees the same entries.
    node = bk.parse(data)
    assert [(e.principal, e.kvno, e.enctype, e.key) for e in node] == wrote


def test_keytabs_we_write_are_what_mit_kerberos_reads(tmp_path: Path) -> None:
    entries = [entry(P1, 3), entry(P2, 3), entry(P1, 4, 17, 2), entry(P1, 300, 18, 3)]
    data = kf.serialize(entries)
    path = tmp_path / "ours.keytab"
    path.write_bytes(data)
    shown = subprocess.run(
        ["klist", "-k", "-e", "-K", str(path)], capture_output=True, text=True, check=True
    ).stdout
    assert f"   3 {P1} (aes256-cts-hmac-sha1-96)  (0x" + "01" * 32 + ")" in shown
    assert f" 300 {P1}" in shown
    assert f"   4 {P1} (aes128-cts-hmac-sha1-96)" in shown
    ctx = krb5.init_context()
    kt = krb5.kt_resolve(ctx, f"FILE:{path}".encode())
    found = krb5.kt_get_entry(ctx, kt, krb5.parse_name_flags(ctx, P1.encode()), 300, 18)
    assert found.kvno == 300 and bytes(found.key.data) == b"\x03" * 32
    # ktutil reads ours and writes MIT's serialization of the same entries: identical bytes
    # but for the timestamps ktutil sets to its own clock.
    again = tmp_path / "again.keytab"
    subprocess.run(
        ["ktutil"],
        input=f"rkt {path}\nwkt {again}\nquit\n",
        text=True,
        capture_output=True,
        check=True,
    )
    theirs = kf.parse(again.read_bytes())
    restamped = [
        dataclasses.replace(e, timestamp=t.timestamp, raw=None)
        for e, t in zip(entries, theirs, strict=True)
    ]
    assert kf.serialize(restamped) == again.read_bytes()
    assert [(e.principal, e.kvno, e.enctype, e.key) for e in kf.parse(data)] == [
        (e.principal, e.kvno, e.enctype, e.key) for e in entries
    ]
    assert [(e.principal, e.kvno) for e in bk.parse(data)] == [(P1, 3), (P2, 3), (P1, 4), (P1, 300)]


# ---------------------------------------------------------------- malformed input


def _record(body: bytes) -> bytes:
    return struct.pack(">i", len(body)) + body


GOOD = kf.serialize([entry(P1, 1)])
BODY = GOOD[6:]  # the one entry, without its size


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x05", "shorter than its version"),
        (b"\x05\x01" + GOOD[2:], "0x0501"),
        (b"\x04\x02", "version bytes 0402"),
        (GOOD[:-5], "runs past the end"),
        (GOOD + b"\x00\x00", "stray byte"),
        (GOOD + b"\x00\x00\x00\x00\x01", "after the end marker"),
        (b"\x05\x02" + struct.pack(">i", 0x7FFFFFFF) + BODY, "entry of 2147483647 bytes"),
        (b"\x05\x02" + struct.pack(">i", -1000), "hole of 1000 bytes"),
        (b"\x05\x02" + _record(b"\x00\x00" + BODY[2:]), "without components"),
        (b"\x05\x02" + _record(BODY[:2] + b"\xff\xff" + BODY[4:]), "realm of 65535 bytes"),
        (b"\x05\x02" + _record(BODY[:10]), "too short"),
        (b"\x05\x02" + _record(BODY[:-10]), "key of 32 bytes runs past"),
        (b"\x05\x02" + b"\x00" * (kf.MAX_KEYTAB), "larger than"),
    ],
)
def test_malformed_keytabs_are_refused_by_both_readers(data: bytes, message: str) -> None:
    with pytest.raises(MalformedKeytab, match=message) as info:
        kf.parse(data)
    assert "\\x01\\x01" not in str(info.value) and "0101" not in str(info.value)
    with pytest.raises(bk.Refused):
        bk.parse(data)


def test_holes_are_skipped_an_end_marker_ends_and_empty_is_no_entries() -> None:
    hole = struct.pack(">i", -8) + b"\x00" * 8
    data = b"\x05\x02" + hole + GOOD[2:] + b"\x00\x00\x00\x00\x00\x00"
    assert [e.kvno for e in kf.parse(data)] == [1] == [e.kvno for e in bk.parse(data)]
    assert kf.serialize(kf.parse(data)) == GOOD  # holes and padding are not written back
    assert kf.parse(b"") == [] == bk.parse(b"")
    # A zero 32-bit kvno is zero-fill: the 8-bit one stands (MIT's rule).
    short = GOOD[:-4] + b"\x00\x00\x00\x00"
    assert kf.parse(short)[0].kvno == 1 == bk.parse(short)[0].kvno


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused_never_crash(data: bytes) -> None:
    for candidate in (data, b"\x05\x02" + data):
        try:
            parsed = kf.parse(candidate)
        except MalformedKeytab:
            with pytest.raises(bk.Refused):
                bk.parse(candidate)
            continue
        assert len(parsed) == len(bk.parse(candidate))
        assert kf.parse(kf.serialize(parsed)) == parsed


_principals = st.sampled_from([P1, P2, HOST, "nfs/stor01.hpc.test@HPC.TEST"])


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            _principals,
            st.integers(1, kf.MAX_KVNO),
            st.sampled_from([17, 18, 19, 20]),
            st.binary(min_size=16, max_size=32),
            st.integers(0, 0xFFFFFFFF),
        ),
        max_size=12,
    )
)
def test_serialize_then_parse_is_the_identity(
    items: list[tuple[str, int, int, bytes, int]],
) -> None:
    entries = [kf.new_entry(*item) for item in items]
    data = kf.serialize(entries)
    assert kf.parse(data) == entries
    assert [(e.principal, e.kvno, e.enctype, e.key) for e in bk.parse(data)] == [
        (p, k, t, key) for p, k, t, key, _ in items
    ]


def test_new_entries_are_checked_and_keys_never_print() -> None:
    for bad in ("web", "HTTP/web@hpc.test", "a/b/c@HPC.TEST", "HTTP/we b@HPC.TEST"):
        with pytest.raises(ValueError):
            kf.new_entry(bad, 1, 18, b"\x00" * 32, 0)
    with pytest.raises(ValueError):
        kf.new_entry(P1, 0, 18, b"\x00" * 32, 0)
    with pytest.raises(ValueError):
        kf.new_entry(P1, 1, 18, b"\x00" * 4, 0)
    shown = repr(entry(P1, 1, fill=0xAB)) + repr(kf.parse(GOOD)) + str(kf.parse(GOOD)[0])
    assert "\\xab" not in shown and "abab" not in shown and "q6ur" not in shown  # hex, base64
    assert "\\x01" not in shown and "0101" not in shown and "raw=" not in shown
    assert kf.new_entry(P1, 1, 18, b"\x00" * 32, 0).name_type == kf.NT_SRV_HST
    assert kf.new_entry(P2, 1, 18, b"\x00" * 32, 0).name_type == kf.NT_PRINCIPAL


# ---------------------------------------------------------------- merge and prune


def test_merge_adds_prunes_managed_versions_and_leaves_other_principals_byte_exact() -> None:
    other = Entry(Principal((b"host", b"n\xc3\xa9ud"), b"HPC.TEST"), 9, 18, b"\x09" * 32, 5, 3)
    existing = kf.parse(kf.serialize([other, entry(P1, 1), entry(P1, 2), entry(P2, 2)]))
    managed = [Principal.parse(P1), Principal.parse(P2)]
    add = [entry(P1, 3, fill=5), entry(P2, 3, fill=5)]
    merged = kf.merge(existing, managed, add, {2, 3})
    assert [(str(e.principal), e.kvno) for e in merged] == [
        ("host/n\u00e9ud@HPC.TEST", 9),
        (P1, 2),
        (P2, 2),
        (P1, 3),
        (P2, 3),
    ]
    assert merged[0].raw == existing[0].raw  # untouched, to the byte
    assert kf.versions(merged, managed) == {P1: [2, 3], P2: [2, 3]}
    assert kf.common_versions(merged, managed) == (2, 3)
    # The same add again replaces, never duplicates; a prune keeps only what is asked.
    assert kf.merge(merged, managed, add, {2, 3}) == merged
    pruned = kf.merge(merged, managed, [], {3})
    assert kf.versions(pruned, managed) == {P1: [3], P2: [3]} and pruned[0] == other
    # A key for an unmanaged principal, or of a version not kept, is a bug: refused.
    with pytest.raises(ValueError, match="not managed"):
        kf.merge(existing, [managed[0]], add, {3})
    with pytest.raises(ValueError, match="not one of the kept"):
        kf.merge(existing, managed, add, {2})


def test_principals_match_by_structure_not_by_text() -> None:
    one_component = Entry(Principal((b"HTTP/web.hpc.test",), b"HPC.TEST"), 1, 18, b"\x00" * 32)
    assert str(one_component.principal) == P1  # looks the same as text ...
    merged = kf.merge([one_component], [Principal.parse(P1)], [], {5})
    assert merged == [one_component]  # ... but is not the managed two-component principal
