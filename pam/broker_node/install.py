"""`install-grant`: the grant file and its sudoers drop-in, checked and put in place, then
whether sudo lists the rule."""

from __future__ import annotations

import os
import socket
import time

from .contract import (
    MAX_FILE,
    NodeConf,
    Paths,
    clean,
    format_utc,
    host_mismatch,
    is_grant_id,
    is_posix_name,
)
from .files import ensure_dir, fsync_dir, open_dir, remove_if_present, write_temp
from .grants import CheckedGrant, check_text
from .procs import run_program
from .store import load_conf
from .usage import Usage, text_field


def install_grant(paths: Paths, payload: dict[str, object], now: int) -> dict[str, object]:
    """Install one grant on this node, checked by broker-grant-check (a grant not valid yet
    may be installed); `live` says whether sudo already lists the rule."""
    if set(payload) != {"id", "user", "grant", "sudoers", "broker_time", "max_skew"}:
        raise Usage("install-grant takes exactly id, user, grant, sudoers, broker_time, max_skew")
    skew = _skew_problem(payload)
    grant_id = text_field(payload, "id", 17)
    user = text_field(payload, "user", 32)
    if not is_grant_id(grant_id) or not is_posix_name(user):
        raise Usage("bad id or user")
    grant_text = text_field(payload, "grant", MAX_FILE)
    sudoers = text_field(payload, "sudoers", 65536)
    if not sudoers.isascii() or any(c < " " and c not in "\n\t" for c in sudoers):
        raise Usage("sudoers must be printable ASCII text")

    def refuse(error: str) -> dict[str, object]:
        return {"ok": False, "live": False, "error": error}

    if skew is not None:
        return refuse(skew)
    if not grant_text.isascii():
        return refuse("grant file: not ASCII")
    checked = check_text(paths, now, grant_text.encode("ascii"), any_start=True)
    grant = checked.grants[0]
    if checked.unavailable is not None:
        return refuse(checked.unavailable)
    if checked.config_problem is not None:
        return refuse(f"node not bootstrapped: {checked.config_problem}")
    if grant.id is None:
        return refuse(f"grant file: {grant.problem}")
    if grant.id != grant_id or grant.user != user:
        return refuse("grant file does not match id and user")
    if not grant.valid:
        return refuse(f"grant {grant_id}: {grant.problem}")
    problem = _put_in_place(paths, grant_id, grant_text, sudoers)
    if problem is not None:
        return refuse(problem)
    code, listing = run_program(["sudo", "-n", "-l", "-U", user])
    if code == 0 and _rule_listed(listing, grant):
        return {"ok": True, "live": True, "error": None}
    error = f"sudo -l -U {user} does not list the rule"
    mismatch = _host_mismatch(paths)
    if mismatch is not None:
        error = f"{error}: {mismatch}"
    if code != 0:
        error = f"sudo -l -U {user} failed: {clean(listing.strip(), 300)}"
    return refuse(f"{error}; {_take_back(paths, grant_id)}")


def _host_mismatch(paths: Paths) -> str | None:
    conf = load_conf(paths)
    return host_mismatch(conf.node, socket.gethostname()) if isinstance(conf, NodeConf) else None


def _take_back(paths: Paths, grant_id: str) -> str:
    """A rule sudo does not list is not a grant: remove both files again, so that nothing
    the broker records as failed stays installed (a retry writes them anew)."""
    try:
        remove_if_present(os.path.join(paths.sudoers, f"broker_{grant_id}"))
        remove_if_present(os.path.join(paths.grants, grant_id))
        fsync_dir(paths.sudoers)
        fsync_dir(paths.grants)
    except OSError as exc:
        return f"its files could not be removed: {exc.strerror or exc}"
    return "its files were removed again"


def _put_in_place(paths: Paths, grant_id: str, grant_text: str, sudoers: str) -> str | None:
    """Write the grant file and the drop-in under temporary names, have visudo check the
    drop-in, then rename both; None when done, else why not (nothing left behind)."""
    try:
        ensure_dir(paths.grants)
        os.close(open_dir(paths.sudoers))
    except OSError as exc:
        return str(exc)
    drop_in = f"broker_{grant_id}"
    temps: list[str] = []
    try:
        temps.append(write_temp(paths.grants, grant_id, grant_text.encode("ascii"), 0o600))
        temps.append(write_temp(paths.sudoers, drop_in, sudoers.encode("ascii"), 0o440))
        code, output = run_program(["visudo", "-cf", temps[1]])
        if code != 0:
            lines = [ln for ln in output.split("\n") if ln.strip() and "parsed OK" not in ln]
            message = clean(" ".join(lines).replace(temps[1], drop_in), 400)
            return f"visudo refused the drop-in: {message}"
        os.rename(temps[0], os.path.join(paths.grants, grant_id))
        temps[0] = os.path.join(paths.grants, grant_id)
        os.rename(temps[1], os.path.join(paths.sudoers, drop_in))
        temps.clear()
        fsync_dir(paths.grants)
        fsync_dir(paths.sudoers)
    except OSError as exc:
        return f"cannot install: {exc.strerror or exc}"
    finally:
        for path in temps:
            remove_if_present(path)
    return None


def _skew_problem(payload: dict[str, object]) -> str | None:
    """The broker sends its clock and the limit; refuse here, before anything is written,
    when this node's clock differs by more (one round trip instead of a separate probe)."""
    sent, limit = payload.get("broker_time"), payload.get("max_skew")
    if not isinstance(sent, (int, float)) or isinstance(sent, bool):
        raise Usage("broker_time must be seconds since the epoch")
    if not isinstance(limit, (int, float)) or isinstance(limit, bool) or not 0 < limit <= 3600:
        raise Usage("max_skew must be between 0 and 3600 seconds")
    skew = time.time() - float(sent)
    if abs(skew) <= float(limit):
        return None
    way = "ahead of" if skew > 0 else "behind"
    return (
        f"clock is {abs(skew):.1f} s {way} the broker's (limit {float(limit):.0f} s); "
        "fix time sync (chrony/NTP) on the node"
    )


def _rule_listed(listing: str, grant: CheckedGrant) -> bool:
    """Whether `sudo -l` output shows a rule with the grant's runas and time window."""
    want = {f"NOTBEFORE={format_utc(grant.not_before, True)}"}
    want.add(f"NOTAFTER={format_utc(grant.not_after, True)}")
    entries: list[str] = []
    for line in listing.split("\n"):
        if line.startswith("    (") and not line.startswith("     "):
            entries.append(line.strip())
        elif line.startswith("        ") and entries:
            entries[-1] += " " + line.strip()
    return any(
        entry.startswith(f"({grant.runas})") and want <= set(entry.split()) for entry in entries
    )
