"""Elevated sessions in cgroup v2 (docs/grants.md, "Containment"): the subtree the watcher
was delegated, the `.cgroup` file that tells pam_broker.so where it is, and ending a
session's cgroup as a whole with `cgroup.kill`, with what it used.

pam_broker.so places each sudo it allows in `<root>/<grant>-<pid>-<ticks>`; whatever the
session starts (setsid, nohup, double forks, daemons) stays in that cgroup unless a root
process moves itself out on purpose, which `escapes.py` looks for.
"""

from __future__ import annotations

import os
import time

from .contract import BREAK_GLASS, Paths, is_grant_id
from .files import read_secure, remove_if_present, write_atomic

CGROUP_FILE = ".cgroup"  # in the session records' directory; read by pam_broker.so
# The root last published, kept when the watcher stops (`.cgroup` is withdrawn then): a
# revoke or an expiry while no watcher runs still kills the sessions' cgroups as a whole.
LAST_FILE = ".cgroup-last"
PREFIX = "/sys/fs/cgroup/"
PATH_MAX = 200
_PATH_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._@-")
CONTROLLERS = ("cpu", "memory", "pids")  # enabled below the root when delegated


class Usage:
    """What a session's cgroup used; None where the controller was not delegated."""

    __slots__ = ("cpu_usec", "memory_peak", "pids_peak")

    def __init__(
        self, cpu_usec: int | None, memory_peak: int | None, pids_peak: int | None
    ) -> None:
        self.cpu_usec, self.memory_peak, self.pids_peak = cpu_usec, memory_peak, pids_peak

    def fields(self) -> dict[str, object]:
        return {
            "cpu_usec": self.cpu_usec,
            "memory_peak": self.memory_peak,
            "pids_peak": self.pids_peak,
        }


def is_root_path(text: str) -> bool:
    """The rule pam_broker.so applies to `.cgroup` (bk_parse_cgroup_root): below
    /sys/fs/cgroup/, components of [A-Za-z0-9._@-], none empty, `.` or `..`."""
    if not (len(PREFIX) < len(text) <= PATH_MAX and text.startswith(PREFIX)):
        return False
    parts = text[len(PREFIX) :].split("/")
    return all(p not in ("", ".", "..") and set(p) <= _PATH_CHARS for p in parts)


def split_session(text: str) -> tuple[str, int, int] | None:
    """`<grant>-<pid>-<ticks>` (the module's name for a session cgroup, ticks 0 when it did
    not know them, the key `break-glass` for break-glass sessions) -> (key, pid, ticks)."""
    parts = text.rsplit("-", 2)
    if len(parts) != 3:
        return None
    key, pid, ticks = parts
    if not (is_grant_id(key) or key == BREAK_GLASS):
        return None
    if not (0 < len(pid) <= 10 and pid.isascii() and pid.isdigit()):
        return None
    if not (0 < len(ticks) <= 20 and ticks.isascii() and ticks.isdigit()):
        return None
    return key, int(pid), int(ticks)


def session_root(paths: Paths, last: bool = False) -> str | None:
    """The sessions' cgroup root below `paths.root`, or None when this node has none (no
    watcher delegated one: sessions are then ended by process tree, the weaker way).
    `last`: when no watcher publishes one now, the root the last one published."""
    for name in (CGROUP_FILE, LAST_FILE) if last else (CGROUP_FILE,):
        data = read_secure(os.path.join(paths.sessions, name), forbidden=0o022)
        if not isinstance(data, bytes):
            continue
        text = data.decode("ascii", "replace")
        if text.endswith("\n") and is_root_path(text[:-1]):
            return os.path.join(paths.root, text[:-1].lstrip("/"))
    return None


def publish_root(paths: Paths, root: str) -> None:
    """Tell the module where to place sessions (root-owned, 0644, atomic)."""
    line = (root + "\n").encode("ascii")
    write_atomic(paths.sessions, LAST_FILE, line, 0o644)
    write_atomic(paths.sessions, CGROUP_FILE, line, 0o644)


def withdraw_root(paths: Paths) -> None:
    remove_if_present(os.path.join(paths.sessions, CGROUP_FILE))


def session_cgroups(root: str, key: str | None = None) -> list[str]:
    """The session cgroups below `root` (of grant `key` only, when given), by path."""
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return []
    out = []
    for name in names:
        parts = split_session(name)
        if parts is not None and (key is None or parts[0] == key):
            out.append(os.path.join(root, name))
    return out


