"""From AD records to the snapshot: POSIX ids, account state, transitive membership. Pure.

Membership is computed here from the groups' direct `member` lists (plus
each user's primary group, which AD never lists as a member), instead of
asking the DC per user (tokenGroups) or per group (LDAP_MATCHING_RULE_IN_CHAIN):
the sync already has every list, and the closure of 20,000 users over
2,000 nested groups takes a fraction of a second (docs/benchmarks.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import TypeVar

from broker.core.identity import (
    AccountState,
    account_state,
    lockout_end,
    nt_time_to_datetime,
)
from broker.directory.fetch import Fetched
from broker.directory.idmap import IdMapError, IdRange, posix_id
from broker.directory.records import GroupRecord, UserRecord

R = TypeVar("R", UserRecord, GroupRecord)
Memberships = dict[str, dict[str, bool]]  # user guid -> group guid -> direct?


@dataclass(frozen=True)
class UserIds:
    uid: int | None
    gid: int | None
    problem: str | None


# Names that are system accounts on every Linux node: an AD account with one of these
# names must never become that user through a grant.
RESERVED_NAMES = frozenset(
    [
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "nogroup",
        "adm",
        "wheel",
        "sudo",
        "staff",
        "shadow",
        "utmp",
        "tty",
        "disk",
        "kmem",
        "operator",
        "systemd-network",
        "systemd-resolve",
        "systemd-timesync",
        "messagebus",
        "sshd",
        "_apt",
        "polkitd",
        "slurm",
        "munge",
        "nfsnobody",
        "ntp",
        "chrony",
        "postfix",
        "dbus",
        "rpc",
        "rpcuser",
    ]
)


def user_ids(user: UserRecord, domain_sid: str, id_range: IdRange, min_id: int = 1000) -> UserIds:
    """uidNumber/gidNumber when AD has them, else SSSD's mapping of the SID (and primary group).

    An account that would land on a system name or in the system id range is unusable.
    """
    problem = user.problem
    if user.name in RESERVED_NAMES:
        problem = problem or f"{user.name!r} is a system account name on the nodes"
    uid, gid = user.uid_number, user.gid_number
    try:
        if uid is None:
            uid = posix_id(user.sid, id_range)
        if gid is None and user.primary_group_rid is not None:
            gid = posix_id(f"{domain_sid}-{user.primary_group_rid}", id_range)
    except IdMapError as exc:
        problem = problem or str(exc)
    if gid is None:
        problem = problem or "no gidNumber and no primary group to map one from"
    for kind, value in (("uid", uid), ("gid", gid)):
        if value is not None and value < min_id:
            problem = problem or f"{kind} {value} is in the system range (below directory.min_id)"
    return UserIds(uid, gid, problem)


def group_gid(group: GroupRecord, id_range: IdRange) -> int | None:
    if group.gid_number is not None:
        return group.gid_number
    try:
        return posix_id(group.sid, id_range)
    except IdMapError:
        return None


def state_of(
    user: UserRecord, lockout_duration: timedelta | None, now: datetime, *, deleted: bool = False
) -> AccountState:
    return account_state(
        user_account_control=user.uac,
        expires_at=nt_time_to_datetime(user.account_expires),
        locked_until=lockout_end(nt_time_to_datetime(user.lockout_time), lockout_duration),
        deleted=deleted,
        now=now,
    )


def memberships(
    users: Iterable[UserRecord], groups: Iterable[GroupRecord], domain_sid: str
) -> Memberships:
    """Every group each user is in, directly or through nesting (cycles are fine)."""
    # Only security groups carry rights (tokenGroups holds no distribution list either).
    group_list = [g for g in groups if g.security]
    group_by_sid = {g.sid: g.guid for g in group_list}
    parents: dict[str, set[str]] = {}  # lower-cased member DN -> guids of groups listing it
    for group in group_list:
        for member in group.members:
            parents.setdefault(member.lower(), set()).add(group.guid)
    group_dn = {g.guid: g.dn.lower() for g in group_list}
    ancestors: dict[str, frozenset[str]] = {}

    def up(guid: str) -> frozenset[str]:
        """Groups containing group `guid`, transitively (breadth first, cycle-safe)."""
        if guid not in ancestors:
            seen: set[str] = set()
            todo = list(parents.get(group_dn[guid], ()))
            while todo:
                parent = todo.pop()
                if parent not in seen:
                    seen.add(parent)
                    todo.extend(parents.get(group_dn[parent], ()))
            ancestors[guid] = frozenset(seen)
        return ancestors[guid]

    result: Memberships = {}
    for user in users:
        direct = set(parents.get(user.dn.lower(), ()))
        if user.primary_group_rid is not None:
            primary = group_by_sid.get(f"{domain_sid}-{user.primary_group_rid}")
            if primary is not None:
                direct.add(primary)
        row = dict.fromkeys(direct, True)
        for guid in direct:
            for ancestor in up(guid):
                row.setdefault(ancestor, False)
        result[user.guid] = row
    return result


def merge(old: Mapping[str, R], changed: Iterable[R], deleted: Iterable[str]) -> dict[str, R]:
    """The previous records with the changed ones replaced and the deleted ones gone."""
    merged = dict(old)
    for record in changed:
        merged[record.guid] = record
    for guid in deleted:
        merged.pop(guid, None)
    return merged


def follow_moves(
    groups: Mapping[str, GroupRecord],
    old: Iterable[UserRecord | GroupRecord],
    fetched: Fetched,
) -> dict[str, GroupRecord]:
    """Point member values at the new DN of every object that was renamed or moved.

    AD rewrites a group's member values when a member moves, without changing the
    group's uSNChanged, so an incremental read never returns that group again.
    """
    before = {record.guid: record.dn for record in old}
    now: list[UserRecord | GroupRecord] = [*fetched.users, *fetched.groups]
    moved = {
        before[r.guid].lower(): r.dn
        for r in now
        if r.guid in before and before[r.guid].lower() != r.dn.lower()
    }
    if not moved:
        return dict(groups)
    out = {}
    for guid, group in groups.items():
        members = tuple(moved.get(m.lower(), m) for m in group.members)
        out[guid] = group if members == group.members else replace(group, members=members)
    return out


def drop_members(
    groups: Mapping[str, GroupRecord], gone: Iterable[UserRecord | GroupRecord]
) -> dict[str, GroupRecord]:
    """Remove the DNs of deleted objects from member lists, so that a new object created
    later at the same DN inherits nothing."""
    dns = {record.dn.lower() for record in gone}
    if not dns:
        return dict(groups)
    out = {}
    for guid, group in groups.items():
        members = tuple(m for m in group.members if m.lower() not in dns)
        out[guid] = group if members == group.members else replace(group, members=members)
    return out
