"""One directory sync: read AD, compute the new snapshot, commit it with its audit events.

Everything is read and computed before the write transaction opens, so a
DC failing half-way leaves the last good snapshot untouched. USNs are per
DC: an incremental sync continues only on the DC that gave the previous
USN; another DC, a DC whose USN went backwards, or an old full sync means
a full sync. A DC whose USN has not moved costs one rootDSE read.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal

from broker.audit import writer
from broker.config.settings import DirectorySection
from broker.core.errors import UnavailableError
from broker.core.identity import AccessChange
from broker.core.timeutil import utcnow
from broker.directory import build, snapshot
from broker.directory.connection import bind_to, connect, discard
from broker.directory.diff import UserView, access_changes
from broker.directory.fetch import DcState, DomainInfo, Fetched, Reader, fetch
from broker.directory.idmap import IdRange
from broker.directory.records import GroupRecord, UserRecord
from broker.store.db import Store

log = logging.getLogger("broker.directory")

SyncKind = Literal["full", "incremental", "unchanged"]


@dataclass(frozen=True)
class SyncReport:
    kind: SyncKind
    reason: str
    dc: str
    usn: int
    users: int
    groups: int
    rows_written: int
    changes: list[AccessChange] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    elapsed_s: float = 0.0


def id_range(cfg: DirectorySection) -> IdRange:
    return IdRange(cfg.idmap_range_min, cfg.idmap_range_max, cfg.idmap_range_size)


def _mode(
    previous: snapshot.SyncState | None,
    dc: DcState,
    cfg: DirectorySection,
    full: bool,
    now: datetime,
) -> tuple[SyncKind, str]:
    if full:
        return "full", "asked for a full sync"
    if previous is None:
        return "full", "first sync"
    if previous.dc_name != dc.name:
        return "full", f"answered by another DC than last time ({previous.dc_uri})"
    if dc.highest_usn < previous.highest_usn:
        return "full", "the DC's USN went backwards (restored from backup?)"
    if now - previous.full_at >= cfg.full_sync_interval:
        return "full", "the last full sync is older than directory.full_sync_interval"
    if dc.highest_usn == previous.highest_usn:
        return "unchanged", "nothing changed on the DC since the last sync"
    return "incremental", f"changes since USN {previous.highest_usn}"


def _views(
    users: Mapping[str, snapshot.StoredUser], members: Mapping[str, Mapping[str, bool]]
) -> dict[str, UserView]:
    return {
        guid: UserView(u.record.name, u.record.sid, u.state, frozenset(members.get(guid, {})))
        for guid, u in users.items()
    }


def _audit_target(kind: str, name: str) -> str:
    """Directory names can hold anything; the audit target stays printable and one line."""
    safe = name if name.isprintable() else name.encode("unicode_escape").decode("ascii")
    return f"{kind}:{safe[:200]}"


def sync(
    store: Store,
    cfg: DirectorySection,
    actor: str,
    *,
    full: bool = False,
    mapped_groups: frozenset[str] | None = None,
    publish: Callable[[list[AccessChange]], None] | None = None,
    now: datetime | None = None,
) -> SyncReport:
    """Bring the snapshot up to date with AD; raises UnavailableError (snapshot unchanged)."""
    started = time.monotonic()
    now = now or utcnow()
    conn, bind = connect(cfg)
    try:
        reader = Reader(conn, bind.uri, cfg.base_dn, cfg.page_size)
        dc = reader.dc_state()
        previous = snapshot.load_state(store.conn)
        kind, reason = _mode(previous, dc, cfg, full, now)
        if kind == "unchanged":
            assert previous is not None
            return _time_driven(
                store, previous, dc, actor, reason, mapped_groups, publish, now, started
            )
        domain = reader.domain()
        if kind == "incremental" and previous and reader.containers_changed(previous.highest_usn):
            # Members of a renamed or moved OU change DN without any USN of theirs moving.
            kind, reason = "full", "an OU or container changed since the last sync"
        since = None if kind == "full" or previous is None else previous.highest_usn
        fetched = fetch(
            _same_dc_reader(dc, cfg), since, dc.highest_usn, cfg.search_connections, reader
        )
    finally:
        discard(conn)
    read = _Read(kind, reason, fetched, dc, domain)
    kind, reason, changes, written, users, groups = _write(
        store, cfg, read, previous, actor, mapped_groups, now
    )
    _publish(publish, changes)
    return SyncReport(
        kind,
        reason,
        dc.uri,
        dc.highest_usn,
        users,
        groups,
        written,
        changes,
        fetched.skipped,
        time.monotonic() - started,
    )


def _same_dc_reader(
    dc: DcState, cfg: DirectorySection
) -> Callable[[], tuple[Reader, Callable[[], None]]]:
    """Extra connections for parallel searches, each to the DC whose USN was read."""

    def open_reader() -> tuple[Reader, Callable[[], None]]:
        # The same DC, whose USN was read above: USNs mean nothing on another, and a
        # load-balanced name may land elsewhere, so each connection checks.
        extra, _info = bind_to(dc.uri, cfg)
        extra_reader = Reader(extra, dc.uri, cfg.base_dn, cfg.page_size)
        if extra_reader.dc_state().name != dc.name:
            discard(extra)
            raise UnavailableError(
                f"{dc.uri}: a second connection reached another DC",
                fix="list each DC by its own name in directory.uris, not a load-balanced one",
            )
        return extra_reader, lambda: discard(extra)

    return open_reader


@dataclass(frozen=True)
class _Read:
    """What one sync read from the DC, before anything is written."""

    kind: SyncKind
    reason: str
    fetched: Fetched
    dc: DcState
    domain: DomainInfo


def _write(
    store: Store,
    cfg: DirectorySection,
    read: _Read,
    previous: snapshot.SyncState | None,
    actor: str,
    mapped_groups: frozenset[str] | None,
    now: datetime,
) -> tuple[SyncKind, str, list[AccessChange], int, int, int]:
    """Kind, reason, changes, rows written, users, groups. Everything here reads and writes
    inside one write transaction: a concurrent sync (the timer and an operator) either
    committed before we read, or waits for us."""
    ranges = id_range(cfg)
    try:
        with store.transaction() as db:
            current = snapshot.load_state(db)
            if current != previous:
                users, groups = snapshot.counts(db)
                why = "another sync committed while this one was reading"
                return "unchanged", why, [], 0, users, groups
            changes, written, users, groups = _commit(
                db, read, ranges, actor, mapped_groups, now, current, cfg.min_id
            )
            return read.kind, read.reason, changes, written, users, groups
    except sqlite3.Error as exc:
        raise UnavailableError(
            f"the store {store.path} could not be written: {exc}",
            fix="check the disk and that no other process holds the database; the last good"
            " snapshot is unchanged",
        ) from exc


def _commit(
    db: sqlite3.Connection,
    read: _Read,
    ranges: IdRange,
    actor: str,
    mapped_groups: frozenset[str] | None,
    now: datetime,
    previous: snapshot.SyncState | None,
    min_id: int,
) -> tuple[list[AccessChange], int, int, int]:
    """Compute the new snapshot against the stored one and write the difference."""
    kind, fetched, dc, domain = read.kind, read.fetched, read.dc, read.domain
    old_stored = snapshot.load_users(db)
    old_groups = snapshot.load_groups(db)
    old_members = snapshot.load_memberships(db)
    user_records, group_records = _records(
        kind, fetched, {g: u.record for g, u in old_stored.items()}, old_groups
    )
    new_stored = _stored(user_records, domain, ranges, now, min_id)
    new_members = build.memberships(user_records.values(), group_records.values(), domain.sid)
    new_groups = {g: (r, build.group_gid(r, ranges)) for g, r in group_records.items()}
    changes = (
        []
        if previous is None
        else access_changes(
            _views(old_stored, old_members),
            _views(new_stored, new_members),
            {g: r.name for g, r in old_groups.items()},
            {g: r.name for g, r in group_records.items()},
            mapped_groups,
        )
    )
    written = snapshot.write_difference(
        db, old_stored, new_stored, old_groups, new_groups, old_members, new_members
    )
    snapshot.save_state(
        db,
        snapshot.SyncState(
            dc_uri=dc.uri,
            dc_name=dc.name,
            highest_usn=dc.highest_usn,
            domain_sid=domain.sid,
            lockout_duration=domain.lockout_duration,
            full_at=now if kind == "full" or previous is None else previous.full_at,
            changed_at=now if written else previous.changed_at if previous else now,
            checked_at=now,
        ),
    )
    events = [_change_event(actor, c) for c in changes]
    if written or kind == "full":
        counts = {"users": len(new_stored), "groups": len(new_groups), "rows_written": written}
        events.append(_sync_event(actor, read, counts, len(changes), previous is None))
    writer.record_many(db, events, now)
    return changes, written, len(new_stored), len(new_groups)


def _records(
    kind: SyncKind,
    fetched: Fetched,
    old_users: dict[str, UserRecord],
    old_groups: dict[str, GroupRecord],
) -> tuple[dict[str, UserRecord], dict[str, GroupRecord]]:
    """The directory's users and groups now: what a full read found, or the stored ones
    with an incremental read's changes and deletions applied."""
    if kind == "full":
        users = {u.guid: u for u in fetched.users if u.guid not in fetched.unreadable}
        groups = {g.guid: g for g in fetched.groups if g.guid not in fetched.unreadable}
        return users, groups
    if fetched.present is None:  # never guess: absence here would delete everyone
        raise RuntimeError("an incremental read must say which objects exist")
    present = fetched.present
    gone = {g for g in (*old_users, *old_groups) if g not in present} | fetched.unreadable
    users = build.merge(old_users, fetched.users, gone)
    groups = build.merge(old_groups, fetched.groups, gone)
    # A renamed or moved member changes the groups' member values but not their USN,
    # and a deleted one's DN must not stay behind for a new object to inherit.
    everything_old: list[UserRecord | GroupRecord] = [*old_users.values(), *old_groups.values()]
    groups = build.follow_moves(groups, everything_old, fetched)
    groups = build.drop_members(groups, [r for r in everything_old if r.guid in gone])
    return users, groups


