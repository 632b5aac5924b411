"""A root process that leaves its session's cgroup on purpose is never silent (docs/elevation.md,
"What is contained"). Each pass of the watcher looks, for every open contained session, for:

- the session's sudo itself outside its cgroup (an emptied cgroup whose sudo still runs);
- a descendant of that sudo outside it;
- a process seen inside in an earlier pass, still running (same start time), now outside;
- a process of the same audit session (`/proc/<pid>/sessionid`, when the kernel keeps one)
  whose real uid is root, started after the sudo, outside every session cgroup and not one
  of the sudo's ancestors (this catches a double fork that moved itself out before the
  pass could see it inside);
- a live recorded sudo whose cgroup (named in its record) is no longer there: emptied by
  moving out and removed between two passes (cgroup v2 refuses to rename one);
- any process in a cgroup under the sessions' root with a name the module never gives.

Each escaped process is reported once, as a spooled `escape` event the broker turns into an
alert; it is not killed (a process outside the cgroup may be anything by now).
"""

from __future__ import annotations

import os

from .cgroups import cgroup_of, processes, session_cgroups, split_session, within
from .contract import BREAK_GLASS, Paths, is_grant_id
from .procs import proc_table
from .spool import spool_event, tty_name

_NO_SESSION = "4294967295"  # what /proc/<pid>/sessionid says when audit gave it none


class Memory:
    """What the watcher remembers between passes: pids seen inside each session cgroup (by
    start time, so a reused pid is not mistaken) and the escapes already reported."""

    def __init__(self) -> None:
        self.inside: dict[tuple[int, int], str] = {}
        self.reported: set[tuple[int, int]] = set()


def _read(path: str) -> str:
    try:
        with open(path, "rb") as file:
            return file.read(4096).decode("ascii", "replace")
    except OSError:
        return ""


def _real_uid(paths: Paths, pid: int) -> int | None:
    for line in _read(os.path.join(paths.proc, str(pid), "status")).split("\n"):
        if line.startswith("Uid:"):
            words = line.split()
            return int(words[1]) if len(words) > 1 and words[1].isdigit() else None
    return None


def _record(paths: Paths, key: str, pid: int) -> list[str]:
    from .files import read_secure

    data = read_secure(os.path.join(paths.sessions, key, str(pid)))
    fields = data.decode("ascii", "replace").split() if isinstance(data, bytes) else []
    return [*fields, "-", "-", "-", "-", "-", "-"][:6]


def find_escapes(paths: Paths, root: str, mount: str, memory: Memory, now: int) -> int:
    """Look once; spool an `escape` event for each new escape. Returns how many."""
    table = proc_table(paths)
    children: dict[int, list[int]] = {}
    for pid, entry in table.items():
        children.setdefault(entry[0], []).append(pid)
    base = root[len(mount) :] if root.startswith(mount) else None
    if base is None:
        return 0
    found = 0
    sessions: list[tuple[str, str, int, int]] = []  # key, cgroup path, sudo pid, ticks
    for path in session_cgroups(root):
        key, pid, ticks = split_session(os.path.basename(path)) or ("-", 0, 0)
        group = f"{base}/{os.path.basename(path)}"
        for inside in processes(path):
            if inside in table:
                memory.inside[(inside, table[inside][2])] = group
        if pid in table and table[pid][2] == ticks:
            sessions.append((key, group, pid, ticks))
    suspects = _lost_cgroups(paths, root, base, table)
    for key, group, pid, ticks in sessions:
        todo = [pid]
        while todo:
            current = todo.pop()
            todo += children.get(current, [])
            now_in = cgroup_of(paths, current) if table[current][3] != "Z" else None
            if now_in is not None and not within(now_in, group):
                how = "its sudo left the cgroup" if current == pid else "a child left the cgroup"
                suspects[(current, table[current][2])] = (key, group, pid, how)
        for other in _same_audit_session(paths, table, pid, ticks, base):
            suspects.setdefault(other, (key, group, pid, "same audit session, outside"))
    for (pid, ticks), group in list(memory.inside.items()):
        seen = table.get(pid)
        alive = seen is not None and seen[2] == ticks and seen[3] != "Z"  # a zombie is in none
        now_in = cgroup_of(paths, pid) if alive else None
        if now_in is None:
            del memory.inside[(pid, ticks)]
        elif not within(now_in, group):
            key, session_pid, _ = split_session(group.rpartition("/")[2]) or ("-", 0, 0)
            suspects.setdefault((pid, ticks), (key, group, session_pid, "moved out after start"))
    memory.reported = {(p, s) for p, s in memory.reported if p in table and table[p][2] == s}
    for (pid, ticks), (key, group, session_pid, how) in sorted(suspects.items()):
        if (pid, ticks) in memory.reported:
            continue
        memory.reported.add((pid, ticks))
        fields = _record(paths, key, session_pid)
        user = fields[0] if fields[0] != "-" else "-"
        extra = {"session_pid": session_pid, "how": how, "cgroup": group[len(base) + 1 :]}
        spool_event(
            paths, "escape", key, user, fields[1], "sudo", tty_name(fields[2]), pid, now,
            extra=extra,
        )  # fmt: skip
        found += 1
    return found


