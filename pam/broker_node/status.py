"""`status`: what the broker needs to know of the node before it trusts it with grants."""

from __future__ import annotations

import os
import re
import socket
import stat
import time

from .contract import (
    HOOK_VERSION,
    NodeConf,
    Paths,
    clean,
    format_utc,
    host_mismatch,
    is_grant_id,
)
from .dropins import drop_in_report
from .files import open_dir
from .grants import check_all
from .procs import run_program
from .store import load_conf, read_quarantine
from .watch import watcher_state

MODULE = "usr/lib/broker/pam_broker.so"  # below the root
PACKAGED = "usr/lib/broker/PACKAGED"  # the node package's marker (packaging/node/)
_PKG_VERSION = re.compile(r"[0-9][0-9A-Za-z.+~-]{0,63}")


def node_status(paths: Paths, now: int) -> dict[str, object]:
    """This node as the broker sees it: config, grants (broker-grant-check's verdicts, and
    each one's drop-in as sudo would see it), PAM blocks, the module, sudo, quarantine."""
    conf, checked = load_conf(paths), check_all(paths, now)
    grants: list[dict[str, object]] = []
    for grant in checked.grants:
        entry: dict[str, object] = {"id": clean(grant.name, 40), "user": None, "not_after": None}
        if grant.id is not None:
            entry["user"], entry["not_after"] = grant.user, format_utc(grant.not_after)
        entry["valid"], entry["problem"] = grant.valid, grant.problem
        # The rule sudo reads: a grant file the hook accepts is no grant without it.
        entry["drop_in"] = drop_in_report(paths, grant.name) if is_grant_id(grant.name) else None
        grants.append(entry)
    problems = [conf] if isinstance(conf, str) else []
    for problem in (checked.config_problem, checked.unavailable):
        if problem is not None and problem not in problems:
            problems.append(problem)
    unhooked = _unhooked_services(paths, conf)
    problems += [f"/etc/pam.d/{name} does not start with the broker block" for name in unhooked]
    watcher = watcher_state(paths, time.time())
    if not watcher["running"]:
        problems.append(
            "broker-node watch is not running: expiry is not enforced on the node while the"
            " broker is away, and sessions are not contained"
        )
    elif not watcher["contained"]:
        problems.append(
            "sessions are not contained (no cgroup v2 subtree delegated to broker-node watch):"
            " they are ended by process tree, which a double fork escapes (weaker)"
        )
    for entry in grants:
        drop_in = entry["drop_in"]
        if isinstance(drop_in, dict) and drop_in["problem"] is not None:
            problems.append(f"grant {entry['id']}: {drop_in['problem']}")
    if isinstance(conf, NodeConf) and (mismatch := host_mismatch(conf.node, socket.gethostname())):
        problems.append(mismatch)
    return {
        "containment": "cgroup" if watcher["contained"] else "process-tree",
        "watcher": watcher["running"],
        "node": conf.node if isinstance(conf, NodeConf) else None,
        "hook_version": _active_hook(paths),
        "module": _module_info(paths),
        "time": time.time(),
        "sudo": _sudo_info(),
        "grants": grants,
        "bootstrapped": isinstance(conf, NodeConf)
        and checked.config_problem is None
        and checked.unavailable is None
        and os.path.isdir(paths.grants)
        and not unhooked,
        "problems": problems,
        "quarantined": _quarantine_status(paths),
        **_installed_by(paths),
    }


def _installed_by(paths: Paths) -> dict[str, object]:
    """ "package" with its version when the hpc-access-broker-node package installed the
    program (its marker, PACKAGED), else "push" (`broker node bootstrap`). Only a version
    that passes the allow-list is reported; a marker that cannot be read says so."""
    try:
        with open(os.path.join(paths.root, PACKAGED), "rb") as f:
            data = f.read(4097)
    except FileNotFoundError:
        return {"installed_by": "push", "package_version": None}
    except OSError as exc:
        return {
            "installed_by": "package",
            "package_version": None,
            "package_problem": clean(exc.strerror or exc, 120),
        }
    lines = data.decode("ascii", "replace").splitlines() if len(data) <= 4096 else []
    version = next((ln[8:] for ln in lines if ln.startswith("version=")), "")
    if not _PKG_VERSION.fullmatch(version):
        return {
            "installed_by": "package",
            "package_version": None,
            "package_problem": f"/{PACKAGED} is unreadable",
        }
    return {"installed_by": "package", "package_version": version}


