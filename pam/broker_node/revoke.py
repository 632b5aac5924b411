"""Taking access away: `revoke` (grants and their sessions), `end-sessions` (sessions
only, the answer to an alert) and `reap` (what expired or was left behind)."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator

from .cgroups import Usage as CgroupUsage
from .cgroups import kill, session_cgroups, session_root, split_session
from .contract import (
    BREAK_GLASS,
    TMP_PREFIX,
    Paths,
    clean,
    format_utc,
    is_grant_id,
    is_posix_name,
    parse_utc,
)
from .files import (
    ensure_dir,
    fsync_dir,
    read_secure,
    remove_if_present,
    sorted_names,
    write_atomic,
)
from .grants import check_all
from .procs import kill_trees, proc_table_entry, process_started
from .spool import spool_event, tty_name
from .usage import Usage, id_list


def revoke(paths: Paths, payload: dict[str, object], now: int) -> dict[str, object]:
    """Mark the grants revoked, remove their files and end their sessions. The marker lasts
    until the grant's not_after as broker-grant-check parsed it (a year when it could not)."""
    ended_by = payload.get("ended_by", "revoke")
    if ended_by not in ("revoke", "quarantine"):
        raise Usage("ended_by must be revoke or quarantine")
    ids = id_list({k: v for k, v in payload.items() if k != "ended_by"}, "ids", is_grant_id)
    revoked: list[str] = []
    killed: list[int] = []
    errors: list[str] = []
    ends = (
        {g.name: g.not_after for g in check_all(paths, now).grants if g.id == g.name} if ids else {}
    )
    with ending_lock(paths):
        for grant_id in ids:
            try:
                not_after = ends.get(grant_id, now + 366 * 86400)
                ensure_dir(paths.revoked)
                marker = format_utc(max(not_after, now)) + "\n"
                write_atomic(paths.revoked, grant_id, marker.encode("ascii"))
                remove_if_present(os.path.join(paths.sudoers, f"broker_{grant_id}"))
                remove_if_present(os.path.join(paths.grants, grant_id))
                for directory in (paths.sudoers, paths.grants):
                    if os.path.isdir(directory):
                        fsync_dir(directory)
                revoked.append(grant_id)
                ended, problems = end_sessions(paths, grant_id, now, str(ended_by))
                killed += ended
                errors += problems
            except OSError as exc:
                errors.append(f"{grant_id}: {clean(exc, 200)}")
    return {"revoked": revoked, "killed": sorted(set(killed)), "errors": errors}


