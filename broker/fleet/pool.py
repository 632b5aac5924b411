"""Pooled SSH to nodes: one warm connection per node, shared by every thread of the daemon.

A grant has to land on its nodes within a fraction of a second, which a
fresh SSH handshake per call cannot do; so connections are kept and reused
(many channels over one transport), closed after `ssh.pool_idle` unused,
and re-dialled once when a kept one turns out dead. Trust is as strict as
for a single connection: host keys only from the pinned known_hosts
(RejectPolicy), the broker's key file or its Kerberos credentials, never an
agent or ~/.ssh. Commands are argv lists joined with shlex in one place.
"""

from __future__ import annotations

import inspect
import posixpath
import re
import secrets
import select
import shlex
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import paramiko
from paramiko import sftp as sftp_proto

from broker.core.errors import RefusedError, UnavailableError
from broker.fleet.ssh import MAX_OUTPUT, CommandResult, NodeTarget, explain
from broker.store.files import check_private_file

if TYPE_CHECKING:
    from broker.config.settings import Settings

MIN_PARAMIKO = (3, 4, 0)  # 3.4.0 fixes the Terrapin prefix truncation attack (CVE-2023-48795)
MAX_CHANNELS = 8  # per connection: below OpenSSH's default MaxSessions (10)
KEEPALIVE_S = 30
DEFAULT_COMMAND_TIMEOUT_S = 60.0
_SSH_ERRORS = (TimeoutError, paramiko.SSHException, EOFError, OSError)


def version_tuple(text: str) -> tuple[int, ...]:
    """`3.4.0`, `3.5.0.post1`, `4.0.0rc1` -> (3, 4, 0), (3, 5, 0), (4, 0, 0)."""
    parts = []
    for piece in text.split(".")[:3]:
        digits = re.match(r"[0-9]+", piece)
        parts.append(int(digits.group()) if digits else 0)
    return tuple(parts)


def require_paramiko(version: str) -> None:
    """Refuse a paramiko without the Terrapin fix: node traffic must not be downgradable."""
    if version_tuple(version) < MIN_PARAMIKO:
        raise UnavailableError(
            f"paramiko {version} is older than 3.4.0 and open to the Terrapin attack "
            "(CVE-2023-48795)",
            fix="upgrade it: pip install 'paramiko>=3.4.0'",
        )


require_paramiko(paramiko.__version__)


def gssapi_supported() -> bool:
    """Whether this paramiko can authenticate with GSS-API (it was dropped in paramiko 4)."""
    return "gss_auth" in inspect.signature(paramiko.SSHClient.connect).parameters


@dataclass(frozen=True)
class SshOptions:
    """How the pool reaches nodes; one shared pool per distinct set of options."""

    key_path: Path
    known_hosts: Path
    user: str
    connect_timeout: float
    auth: Literal["key", "gssapi"] = "key"
    idle: float = 300.0
    workers: int = 32

    @classmethod
    def from_settings(cls, settings: Settings) -> SshOptions:
        ssh = settings.ssh
        return cls(
            key_path=settings.ssh_key,
            known_hosts=settings.known_hosts,
            user=ssh.user,
            connect_timeout=ssh.connect_timeout.total_seconds(),
            auth=ssh.auth,
            idle=ssh.pool_idle.total_seconds(),
            workers=ssh.workers,
        )


@dataclass(frozen=True)
class Job:
    """One command for `run_many`."""

    target: NodeTarget
    argv: Sequence[str]
    stdin: bytes | None = None


