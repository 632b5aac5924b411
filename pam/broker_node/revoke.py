"""Taking access away: `revoke` (grants and their sessions), `end-sessions` (sessions
only, the answer to an alert) and `reap` (what expired or was left behind)."""

from __future__ import annotations

import os

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
from .usage import id_list


def revoke(paths: Paths, payload: dict[str, object], now: int) -> dict[str, object]:
    """Mark the grants revoked, remove their files and end their sessions. The marker lasts
    until the grant's not_after as broker-grant-check parsed it (a year when it could not)."""
    ids = id_list(payload, "ids", is_grant_id)
    revoked: list[str] = []
    killed: list[int] = []
    errors: list[str] = []
    ends = (
        {g.name: g.not_after for g in check_all(paths, now).grants if g.id == g.name} if ids else {}
    )
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
            ended, problems = end_sessions(paths, grant_id, now)
            killed += ended
            errors += problems
        except OSError as exc:
            errors.append(f"{grant_id}: {clean(exc, 200)}")
    return {"revoked": revoked, "killed": sorted(set(killed)), "errors": errors}


def end_sessions_command(paths: Paths, payload: dict[str, object], now: int) -> dict[str, object]:
    """End the running elevated sessions recorded under these grant ids (or `break-glass`),
    without revoking anything: the response to an alert, not a revocation."""
    ids = id_list(payload, "grant_ids", lambda text: is_grant_id(text) or text == BREAK_GLASS)
    killed: list[int] = []
    errors: list[str] = []
    for grant_id in ids:
        try:
            ended, problems = end_sessions(paths, grant_id, now, service="end-sessions")
        except OSError as exc:
            errors.append(f"{grant_id}: {clean(exc, 200)}")
            continue
        killed += ended
        errors += problems
    return {"killed": sorted(set(killed)), "errors": errors}


def end_sessions(
    paths: Paths, grant_id: str, now: int, service: str = "revoke"
) -> tuple[list[int], list[str]]:
    """Kill every recorded session of the grant with its tree; spool their `close` events
    (their `service` says who ended them).

    A pid is only trusted while it is the process that was recorded (the record ends with
    its start time in clock ticks since boot, which no clock step changes): a pid reused
    by an unrelated process later is left alone, and its stale record goes. A record that
    cannot be read is kept and reported: nothing is said to have closed that was not ended.
    """
    directory = os.path.join(paths.sessions, grant_id)
    try:
        names = [n for n in os.listdir(directory) if n.isascii() and n.isdigit() and len(n) <= 10]
    except FileNotFoundError:
        return [], []
    records: dict[str, list[str]] = {}
    roots: list[int] = []
    errors: list[str] = []
    kept: set[str] = set()
    for name in names:
        data = read_secure(os.path.join(directory, name))
        fields = data.decode("ascii", "replace").split() if isinstance(data, bytes) else []
        records[name] = [*fields, "-", "-", "-", "-", "-"][:5]
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
    killed = kill_trees(paths, roots) if roots else []
    for name, (user, runas, tty, _started, _ticks) in records.items():
        if name not in kept and remove_if_present(os.path.join(directory, name)):
            user = user if is_posix_name(user) else "-"
            runas = runas if is_posix_name(runas) else "-"
            spool_event(
                paths, "close", grant_id, user, runas, service, tty_name(tty), int(name), now
            )
    if not os.listdir(directory):
        os.rmdir(directory)
    return killed, errors


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
            old = name.startswith(TMP_PREFIX) and now - os.lstat(path).st_mtime > 600
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
