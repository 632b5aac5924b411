"""The directory's pure rules: id mapping, record decoding, nesting, account state, change diff."""

from __future__ import annotations

import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.identity import (
    NEVER,
    account_state,
    datetime_to_nt_time,
    lockout_end,
    normalise_account_name,
    nt_time_to_datetime,
)
from broker.directory.build import drop_members, memberships, state_of, user_ids
from broker.directory.diff import UserView, access_changes
from broker.directory.fetch import DcState, usn_range, usn_slices
from broker.directory.idmap import IdMapError, IdRange, posix_id
from broker.directory.records import (
    GroupRecord,
    RecordError,
    UserRecord,
    ranged_attribute,
    user_record,
)
from broker.directory.sync import _mode

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
DOMAIN = "S-1-5-21-1111-2222-3333"


def sid_bytes(sid: str) -> bytes:
    parts = sid.split("-")
    subs = [int(p) for p in parts[3:]]
    out = bytes([int(parts[1]), len(subs)]) + int(parts[2]).to_bytes(6, "big")
    return out + b"".join(s.to_bytes(4, "little") for s in subs)


def sssd_ids(sids: list[str]) -> list[int]:
    """SSSD's own murmurhash (python3-sss), with SSSD's default range settings."""
    script = (
        "import sys, pysss_murmur as m\n"
        "for sid in sys.argv[1:]:\n"
        "    d, _, rid = sid.rpartition('-')\n"
        "    print(200000 + (m.murmurhash3(d, len(d), 0xdeadbeef) % 10000) * 200000 + int(rid))\n"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-c", script, *sids], capture_output=True, text=True, check=True
    )
    return [int(x) for x in out.stdout.split()]


@settings(max_examples=50, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.integers(0, 2**32 - 1), min_size=3, max_size=3),
            st.integers(500, 199_999),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_id_mapping_agrees_with_sssd(cases: list[tuple[list[int], int]]) -> None:
    sids = [f"S-1-5-21-{a}-{b}-{c}-{rid}" for (a, b, c), rid in cases]
    assert [posix_id(sid) for sid in sids] == sssd_ids(sids)


def test_id_mapping_refuses_what_sssd_would_put_in_another_slice() -> None:
    with pytest.raises(IdMapError, match="beyond the id range size"):
        posix_id(f"{DOMAIN}-250000")
    with pytest.raises(IdMapError, match="not a domain account SID"):
        posix_id("S-1-5-32-544")
    assert posix_id(f"{DOMAIN}-1000", IdRange(100_000, 2_100_000, 100_000)) < 2_100_000


def raw_user(**overrides: Any) -> dict[str, list[bytes]]:
    raw = {
        "objectGUID": [uuid.uuid4().bytes_le],
        "objectSid": [sid_bytes(f"{DOMAIN}-1105")],
        "sAMAccountName": [b"Alice"],
        "uSNChanged": [b"4242"],
        "userAccountControl": [b"512"],
        "primaryGroupID": [b"513"],
        "whenCreated": [b"20261101093307.0Z"],
    }
    raw.update(overrides)
    return raw


def test_user_records_decode_raw_bytes_and_refuse_broken_entries() -> None:
    record = user_record("CN=Alice,DC=x", raw_user(uidNumber=[b"10001"]))
    assert record.sid == f"{DOMAIN}-1105" and record.name == "alice" and record.uid_number == 10001
    assert record.created == datetime(2026, 11, 1, 9, 33, 7, tzinfo=UTC)
    assert record.problem is None
    with pytest.raises(RecordError, match="objectSid"):
        user_record("CN=x", raw_user(objectSid=[b"\x01\x02garbage"]))
    with pytest.raises(RecordError, match="uidNumber"):
        user_record("CN=x", raw_user(uidNumber=[b"-5"]))
    with pytest.raises(RecordError, match="exactly one sAMAccountName"):
        user_record("CN=x", raw_user(sAMAccountName=[]))
    hostile = user_record("CN=x", raw_user(sAMAccountName=[b"o'brien(ops)"]))
    assert hostile.problem == "sAMAccountName is not a valid Unix user name"
    unicode_name = user_record("CN=x", raw_user(sAMAccountName=["Zoë".encode()]))
    assert unicode_name.name == "Zoë" and unicode_name.problem is not None  # never folded
    kelvin = user_record("CN=x", raw_user(sAMAccountName=["\u212aevin".encode()]))
    assert kelvin.name != "kevin" and kelvin.problem is not None
    with pytest.raises(RecordError, match="userAccountControl"):
        user_record("CN=x", {k: v for k, v in raw_user().items() if k != "userAccountControl"})