class _Slot:
    """A node's connection; `lock` is held while (re)connecting, `busy` counts users."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.client: paramiko.SSHClient | None = None
        self.where: tuple[str, int] | None = None
        self.last_used = time.monotonic()
        self.busy = 0
        self.channels = threading.BoundedSemaphore(MAX_CHANNELS)


class SshPool:
    """Thread-safe: any number of threads may run commands on any nodes at once."""

    def __init__(self, options: SshOptions) -> None:
        if options.auth == "gssapi" and not gssapi_supported():
            raise UnavailableError(
                f"ssh.auth = 'gssapi', but paramiko {paramiko.__version__} has no GSS-API support",
                fix="set ssh.auth = 'key' (the broker's key file) or install a paramiko with "
                "GSS-API (3.x with the gssapi extra)",
            )
        self.options = options
        self._slots: dict[str, _Slot] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    # ------------------------------------------------------------ connections

    def _enter(self, name: str) -> _Slot:
        with self._lock:
            if self._closed:
                raise UnavailableError("the SSH pool is closed")
            slot = self._slots.get(name)
            if slot is None:
                slot = self._slots[name] = _Slot()
            slot.busy += 1
            if self._reaper is None:
                self._reaper = threading.Thread(
                    target=self._reap, name="ssh-pool-idle", daemon=True
                )
                self._reaper.start()
            return slot

    def _leave(self, slot: _Slot) -> None:
        with self._lock:
            slot.busy -= 1
            slot.last_used = time.monotonic()

    def check_known_hosts(self) -> None:
        """The pinned keys exist and no one but root can change them."""
        try:
            check_private_file(self.options.known_hosts, 0o644)
        except FileNotFoundError:
            raise UnavailableError(
                f"no pinned host keys at {self.options.known_hosts}",
                fix="pin the node's host key first: `broker node enroll NAME`",
            ) from None

    def _connect(self, target: NodeTarget) -> paramiko.SSHClient:
        options = self.options
        client = paramiko.SSHClient()
        client.load_host_keys(str(options.known_hosts))
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        kwargs: dict[str, Any] = {
            "sock": open_socket(target.host, target.port, options.connect_timeout),
            "hostname": target.host,
            "port": target.port,
            "username": options.user,
            "allow_agent": False,
            "look_for_keys": False,
            "timeout": options.connect_timeout,
            "banner_timeout": options.connect_timeout,
            "auth_timeout": options.connect_timeout,
            "channel_timeout": options.connect_timeout,
        }
        if options.auth == "gssapi":
            kwargs.update(gss_auth=True, gss_kex=False, gss_deleg_creds=False)
        else:
            kwargs["key_filename"] = str(options.key_path)
        try:
            client.connect(**kwargs)
        except BaseException:
            client.close()
            kwargs["sock"].close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(KEEPALIVE_S)
        return client

    def _transport(
        self, target: NodeTarget, slot: _Slot, dead: paramiko.Transport | None
    ) -> paramiko.Transport:
        """The node's live transport, connecting when there is none, it went away, the
        node's address changed, or it is the one a caller found `dead`."""
        with slot.lock:
            client = slot.client
            if client is not None:
                current = client.get_transport()
                if (
                    current is None
                    or not current.is_active()
                    or current is dead
                    or slot.where != (target.host, target.port)
                ):
                    client.close()
                    slot.client = None
            if slot.client is None:
                slot.client = self._connect(target)
                slot.where = (target.host, target.port)
            transport = slot.client.get_transport()
            if transport is None:
                raise paramiko.SSHException("connection lost")
            return transport

    @contextmanager
    def _channel(self, target: NodeTarget) -> Iterator[paramiko.Channel]:
        """An open session channel on the pooled connection; re-dials once if it was dead."""
        slot = self._enter(target.name)
        try:
            if not slot.channels.acquire(timeout=self.options.connect_timeout * 3):
                raise UnavailableError(f"{target.name}: too many commands in flight")
            try:
                dead: paramiko.Transport | None = None
                for attempt in (1, 2):
                    transport = self._transport(target, slot, dead)
                    try:
                        channel = transport.open_session(timeout=self.options.connect_timeout)
                        break
                    except paramiko.ChannelException:
                        raise  # the node refused the channel: the connection is alive
                    except _SSH_ERRORS:
                        if attempt == 2:
                            raise
                        dead = transport  # a kept connection that died: dial once more
                try:
                    yield channel
                finally:
                    channel.close()
            finally:
                slot.channels.release()
        finally:
            self._leave(slot)

    # ------------------------------------------------------------ commands

    def run(
        self,
        target: NodeTarget,
        argv: Sequence[str],
        stdin: bytes | None = None,
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        max_output: int = MAX_OUTPUT,
    ) -> CommandResult:
        """Run argv (quoted here, nowhere else) and wait for it; failures come back in the
        result's `error`, never raised, so fan-outs report every node."""
        started = time.monotonic()
        command = shlex.join(argv)
        self.check_known_hosts()  # the configuration, not the node: raised, not per node
        try:
            with self._channel(target) as channel:
                return _execute(
                    target.name, channel, command, stdin, started + timeout, max_output, started
                )
        except UnavailableError as exc:
            return _failed(target, f"{target.name}: {exc.one_line()}", started)
        except _SSH_ERRORS as exc:
            return _failed(target, explain(target, exc, self.options.known_hosts), started)

    def run_many(
        self,
        jobs: Sequence[Job],
        on_done: Callable[[CommandResult], None] | None = None,
        *,
        timeout: float = DEFAULT_COMMAND_TIMEOUT_S,
        max_output: int = MAX_OUTPUT,
    ) -> list[CommandResult]:
        """Run every job in parallel (at most `workers` at once); results in job order."""

        def one(job: Job) -> CommandResult:
            result = self.run(
                job.target, job.argv, job.stdin, timeout=timeout, max_output=max_output
            )
            if on_done is not None:
                on_done(result)
            return result

        return self.map(one, jobs)

    def map(self, work: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """`work` over items on a bounded thread pool (inline for one item); order kept."""
        if len(items) <= 1:
            return [work(item) for item in items]
        with ThreadPoolExecutor(max_workers=max(1, min(self.options.workers, len(items)))) as ex:
            return list(ex.map(work, items))

    @contextmanager
    def sftp(
        self, target: NodeTarget, *, timeout: float | None = None
    ) -> Iterator[paramiko.SFTPClient]:
        """An SFTP session on the pooled connection (bootstrap's file installs, keytabs).
        With `timeout`, every request waits at most that long (TimeoutError), so a node
        that stops answering cannot hold the caller."""
        self.check_known_hosts()
        with self._channel(target) as channel:
            if timeout is not None:
                channel.settimeout(timeout)
            channel.invoke_subsystem("sftp")
            client = paramiko.SFTPClient(channel)
            try:
                yield client
            finally:
                client.close()

    # ------------------------------------------------------------ housekeeping

    def forget(self, name: str) -> None:
        """Drop a node's connection (its key was re-pinned or it left the inventory)."""
        with self._lock:
            slot = self._slots.pop(name, None)
        if slot is not None and slot.client is not None:
            slot.client.close()

    def close_idle(self, now: float | None = None) -> int:
        """Close connections unused for `idle` seconds; returns how many."""
        moment = time.monotonic() if now is None else now
        idle: list[paramiko.SSHClient] = []
        with self._lock:
            for slot in self._slots.values():
                if (
                    slot.client is not None
                    and slot.busy == 0
                    and moment - slot.last_used >= self.options.idle
                ):
                    idle.append(slot.client)
                    slot.client = None
        for client in idle:
            client.close()
        return len(idle)

    def connected(self) -> list[str]:
        """Nodes with an open connection now (for tests and status)."""
        with self._lock:
            return sorted(n for n, s in self._slots.items() if s.client is not None)

    def _reap(self) -> None:
        interval = max(1.0, min(60.0, self.options.idle / 2))
        while not self._stop.wait(interval):
            self.close_idle()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            slots = list(self._slots.values())
            self._slots.clear()
        self._stop.set()
        for slot in slots:
            if slot.client is not None:
                slot.client.close()


def open_socket(host: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection with Nagle off: SSH exchanges many small packets, and Nagle with
    delayed ACKs adds tens of milliseconds to each command on a warm connection."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _failed(target: NodeTarget, error: str, started: float) -> CommandResult:
    return CommandResult(target.name, None, "", "", error, _ms(started))


def _ms(started: float) -> float:
    return (time.monotonic() - started) * 1000


def _execute(
    node: str,
    channel: paramiko.Channel,
    command: str,
    stdin: bytes | None,
    deadline: float,
    max_output: int,
    started: float,
) -> CommandResult:
    """Send the command and stdin, read both streams until EOF and the exit status."""
    channel.settimeout(max(0.1, deadline - time.monotonic()))
    channel.exec_command(command)
    if stdin:
        channel.sendall(stdin)
    channel.shutdown_write()
    out, err = bytearray(), bytearray()
    while True:
        moved = False
        while channel.recv_ready():
            out += channel.recv(65536)
            moved = True
        while channel.recv_stderr_ready():
            err += channel.recv_stderr(65536)
            moved = True
        if len(out) > max_output or len(err) > max_output:
            return CommandResult(
                node, None, "", "", f"{node}: output larger than {max_output} bytes", _ms(started)
            )
        if channel.eof_received and not channel.recv_ready() and not channel.recv_stderr_ready():
            break
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return CommandResult(node, None, "", "", f"{node}: command timed out", _ms(started))
        if not moved:
            select.select([channel], [], [], min(remaining, 0.5))
    if not channel.status_event.wait(max(0.0, deadline - time.monotonic())):
        return CommandResult(node, None, "", "", f"{node}: no exit status", _ms(started))
    status = channel.recv_exit_status()
    text_out = out.decode("utf-8", "replace")
    text_err = err.decode("utf-8", "replace")
    return CommandResult(node, status, text_out, text_err, None, _ms(started))


# ---------------------------------------------------------------- SFTP helpers


def remote_stat(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPAttributes | None:
    """lstat, or None when the path does not exist."""
    try:
        return sftp.lstat(path)
    except FileNotFoundError:
        return None


def read_regular(sftp: paramiko.SFTPClient, path: str, limit: int) -> bytes | None:
    """A remote regular file's bytes (None when missing); links, other non-files and files
    over `limit` bytes refused. The open file is checked again (fstat), and the read is
    bounded, so a file swapped or grown after the lstat is refused too."""
    attrs = remote_stat(sftp, path)
    if attrs is None:
        return None
    if attrs.st_mode is not None and stat.S_ISLNK(attrs.st_mode):
        raise RefusedError(
            f"{path} is a symbolic link", fix="replace it with the file itself, or remove it"
        )
    if attrs.st_mode is None or not stat.S_ISREG(attrs.st_mode):
        raise RefusedError(f"{path} is not a regular file", fix="remove it or fix it by hand")
    if (attrs.st_size or 0) > limit:
        raise RefusedError(f"{path} is larger than {limit} bytes")
    with sftp.open(path, "r") as handle:
        opened = handle.stat()
        if opened.st_mode is None or not stat.S_ISREG(opened.st_mode):
            raise RefusedError(f"{path} is not a regular file", fix="remove it or fix it by hand")
        data = bytes(handle.read(limit + 1))
    if len(data) > limit:
        raise RefusedError(f"{path} is larger than {limit} bytes")
    return data


def _request(sftp: paramiko.SFTPClient, kind: int, *args: Any) -> tuple[int, paramiko.Message]:
    """paramiko's own request call (what its posix_rename uses): its public API can neither
    give OPEN the new file's permissions nor send fsync@openssh.com."""
    send: Callable[..., tuple[int, paramiko.Message]] = sftp._request  # type: ignore[attr-defined]
    return send(kind, *args)


def create_private(sftp: paramiko.SFTPClient, path: str) -> paramiko.SFTPFile:
    """Open a new file for writing, O_CREAT|O_EXCL (never through a link, never an existing
    file), created with mode 0600 in the OPEN request itself. paramiko's `open` sends no
    permissions, so OpenSSH would create the file 0666 & ~umask: readable by everyone for
    an instant, and a reader who opened it then keeps reading what is written later."""
    attrs = paramiko.SFTPAttributes()
    attrs.st_mode = 0o600
    flags = sftp_proto.SFTP_FLAG_WRITE | sftp_proto.SFTP_FLAG_CREATE | sftp_proto.SFTP_FLAG_EXCL
    kind, message = _request(sftp, sftp_proto.CMD_OPEN, path, flags, attrs)
    if kind != sftp_proto.CMD_HANDLE:
        raise paramiko.SFTPError("the SFTP server sent no file handle")
    return paramiko.SFTPFile(sftp, message.get_binary(), "w")


def fsync_handle(sftp: paramiko.SFTPClient, handle: paramiko.SFTPFile) -> None:
    """fsync(2) of an open remote file (OpenSSH's fsync@openssh.com, since 6.5)."""
    handle.flush()
    _request(sftp, sftp_proto.CMD_EXTENDED, "fsync@openssh.com", handle.handle)


def put_atomic(
    sftp: paramiko.SFTPClient,
    path: str,
    data: bytes,
    mode: int,
    *,
    uid: int = 0,
    gid: int = 0,
    fsync: bool = False,
) -> None:
    """Write to a new temporary name in the same directory (created 0600, O_EXCL), set the
    owner `uid`:`gid` and the final mode before any byte is written, optionally fsync the
    data, then rename over `path` (posix-rename: atomic). The temporary file is removed on
    any failure. `uid`/`gid` are numbers as the node knows them; resolving names is the
    caller's job (the node's NSS, not the broker's)."""
    if not 0 <= uid < 0xFFFFFFFF or not 0 <= gid < 0xFFFFFFFF:
        raise ValueError("uid and gid must be 0 to 4294967294")
    if mode & ~0o7777:
        raise ValueError(f"mode {mode:o} is not a permission mode")
    directory, base = posixpath.split(path)
    temporary = posixpath.join(directory, f".{base}.broker-{secrets.token_hex(8)}")
    try:
        with create_private(sftp, temporary) as handle:
            handle.chown(uid, gid)
            handle.chmod(mode)
            handle.write(data)
            if fsync:
                fsync_handle(sftp, handle)
        sftp.posix_rename(temporary, path)
    except BaseException:
        with suppress(OSError, paramiko.SSHException, EOFError):
            sftp.remove(temporary)
        raise


# ---------------------------------------------------------------- the daemon's pool

_SHARED: dict[SshOptions, SshPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(settings: Settings) -> SshPool:
    """The process's pool for these settings, created once: all worker threads share it."""
    options = SshOptions.from_settings(settings)
    with _SHARED_LOCK:
        pool = _SHARED.get(options)
        if pool is None:
            pool = _SHARED[options] = SshPool(options)
        return pool


def close_shared_pool() -> None:
    """Close every shared pool (daemon shutdown)."""
    with _SHARED_LOCK:
        pools = list(_SHARED.values())
        _SHARED.clear()
    for pool in pools:
        pool.close()