def _sync_event(
    actor: str, read: _Read, counts: dict[str, int], changes: int, baseline: bool
) -> writer.EventInput:
    return writer.EventInput(
        actor,
        "directory.sync",
        _audit_target("dc", read.dc.uri),
        details={
            "kind": read.kind,
            "reason": read.reason,
            "dc": read.dc.name,
            "usn": read.dc.highest_usn,
            **counts,
            "changes": changes,
            "skipped": read.fetched.skipped[:20],
            "baseline": baseline,
        },
    )


def _stored(
    records: Mapping[str, UserRecord],
    domain: DomainInfo,
    ranges: IdRange,
    now: datetime,
    min_id: int,
) -> dict[str, snapshot.StoredUser]:
    out = {}
    holders: dict[int, int] = {}
    for guid, record in records.items():
        ids = build.user_ids(record, domain.sid, ranges, min_id)
        state = build.state_of(record, domain.lockout_duration, now)
        out[guid] = snapshot.StoredUser(record, ids.uid, ids.gid, ids.problem, state)
        if ids.uid is not None:
            holders[ids.uid] = holders.get(ids.uid, 0) + 1
    # Two accounts on one uid are one Unix user: neither may hold a right.
    for guid, stored in out.items():
        if stored.uid is not None and holders[stored.uid] > 1 and stored.problem is None:
            out[guid] = replace(stored, problem=f"uid {stored.uid} is shared with another account")
    return out