def test_ranged_attributes_say_where_the_next_range_starts() -> None:
    assert ranged_attribute({"member;range=0-1499": [b"a"] * 1500}, "member") == (
        [b"a"] * 1500,
        1500,
    )
    assert ranged_attribute({"Member;Range=1500-*": [b"b"]}, "member") == ([b"b"], None)
    assert ranged_attribute({"member": [b"c"]}, "member") == ([b"c"], None)
    assert ranged_attribute({}, "member") == ([], None)


def user(name: str, dn: str, rid: int, primary: int | None = 513, **kw: Any) -> UserRecord:
    fields: dict[str, Any] = {
        "guid": f"u-{name}",
        "sid": f"{DOMAIN}-{rid}",
        "name": name,
        "upn": None,
        "dn": dn,
        "uid_number": None,
        "gid_number": None,
        "primary_group_rid": primary,
        "uac": 512,
        "account_expires": 0,
        "lockout_time": 0,
        "last_logon": 0,
        "created": None,
        "changed": None,
        "usn_changed": 1,
        "spns": (),
    }
    fields.update(kw)
    return UserRecord(**fields)


def group(name: str, rid: int, *members: str) -> GroupRecord:
    return GroupRecord(f"g-{name}", f"{DOMAIN}-{rid}", name, f"CN={name},DC=x", None, 1, members)


def test_membership_is_transitive_case_insensitive_cycle_safe_and_includes_the_primary_group() -> (
    None
):
    alice = user("alice", "CN=alice,DC=x", 1105)
    groups = [
        group("Domain Users", 513),
        group("gpu-admins", 2001, "cn=ALICE,dc=x"),
        group("hpc-admins", 2002, "CN=gpu-admins,DC=x", "CN=loop,DC=x"),
        group("loop", 2003, "CN=hpc-admins,DC=x"),
        group("unrelated", 2004, "CN=someone-else,DC=x"),
    ]
    result = memberships([alice], groups, DOMAIN)["u-alice"]
    assert result == {
        "g-Domain Users": True,
        "g-gpu-admins": True,
        "g-hpc-admins": False,
        "g-loop": False,
    }


def test_ids_come_from_ad_then_from_the_sid_and_the_primary_group() -> None:
    mapped = user_ids(user("x", "CN=x", 1200), DOMAIN, IdRange())
    assert mapped.uid == posix_id(f"{DOMAIN}-1200") and mapped.gid == posix_id(f"{DOMAIN}-513")
    given_ids = user_ids(
        user("y", "CN=y", 1201, uid_number=10001, gid_number=10000), DOMAIN, IdRange()
    )
    assert (given_ids.uid, given_ids.gid, given_ids.problem) == (10001, 10000, None)
    orphan = user_ids(user("z", "CN=z", 1202, primary=None), DOMAIN, IdRange())
    assert orphan.gid is None and "no gidNumber" in (orphan.problem or "")


