"""What a grant's sudoers drop-in looks like on this node, and whether sudo would read it.

sudo silently skips a drop-in that is not a regular file owned by root, that anyone may
write, or that a group other than root's may write: the rule is gone while the grant file
still says valid. The broker compares this report with what it pushed (docs/grants.md
"Drop-in integrity"), so the node only describes; it never judges the content.
"""

from __future__ import annotations

import os
import stat

from .contract import Paths, clean
from .files import open_dir

MAX_DROP_IN = 65536  # install-grant accepts no larger drop-in


def drop_in_report(paths: Paths, grant_id: str) -> dict[str, object]:
    """/etc/sudoers.d/broker_<grant_id>, read through one descriptor (O_NOFOLLOW, bounded):
    present, kind, owner, mode, sha256, and whether sudo honours it (with why not)."""
    report: dict[str, object] = {
        "present": False, "kind": "missing", "uid": None, "gid": None, "mode": None,
        "sha256": None, "honoured": False, "problem": "drop-in missing: sudo has no rule",
    }  # fmt: skip
    try:
        dir_fd = open_dir(paths.sudoers)
    except OSError as exc:
        report["problem"] = f"/etc/sudoers.d: {clean(exc.strerror or exc, 160)}"
        return report
    try:
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        fd = os.open(f"broker_{grant_id}", flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return report
    except OSError as exc:
        report["present"] = True
        if exc.errno == 40:  # ELOOP: a symbolic link where the broker wrote a file
            report.update(kind="symlink", problem="drop-in replaced by a symbolic link")
        else:
            report.update(kind="other", problem=f"drop-in: {clean(exc.strerror or exc, 160)}")
        return report
    finally:
        os.close(dir_fd)
    try:
        return _describe(fd, report)
    finally:
        os.close(fd)


def _describe(fd: int, report: dict[str, object]) -> dict[str, object]:
    """Fill `report` from the open drop-in: its stat, its sha256, sudo's verdict."""
    import hashlib

    info = os.fstat(fd)
    mode = stat.S_IMODE(info.st_mode)
    report.update(present=True, uid=info.st_uid, gid=info.st_gid, mode=mode)
    if not stat.S_ISREG(info.st_mode):
        report.update(kind="other", problem="drop-in is not a regular file: sudo ignores it")
        return report
    report["kind"] = "file"
    data = b""
    while len(data) <= MAX_DROP_IN:
        chunk = os.read(fd, MAX_DROP_IN + 1 - len(data))
        if not chunk:
            break
        data += chunk
    if len(data) <= MAX_DROP_IN:
        report["sha256"] = hashlib.sha256(data).hexdigest()
    problem = sudo_ignores(info.st_uid, info.st_gid, mode)
    report["honoured"] = problem is None
    if problem is None and len(data) > MAX_DROP_IN:
        problem = f"drop-in larger than {MAX_DROP_IN} bytes"
    report["problem"] = problem
    return report


def sudo_ignores(uid: int, gid: int, mode: int) -> str | None:
    """Why sudo skips a regular drop-in with this owner and mode (its own checks of an
    included file: owner root, not world-writable, group-writable only by root's group)."""
    if uid != 0:
        return f"drop-in owned by uid {uid}: sudo ignores it"
    if mode & 0o002:
        return f"drop-in mode {mode:04o}: sudo ignores it"
    if mode & 0o020 and gid != 0:
        return f"drop-in mode {mode:04o}, group {gid}: sudo ignores it"
    return None