def _change_event(actor: str, change: AccessChange) -> writer.EventInput:
    details: dict[str, str] = {"sid": change.user_sid}
    if change.group is not None:
        details["group"] = change.group
    if change.before is not None:
        details["before"] = change.before
    if change.after is not None:
        details["after"] = change.after
    return writer.EventInput(
        actor, change.action, _audit_target("user", change.user), details=details
    )


def _time_driven(
    store: Store,
    previous: snapshot.SyncState,
    dc: DcState,
    actor: str,
    reason: str,
    mapped_groups: frozenset[str] | None,
    publish: Callable[[list[AccessChange]], None] | None,
    now: datetime,
    started: float,
) -> SyncReport:
    """Nothing changed in AD, but time passes: accounts expire and lockouts end."""
    with store.transaction() as db:
        if snapshot.load_state(db) != previous:
            return SyncReport(
                "unchanged", "another sync committed meanwhile", dc.uri, dc.highest_usn, 0, 0, 0
            )
        candidates = snapshot.load_time_sensitive_users(db)
        moved = {
            guid: replace(u, state=build.state_of(u.record, previous.lockout_duration, now))
            for guid, u in candidates.items()
        }
        moved = {g: u for g, u in moved.items() if u.state != candidates[g].state}
        changes: list[AccessChange] = []
        if moved:
            members = snapshot.load_memberships_of(db, list(moved))
            groups = snapshot.group_names(db)
            changes = access_changes(
                _views({g: candidates[g] for g in moved}, members),
                _views(moved, members),
                groups,
                groups,
                mapped_groups,
            )
            snapshot.update_states(db, moved)
            writer.record_many(db, [_change_event(actor, c) for c in changes], now)
        snapshot.save_state(db, replace(previous, checked_at=now))
    _publish(publish, changes)
    users, groups_count = snapshot.counts(store.conn)
    return SyncReport(
        "unchanged",
        reason,
        dc.uri,
        dc.highest_usn,
        users,
        groups_count,
        len(moved),
        changes,
        [],
        time.monotonic() - started,
    )


def _publish(
    publish: Callable[[list[AccessChange]], None] | None, changes: list[AccessChange]
) -> None:
    """Tell subscribers after the commit; one failing must not undo or hide the sync."""
    if publish is None or not changes:
        return
    try:
        publish(changes)
    except Exception:
        log.exception(
            "a subscriber failed on %d access changes (all are in the audit chain)", len(changes)
        )