def test_account_state_follows_time_and_the_most_severe_wins() -> None:
    soon, past = NOW + timedelta(hours=1), NOW - timedelta(hours=1)
    base = {"user_account_control": 512, "expires_at": None, "locked_until": None, "deleted": False}
    assert account_state(**base, now=NOW) == "enabled"
    assert account_state(**{**base, "expires_at": past}, now=NOW) == "expired"
    assert account_state(**{**base, "expires_at": soon}, now=NOW) == "enabled"
    assert account_state(**{**base, "locked_until": soon}, now=NOW) == "locked"
    assert account_state(**{**base, "locked_until": past}, now=NOW) == "enabled"
    assert (
        account_state(**{**base, "user_account_control": 514, "expires_at": past}, now=NOW)
        == "disabled"
    )
    assert lockout_end(past, None) is not None and lockout_end(None, timedelta(minutes=30)) is None
    locked = user("l", "CN=l", 1300, lockout_time=datetime_to_nt_time(NOW - timedelta(minutes=10)))
    assert state_of(locked, timedelta(minutes=30), NOW) == "locked"
    assert state_of(locked, timedelta(minutes=5), NOW) == "enabled"
    assert state_of(locked, None, NOW + timedelta(days=365)) == "locked"  # until unlocked


def test_nt_time_round_trips_and_never_means_none() -> None:
    assert nt_time_to_datetime(datetime_to_nt_time(NOW)) == NOW
    assert nt_time_to_datetime(0) is None and nt_time_to_datetime(NEVER) is None


def test_account_names_are_normalised_from_every_spelling() -> None:
    assert {normalise_account_name(n) for n in ("Alice", "HPC\\alice", "alice@HPC.TEST")} == {
        "alice"
    }


def view(name: str, state: str = "enabled", *groups: str) -> UserView:
    return UserView(name, f"sid-{name}", state, frozenset(groups))  # type: ignore[arg-type]


def test_changes_report_only_what_matters_for_mapped_groups() -> None:
    names = {"g1": "gpu-admins", "g2": "Domain Users"}
    old = {"a": view("alice", "enabled", "g1", "g2"), "b": view("bob", "enabled", "g2")}
    new = {
        "a": view("alice", "disabled", "g2"),
        "b": view("bob", "disabled", "g2"),
        "c": view("carol", "enabled", "g1"),
    }
    changes = access_changes(old, new, names, names, frozenset({"gpu-admins"}))
    got = [(c.kind, c.user, c.group, c.after) for c in changes]
    assert got == [
        ("user.state", "alice", None, "disabled"),
        ("membership.removed", "alice", "gpu-admins", None),
        ("user.added", "carol", None, "enabled"),
        ("membership.added", "carol", "gpu-admins", None),
    ]  # bob is in no mapped group: not reported
    assert [c.revokes for c in changes] == [True, True, False, False]
    everything = access_changes(old, new, names, names, None)
    assert ("user.state", "bob") in [(c.kind, c.user) for c in everything]


def test_deleted_and_renamed_accounts_are_reported() -> None:
    names = {"g1": "gpu-admins"}
    old = {"a": view("alice", "enabled", "g1"), "d": view("dave", "enabled", "g1")}
    new = {"a": view("alice2", "enabled", "g1")}
    got = [
        (c.kind, c.user, c.before, c.after) for c in access_changes(old, new, names, names, None)
    ]
    assert ("user.renamed", "alice2", "alice", "alice2") in got
    assert ("user.deleted", "dave", "enabled", None) in got
    assert ("membership.removed", "dave", None, None) not in got


def state(dc_name: str = "DC1", usn: int = 100, full_age: timedelta = timedelta(hours=1)) -> Any:
    return SimpleNamespace(
        dc_name=dc_name, dc_uri="ldaps://dc1", highest_usn=usn, full_at=NOW - full_age
    )


CFG = SimpleNamespace(full_sync_interval=timedelta(hours=24))


@pytest.mark.parametrize(
    ("previous", "dc", "full", "kind"),
    [
        (None, DcState("u", "DC1", 100), False, "full"),
        (state(), DcState("u", "DC1", 100), True, "full"),
        (state(), DcState("u", "DC2", 100), False, "full"),
        (state(), DcState("u", "DC1", 90), False, "full"),
        (state(full_age=timedelta(days=2)), DcState("u", "DC1", 100), False, "full"),
        (state(), DcState("u", "DC1", 100), False, "unchanged"),
        (state(), DcState("u", "DC1", 150), False, "incremental"),
    ],
    ids=["first", "asked", "other-dc", "usn-back", "old-full", "unchanged", "incremental"],
)
def test_sync_mode_is_incremental_only_on_the_same_dc_moving_forward(
    previous: Any, dc: DcState, full: bool, kind: str
) -> None:
    assert _mode(previous, dc, CFG, full, NOW)[0] == kind  # type: ignore[arg-type]


