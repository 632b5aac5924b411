"""`broker-node watch`: the node's own enforcement loop, run by systemd
(broker-node-watch.service, `Delegate=yes`), so that nothing outlives its grant whether
the broker is up or not (docs/grants.md, "Containment and expiry on the node").

At start it takes the cgroup subtree systemd delegated to it: it moves itself to
`<unit>/supervisor`, makes `<unit>/sessions`, enables the cpu, memory and pids controllers
below it where the kernel offers them, and writes `.cgroup` so pam_broker.so places each
elevated session there. Without cgroup v2 or without delegation it says why and carries on:
sessions are then ended by process tree (weaker), and expiry is still enforced.

Every pass (5 s by default):
- sudo that its log server refused after pam_broker.so allowed it gets its `deny` event
  (unlogged.py);
- sessions of grants past not_after, revoked or gone are ended (cgroup.kill), and the
  expired grant files and their drop-ins removed (`reap`);
- session cgroups that emptied are read (usage) and removed;
- escapes are looked for (escapes.py);
- `.watch` is rewritten: `broker-node status` reports a watcher that stopped.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from .cgroups import (
    CONTROLLERS,
    is_root_path,
    mount_point,
    populated,
    processes,
    publish_root,
    release_controllers,
    remove,
    session_cgroups,
    session_root,
    split_session,
    usage,
    withdraw_root,
)
from .contract import Paths, clean, is_grant_id
from .escapes import Memory, find_escapes
from .files import ensure_dir, read_secure, remove_if_present, write_atomic
from .grants import check_all
from .procs import proc_table_entry
from .revoke import end_sessions, ending_lock, reap
from .spool import spool_event
from .unlogged import unlogged_refusals

WATCH_FILE = ".watch"  # `pid ticks interval`, rewritten every pass
_SHARE = ("supervisor", "sessions")


def delegate(paths: Paths) -> tuple[str | None, str | None]:
    """Take the delegated subtree; (the sessions' root as `.cgroup` names it, None) or (None,
    why containment is off)."""
    mount = mount_point(paths)
    if mount is None:
        return None, "no cgroup v2 file system is mounted"
    own = _own_cgroup(paths)
    if own is None or own == "/":
        return None, "the watcher runs in the root cgroup: no subtree delegated to it"
    unit = own[: -len("/supervisor")] if own.endswith("/supervisor") else own
    base = mount.rstrip("/") + unit
    sessions = f"{base}/sessions"
    if not is_root_path(sessions):
        return None, f"{clean(sessions, 120)}: not a path the PAM module accepts"
    real = os.path.join(paths.root, sessions.lstrip("/"))
    real_base = os.path.dirname(real)
    try:
        info = os.stat(real_base)
        if info.st_uid != 0 or info.st_mode & 0o022:
            return None, f"{base}: not root-owned or writable by others"
        if not os.path.exists(os.path.join(real_base, "cgroup.kill")):
            return None, "cgroup.kill missing: the kernel is older than 5.14"
        for name in _SHARE:
            os.makedirs(os.path.join(real_base, name), mode=0o755, exist_ok=True)
        with open(os.path.join(real_base, "supervisor", "cgroup.procs"), "w") as file:
            file.write(str(os.getpid()))
    except OSError as exc:
        return None, f"{base}: cannot take the subtree ({clean(exc.strerror or exc, 120)})"
    _enable_controllers(real_base)
    _enable_controllers(real)
    return sessions, None


def _own_cgroup(paths: Paths) -> str | None:
    try:
        with open(os.path.join(paths.proc, "self", "cgroup"), "rb") as file:
            text = file.read(4096).decode("ascii", "replace")
    except OSError:
        return None
    return next((ln[3:] for ln in text.split("\n") if ln.startswith("0::")), None)


def _enable_controllers(path: str) -> None:
    """Enable what is offered of cpu, memory and pids for the children: sessions then have
    memory.peak and pids.peak. Best effort: without them CPU time is still measured."""
    try:
        with open(os.path.join(path, "cgroup.controllers")) as file:
            offered = file.read().split()
    except OSError:
        return
    for name in CONTROLLERS:
        if name in offered:
            try:
                with open(os.path.join(path, "cgroup.subtree_control"), "w") as file:
                    file.write(f"+{name}")
            except OSError:
                pass


def watch_pass(paths: Paths, now: int, memory: Memory) -> dict[str, object]:
    """One pass: expiry, escapes, emptied cgroups. Returns what it did (for the log).

    Each stage runs on its own: one that fails (a file that vanished under it, a cgroup
    removed meanwhile) is reported and does not keep the others from running."""
    done: dict[str, object] = {}
    errors: list[str] = []

    def stage(name: str, step: Callable[[], object]) -> None:
        try:
            done[name] = step()
        except Exception as exc:  # noqa: BLE001 - one stage's failure must not stop expiry
            errors.append(f"{name}: {clean(exc, 160)}")

    # Files first (from then on no new sudo starts under an expired grant), then sessions.
    stage("reaped", lambda: reap(paths, now))
    # Before anything else counts or removes dead session records: a sudo that its log
    # server refused left only its account-time record behind.
    stage("log_server_denied", lambda: unlogged_refusals(paths, now))
    stage("ended", lambda: _end_what_ended(paths, now))
    root = session_root(paths)
    mount = mount_point(paths)
    if root is not None and mount is not None:
        # Before emptied cgroups are removed: an emptied one whose sudo still runs is an
        # escape, and a removed one cannot say so.
        real_mount = os.path.join(paths.root, mount.lstrip("/")).rstrip("/")
        stage("escapes", lambda: find_escapes(paths, root, real_mount, memory, now))
    if root is not None:
        stage("emptied", lambda: _remove_emptied(paths, root, now))
    if errors:
        done["errors"] = errors
    return done


def _end_what_ended(paths: Paths, now: int) -> dict[str, int]:
    """End the sessions (cgroups and records) of grants that expired, were revoked or are
    gone; pid counts by grant. Never in the middle of a revoke (ending_lock)."""
    with ending_lock(paths):
        return _end_ended(paths, now)


def _end_ended(paths: Paths, now: int) -> dict[str, int]:
    checked = check_all(paths, now)
    if checked.unavailable is not None:
        return {}  # broker-grant-check missing: no verdicts, nothing ended on a guess
    ends = {g.name: g.not_after for g in checked.grants if g.id == g.name}
    keys = {n for n in _names(paths.sessions) if is_grant_id(n)}
    root = session_root(paths)
    if root is not None:
        found = [split_session(n) for n in _names(root)]
        keys |= {s[0] for s in found if s is not None and is_grant_id(s[0])}
    keys |= {name for name, end in ends.items() if end <= now}
    out: dict[str, int] = {}
    for key in sorted(keys):
        end = ends.get(key)
        marker = os.path.exists(os.path.join(paths.revoked, key))
        if end is not None and end > now and not marker:
            continue
        why = "revoke" if marker else "expiry"
        killed, _errors = end_sessions(paths, key, now, why)
        if killed:
            out[key] = len(killed)
    return out


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def _remove_emptied(paths: Paths, root: str, now: int) -> int:
    """Session cgroups left empty by their sudo's exit: spool what they used, remove them.
    A cgroup whose sudo still runs is kept (the process moved out: escapes.py says so)."""
    count = 0
    for path in session_cgroups(root):
        name = os.path.basename(path)
        key, pid, ticks = split_session(name) or ("-", 0, 0)
        if populated(path) or processes(path) or _runs(paths, pid, ticks):
            continue
        extra: dict[str, object] = {"ended_by": "exit", "killed": 0, "cgroup": name}
        extra.update(usage(path).fields())
        spool_event(paths, "usage", key, "-", "-", "sudo", "-", pid, now, extra=extra)
        remove(path)
        count += 1
    return count


def _runs(paths: Paths, pid: int, ticks: int) -> bool:
    entry = proc_table_entry(paths, pid)
    return entry is not None and entry[2] == ticks


def watcher_state(paths: Paths, now: float) -> dict[str, object]:
    """For `status`: is a watcher running (its `.watch` names a live process and was
    rewritten within three intervals), and does this node contain sessions?"""
    data = read_secure(os.path.join(paths.sessions, WATCH_FILE), forbidden=0o022)
    words = data.decode("ascii", "replace").split() if isinstance(data, bytes) else []
    running = False
    if len(words) == 3 and all(w.isascii() and w.isdigit() for w in words):
        entry = proc_table_entry(paths, int(words[0]))
        try:
            age = now - os.stat(os.path.join(paths.sessions, WATCH_FILE)).st_mtime
        except OSError:
            age = float("inf")
        running = entry is not None and str(entry[2]) == words[1] and age <= 3 * int(words[2])
    return {"running": running, "contained": running and session_root(paths) is not None}


def watch_main(paths: Paths, interval: int, say: object) -> int:
    """The loop; SIGTERM ends it cleanly (`.cgroup` withdrawn: sessions opened while no
    watcher runs are not contained, and status says so)."""
    import signal

    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    ensure_dir(paths.sessions)
    root, problem = delegate(paths)
    if root is not None:
        publish_root(paths, root)
        _say(say, f"broker-node watch: sessions contained under {root}")
    else:
        withdraw_root(paths)
        _say(say, f"broker-node watch: containment off: {problem}; expiry still enforced")
    memory = Memory()
    entry = proc_table_entry(paths, os.getpid())
    ticks = entry[2] if entry is not None else 0
    try:
        while not stop:
            line = f"{os.getpid()} {ticks} {interval}\n".encode("ascii")
            write_atomic(paths.sessions, WATCH_FILE, line, 0o644)
            try:
                done = watch_pass(paths, int(time.time()), memory)
            except Exception as exc:  # noqa: BLE001 - the watcher outlives any one pass
                done = {"error": clean(exc, 200)}
            if _did_something(done):
                _say(say, f"broker-node watch: {done}")
            for _ in range(interval * 10):
                if stop:
                    break
                time.sleep(0.1)
    finally:
        withdraw_root(paths)
        remove_if_present(os.path.join(paths.sessions, WATCH_FILE))
        if root is not None:
            release_controllers(os.path.dirname(root))
    return 0


def release_main(paths: Paths) -> int:
    """`broker-node watch --release` (the unit's ExecStopPost=, run also after a crash):
    free the unit's cgroup for the next watcher; sessions stay where they are."""
    root = session_root(paths, last=True)
    if root is not None:
        release_controllers(os.path.dirname(root))
    withdraw_root(paths)
    return 0


def _did_something(done: dict[str, object]) -> bool:
    reaped = done.get("reaped")
    lists = reaped.values() if isinstance(reaped, dict) else ()
    others = (v for k, v in done.items() if k != "reaped")
    return any(others) or any(lists)


def _say(out: object, text: str) -> None:
    write = getattr(out, "write", None)
    if write is not None:
        write(text + "\n")
        flush = getattr(out, "flush", None)
        if flush is not None:
            flush()
