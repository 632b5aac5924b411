"""Privileged file handling: create with the final mode, refuse links and loose modes.

Used for everything secret or integrity-relevant the broker keeps on disk
(the database, keys, checkpoint logs), so a file is never visible with a
wider mode than intended, not even for a moment.
"""

from __future__ import annotations

import os
import pwd
import secrets
import stat
from pathlib import Path

from broker.core.errors import ConfigError, RefusedError


def service_ids(user: str) -> tuple[int, int] | None:
    """uid/gid of the broker's service user when running as root, else None (no chown)."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(
            f"service user {user!r} does not exist",
            fix="create it (deploy/systemd/broker.sysusers.conf) or set broker.service_user",
        ) from None
    return entry.pw_uid, entry.pw_gid


def ensure_private_dir(path: Path, owner: tuple[int, int] | None) -> None:
    """Create a 0700 directory (and parents) or check an existing one is not a link."""
    if not path.exists():
        path.mkdir(mode=0o700, parents=True)
        if owner is not None:
            os.chown(path, *owner)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise RefusedError(
            f"{path} is not a real directory", fix="remove it and let the broker create it"
        )


def ensure_private_file(path: Path, owner: tuple[int, int] | None, mode: int = 0o600) -> None:
    """Create an empty file with `mode`, or check an existing one is safe to use."""
    ensure_private_dir(path.parent, owner)
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, mode)
    except FileExistsError:
        check_private_file(path, mode)
    else:
        os.close(fd)
        if owner is not None:
            os.chown(path, *owner)


def check_private_file(path: Path, mode: int = 0o600) -> None:
    """Refuse symlinks and files readable or writable beyond `mode`."""
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise RefusedError(f"{path} is not a regular file", fix="remove the link or special file")
    loose = stat.S_IMODE(info.st_mode) & ~mode
    if loose:
        raise RefusedError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):04o}, wider than {mode:04o}",
            fix=f"chmod {mode:o} {path}",
        )


def write_private_file(
    path: Path, data: bytes, owner: tuple[int, int] | None, mode: int = 0o600
) -> None:
    """Write atomically: a temporary file with the final mode and owner, fsync, rename."""
    ensure_private_dir(path.parent, owner)
    # Unique per call, not per process: two threads writing the same file must not meet
    # on O_EXCL (review finding: the CRL refresh and `node remove` did).
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not narrow (or widen) the intended mode
        if owner is not None:
            os.fchown(fd, *owner)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def append_line(path: Path, line: str, owner: tuple[int, int] | None, mode: int = 0o600) -> None:
    """Append one line durably (O_APPEND + fsync); used for checkpoint logs."""
    ensure_private_file(path, owner, mode)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
        os.fsync(fd)
    finally:
        os.close(fd)
