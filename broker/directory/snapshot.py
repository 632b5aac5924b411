"""The directory snapshot in the store: load, write the difference, and read it as a Snapshot.

Writes happen only inside the sync's single transaction; readers get the
last committed snapshot, computed into `Account` values at the moment they
ask (so an account that expired since the last sync reads as expired).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from broker.core.identity import (
    NEVER,
    Account,
    AccountState,
    Group,
    account_state,
    fold_name,
    lockout_end,
    normalise_account_name,
    nt_time_to_datetime,
)
from broker.core.timeutil import from_text, to_text
from broker.directory.records import GroupRecord, UserRecord

_USER_COLUMNS = (
    "guid, sid, name, upn, dn, uid_number, gid_number, primary_group_rid, uac, account_expires,"
    " lockout_time, last_logon, created, changed, usn_changed, spns, uid, gid, problem, state"
)
# Queries are built once from the constant column list above; values are always bound.
_SELECT_USERS = f"SELECT {_USER_COLUMNS} FROM dir_users"  # noqa: S608
# An upsert, never REPLACE: REPLACE deletes the row first, and the cascade would take its
# memberships with it.
_INSERT_USER = (
    f"INSERT INTO dir_users ({_USER_COLUMNS}) VALUES ({', '.join('?' * 20)})"  # noqa: S608
    " ON CONFLICT (guid) DO UPDATE SET "
    + ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in _USER_COLUMNS.split(",")[1:])
)
# Accounts whose state can change with time alone: an expiry date ahead, or a lockout running.
_TIME_SENSITIVE = (
    f"{_SELECT_USERS} WHERE (account_expires > 0 AND account_expires < {NEVER}"
    " AND state NOT IN ('expired', 'disabled')) OR state = 'locked'"
)


@dataclass(frozen=True)
class SyncState:
    dc_uri: str
    dc_name: str
    highest_usn: int
    domain_sid: str
    lockout_duration: timedelta | None
    full_at: datetime
    changed_at: datetime
    checked_at: datetime


@dataclass(frozen=True)
class StoredUser:
    record: UserRecord
    uid: int | None
    gid: int | None
    problem: str | None
    state: AccountState


def load_state(conn: sqlite3.Connection) -> SyncState | None:
    row = conn.execute(
        "SELECT dc_uri, dc_name, highest_usn, domain_sid, lockout_duration_s, full_at,"
        " changed_at, checked_at FROM dir_sync WHERE id = 1"
    ).fetchone()
    if row is None:
        return None
    lockout = None if row[4] is None else timedelta(seconds=row[4])
    return SyncState(
        row[0],
        row[1],
        row[2],
        row[3],
        lockout,
        from_text(row[5]),
        from_text(row[6]),
        from_text(row[7]),
    )


def save_state(conn: sqlite3.Connection, state: SyncState) -> None:
    lockout = (
        None if state.lockout_duration is None else int(state.lockout_duration.total_seconds())
    )
    conn.execute(
        "INSERT INTO dir_sync (id, dc_uri, dc_name, highest_usn, domain_sid,"
        " lockout_duration_s, full_at, changed_at, checked_at) VALUES (1, ?, ?, ?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (id) DO UPDATE SET dc_uri = excluded.dc_uri, dc_name = excluded.dc_name,"
        " highest_usn = excluded.highest_usn, domain_sid = excluded.domain_sid,"
        " lockout_duration_s = excluded.lockout_duration_s, full_at = excluded.full_at,"
        " changed_at = excluded.changed_at, checked_at = excluded.checked_at",
        (
            state.dc_uri,
            state.dc_name,
            state.highest_usn,
            state.domain_sid,
            lockout,
            to_text(state.full_at),
            to_text(state.changed_at),
            to_text(state.checked_at),
        ),
    )


def _user_record(row: Any) -> UserRecord:
    return UserRecord(
        guid=row[0],
        sid=row[1],
        name=row[2],
        upn=row[3],
        dn=row[4],
        uid_number=row[5],
        gid_number=row[6],
        primary_group_rid=row[7],
        uac=row[8],
        account_expires=row[9],
        lockout_time=row[10],
        last_logon=row[11],
        created=None if row[12] is None else from_text(row[12]),
        changed=None if row[13] is None else from_text(row[13]),
        usn_changed=row[14],
        spns=tuple(json.loads(row[15])),
    )


def _stored_users(rows: Iterable[Any]) -> dict[str, StoredUser]:
    users = {}
    for row in rows:
        record = _user_record(row)
        users[record.guid] = StoredUser(record, row[16], row[17], row[18], row[19])
    return users


def load_users(conn: sqlite3.Connection) -> dict[str, StoredUser]:
    return _stored_users(conn.execute(_SELECT_USERS))


def load_time_sensitive_users(conn: sqlite3.Connection) -> dict[str, StoredUser]:
    return _stored_users(conn.execute(_TIME_SENSITIVE))


def update_states(conn: sqlite3.Connection, users: Mapping[str, StoredUser]) -> None:
    conn.executemany(
        "UPDATE dir_users SET state = ? WHERE guid = ?", [(u.state, g) for g, u in users.items()]
    )


def group_names(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT guid, name FROM dir_groups").fetchall())


def counts(conn: sqlite3.Connection) -> tuple[int, int]:
    users = conn.execute("SELECT count(*) FROM dir_users").fetchone()[0]
    groups = conn.execute("SELECT count(*) FROM dir_groups").fetchone()[0]
    return int(users), int(groups)


def load_groups(conn: sqlite3.Connection) -> dict[str, GroupRecord]:
    groups = {}
    for guid, sid, name, dn, gid_number, usn, members, security in conn.execute(
        "SELECT guid, sid, name, dn, gid_number, usn_changed, members, security FROM dir_groups"
    ):
        groups[guid] = GroupRecord(
            guid, sid, name, dn, gid_number, usn, tuple(json.loads(members)), bool(security)
        )
    return groups


def load_memberships(conn: sqlite3.Connection) -> dict[str, dict[str, bool]]:
    result: dict[str, dict[str, bool]] = {}
    for user, group, direct in conn.execute(
        "SELECT user_guid, group_guid, direct FROM dir_memberships"
    ):
        result.setdefault(user, {})[group] = bool(direct)
    return result


def load_memberships_of(conn: sqlite3.Connection, guids: list[str]) -> dict[str, dict[str, bool]]:
    result: dict[str, dict[str, bool]] = {}
    for guid in guids:
        for group, direct in conn.execute(
            "SELECT group_guid, direct FROM dir_memberships WHERE user_guid = ?", (guid,)
        ):
            result.setdefault(guid, {})[group] = bool(direct)
    return result


def _user_row(user: StoredUser) -> tuple[object, ...]:
    r = user.record
    return (
        r.guid,
        r.sid,
        r.name,
        r.upn,
        r.dn,
        r.uid_number,
        r.gid_number,
        r.primary_group_rid,
        r.uac,
        r.account_expires,
        r.lockout_time,
        r.last_logon,
        None if r.created is None else to_text(r.created),
        None if r.changed is None else to_text(r.changed),
        r.usn_changed,
        json.dumps(list(r.spns)),
        user.uid,
        user.gid,
        user.problem,
        user.state,
    )


def write_difference(
    conn: sqlite3.Connection,
    old_users: Mapping[str, StoredUser],
    new_users: Mapping[str, StoredUser],
    old_groups: Mapping[str, GroupRecord],
    new_groups: Mapping[str, tuple[GroupRecord, int | None]],
    old_members: Mapping[str, Mapping[str, bool]],
    new_members: Mapping[str, Mapping[str, bool]],
) -> int:
    """Write only what differs; returns how many rows changed. Caller holds the transaction."""
    written = 0
    gone_users = [(g,) for g in old_users.keys() - new_users.keys()]
    gone_groups = [(g,) for g in old_groups.keys() - new_groups.keys()]
    conn.executemany("DELETE FROM dir_users WHERE guid = ?", gone_users)
    conn.executemany("DELETE FROM dir_groups WHERE guid = ?", gone_groups)
    written += len(gone_users) + len(gone_groups)
    users = [_user_row(u) for g, u in new_users.items() if old_users.get(g) != u]
    conn.executemany(_INSERT_USER, users)
    groups = [
        (
            r.guid,
            r.sid,
            r.name,
            r.dn,
            r.gid_number,
            r.usn_changed,
            json.dumps(list(r.members)),
            int(r.security),
            gid,
        )
        for guid, (r, gid) in new_groups.items()
        if old_groups.get(guid) != r
    ]
    conn.executemany(
        "INSERT INTO dir_groups (guid, sid, name, dn, gid_number, usn_changed, members,"
        " security, gid) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (guid) DO UPDATE SET"
        " sid = excluded.sid, name = excluded.name, dn = excluded.dn,"
        " gid_number = excluded.gid_number, usn_changed = excluded.usn_changed,"
        " members = excluded.members, security = excluded.security, gid = excluded.gid",
        groups,
    )
    written += len(users) + len(groups)
    old_rows = {(u, g, d) for u, row in old_members.items() for g, d in row.items()}
    new_rows = {(u, g, d) for u, row in new_members.items() for g, d in row.items()}
    removed = [(u, g) for u, g, _d in old_rows - new_rows]
    added = [(u, g, int(d)) for u, g, d in new_rows - old_rows]
    conn.executemany("DELETE FROM dir_memberships WHERE user_guid = ? AND group_guid = ?", removed)
    conn.executemany(
        "INSERT INTO dir_memberships (user_guid, group_guid, direct) VALUES (?, ?, ?)", added
    )
    return written + len(removed) + len(added)


class StoreSnapshot:
    """The committed snapshot as `Account` and `Group` values, evaluated at `now`."""

    def __init__(self, conn: sqlite3.Connection, now: datetime) -> None:
        self._conn = conn
        self._now = now
        state = load_state(conn)
        self.state = state
        self._lockout = state.lockout_duration if state else None

    def _account(self, row: Any, groups: Iterable[tuple[str, bool]]) -> Account:
        record = _user_record(row)
        pairs = list(groups)
        expires = nt_time_to_datetime(record.account_expires)
        locked = lockout_end(nt_time_to_datetime(record.lockout_time), self._lockout)
        stored_uid, stored_gid, problem = row[16], row[17], row[18]
        return Account(
            name=record.name,
            upn=record.upn,
            sid=record.sid,
            dn=record.dn,
            uid=-1 if stored_uid is None else stored_uid,
            gid=-1 if stored_gid is None else stored_gid,
            groups=frozenset(fold_name(name) for name, _direct in pairs),
            direct_groups=frozenset(fold_name(name) for name, direct in pairs if direct),
            state=account_state(
                user_account_control=record.uac,
                expires_at=expires,
                locked_until=locked,
                deleted=False,
                now=self._now,
            ),
            last_logon=nt_time_to_datetime(record.last_logon),
            created=record.created,
            expires_at=expires,
            locked_until=locked if locked is not None and locked > self._now else None,
            service_principals=record.spns,
            problem=problem,
        )

    def account(self, name: str) -> Account | None:
        row = self._conn.execute(
            f"{_SELECT_USERS} WHERE name = ?",
            (normalise_account_name(name),),
        ).fetchone()
        if row is None:
            return None
        groups = self._conn.execute(
            "SELECT g.name, m.direct FROM dir_memberships m JOIN dir_groups g"
            " ON g.guid = m.group_guid WHERE m.user_guid = ?",
            (row[0],),
        ).fetchall()
        return self._account(row, groups)

    def accounts(self) -> Iterator[Account]:
        names = dict(self._conn.execute("SELECT guid, name FROM dir_groups").fetchall())
        member_of: dict[str, list[tuple[str, bool]]] = {}
        for user, group, direct in self._conn.execute(
            "SELECT user_guid, group_guid, direct FROM dir_memberships"
        ):
            member_of.setdefault(user, []).append((names[group], bool(direct)))
        for row in self._conn.execute(f"{_SELECT_USERS} ORDER BY name"):
            yield self._account(row, member_of.get(str(row[0]), []))

    def member_names(self, group: str) -> list[str]:
        """Accounts in `group`, nested membership included (one query, no Account built)."""
        rows = self._conn.execute(
            "SELECT u.name FROM dir_users u JOIN dir_memberships m ON m.user_guid = u.guid"
            " JOIN dir_groups g ON g.guid = m.group_guid WHERE lower(g.name) = lower(?)",
            (group,),
        )
        return [str(r[0]) for r in rows]

    def _group(self, row: Any) -> Group:
        _guid, sid, name, dn, gid, members = row
        return Group(name, sid, dn, -1 if gid is None else gid, members)

    _GROUP_QUERY = (
        "SELECT g.guid, g.sid, g.name, g.dn, g.gid,"
        " (SELECT count(*) FROM dir_memberships m WHERE m.group_guid = g.guid) FROM dir_groups g"
    )

    def group(self, name: str) -> Group | None:
        row = self._conn.execute(
            f"{self._GROUP_QUERY} WHERE lower(g.name) = lower(?)", (name,)
        ).fetchone()
        return None if row is None else self._group(row)

    def groups(self) -> Iterator[Group]:
        # lower() on both engines instead of SQLite's COLLATE NOCASE; g.name breaks ties.
        for row in self._conn.execute(f"{self._GROUP_QUERY} ORDER BY lower(g.name), g.name"):
            yield self._group(row)
