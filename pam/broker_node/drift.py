"""`drift-scan`: the manifest of what root can leave behind on the node (docs/grants.md),
for the broker to compare with the one taken before a grant."""

from __future__ import annotations

import os
import stat
import time

from .contract import Paths, clean
from .usage import Usage

DRIFT_MAX_ENTRIES = 50_000
DRIFT_MAX_ENTRY_BYTES = 16 << 20  # the entries' share of the reply, JSON-encoded
DRIFT_MAX_TEXTS = 8 << 20  # the texts' share, JSON-encoded
DRIFT_MAX_TEXT = 64 << 10
DRIFT_MAX_HASH = 64 << 20
DRIFT_MAX_PATH = 4096
DRIFT_MAX_ERRORS = 100
DRIFT_SECONDS = 20.0  # then the setuid walk stops (truncated): the broker waits 60 s
DRIFT_TEXT_CATEGORIES = frozenset({"sudoers", "cron", "authorized_keys", "accounts"})
# What root can leave behind, walked whole (no symlink followed, no mount point crossed).
DRIFT_TREES = (
    ("accounts", "/etc/passwd"),
    ("accounts", "/etc/group"),
    ("sudoers", "/etc/sudoers"),
    ("sudoers", "/etc/sudoers.d"),
    ("pam", "/etc/pam.d"),
    ("pam", "/etc/security"),
    ("polkit", "/etc/polkit-1/rules.d"),
    ("polkit", "/usr/share/polkit-1/rules.d"),
    ("polkit", "/etc/polkit-1/localauthority"),
    ("systemd", "/etc/systemd/system"),
    ("systemd", "/run/systemd/system"),
    ("systemd", "/usr/lib/systemd/system"),
    ("systemd", "/lib/systemd/system"),
    ("systemd", "/etc/systemd/user"),
    ("cron", "/etc/crontab"),
    ("cron", "/etc/cron.d"),
    ("cron", "/etc/cron.hourly"),
    ("cron", "/etc/cron.daily"),
    ("cron", "/etc/cron.weekly"),
    ("cron", "/etc/cron.monthly"),
    ("cron", "/var/spool/cron/crontabs"),
    ("authorized_keys", "/etc/ssh/authorized_keys"),
)
# Walked for setuid/setgid regular files only (-xdev from each; a nosuid mount is skipped:
# the kernel ignores the bits there).
DRIFT_SETUID_ROOTS = ("/usr", "/bin", "/sbin", "/opt", "/etc", "/var/lib", "/srv", "/root", "/home")
_AUTHORIZED_KEYS = ("authorized_keys", "authorized_keys2")


def _path_text(path: str) -> str:
    """A node path as printable text: backslash, control and undecodable characters escaped
    (a file name may hold any byte but `/` and NUL), so the broker can refuse anything else."""
    if path.isprintable() and "\\" not in path:
        return path
    out: list[str] = []
    for char in path:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # an undecodable byte (surrogateescape)
            out.append(f"\\x{code - 0xDC00:02x}")
        elif char.isprintable():
            out.append(char)
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


