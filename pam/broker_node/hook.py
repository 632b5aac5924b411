"""The PAM hook: pam_exec runs it on every sudo, sshd login and job launch (the hook
table of docs/grants.md). Exit 0 allows, 1 refuses; errors refuse (sessions: logged).

Only the hook lives here, and nothing the node program needs: the compiled PAM module
replaces it, and then this module goes whole.
"""

from __future__ import annotations

import binascii
import os
import time

from .contract import (
    BREAK_GLASS,
    SUDO_SERVICES,
    Grant,
    GrantKey,
    NodeConf,
    Paths,
    clean,
    format_utc,
    is_grant_id,
    is_posix_name,
    sha256,
)
from .files import fsync_dir, random_hex
from .procs import proc_table_entry
from .spool import live_sessions, record_session, spool_event, target_name, tty_name
from .store import check_grant, grant_ids, load_conf, load_key, read_grant_file, read_quarantine

TYPE_CHECKING = False  # never import typing at run time: it costs start-up time
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    GroupCheck = Callable[[str, str], bool]


SESSION_TYPES = ("open_session", "close_session")
DENY_SPOOL_LIMIT = 5000


Decision = tuple[bool, str]


# ---------------------------------------------------------------- grants and quarantine


def valid_grants(
    paths: Paths, conf: NodeConf, key: GrantKey, user: str, now: int
) -> tuple[list[Grant], list[str]]:
    """The user's valid grants, and what was wrong with the files that could be theirs."""
    found: list[Grant] = []
    problems: list[str] = []
    if not is_posix_name(user):
        return found, problems
    for name in grant_ids(paths):
        label = clean(name, 40)
        if not is_grant_id(name):
            problems.append(f"{label}: not a grant id")
            continue
        grant = read_grant_file(paths, name)
        if isinstance(grant, str):
            problems.append(f"{label}: {grant}")
            continue
        if grant.user != user:
            continue
        problem = check_grant(grant, conf, key, now, paths=paths, user=user)
        if problem is None:
            found.append(grant)
        else:
            problems.append(f"{label}: {problem}")
    return found, problems


def _grant_state(
    paths: Paths,
    user: str,
    now: int,
    conf: NodeConf | str | None = None,
    key: GrantKey | str | None = None,
) -> tuple[list[Grant], str]:
    """Valid grants of `user` on this node and, when none, the reason why."""
    conf = load_conf(paths) if conf is None else conf
    if isinstance(conf, str):
        return [], conf
    key = load_key(paths) if key is None else key
    if isinstance(key, str):
        return [], key
    grants, problems = valid_grants(paths, conf, key, user, now)
    if grants:
        return grants, ""
    reason = f"no valid grant for {clean(user, 64)} on {conf.node}"
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        reason += ": " + "; ".join(problems[:3]) + more
    return [], reason


def _break_glass(conf: NodeConf | str, user: str, in_group: GroupCheck) -> bool:
    if isinstance(conf, str) or not conf.break_glass_group or not user:
        return False
    return in_group(user, conf.break_glass_group)


def _node_key(paths: Paths, conf: NodeConf | str) -> GrantKey | str:
    """The verification key, or why this node's own configuration cannot be trusted (then
    only root passes, not even break-glass: fail closed). Read once per hook run."""
    return conf if isinstance(conf, str) else load_key(paths)


def _quarantine_refusal(paths: Paths, user: str, in_group: GroupCheck) -> str | None:
    """Why a quarantine keeps `user` (not root) out, or None when there is none or the user
    is in its incident-response group (who then still needs a grant or break-glass)."""
    marker = read_quarantine(paths)
    if marker is None:
        return None
    if isinstance(marker, str):
        return f"node quarantined ({marker}): only root may pass"
    if marker.group and in_group(user, marker.group):
        return None
    return f"node quarantined since {format_utc(marker.since)}: {clean(marker.reason, 200)}"


# ---------------------------------------------------------------- the decisions


def decide_sudo(paths: Paths, ruser: str, now: int, in_group: GroupCheck) -> Decision:
    """sudo auth/account: root, a valid grant with a free session slot, or break-glass.

    On a quarantined node only members of the marker's group get that far (break-glass
    members outside it are refused too). Grants are looked at before break-glass: the
    group lookup may go to the directory (SSSD).
    """
    if ruser == "root":
        return True, "root"
    if not ruser:
        return False, "no PAM_RUSER: the invoking user is unknown"
    quarantined = _quarantine_refusal(paths, ruser, in_group)
    if quarantined is not None:
        return False, quarantined
    conf = load_conf(paths)
    key = _node_key(paths, conf)
    if isinstance(key, str):
        return False, key
    grants, reason = _grant_state(paths, ruser, now, conf, key)
    if grants:
        limit = max(grant.max_sessions for grant in grants)
        # A session is recorded under every grant the user held when it opened: count pids.
        open_now = len({pid for grant in grants for pid in live_sessions(paths, grant.id)})
        if open_now < limit:
            return True, f"grant {grants[0].id}"
        reason = f"max_sessions reached: {open_now} open elevated sessions (limit {limit})"
    if _break_glass(conf, ruser, in_group):
        assert isinstance(conf, NodeConf)
        return True, f"break-glass: {clean(ruser, 64)} is in {conf.break_glass_group}"
    return False, reason