def _read(path: str, limit: int = 65536) -> str | None:
    try:
        with open(path, "rb") as file:
            return file.read(limit).decode("ascii", "replace")
    except OSError:
        return None


def _subtree(path: str) -> list[str]:
    """The cgroup and the cgroups a process inside made below it, deepest first."""
    out: list[str] = []
    for top, dirs, _files in os.walk(path, topdown=False, followlinks=False):
        out += [os.path.join(top, d) for d in dirs]
    return [*out, path]


def processes(path: str) -> list[int]:
    """Every pid in the cgroup and below it."""
    pids: set[int] = set()
    for group in _subtree(path):
        text = _read(os.path.join(group, "cgroup.procs")) or ""
        pids.update(int(w) for w in text.split() if w.isascii() and w.isdigit())
    return sorted(pids)


def populated(path: str) -> bool:
    """cgroup.events says whether any process is left in the cgroup or below it."""
    text = _read(os.path.join(path, "cgroup.events"))
    if text is None:
        return bool(processes(path))
    return any(line.split() == ["populated", "1"] for line in text.split("\n"))


def usage(path: str) -> Usage:
    """CPU time (always kept by cgroup v2), peak memory and peak process count (only when
    those controllers were delegated down to the session)."""
    cpu = None
    for line in (_read(os.path.join(path, "cpu.stat")) or "").split("\n"):
        words = line.split()
        if len(words) == 2 and words[0] == "usage_usec" and words[1].isdigit():
            cpu = int(words[1])

    def number(name: str) -> int | None:
        text = (_read(os.path.join(path, name)) or "").strip()
        return int(text) if text.isascii() and text.isdigit() else None

    return Usage(cpu, number("memory.peak"), number("pids.peak"))


def kill(path: str, wait: float = 2.0) -> tuple[list[int], Usage, bool]:
    """End every process in the cgroup at once (`cgroup.kill`: SIGKILL to all of it, new
    forks included), wait for it to empty, read what it used, remove it.
    Returns (pids it held, usage, emptied)."""
    pids = processes(path)
    if pids or populated(path):  # cgroup.procs may be unreadable (threaded): kill anyway
        try:
            with open(os.path.join(path, "cgroup.kill"), "w", encoding="ascii") as file:
                file.write("1")
        except FileNotFoundError:
            return pids, Usage(None, None, None), True  # emptied and removed meanwhile
    deadline = time.monotonic() + wait
    while populated(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    emptied = not populated(path)
    used = usage(path)
    if emptied:
        remove(path)
    return pids, used, emptied


def remove(path: str) -> None:
    """rmdir the cgroup and what was made below it (empty cgroups only: the kernel refuses
    the others)."""
    for group in _subtree(path):
        try:
            os.rmdir(group)
        except OSError:
            return


def cgroup_of(paths: Paths, pid: int) -> str | None:
    """The process's cgroup v2 path (`0::/a/b` -> `/a/b`), None when it is gone."""
    text = _read(os.path.join(paths.proc, str(pid), "cgroup"), 4096)
    if text is None:
        return None
    for line in text.split("\n"):
        if line.startswith("0::"):
            return line[3:]
    return None


def mount_point(paths: Paths) -> str | None:
    """Where cgroup v2 is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified` on a hybrid
    system), from mountinfo: the fifth field, when the file system type is cgroup2."""
    text = _read(os.path.join(paths.proc, "self", "mountinfo"), 1 << 20) or ""
    for line in text.split("\n"):
        fields = line.split(" ")
        if " - cgroup2 " in line and len(fields) > 4:
            return fields[4]
    return None


def within(group: str | None, ancestor: str) -> bool:
    """Is cgroup path `group` `ancestor` or below it?"""
    return group is not None and (group == ancestor or group.startswith(ancestor + "/"))


def release_controllers(unit: str) -> None:
    """Disable the controllers the watcher enabled (sessions/ first, then the unit's own
    cgroup), so systemd can start the next watcher in the unit's cgroup while sessions
    still run below it (the kernel refuses a process in a cgroup that hands domain
    controllers to its children). Live sessions' peak figures restart from here."""
    for group in (os.path.join(unit, "sessions"), unit):
        for name in reversed(CONTROLLERS):
            try:
                with open(os.path.join(group, "cgroup.subtree_control"), "w") as file:
                    file.write(f"-{name}")
            except OSError:
                pass
