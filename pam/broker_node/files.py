"""Safe file access for root: reads that refuse links, foreign owners and open modes;
writes that readers see whole or not at all (temp file, fsync, rename, fsync of the dir)."""

from __future__ import annotations

import binascii
import os
import stat

from .contract import MAX_FILE, TMP_PREFIX

# ---------------------------------------------------------------- reads


def open_dir(path: str, forbidden: int = 0o022) -> int:
    """Open a root-owned directory no one else can write (no symlink); raise otherwise."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    info = os.fstat(fd)
    if info.st_uid != 0 or info.st_mode & forbidden:
        os.close(fd)
        raise PermissionError(f"{path}: directory not root-owned or writable by others")
    return fd


def _read_at(dir_fd: int, name: str, forbidden: int, limit: int = MAX_FILE) -> bytes | str:
    """Read a regular, root-owned, single-link file without following links."""
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, dir_fd=dir_fd)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return "a symlink" if exc.errno == 40 else f"cannot open ({exc.strerror})"  # ELOOP
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return "not a regular file"
        if info.st_uid != 0:
            return f"owned by uid {info.st_uid}, not root"
        if info.st_mode & forbidden:
            return f"mode {stat.S_IMODE(info.st_mode):04o} is too open"
        if info.st_nlink != 1:
            return f"{info.st_nlink} hard links"
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            return f"larger than {limit} bytes"
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_secure(path: str, forbidden: int = 0o077, limit: int = MAX_FILE) -> bytes | str:
    """A file's bytes after the checks of docs/grants.md, or the problem."""
    directory, name = os.path.split(path)
    try:
        dir_fd = open_dir(directory)
    except FileNotFoundError:
        return f"{directory} is missing"
    except OSError as exc:
        return str(exc) if isinstance(exc, PermissionError) else f"{directory}: {exc.strerror}"
    try:
        return _read_at(dir_fd, name, forbidden, limit)
    finally:
        os.close(dir_fd)


def sorted_names(directory: str) -> list[str]:
    """A directory's names, sorted; none when it does not exist."""
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []


# ---------------------------------------------------------------- writes


def ensure_dir(path: str) -> None:
    """A root-owned 0700 directory (parents too, only as far as missing)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        parent = os.path.dirname(path)
        if parent != path:
            ensure_dir(parent)
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700, follow_symlinks=False)
        except FileExistsError:
            pass
        info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
        raise PermissionError(f"{path}: not a root-owned directory closed to others")


def fsync_dir(path: str) -> None:
    """Make renames and unlinks in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def random_hex(nbytes: int = 4) -> str:
    """A short random tag for names that must not collide."""
    return binascii.hexlify(os.urandom(nbytes)).decode("ascii")


def write_temp(directory: str, final: str, data: bytes, mode: int) -> str:
    """A new file with its final mode, written and fsynced; returns its (temporary) path."""
    path = os.path.join(directory, f"{TMP_PREFIX}{final}.{random_hex()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        os.fchmod(fd, mode)  # the umask must not change the intended mode
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    os.close(fd)
    return path


def write_atomic(directory: str, name: str, data: bytes, mode: int = 0o600) -> None:
    """Temp file + fsync + rename + fsync of the directory: readers see all or nothing."""
    temp = write_temp(directory, name, data, mode)
    try:
        os.rename(temp, os.path.join(directory, name))
    except BaseException:
        os.unlink(temp)
        raise
    fsync_dir(directory)


def remove_if_present(path: str) -> bool:
    """Unlink; False when it was already gone (another run got there first)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True