def decide_sshd(paths: Paths, user: str, now: int, in_group: GroupCheck) -> Decision:
    """sshd account: when logins are gated, only root, login=1 grants and break-glass
    (and, on a quarantined node, only those of them in the marker's group)."""
    if user == "root":
        return True, "root"
    conf = load_conf(paths)
    key = _node_key(paths, conf)
    if isinstance(key, str):
        return False, key
    assert isinstance(conf, NodeConf)
    if not conf.login_gated:
        return True, "logins not gated"
    quarantined = _quarantine_refusal(paths, user, in_group)
    if quarantined is not None:
        return False, f"login gated: {quarantined}"
    grants, reason = _grant_state(paths, user, now, conf, key)
    login = [grant for grant in grants if grant.login]
    if login:
        return True, f"login grant {login[0].id}"
    if _break_glass(conf, user, in_group):
        return True, f"break-glass: {clean(user, 64)} is in {conf.break_glass_group}"
    if grants:
        return False, f"login gated: grant {grants[0].id} has login=0"
    return False, f"login gated: {reason}"


def decide_joblaunch(
    paths: Paths, user: str, now: int, conf: NodeConf | str | None = None
) -> Decision:
    """Job launch (AC-6): no workloads while holding a root grant with workloads=0."""
    grants, _ = _grant_state(paths, user, now, conf)
    for grant in grants:
        if grant.runas == "root" and not grant.workloads:
            return False, f"holds root grant {grant.id} (workloads=0): no jobs while elevated"
    return True, "no root grant"


def open_session(
    paths: Paths,
    service: str,
    ruser: str,
    user: str,
    tty: str,
    pid: int,
    now: int,
    in_group: GroupCheck | None = None,
) -> Decision:
    """Record sessions/<id>/<pid> and spool an `open` event; never refuses.

    A break-glass session (no grant, the user in break_glass_group) is recorded too, under
    the pseudo-id `break-glass`: the emergency path is the one most worth a record."""
    grants, _ = _grant_state(paths, ruser, now) if ruser != "root" else ([], "")
    if not grants:
        if ruser and ruser != "root" and in_group is not None:
            conf = load_conf(paths)
            if _break_glass(conf, ruser, in_group):
                record_session(paths, BREAK_GLASS, service, ruser, user, tty, pid, now)
                return True, f"break-glass session {pid} recorded"
        return True, "no grant: session not recorded"
    # Which of the user's grants sudo matched is not known here: the session belongs to
    # each of them, so revoking any one of them ends it.
    for grant in grants:
        record_session(paths, grant.id, service, ruser, user, tty, pid, now)
    return True, f"session {','.join(g.id for g in grants)}/{pid} recorded"


def close_session(
    paths: Paths, service: str, ruser: str, user: str, tty: str, pid: int, now: int
) -> Decision:
    """Remove sessions/*/<pid> and spool a `close` event; never refuses."""
    try:
        ids = [
            name for name in os.listdir(paths.sessions) if is_grant_id(name) or name == BREAK_GLASS
        ]
    except FileNotFoundError:
        ids = []
    closed: list[str] = []
    for grant_id in ids:
        path = os.path.join(paths.sessions, grant_id, str(pid))
        if not os.path.lexists(path):
            continue
        os.unlink(path)
        fsync_dir(os.path.dirname(path))
        spool_event(
            paths, "close", grant_id, ruser, target_name(user), service, tty_name(tty), pid, now
        )
        closed.append(grant_id)
    if closed:
        return True, f"session {','.join(closed)}/{pid} closed"
    return True, "no session record"