@contextlib.contextmanager
def ending_lock(paths: Paths) -> Iterator[None]:
    """Revoke's marker-then-kill and the watcher's pass over ended grants, one at a time:
    a watcher pass between a revoke's marker and its kill would end the sessions itself,
    as "revoke", where the revoke was a quarantine."""
    try:
        state = os.path.dirname(paths.revoked)  # /var/lib/broker: beside the markers
        ensure_dir(state)
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(os.path.join(state, ".end-lock"), flags, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:  # only the close events' wording depends on it: never stop a revoke
        yield
        return
    try:
        yield
    finally:
        os.close(fd)


def end_sessions_command(paths: Paths, payload: dict[str, object], now: int) -> dict[str, object]:
    """End the running elevated sessions recorded under these grant ids (or `break-glass`),
    without revoking anything: the response to an alert, not a revocation."""
    ids = id_list(payload, "grant_ids", lambda text: is_grant_id(text) or text == BREAK_GLASS)
    killed: list[int] = []
    errors: list[str] = []
    for grant_id in ids:
        try:
            ended, problems = end_sessions(paths, grant_id, now, "end-session")
        except OSError as exc:
            errors.append(f"{grant_id}: {clean(exc, 200)}")
            continue
        killed += ended
        errors += problems
    return {"killed": sorted(set(killed)), "errors": errors}


ENDED_BY = ("revoke", "end-session", "quarantine", "expiry")


def end_sessions(
    paths: Paths, grant_id: str, now: int, ended_by: str = "revoke"
) -> tuple[list[int], list[str]]:
    """End every session of the grant: its session cgroups as a whole (`cgroup.kill`: what
    the session started stays inside, setsid, nohup and daemons too), or, on a node without
    a delegated cgroup subtree, each recorded sudo with its process tree (weaker: a double
    fork escapes it). Spools a `close` event per record (how it ended, how many processes
    were killed) and a `usage` event per cgroup (what it used).

    A pid is only trusted while it is the process that was recorded (the record ends with
    its start time in clock ticks since boot, which no clock step changes): a pid reused
    by an unrelated process later is left alone, and its stale record goes. A record that
    cannot be read is kept and reported: nothing is said to have closed that was not ended.
    """
    root = session_root(paths, last=True)  # a stopped watcher's sessions are still killed
    records, roots, kept, errors = _read_records(paths, grant_id)
    groups: dict[str, list[str]] = {}
    for name, fields in records.items():
        rel = fields[5]
        if root is not None and split_session(rel) and os.path.isdir(os.path.join(root, rel)):
            groups.setdefault(rel, []).append(name)
    for path in session_cgroups(root, grant_id) if root is not None else []:
        groups.setdefault(os.path.basename(path), [])
    killed: list[int] = []
    counts: dict[str, int] = {}
    for rel in sorted(groups):
        pids, used, emptied = kill(os.path.join(root or "", rel))
        killed += pids
        for name in groups[rel]:
            counts[name] = len(pids)
        if not emptied:
            # stuck in the kernel (D state on a hung file system): killed again next pass,
            # its usage spooled once, when it has emptied
            errors.append(f"{grant_id}: cgroup {rel} still holds processes after cgroup.kill")
        else:
            _spool_usage(paths, rel, records, groups[rel], ended_by, len(pids), used, now)
    # Uncontained sessions, and a recorded sudo that left its cgroup (cgroup.kill missed
    # it; it is still the recorded process): by process tree.
    tree_roots = [pid for pid in roots if str(pid) not in counts or _still(paths, pid, records)]
    tree = kill_trees(paths, tree_roots) if tree_roots else []
    killed += tree
    directory = os.path.join(paths.sessions, grant_id)
    for name, (user, runas, tty, _started, _ticks, _rel) in records.items():
        if name not in kept and remove_if_present(os.path.join(directory, name)):
            contained = name in counts
            extra = {
                "ended_by": ended_by,
                "killed": counts[name] if contained else len(tree),
                "contained": contained,
            }
            spool_event(
                paths, "close", grant_id, _name(user), _name(runas), ended_by,
                tty_name(tty), int(name), now, extra=extra,
            )  # fmt: skip
    if os.path.isdir(directory) and not os.listdir(directory):
        os.rmdir(directory)
    return sorted(set(killed)), errors


def _still(paths: Paths, pid: int, records: dict[str, list[str]]) -> bool:
    """Does the recorded process still run (same start ticks) after its cgroup's kill?"""
    entry = proc_table_entry(paths, pid)
    ticks = records.get(str(pid), ["-"] * 6)[4]
    return entry is not None and ticks.isdigit() and entry[2] == int(ticks) and entry[3] != "Z"


def _name(user: str) -> str:
    return user if is_posix_name(user) else "-"


def _read_records(
    paths: Paths, grant_id: str
) -> tuple[dict[str, list[str]], list[int], set[str], list[str]]:
    """The grant's session records (six fields, `-` where absent), the live recorded pids
    that are what their record says, the records kept (unreadable), and the problems."""
    directory = os.path.join(paths.sessions, grant_id)
    try:
        names = [n for n in os.listdir(directory) if n.isascii() and n.isdigit() and len(n) <= 10]
    except FileNotFoundError:
        return {}, [], set(), []
    records: dict[str, list[str]] = {}
    roots: list[int] = []
    errors: list[str] = []
    kept: set[str] = set()
    for name in names:
        data = read_secure(os.path.join(directory, name))
        fields = data.decode("ascii", "replace").split() if isinstance(data, bytes) else []
        records[name] = [*fields, "-", "-", "-", "-", "-", "-"][:6]
        entry = proc_table_entry(paths, int(name))
        if entry is None:
            continue  # already gone: its record goes, with its close event
        mine = _recorded_process(paths, int(name), records[name], entry[2])
        if mine is None:
            kept.add(name)
            errors.append(f"{grant_id}: pid {name} runs but its record cannot be read; kept")
        elif not mine:
            errors.append(f"{grant_id}: pid {name} is not the recorded session; not killed")
        else:
            roots.append(int(name))
    return records, roots, kept, errors


def _spool_usage(
    paths: Paths,
    rel: str,
    records: dict[str, list[str]],
    names: list[str],
    ended_by: str,
    killed: int,
    used: CgroupUsage,
    now: int,
) -> None:
    """One `usage` event for an ended session cgroup: what it used, how it ended."""
    key, pid, _ticks = split_session(rel) or ("-", 0, 0)
    fields = records[names[0]] if names else ["-"] * 6
    extra: dict[str, object] = {"ended_by": ended_by, "killed": killed, "cgroup": rel}
    extra.update(used.fields())
    spool_event(
        paths, "usage", key, _name(fields[0]), _name(fields[1]), "sudo",
        tty_name(fields[2]), pid, now, extra=extra,
    )  # fmt: skip


def _recorded_process(paths: Paths, pid: int, record: list[str], ticks: int) -> bool | None:
    """Is the running `pid` the process its record names? None: the record cannot say.

    pam_broker.so writes `user runas tty started ticks`; a record without ticks (written
    before they were) falls back to its time, as then: started no later than recorded."""
    if record[4].isdigit():
        return int(record[4]) == ticks
    recorded = parse_utc(record[3])
    started = process_started(paths, pid)
    if recorded is None or started is None:
        return None
    return started <= recorded + 2


def reap(paths: Paths, now: int) -> dict[str, object]:
    """Drop expired grants (not_after as broker-grant-check parsed it; a file it could not
    parse stays and is reported), drop-ins without a grant, spent markers, stale temp files."""
    removed: dict[str, list[str]] = {"grants": [], "drop_ins": [], "markers": [], "temp": []}
    errors: list[str] = []
    for grant in check_all(paths, now).grants:
        if grant.id is None or grant.id != grant.name:
            errors.append(f"{clean(grant.name, 40)}: {grant.problem}")
        elif grant.not_after <= now and remove_if_present(os.path.join(paths.grants, grant.name)):
            removed["grants"].append(grant.name)
    present = {n for n in sorted_names(paths.grants) if not n.startswith(TMP_PREFIX)}
    for name in sorted_names(paths.sudoers):
        if not (name.startswith("broker_") and is_grant_id(name[7:])) or name[7:] in present:
            continue
        if remove_if_present(os.path.join(paths.sudoers, name)):
            removed["drop_ins"].append(name)
    for name in sorted_names(paths.revoked):
        path = os.path.join(paths.revoked, name)
        if is_grant_id(name) and _marker_expired(path, now) and remove_if_present(path):
            removed["markers"].append(name)
    # The module's session records: a sudo killed between writing and renaming one leaves
    # its temporary file in the grant's record directory.
    record_dirs = [
        os.path.join(paths.sessions, n)
        for n in sorted_names(paths.sessions)
        if is_grant_id(n) or n == BREAK_GLASS
    ]
    for directory in (paths.grants, paths.sudoers, paths.revoked, paths.events, *record_dirs):
        for name in sorted_names(directory):
            path = os.path.join(directory, name)
            try:  # the module may rename or remove its temp file meanwhile
                old = name.startswith(TMP_PREFIX) and now - os.lstat(path).st_mtime > 600
            except FileNotFoundError:
                continue
            if old and remove_if_present(path):
                removed["temp"].append(name)
    for directory in (paths.grants, paths.sudoers, paths.revoked):
        if os.path.isdir(directory):
            fsync_dir(directory)
    return {**removed, "errors": errors}


def _marker_expired(path: str, now: int) -> bool:
    data = read_secure(path)
    until = parse_utc(data.decode("ascii", "replace").strip()) if isinstance(data, bytes) else None
    return until is not None and until <= now