@given(st.integers(1, 10_000), st.integers(0, 100_000), st.integers(1, 8), st.integers(0, 200_000))
def test_usn_slices_cover_every_change_exactly_once(
    usn_from: int, span: int, count: int, usn: int
) -> None:
    slices = usn_slices(usn_from, usn_from + span, count)
    holders = [
        (lo, hi) for lo, hi in slices if (lo is None or usn >= lo) and (hi is None or usn < hi)
    ]
    assert len(holders) == (1 if usn >= usn_from or slices[0][0] is None else 0)
    assert slices[-1][1] is None  # changes made while the sync reads are never cut off


def test_usn_filters_hold_integers_only() -> None:
    assert usn_range(5, 9) == "(uSNChanged>=5)(!(uSNChanged>=9))"
    assert usn_range(None, None) == ""


def test_a_renamed_group_gives_and_takes_rights_by_name() -> None:
    old = {"a": view("alice", "enabled", "g1"), "b": view("bob", "enabled", "g2")}
    before = {"g1": "hpc-admins", "g2": "lab-users"}
    after = {"g1": "hpc-admins-old", "g2": "hpc-admins"}
    got = [
        (c.kind, c.user, c.group)
        for c in access_changes(old, old, before, after, frozenset({"hpc-admins"}))
    ]
    assert got == [
        ("membership.removed", "alice", "hpc-admins"),
        ("membership.added", "bob", "hpc-admins"),
    ]


def test_look_alike_group_names_never_match_a_mapped_name() -> None:
    old = {"a": view("alice", "enabled")}
    new = {"a": view("alice", "enabled", "g1")}
    names = {"g1": "\u212a8s-admins"}  # KELVIN SIGN, lower-cases to "k"
    assert access_changes(old, new, names, names, frozenset({"k8s-admins"})) == []


def test_distribution_lists_carry_no_rights_and_deleted_dns_are_dropped() -> None:
    alice = user("alice", "CN=alice,DC=x", 1105, primary=None)
    mail = GroupRecord(
        "g-mail", f"{DOMAIN}-3001", "mail", "CN=mail,DC=x", None, 1, ("CN=alice,DC=x",), False
    )
    admins = group("admins", 3002, "CN=mail,DC=x")
    assert memberships([alice], [mail, admins], DOMAIN)["u-alice"] == {}
    stale = group("ops", 3003, "CN=alice,DC=x", "CN=bob,DC=x")
    kept = drop_members({"g-ops": stale}, [user("alice", "cn=ALICE,dc=x", 1105)])
    assert kept["g-ops"].members == ("CN=bob,DC=x",)


def test_system_names_and_system_ids_are_never_usable() -> None:
    assert "system account" in (
        user_ids(user("root", "CN=r", 1400), DOMAIN, IdRange()).problem or ""
    )
    low = user_ids(user("eve", "CN=e", 1401, uid_number=10, gid_number=10000), DOMAIN, IdRange())
    assert low.problem == "uid 10 is in the system range (below directory.min_id)"
    wheel = user_ids(user("eve", "CN=e", 1401, uid_number=10001, gid_number=27), DOMAIN, IdRange())
    assert wheel.problem is not None and "gid 27" in wheel.problem


def test_two_accounts_on_one_uid_are_both_unusable() -> None:
    from broker.directory.fetch import DomainInfo
    from broker.directory.sync import _stored

    records = {
        "u-a": user("a", "CN=a", 1500, uid_number=20000, gid_number=20000),
        "u-b": user("b", "CN=b", 1501, uid_number=20000, gid_number=20000),
        "u-c": user("c", "CN=c", 1502, uid_number=20001, gid_number=20000),
    }
    stored = _stored(records, DomainInfo(DOMAIN, None), IdRange(), NOW, 1000)
    assert [stored[g].problem is not None for g in ("u-a", "u-b", "u-c")] == [True, True, False]