def spool_deny(
    paths: Paths, service: str, ruser: str, user: str, tty: str, pid: int, now: int
) -> str | None:
    """Spool one `deny` event per refused sudo process; its event id, or None when skipped.

    sudo may run the hook in both its auth and account stacks for one attempt (and auth
    again per password try); the id's last two parts name the sudo process (pid and
    start time), so a second refusal of the same process finds its event and adds none.
    Refusals are not spooled past DENY_SPOOL_LIMIT waiting events (a user looping on sudo
    must not crowd out session events), nor without a spool directory (bootstrap makes
    it) or when it cannot be written: the refusal itself stands either way.
    """
    try:
        names = os.listdir(paths.events)
    except OSError:  # missing: not bootstrapped, nothing collects it
        return None
    if len(names) >= DENY_SPOOL_LIMIT:
        return None
    entry = proc_table_entry(paths, pid)
    if entry is None:
        tag = random_hex()
    else:
        seed = f"deny {pid} {entry[2]} {ruser}".encode("utf-8", "replace")
        tag = binascii.hexlify(sha256(seed)[:4]).decode("ascii")
        suffix = f"-{pid}-{tag}.json"
        if any(name.endswith(suffix) for name in names):
            return None
    event_id = f"{time.time_ns()}-{int(pid)}-{tag}"
    try:
        return spool_event(
            paths,
            "deny",
            "-",
            target_name(ruser),
            target_name(user),
            service,
            tty_name(tty),
            pid,
            now,
            event_id=event_id,
        )
    except OSError:
        return None


def decide(
    paths: Paths,
    pam_type: str,
    service: str,
    user: str,
    ruser: str,
    tty: str,
    pid: int,
    now: int,
    in_group: GroupCheck,
) -> Decision:
    """One row of the hook table in docs/grants.md."""
    if service in SUDO_SERVICES:
        if pam_type in ("auth", "account"):
            allow, reason = decide_sudo(paths, ruser, now, in_group)
            if not allow and ruser and ruser != "root":
                spool_deny(paths, service, ruser, user, tty, pid, now)
            return allow, reason
        if pam_type == "open_session":
            return open_session(paths, service, ruser, user, tty, pid, now, in_group)
        if pam_type == "close_session":
            return close_session(paths, service, ruser, user, tty, pid, now)
        return True, "not gated"
    if pam_type != "account":
        return True, "not gated"
    if service == "sshd":
        return decide_sshd(paths, user, now, in_group)
    conf = load_conf(paths)
    if isinstance(conf, str):
        if user == "root":
            return True, "root"
        return False, conf  # the job-launch service cannot be told apart: fail closed
    if conf.joblaunch_service and service == conf.joblaunch_service:
        return decide_joblaunch(paths, user, now, conf)
    return True, "not gated"


# ---------------------------------------------------------------- pam_exec


def in_group(user: str, group: str) -> bool:
    """NSS membership, primary group included (the real lookup of pam_main)."""
    import grp
    import pwd

    try:
        entry = grp.getgrnam(group)
    except KeyError:
        return False
    if user in entry.gr_mem:
        return True
    try:
        return pwd.getpwnam(user).pw_gid == entry.gr_gid
    except KeyError:
        return False


def _syslog(priority_name: str, message: str) -> None:
    import syslog

    syslog.openlog("broker-pam", syslog.LOG_PID, syslog.LOG_AUTHPRIV)
    syslog.syslog(getattr(syslog, priority_name), clean(message, 900))


def pam_main(argv: list[str], environ: Mapping[str, str], paths: Paths | None = None) -> int:
    """pam_exec entry point: exit 0 allows, 1 denies; any error denies (sessions: logged, 0)."""
    del argv  # pam_exec passes nothing the hook needs
    here = paths if paths is not None else Paths()
    pam_type = environ.get("PAM_TYPE", "")
    service = environ.get("PAM_SERVICE", "")
    user, ruser = environ.get("PAM_USER", ""), environ.get("PAM_RUSER", "")
    what = f"service={clean(service, 40)} type={clean(pam_type, 20)} user={clean(user, 64)}"
    what += f" ruser={clean(ruser, 64)}"
    try:
        allow, reason = decide(
            here,
            pam_type,
            service,
            user,
            ruser,
            environ.get("PAM_TTY", ""),
            os.getppid(),
            int(time.time()),
            in_group,
        )
    except Exception as exc:  # noqa: BLE001 - the hook must fail closed, never crash open
        reason = f"internal error: {type(exc).__name__}: {exc}"
        if pam_type in SESSION_TYPES:
            _log_quietly("LOG_ERR", f"session not recorded {what}: {reason}")
            return 0
        allow = False
    if not allow:
        _log_quietly("LOG_WARNING", f"deny {what}: {reason}")
        return 1
    if reason.startswith("break-glass"):
        _log_quietly("LOG_NOTICE", f"allow {what}: {reason}")
    return 0


def _log_quietly(priority: str, message: str) -> None:
    try:  # noqa: SIM105 - contextlib would cost an import on every sudo
        _syslog(priority, message)
    except Exception:  # noqa: BLE001, S110 - logging must not change the decision
        pass
