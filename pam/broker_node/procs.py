"""Processes: the /proc table, process trees, killing them, and running local programs."""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False  # never import typing at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Iterable

    from .contract import Paths


def pid_alive(paths: Paths, pid: int) -> bool:
    """Whether a process with this pid exists (it may be a reused pid)."""
    return os.path.exists(os.path.join(paths.proc, str(pid)))


def proc_table_entry(paths: Paths, pid: int) -> tuple[int, int, int, str] | None:
    """(ppid, session id, start time in ticks, state) from /proc/<pid>/stat, or None."""
    try:
        with open(os.path.join(paths.proc, str(pid), "stat"), "rb") as file:
            fields = file.read().decode("ascii", "replace").rpartition(")")[2].split()
    except OSError:
        return None
    return (
        (int(fields[1]), int(fields[3]), int(fields[19]), fields[0]) if len(fields) > 19 else None
    )


def proc_table(paths: Paths) -> dict[int, tuple[int, int, int, str]]:
    """pid -> (ppid, session id, start time, state) from /proc/*/stat."""
    table: dict[int, tuple[int, int, int, str]] = {}
    for name in os.listdir(paths.proc):
        if not name.isdigit():
            continue
        entry = proc_table_entry(paths, int(name))
        if entry is not None:
            table[int(name)] = entry
    return table


def process_started(paths: Paths, pid: int) -> float | None:
    """When a process started (epoch seconds), from /proc/<pid>/stat and the boot time."""
    entry = proc_table_entry(paths, pid)
    try:
        with open(os.path.join(paths.proc, "stat"), "rb") as file:
            lines = file.read().decode("ascii", "replace").split("\n")
        boot = next(int(line.split()[1]) for line in lines if line.startswith("btime "))
    except (OSError, StopIteration, ValueError, IndexError):
        return None
    return None if entry is None else boot + entry[2] / os.sysconf("SC_CLK_TCK")


def _process_tree(paths: Paths, roots: list[int], known: Iterable[int] = ()) -> dict[int, int]:
    """The roots, their descendants, and the sessions their descendants lead: pid -> start time.

    `known` pids (found earlier) are walked too. The roots' own session (the user's login
    shell), this program and its ancestors are never included.
    """
    table = proc_table(paths)
    protected = {0, 1, 2, os.getpid()}
    pid = os.getpid()
    while pid in table and pid not in (0, 1):
        pid = table[pid][0]
        protected.add(pid)
    roots = [r for r in roots if r in table and r not in protected]
    own_sessions = {table[p][1] for p in (*roots, *protected) if p in table}
    children: dict[int, list[int]] = {}
    for child, entry in table.items():
        children.setdefault(entry[0], []).append(child)
    tree: set[int] = set()
    todo = [*roots, *(p for p in known if p in table)]
    while todo:
        current = todo.pop()
        if current not in tree and current not in protected:
            tree.add(current)
            todo.extend(children.get(current, ()))
    sessions = {table[p][1] for p in tree} - own_sessions - {0}
    tree |= {p for p, entry in table.items() if entry[1] in sessions} - protected
    return {p: table[p][2] for p in tree}


def _signal_all(paths: Paths, targets: dict[int, int], signal: int) -> set[int]:
    """Signal the targets that are still the same processes (start time) and not zombies."""
    table = proc_table(paths)
    hit: set[int] = set()
    for pid, start in targets.items():
        entry = table.get(pid)
        if entry is None or entry[2] != start or entry[3] == "Z":
            continue
        try:
            os.kill(pid, signal)
            hit.add(pid)
        except ProcessLookupError:
            pass
    return hit


def kill_trees(paths: Paths, roots: list[int]) -> list[int]:
    """Stop the trees (so nothing forks away), SIGTERM + SIGCONT, SIGKILL survivors after 2 s."""
    import signal

    targets: dict[int, int] = {}
    for _ in range(10):
        new = {p: s for p, s in _process_tree(paths, roots, targets).items() if p not in targets}
        if not new:
            break
        targets.update(new)
        _signal_all(paths, new, signal.SIGSTOP)
    killed = _signal_all(paths, targets, signal.SIGTERM)
    _signal_all(paths, targets, signal.SIGCONT)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline and _signal_all(paths, targets, 0):
        time.sleep(0.05)
    for pid, start in _process_tree(paths, roots, targets).items():
        targets.setdefault(pid, start)
    killed |= _signal_all(paths, targets, signal.SIGKILL)
    return sorted(killed)


def run_program(argv: list[str], timeout: float = 30) -> tuple[int, str]:
    """Run a local program with a fixed minimal environment; (exit code, stdout+stderr)."""
    import subprocess

    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    try:
        done = subprocess.run(
            argv,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return 127, f"{argv[0]}: {exc}"
    output = (done.stdout + done.stderr).decode("utf-8", "replace")
    return done.returncode, output