class _DriftScan:
    """One drift-scan: the manifest under construction and its budgets."""

    def __init__(self, paths: Paths) -> None:
        import hashlib
        import json.encoder

        self.base = paths.root.rstrip("/")
        self.sha256 = hashlib.sha256
        self.encode = json.encoder.encode_basestring_ascii
        self.entries: dict[str, dict[str, object]] = {}
        self.texts: dict[str, str] = {}
        self.entry_bytes = 0
        self.text_bytes = 0
        self.truncated = False
        self.full = False  # no room for more entries: walking on is pointless
        self.errors: list[str] = []
        self.dropped_errors = 0
        self.seen: set[tuple[int, int]] = set()
        self.deadline = time.monotonic() + DRIFT_SECONDS
        noatime = getattr(os, "O_NOATIME", 0)
        self.flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
        self.flags_noatime = self.flags | noatime

    def real(self, node_path: str) -> str:
        return self.base + node_path

    def error(self, node_path: str, problem: object) -> None:
        if len(self.errors) < DRIFT_MAX_ERRORS:
            self.errors.append(clean(f"{_path_text(node_path)}: {problem}", 400))
        else:
            self.dropped_errors += 1

    def reply(self) -> dict[str, object]:
        errors = list(self.errors)
        if self.dropped_errors:
            errors.append(f"... and {self.dropped_errors} more errors")
        return {
            "entries": self.entries,
            "texts": self.texts,
            "truncated": self.truncated,
            "errors": errors,
        }

    def add(
        self,
        node_path: str,
        name: str,
        info: os.stat_result,
        category: str,
        dir_fd: int | None = None,
    ) -> None:
        """One entry; `name` is opened relative to `dir_fd` (or is the real path)."""
        key = _path_text(node_path)
        if key in self.entries:
            return  # first category wins (a setuid file in /etc/cron.d stays `cron`)
        if len(key) > DRIFT_MAX_PATH:
            self.error(node_path[:200], "path too long; not listed")
            return
        cost = len(self.encode(key)) + 256
        if (
            len(self.entries) >= DRIFT_MAX_ENTRIES
            or self.entry_bytes + cost > DRIFT_MAX_ENTRY_BYTES
        ):
            self.truncated = self.full = True
            return
        mode = info.st_mode
        kind = "f" if stat.S_ISREG(mode) else "d" if stat.S_ISDIR(mode) else "o"
        target: str | None = None
        digest: str | None = None
        data: bytes | None = None
        if stat.S_ISLNK(mode):
            kind = "l"
            try:
                target = _path_text(os.readlink(name, dir_fd=dir_fd))[:DRIFT_MAX_PATH]
            except OSError as exc:
                self.error(node_path, f"readlink: {exc.strerror}")
        elif kind == "f":
            want_text = category in DRIFT_TEXT_CATEGORIES and info.st_size <= DRIFT_MAX_TEXT
            if category == "authorized_keys" and info.st_nlink != 1:
                want_text = False  # a hard link a user made to someone else's file
            digest, data = self.read(node_path, name, info, want_text, dir_fd)
        self.entry_bytes += cost
        self.entries[key] = {
            "type": kind,
            "mode": stat.S_IMODE(mode),
            "uid": info.st_uid,
            "gid": info.st_gid,
            "size": info.st_size,
            "sha256": digest,
            "target": target,
            "category": category,
        }
        if data is not None:
            text = data.decode("utf-8", "replace")
            cost = len(self.encode(text)) + len(self.encode(key))
            if self.text_bytes + cost > DRIFT_MAX_TEXTS:
                self.truncated = True
            else:
                self.text_bytes += cost
                self.texts[key] = text

    def read(
        self, node_path: str, name: str, info: os.stat_result, want_text: bool, dir_fd: int | None
    ) -> tuple[str | None, bytes | None]:
        """sha256 of a regular file (and its bytes when wanted), never blocking on a FIFO or
        device and never following a link: the file opened must be the one listed."""
        if info.st_size > DRIFT_MAX_HASH:
            return None, None
        try:
            try:
                fd = os.open(name, self.flags_noatime, dir_fd=dir_fd)
            except PermissionError:  # O_NOATIME needs the owner or CAP_FOWNER
                fd = os.open(name, self.flags, dir_fd=dir_fd)
        except OSError as exc:
            self.error(node_path, f"open: {exc.strerror}")
            return None, None
        try:
            opened = os.fstat(fd)
            if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
                info.st_dev,
                info.st_ino,
            ):
                self.error(node_path, "replaced while scanned; not hashed")
                return None, None
            digest = self.sha256()
            chunks: list[bytes] | None = [] if want_text else None
            total = 0
            while True:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    break
                total += len(chunk)
                if total > DRIFT_MAX_HASH:
                    return None, None
                digest.update(chunk)
                if chunks is not None:
                    chunks.append(chunk)
                    if total > DRIFT_MAX_TEXT:
                        chunks = None
            return digest.hexdigest(), b"".join(chunks) if chunks is not None else None
        except OSError as exc:
            self.error(node_path, f"read: {exc.strerror}")
            return None, None
        finally:
            os.close(fd)

    def tree(self, category: str, node_top: str, setuid_only: bool = False) -> None:
        """The top and, when it is a directory seen for the first time, everything below it
        on its own file system (symlinks listed, never followed)."""
        real_top = self.real(node_top)
        try:
            info = os.lstat(real_top)
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as exc:
            self.error(node_top, exc.strerror)
            return
        if not stat.S_ISDIR(info.st_mode):
            if not setuid_only:
                self.add(node_top, real_top, info, category)
            return
        if (info.st_dev, info.st_ino) in self.seen:
            return  # /lib/systemd/system is /usr/lib/systemd/system on merged-/usr systems
        self.seen.add((info.st_dev, info.st_ino))
        if setuid_only:
            try:
                if os.statvfs(real_top).f_flag & os.ST_NOSUID:
                    return
            except OSError as exc:
                self.error(node_top, exc.strerror)
                return
        else:
            self.add(node_top, real_top, info, category)
        self.walk(category, node_top, real_top, info.st_dev, setuid_only)

    def walk(self, category: str, node_top: str, real_top: str, dev: int, setuid: bool) -> None:
        stack = [(node_top, real_top)]
        visited: set[tuple[int, int]] = set()  # a bind mount of the same file system
        while stack:
            if self.full:
                return
            node_dir, real_dir = stack.pop()
            if time.monotonic() > self.deadline:
                self.truncated = True
                self.error(node_dir, f"scan stopped after {DRIFT_SECONDS:.0f} s")
                return
            try:
                with os.scandir(real_dir) as listing:
                    items = sorted(listing, key=lambda entry: entry.name)
            except OSError as exc:
                self.error(node_dir, exc.strerror)
                continue
            below: list[tuple[str, str]] = []
            prefix = node_dir.rstrip("/") + "/"
            for item in items:
                if setuid and item.is_symlink():
                    continue
                node_path = prefix + item.name
                try:
                    info = item.stat(follow_symlinks=False)
                except OSError as exc:
                    self.error(node_path, exc.strerror)
                    continue
                mode = info.st_mode
                inode = (info.st_dev, info.st_ino)
                if stat.S_ISDIR(mode) and info.st_dev == dev and inode not in visited:
                    visited.add(inode)
                    below.append((node_path, item.path))
                if not setuid or (stat.S_ISREG(mode) and mode & (stat.S_ISUID | stat.S_ISGID)):
                    self.add(node_path, item.path, info, category)
            stack.extend(reversed(below))

    def homes(self) -> list[str]:
        """Home directories of the local accounts (/etc/passwd of this tree; not NSS)."""
        try:
            with open(self.real("/etc/passwd"), "rb") as file:
                text = file.read(16 << 20).decode("utf-8", "replace")
        except OSError as exc:
            self.error("/etc/passwd", exc.strerror)
            return []
        homes: dict[str, None] = {}
        for line in text.split("\n"):
            fields = line.split(":")
            if len(fields) >= 7 and fields[5].startswith("/") and "\0" not in fields[5]:
                homes[os.path.normpath(fields[5]).replace("//", "/")] = None
        return list(homes)

    def authorized_keys(self) -> None:
        """HOME/.ssh/authorized_keys{,2} of every local account. A symlinked ~/.ssh is listed
        as the link it is and not followed (its files could be anyone's)."""
        for home in self.homes():
            ssh = home.rstrip("/") + "/.ssh"
            real = self.real(ssh)
            try:
                info = os.lstat(real)
            except (FileNotFoundError, NotADirectoryError):
                continue
            except OSError as exc:
                self.error(ssh, exc.strerror)
                continue
            if stat.S_ISLNK(info.st_mode):
                self.add(ssh, real, info, "authorized_keys")
                continue
            if not stat.S_ISDIR(info.st_mode):
                continue
            try:
                fd = os.open(real, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as exc:
                self.error(ssh, exc.strerror)
                continue
            try:
                for name in _AUTHORIZED_KEYS:
                    try:
                        info = os.stat(name, dir_fd=fd, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    except OSError as exc:
                        self.error(f"{ssh}/{name}", exc.strerror)
                        continue
                    self.add(f"{ssh}/{name}", name, info, "authorized_keys", dir_fd=fd)
            finally:
                os.close(fd)


def drift_scan(paths: Paths, payload: dict[str, object]) -> dict[str, object]:
    """The manifest of what root can leave behind (docs/grants.md): listed entries with
    owner, mode and sha256, and the text of account, sudoers, cron and key files."""
    if payload:
        raise Usage("drift-scan takes {}")
    scan = _DriftScan(paths)
    for category, node_path in DRIFT_TREES:
        scan.tree(category, node_path)
    scan.authorized_keys()
    for node_path in DRIFT_SETUID_ROOTS:
        scan.tree("setuid", node_path, setuid_only=True)
    return scan.reply()