def _lost_cgroups(
    paths: Paths, root: str, base: str, table: dict[int, tuple[int, int, int, str]]
) -> dict[tuple[int, int], tuple[str, str, int, str]]:
    """Live recorded sudos whose cgroup (named in their record) is gone from the sessions'
    root (emptied and removed from inside), and populated cgroups there under a name the
    module never gives."""
    out: dict[tuple[int, int], tuple[str, str, int, str]] = {}
    for key in _names(paths.sessions):
        if not (is_grant_id(key) or key == BREAK_GLASS):
            continue
        for name in _names(os.path.join(paths.sessions, key)):
            if not (name.isascii() and name.isdigit() and int(name) in table):
                continue
            pid, fields = int(name), _record(paths, key, int(name))
            parts = split_session(fields[5])
            if parts is None or not fields[4].isdigit() or table[pid][2] != int(fields[4]):
                continue  # uncontained, or not the recorded process
            if not os.path.isdir(os.path.join(root, fields[5])):
                how = "its session cgroup was removed"  # cgroup v2 refuses renames
                out[(pid, table[pid][2])] = (key, f"{base}/{fields[5]}", pid, how)
    for name in _names(root):
        path = os.path.join(root, name)
        if split_session(name) is None and os.path.isdir(path):
            for inside in processes(path):
                if inside in table:
                    how = "in a cgroup the module did not make"
                    out.setdefault((inside, table[inside][2]), ("-", f"{base}/{name}", 0, how))
    return out


def _names(directory: str) -> list[str]:
    try:
        return sorted(os.listdir(directory))
    except OSError:
        return []


def _same_audit_session(
    paths: Paths, table: dict[int, tuple[int, int, int, str]], pid: int, ticks: int, base: str
) -> list[tuple[int, int]]:
    """Root processes of the sudo's audit session outside every session cgroup."""
    session = _read(os.path.join(paths.proc, str(pid), "sessionid")).strip()
    if not session.isdigit() or session == _NO_SESSION:
        return []
    ancestors = set()
    current = pid
    while current in table and current not in ancestors and current > 1:
        ancestors.add(current)
        current = table[current][0]
    out: list[tuple[int, int]] = []
    for other, entry in table.items():
        if other in ancestors or entry[2] < ticks or entry[3] == "Z":
            continue
        if _read(os.path.join(paths.proc, str(other), "sessionid")).strip() != session:
            continue
        now_in = cgroup_of(paths, other)
        if now_in is None or _real_uid(paths, other) != 0 or within(now_in, base):
            continue
        out.append((other, entry[2]))
    return out