def _active_hook(paths: Paths) -> str:
    """Which hook the sudo PAM file's broker block runs: "1" for the pam_exec hook of old,
    else this program's version (the module, or no block yet)."""
    try:
        with open(os.path.join(paths.pam_d, "sudo"), encoding="utf-8", errors="replace") as f:
            text = f.read(65536)
    except OSError:
        return HOOK_VERSION
    block = text.partition("# BEGIN broker")[2].partition("# END broker")[0]
    return "1" if "pam_exec.so" in block else HOOK_VERSION


def _module_info(paths: Paths) -> dict[str, object]:
    """Whether pam_broker.so loads with this node's dynamic linker (all symbols bound now),
    as libpam would load it. Only a root-owned file no one else can write, below
    directories no one else can write, is loaded, and through the descriptor that was
    checked (no name is looked up twice)."""
    shown = "/" + MODULE
    directory, name = os.path.split(os.path.join(paths.root, MODULE))
    try:
        for parent in _parents(paths.root, directory):
            os.close(open_dir(parent))
        dir_fd = open_dir(directory)
    except OSError as exc:  # missing: strerror; not trusted: open_dir's own sentence
        error = clean(exc.strerror or exc, 160)
        return {"path": shown, "loads": False, "error": f"{shown}: {error}"}
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError as exc:
        return {"path": shown, "loads": False, "error": f"{shown}: {exc.strerror}"}
    finally:
        os.close(dir_fd)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            return {"path": shown, "loads": False, "error": f"{shown}: not a root-owned file"}
        import ctypes

        try:
            ctypes.CDLL(f"/proc/self/fd/{fd}", mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as exc:
            return {"path": shown, "loads": False, "error": clean(exc, 200)}
        return {"path": shown, "loads": True, "error": None}
    finally:
        os.close(fd)


def _parents(root: str, directory: str) -> list[str]:
    """The directories from `root` down to `directory`'s parent (root / -> /, /usr,
    /usr/lib): each must be root's and closed to others, like the directory itself."""
    out: list[str] = []
    top = os.path.normpath(root)
    while directory != top and directory != os.path.dirname(directory):
        directory = os.path.dirname(directory)
        out.append(directory)
    return out[::-1]


def _sudo_info() -> dict[str, object]:
    code, output = run_program(["sudo", "-V"])
    first = output.split("\n", 1)[0].strip()
    if code == 0 and first.startswith("Sudo version "):
        version = clean(first.removeprefix("Sudo version "), 40)
        return {
            "flavour": "sudo",
            "version": version,
            "io_logging": "Sudoers I/O plugin version" in output,
        }
    if code == 0 and first.startswith("sudo-rs"):
        return {"flavour": "sudo-rs", "version": clean(first[7:].strip(), 40), "io_logging": False}
    return {"flavour": "unknown", "version": "", "io_logging": False}


def _quarantine_status(paths: Paths) -> dict[str, object] | None:
    """The marker as status shows it; an untrusted marker has since/group null and a problem."""
    marker = read_quarantine(paths)
    if marker is None:
        return None
    if isinstance(marker, str):
        return {"since": None, "reason": None, "group": None, "problem": marker}
    return {
        "since": format_utc(marker.since),
        "reason": marker.reason,
        "group": marker.group or None,
        "problem": None,
    }


def _unhooked_services(paths: Paths, conf: NodeConf | str) -> list[str]:
    """PAM services that exist without the broker block as their first rules: sudo always;
    sudo-i (Debian's `sudo -i`, which does not include sudo), sshd and the job launcher
    whenever their file exists. A package upgrade that adds one bare would bypass the hook."""
    names = ["sudo", "sudo-i", "sshd"]
    if isinstance(conf, NodeConf) and conf.joblaunch_service:
        names.append(conf.joblaunch_service)
    missing: list[str] = []
    for name in names:
        try:
            with open(os.path.join(paths.pam_d, name), encoding="utf-8", errors="replace") as f:
                text = f.read(65536)
        except FileNotFoundError:
            if name == "sudo":
                missing.append(name)
            continue
        except OSError:
            missing.append(name)
            continue
        rules = [
            ln.strip() for ln in text.split("\n") if ln.strip() and not ln.strip().startswith("#%")
        ]
        if not rules or rules[0] != "# BEGIN broker":
            missing.append(name)
    return missing
