"""A real SFTP conversation without sshd: paramiko's SFTP server over a socket pair, serving
this machine's files (tests use paths under tmp_path only) and recording what it was asked.

It behaves as OpenSSH's sftp-server does where the broker's writes depend on it: OPEN
creates with the permissions the request carries, else 0666 & ~umask; O_EXCL refuses an
existing name (a link included); fsetstat sets owner and mode on the open file;
posix-rename@openssh.com is rename(2); fsync@openssh.com is fsync(2) of the open file.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import paramiko
from paramiko.sftp import CMD_EXTENDED, SFTP_OK


class Recorder:
    """What the server did, in order: ("open", path, creation mode or None), ("chown",
    path, uid, gid), ("chmod", path, mode), ("write", path, size), ("fsync", path),
    ("rename", old, new), ("remove", path)."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.lock = threading.Lock()
        self.fail_on: str | None = None  # an event kind that fails (SFTP_FAILURE) instead

    def add(self, *event: Any) -> bool:
        with self.lock:
            self.events.append(event)
        return self.fail_on != event[0]

    def kinds(self, path: str | None = None) -> list[str]:
        return [e[0] for e in self.events if path is None or e[1] == path]


class _Handle(paramiko.SFTPHandle):
    def __init__(self, flags: int, path: str, fd: int, recorder: Recorder) -> None:
        super().__init__(flags)
        self.filename = path
        self.recorder = recorder
        mode = "rb"
        if flags & os.O_WRONLY:
            mode = "wb"
        elif flags & os.O_RDWR:
            mode = "r+b"
        self.readfile = self.writefile = os.fdopen(fd, mode)

    def stat(self) -> Any:
        return paramiko.SFTPAttributes.from_stat(os.fstat(self.readfile.fileno()))

    def chattr(self, attr: paramiko.SFTPAttributes) -> int:
        fd = self.writefile.fileno()
        if attr._flags & attr.FLAG_UIDGID:
            if not self.recorder.add("chown", self.filename, attr.st_uid, attr.st_gid):
                return paramiko.sftp.SFTP_FAILURE
            os.fchown(fd, attr.st_uid, attr.st_gid)
        if attr._flags & attr.FLAG_PERMISSIONS:
            if not self.recorder.add("chmod", self.filename, attr.st_mode):
                return paramiko.sftp.SFTP_FAILURE
            os.fchmod(fd, attr.st_mode)
        return SFTP_OK

    def write(self, offset: int, data: bytes) -> int:
        if not self.recorder.add("write", self.filename, len(data)):
            return paramiko.sftp.SFTP_FAILURE
        result: int = super().write(offset, data)
        return result


class _Files(paramiko.SFTPServerInterface):
    def __init__(self, server: Any, recorder: Recorder) -> None:
        super().__init__(server)
        self.recorder = recorder

    def open(self, path: str, flags: int, attr: paramiko.SFTPAttributes) -> Any:
        mode = attr.st_mode if attr._flags & attr.FLAG_PERMISSIONS else None
        if flags & os.O_CREAT and not self.recorder.add("open", path, mode):
            return paramiko.sftp.SFTP_FAILURE
        try:
            fd = os.open(path, flags, 0o666 if mode is None else mode)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        return _Handle(flags, path, fd, self.recorder)

    def stat(self, path: str) -> Any:
        try:
            return paramiko.SFTPAttributes.from_stat(os.stat(path))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    def lstat(self, path: str) -> Any:
        try:
            return paramiko.SFTPAttributes.from_stat(os.lstat(path))
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)

    def remove(self, path: str) -> int:
        self.recorder.add("remove", path)
        try:
            os.remove(path)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        return SFTP_OK

    def posix_rename(self, oldpath: str, newpath: str) -> int:
        if not self.recorder.add("rename", oldpath, newpath):
            return paramiko.sftp.SFTP_FAILURE
        try:
            os.rename(oldpath, newpath)
        except OSError as exc:
            return paramiko.SFTPServer.convert_errno(exc.errno)
        return SFTP_OK


class _Sftp(paramiko.SFTPServer):
    """paramiko's server plus OpenSSH's fsync@openssh.com."""

    def _process(self, t: int, request_number: int, msg: paramiko.Message) -> None:
        if t == CMD_EXTENDED:
            start = msg.packet.tell()
            if msg.get_text() == "fsync@openssh.com":
                handle = self.file_table.get(msg.get_binary())
                if handle is None:
                    self._send_status(request_number, paramiko.sftp.SFTP_BAD_MESSAGE)
                    return
                recorder: Recorder = handle.recorder
                if not recorder.add("fsync", handle.filename):
                    self._send_status(request_number, paramiko.sftp.SFTP_FAILURE)
                    return
                handle.writefile.flush()
                os.fsync(handle.writefile.fileno())
                self._send_status(request_number, SFTP_OK)
                return
            msg.packet.seek(start)
        super()._process(t, request_number, msg)


class _Auth(paramiko.ServerInterface):
    def get_allowed_auths(self, username: str) -> str:
        return "none"

    def check_auth_none(self, username: str) -> int:
        return paramiko.AUTH_SUCCESSFUL

    def check_channel_request(self, kind: str, chanid: int) -> int:
        if kind == "session":
            return paramiko.OPEN_SUCCEEDED
        return paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED


_HOST_KEY: list[paramiko.PKey] = []


@contextmanager
def local_sftp(recorder: Recorder | None = None) -> Iterator[tuple[paramiko.SFTPClient, Recorder]]:
    """An SFTPClient talking to an in-process server; closed afterwards."""
    recorder = recorder or Recorder()
    if not _HOST_KEY:
        _HOST_KEY.append(paramiko.ECDSAKey.generate())
    ours, theirs = socket.socketpair()
    server = paramiko.Transport(theirs)
    server.add_server_key(_HOST_KEY[0])
    server.set_subsystem_handler("sftp", _Sftp, _Files, recorder)
    server.start_server(event=threading.Event(), server=_Auth())  # returns at once
    client = paramiko.Transport(ours)
    try:
        client.start_client(timeout=10)
        client.auth_none("root")
        sftp = paramiko.SFTPClient.from_transport(client)
        assert sftp is not None
        try:
            yield sftp, recorder
        finally:
            sftp.close()
    finally:
        client.close()
        server.close()
        ours.close()
        theirs.close()
