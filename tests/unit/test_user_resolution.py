"""Every spelling of a user reaches the same account on every operator path (issue 20, item 3).

`broker revoke --user ALICE` once answered "nothing active" while alice kept root. The pure
rule is tested first; then the real daemon and CLI: revoke, grants list, sessions list and
MFA status with `ALICE`, `HPC\\alice` and `alice@HPC.TEST`, a user who has left the
directory, and an unknown user (exit 1, one line, never an empty answer).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from broker.app import App
from broker.config.loader import load_settings
from broker.core.errors import BadRequestError, RefusedError
from broker.core.timeutil import utcnow
from broker.core.users import Domain, NamedUser, resolve_user
from broker.grants import rows
from broker.grants.model import Grant
from tests.helpers import run_broker
from tests.unit.policy_samples import account, lab_snapshot
from tests.unit.test_policy_cli import seed_directory

SPELLINGS = (
    "alice",
    "ALICE",
    "Alice",
    "HPC\\alice",
    "hpc\\ALICE",
    "alice@HPC.TEST",
    "Alice@hpc.test",
)
ALICE_SID = "S-1-5-21-1-2-3-1100"  # what seed_directory gives alice
ZED_SID = "S-1-5-21-1-2-3-9999"  # a user deleted from AD who still holds a grant


# ---------------------------------------------------------------- the rule, pure


@pytest.mark.parametrize("text", SPELLINGS)
def test_every_spelling_resolves_to_the_directory_account(text: str) -> None:
    alice = account("alice")
    assert resolve_user(text, lab_snapshot(), lambda _name: False) == NamedUser("alice", alice.sid)


def test_the_directory_wins_over_the_records() -> None:
    alice = account("alice")
    found = resolve_user("ALICE", lab_snapshot(), lambda _name: True)
    assert found.sid == alice.sid and found.in_directory


def test_a_departed_user_is_found_by_the_name_in_the_records_only_where_allowed() -> None:
    recorded = {"zed"}.__contains__
    assert resolve_user("zed", lab_snapshot(), recorded) == NamedUser("zed", None)
    assert resolve_user("HPC\\ZED", lab_snapshot(), recorded) == NamedUser("zed", None)
    with pytest.raises(RefusedError, match="no user 'zed' in the directory snapshot;"):
        resolve_user("zed", lab_snapshot())  # MFA: directory accounts only


def test_an_unknown_user_is_an_error_that_says_how_to_find_the_name() -> None:
    with pytest.raises(RefusedError) as caught:
        resolve_user("alicia", lab_snapshot(), lambda _name: False)
    line = caught.value.one_line()
    assert "no user 'alicia' in the directory snapshot or the broker's records" in line
    assert "broker accounts list" in line and "broker sync" in line


@pytest.mark.parametrize(
    "text", ["", "alice;id", "al ice", "alice\n", "../alice", "a" * 40, "HPC\\", "@HPC", "ålice"]
)
def test_spellings_outside_the_allow_list_never_reach_a_lookup(text: str) -> None:
    def recorded(_name: str) -> bool:
        raise AssertionError("looked up")

    with pytest.raises(BadRequestError, match="a user is named as alice"):
        resolve_user(text, lab_snapshot(), recorded)


# ---------------------------------------------------------------- through the daemon


def _grant(grant_id: str, user: str, sid: str) -> Grant:
    now = utcnow()
    return Grant(
        id=grant_id,
        user=user,
        sid=sid,
        role="gpu-admin",
        runas="root",
        commands="ALL",
        command_sets=(),
        nodes="gpu01",  # folded for people; on no node in grant_nodes
        not_before=now - timedelta(minutes=5),
        not_after=now + timedelta(hours=1),
        reason="INC-1",
        approvers=(),
        policy_sha256="0" * 64,
        login=False,
        workloads=False,
        max_sessions=1,
        request_id=None,
        created_at=now - timedelta(minutes=5),
        created_by="unix:root",
        state="active",
    )


def seed_grants(config: Path, *grants: Grant) -> None:
    """Grants as the store holds them (on no node: revoking them needs no SSH)."""
    app = App(load_settings(config))
    with app.ready_store().transaction() as conn:
        for grant in grants:
            rows.insert_grant(conn, grant, [])
    app.close()


@pytest.fixture
def people(daemon: Path) -> Path:
    seed_directory(daemon)
    seed_grants(
        daemon,
        _grant("g" + "a" * 16, "alice", ALICE_SID),
        _grant("g" + "b" * 16, "zed", ZED_SID),
    )
    return daemon


def _grant_ids(config: Path, *args: str) -> list[str]:
    result = run_broker("grants", "list", "--json", *args, config=config)
    assert result.returncode == 0, result.stderr
    return [g["id"] for g in json.loads(result.stdout)]


def test_grants_list_finds_alice_under_every_spelling(people: Path) -> None:
    for text in SPELLINGS:
        assert _grant_ids(people, "--user", text) == ["g" + "a" * 16], text


@pytest.mark.parametrize("text", ["ALICE", "HPC\\alice", "alice@HPC.TEST"])
def test_revoke_by_any_spelling_cuts_alice_off(people: Path, text: str) -> None:
    result = run_broker("revoke", "--user", text, config=people)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"revoked: g{'a' * 16}"
    assert _grant_ids(people, "--user", "alice", "--active") == []
    assert _grant_ids(people, "--active") == ["g" + "b" * 16]  # zed's is untouched


def test_a_user_deleted_from_ad_can_still_be_revoked_by_name(people: Path) -> None:
    result = run_broker("revoke", "--user", "ZED", config=people)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"revoked: g{'b' * 16}"
    assert _grant_ids(people, "--active") == ["g" + "a" * 16]


def test_a_name_reused_by_a_new_account_is_not_the_departed_user(daemon: Path) -> None:
    # Review finding: matching grants by name too made a new `alice` the owner of a
    # departed alice's grants (listing them, revoked with hers) and a departed user's grants
    # under an earlier name were missed.
    seed_directory(daemon)
    departed = "S-1-5-21-1-2-3-8888"
    seed_grants(
        daemon,
        _grant("g" + "c" * 16, "alice", departed),  # an earlier alice, gone from AD
        _grant("g" + "d" * 16, "zed", ZED_SID),  # zed, gone, once known as ...
        _grant("g" + "e" * 16, "zed-old", ZED_SID),  # ... zed-old
    )
    assert _grant_ids(daemon, "--user", "alice") == []  # the current alice holds none
    assert sorted(_grant_ids(daemon, "--user", "zed")) == ["g" + "d" * 16, "g" + "e" * 16]
    result = run_broker("revoke", "--user", "zed", config=daemon)
    assert result.returncode == 0, result.stderr
    assert _grant_ids(daemon, "--active") == ["g" + "c" * 16]


@pytest.mark.parametrize(
    "args",
    [
        ("revoke", "--user", "ALICIA"),
        ("grants", "list", "--user", "alicia"),
        ("sessions", "list", "--user", "HPC\\alicia"),
        ("mfa", "status", "alicia@HPC.TEST"),
        ("mfa", "reset", "--yes", "zed"),  # MFA: directory accounts only, no record fallback
    ],
)
def test_an_unknown_user_is_exit_1_with_one_line_never_nothing(
    people: Path, args: tuple[str, ...]
) -> None:
    result = run_broker(*args, config=people)
    assert result.returncode == 1, result.stdout
    assert result.stdout == ""
    [line] = result.stderr.strip().splitlines()
    assert "in the directory snapshot" in line and "broker accounts list" in line
    assert _grant_ids(people, "--active") == ["g" + "b" * 16, "g" + "a" * 16]


def test_a_spelling_outside_the_allow_list_is_refused_before_any_lookup(people: Path) -> None:
    result = run_broker("revoke", "--user", "alice;id", config=people)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert "user" in line
    assert _grant_ids(people, "--active") == ["g" + "b" * 16, "g" + "a" * 16]


def test_sessions_and_mfa_accept_every_spelling(people: Path) -> None:
    for text in ("ALICE", "HPC\\alice", "alice@HPC.TEST"):
        listed = run_broker("sessions", "list", "--user", text, "--json", config=people)
        assert listed.returncode == 0, listed.stderr
        assert json.loads(listed.stdout) == []
        status = run_broker("mfa", "status", text, "--json", config=people)
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["account"] == "alice"
    departed = run_broker("sessions", "list", "--user", "zed", "--json", config=people)
    assert departed.returncode == 0, departed.stderr  # known from its grant


@pytest.mark.parametrize(
    "text", ["LAB\\alice", "alice@OTHER.ORG", "hpc2\\alice", "alice@HPC.TEST.EVIL"]
)
def test_a_spelling_naming_another_domain_is_refused_not_folded(text: str) -> None:
    """`LAB\\alice` is somebody else's alice: answering for this domain's would revoke or
    list the wrong person."""
    domain = Domain("HPC", "HPC.TEST")
    with pytest.raises(RefusedError) as caught:
        resolve_user(text, lab_snapshot(), lambda _name: False, domain)
    assert "names an account of domain" in caught.value.one_line()
    assert "this broker's directory is HPC (HPC.TEST)" in caught.value.one_line()
    for own in SPELLINGS:
        assert resolve_user(own, lab_snapshot(), None, domain).name == "alice"


def test_revoke_by_user_ends_every_active_grant_not_only_the_first_thousand(
    daemon: Path,
) -> None:
    """Review finding: revoking by user read at most 1000 grants, so a user holding more
    kept the rest."""
    seed_directory(daemon)
    seed_grants(daemon, *(_grant(f"g{n:016x}", "alice", ALICE_SID) for n in range(1005)))
    result = run_broker("revoke", "--user", "alice", config=daemon, timeout=300)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) == 1 + 1005, result.stdout[:200]  # "revoked:" and ids
    still = run_broker("grants", "list", "--active", "--json", config=daemon)
    assert json.loads(still.stdout) == []
