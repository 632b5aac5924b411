"""`status`: what the broker needs to know of the node before it trusts it with grants."""

from __future__ import annotations

import os
import time

from .contract import (
    HOOK_VERSION,
    Grant,
    GrantKey,
    NodeConf,
    Paths,
    clean,
    format_utc,
    is_grant_id,
)
from .procs import run_program
from .store import check_grant, grant_ids, load_conf, load_key, read_grant_file, read_quarantine


def node_status(paths: Paths, now: int) -> dict[str, object]:
    """This node as the broker sees it: config, grants, PAM hooks, sudo, quarantine."""
    conf, key = load_conf(paths), load_key(paths)
    grants: list[dict[str, object]] = []
    for name in grant_ids(paths):
        entry: dict[str, object] = {"id": clean(name, 40), "user": None, "not_after": None}
        grant = read_grant_file(paths, name) if is_grant_id(name) else "not a grant id"
        if isinstance(grant, Grant):
            entry["user"], entry["not_after"] = grant.user, format_utc(grant.not_after)
            if isinstance(conf, str) or isinstance(key, str):
                problem: str | None = conf if isinstance(conf, str) else str(key)
            else:
                problem = check_grant(grant, conf, key, now, paths=paths)
        else:
            problem = grant
        entry["valid"], entry["problem"] = problem is None, problem
        grants.append(entry)
    unhooked = _unhooked_services(paths, conf)
    problems_extra = [
        f"/etc/pam.d/{name} does not start with the broker block" for name in unhooked
    ]
    hooked = not unhooked
    return {
        "node": conf.node if isinstance(conf, NodeConf) else None,
        "hook_version": HOOK_VERSION,
        "time": time.time(),
        "sudo": _sudo_info(),
        "grants": grants,
        "bootstrapped": isinstance(conf, NodeConf)
        and isinstance(key, GrantKey)
        and os.path.isdir(paths.grants)
        and hooked,
        "problems": [p for p in (conf, key) if isinstance(p, str)] + problems_extra,
        "quarantined": _quarantine_status(paths),
    }


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
