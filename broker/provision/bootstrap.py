"""`broker node bootstrap`: install the node side (docs/grants.md) over SFTP, idempotently.

Order matters for not locking anyone out: the node's machine and C library
are checked against the PAM module built here (pam/build/, `make -C pam`)
before anything is written; directories, the node program, the module and
its grant checker, node.conf and the verification key go first; the program
is compiled and must answer `status` for this node, with the module loadable
by the node's own dynamic linker; only then are the PAM blocks put at the top
of the PAM files (a block naming a module that cannot load would deny every
sudo and every login). Every file is written under a temporary name with root
ownership and its final mode, then renamed over the old one, so a PAM file
always holds either the old broker block or the new one. A second run finds
everything in place and changes nothing.

A node with the hpc-access-broker-node package (packaging/node/) is only enrolled: when
the package's marker names the node files this broker ships, the program, the module and
the watcher unit are the package's and are left alone (node.conf, the key, the tunnel's
files and the PAM blocks are still written); when it names other ones, nothing is written.
"""

from __future__ import annotations

import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import paramiko

import broker
from broker.core.errors import BrokerError, RefusedError, UnavailableError
from broker.fleet import inventory, nodeprog
from broker.fleet.pool import SshPool, put_atomic, read_regular, remote_stat
from broker.fleet.ssh import NodeTarget
from broker.fleet.status import NodeStatus, parse_status
from broker.policy.model import Policy
from broker.provision import packaged
from broker.provision.bundle import (
    CHECKER,
    GRANT_KEY,
    KEYTAB_PY,
    MAX_REMOTE_FILE,
    MODULE,
    NEW_PAM_TAIL,
    NODE_CONF,
    NODE_DIRS,
    NODE_PKG,
    OBSOLETE_FILES,
    PAM_D,
    PROGRAM_FILES,
    STALE_FILES,
    WATCH_UNIT,
    Bundle,
    Compat,
    check_key_file,
    insert_block,
    load_bundle,
    pam_services,
    render_node_conf,
)
from broker.sessions import carrier
from broker.sessions.setup import NodeTunnel
from broker.store.db import Store

PUSHED_WATCH_UNIT = f"/etc/systemd/system/{WATCH_UNIT}"


@dataclass(frozen=True)
class BootstrapResult:
    node: str
    ok: bool
    changed: list[str] = field(default_factory=list)
    error: str | None = None
    status: NodeStatus | None = None
    elapsed_ms: float = 0.0


# ---------------------------------------------------------------- one node


def _install_tunnel(sftp: paramiko.SFTPClient, tunnel: NodeTunnel, changed: list[str]) -> bool:
    """The recording carrier's files (a relay's too); a certificate only where the node has
    no good one. True when anything changed (the tunnel, and the relay, must restart)."""
    before = len(changed)
    _ensure_dir(sftp, carrier.NODE_DIR, 0o755, changed)
    for path, mode in tunnel.dirs:
        _ensure_dir(sftp, path, mode, changed)
    systemd = remote_stat(sftp, "/etc/systemd/system") is not None
    for path, data, mode in tunnel.files:
        if path.startswith("/etc/systemd/") and not systemd:
            continue
        _ensure_file(sftp, path, data, mode, changed)
    for path in tunnel.gone:  # the break-glass drop-in of a policy that no longer has one
        if remote_stat(sftp, path) is not None:
            sftp.remove(path)
            changed.append(f"removed {path}")
    for leaf in tunnel.leaves:
        cert = read_regular(sftp, leaf.cert, MAX_REMOTE_FILE)
        if not tunnel.cert_ok(leaf, cert) or remote_stat(sftp, leaf.key) is None:
            issued = tunnel.replace(leaf, cert)
            put_atomic(sftp, leaf.key, issued.key_pem, 0o600)
            put_atomic(sftp, leaf.cert, issued.cert_pem, 0o644)
            changed.append(f"issued {leaf.cert}")
    return len(changed) != before


def _install_program(
    pool: SshPool,
    target: NodeTarget,
    bundle: Bundle,
    node_conf: str,
    key_line: str,
    tunnel: NodeTunnel | None,
    changed: list[str],
    owned: bool = False,
) -> tuple[bool, bool, bool]:
    """The node's directories, program, configuration and tunnel files. Returns (python
    to compile, tunnel to restart, watcher unit rewritten); systemd units only go where the
    node runs systemd. `owned`: the node package holds the program (and compiled it), so
    only node.conf, the key and the tunnel's files are written."""
    with pool.sftp(target) as sftp:
        for path, mode in NODE_DIRS:
            _ensure_dir(sftp, path, mode, changed)
        systemd = remote_stat(sftp, "/etc/systemd/system") is not None
        files = (
            *(() if owned else bundle.files),
            (NODE_CONF, node_conf.encode("ascii"), 0o644),
            (GRANT_KEY, check_key_file(key_line).encode("ascii"), 0o644),
        )
        program_new = watch_new = False
        for path, data, mode in files:
            if path.startswith("/etc/systemd/") and not systemd:
                continue
            rewritten = _ensure_file(sftp, path, data, mode, changed)
            program_new = program_new or (rewritten and path.endswith(".py"))
            watch_new = watch_new or (rewritten and path.endswith(WATCH_UNIT))
        _remove_stale(sftp, changed)
        if owned and systemd:  # a unit pushed before the package came would shadow its own
            watch_new = _remove_with_pyc(sftp, PUSHED_WATCH_UNIT, changed)
        compile_it = not owned and (program_new or not _compiled(sftp))
        restart = tunnel is not None and _install_tunnel(sftp, tunnel, changed)
    return compile_it, restart, watch_new


def _run_or_fail(pool: SshPool, target: NodeTarget, argv: list[str], what: str) -> None:
    result = pool.run(target, argv)
    if not result.ok:
        raise UnavailableError(result.error or f"{what} failed: {result.stderr.strip()[-200:]}")


def _restart_units(units: Sequence[str]) -> list[str]:
    """systemd on the node starts (or restarts) the tunnel, a relay's units and the watcher;
    without it (containers, the lab) whatever supervises the node runs them
    (docs/sessions.md, docs/grants.md)."""
    names = [u.rsplit("/", 1)[-1] for u in units]
    pattern = r"broker-(logsrv[a-z-]*|node-watch)\.(service|timer)"
    if not all(re.fullmatch(pattern, n) for n in names):
        raise ValueError("only the broker's own node units are restarted")
    joined = " ".join(names)
    return [
        "sh",
        "-c",
        "if [ -d /run/systemd/system ]; then systemctl daemon-reload &&"
        f" systemctl enable --quiet {joined} && systemctl restart {joined}; fi",
    ]


def _ensure_dir(sftp: paramiko.SFTPClient, path: str, mode: int, changed: list[str]) -> None:
    attrs = remote_stat(sftp, path)
    if attrs is None:
        sftp.mkdir(path, mode)
        sftp.chown(path, 0, 0)
        sftp.chmod(path, mode)  # mkdir's mode passes through the umask
        changed.append(f"created {path}/")
        return
    if attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
        raise RefusedError(f"{path} is not a directory", fix="move it away and bootstrap again")
    if (attrs.st_uid, attrs.st_gid) != (0, 0):
        sftp.chown(path, 0, 0)
        changed.append(f"owner root {path}/")
    if stat.S_IMODE(attrs.st_mode) != mode:
        sftp.chmod(path, mode)
        changed.append(f"mode {mode:04o} {path}/")


def _ensure_file(
    sftp: paramiko.SFTPClient, path: str, data: bytes, mode: int, changed: list[str]
) -> bool:
    """Make `path` hold exactly `data`, root-owned with `mode`; True when it was rewritten."""
    current = read_regular(sftp, path, MAX_REMOTE_FILE)
    if current != data:
        put_atomic(sftp, path, data, mode, fsync=True)
        changed.append(f"{'updated' if current is not None else 'installed'} {path}")
        return True
    attrs = sftp.lstat(path)
    if (attrs.st_uid, attrs.st_gid) != (0, 0):
        sftp.chown(path, 0, 0)
        changed.append(f"owner root {path}")
    if attrs.st_mode is not None and stat.S_IMODE(attrs.st_mode) != mode:
        sftp.chmod(path, mode)
        changed.append(f"mode {mode:04o} {path}")
    return False


def _check_root_dir(sftp: paramiko.SFTPClient, path: str) -> None:
    """Refuse to write into a directory someone other than root could change."""
    attrs = remote_stat(sftp, path)
    if attrs is None or attrs.st_mode is None or not stat.S_ISDIR(attrs.st_mode):
        raise RefusedError(f"{path} is missing or not a directory")
    if attrs.st_uid != 0 or stat.S_IMODE(attrs.st_mode) & 0o022:
        raise RefusedError(
            f"{path} is not root-owned or is writable by others",
            fix=f"chown root:root {path}; chmod go-w {path}",
        )


def _python_files() -> list[str]:
    """The installed modules py_compile compiles (launchers are run, not imported)."""
    return [path for _name, path, _mode in PROGRAM_FILES if path.endswith(".py")]


def _compiled(sftp: paramiko.SFTPClient) -> bool:
    """Whether every module has a .pyc in the __pycache__ beside it."""
    listings: dict[str, list[str]] = {}
    for path in _python_files():
        directory, _, name = path.rpartition("/")
        if directory not in listings:
            try:
                listings[directory] = sftp.listdir(f"{directory}/__pycache__")
            except FileNotFoundError:
                return False
        stem = name.removesuffix(".py")
        if not any(n.startswith(f"{stem}.") and n.endswith(".pyc") for n in listings[directory]):
            return False
    return True


def _remove_stale(sftp: paramiko.SFTPClient, changed: list[str]) -> None:
    """Remove what an older version installed and this one replaced (with its .pyc)."""
    for path in STALE_FILES:
        _remove_with_pyc(sftp, path, changed)


def _remove_with_pyc(sftp: paramiko.SFTPClient, path: str, changed: list[str]) -> bool:
    """Remove a file and, for a module, the .pyc files in the __pycache__ beside it; True
    when anything was removed."""
    directory, _, name = path.rpartition("/")
    cached: list[str] = []
    if name.endswith(".py"):
        try:
            cached = sftp.listdir(f"{directory}/__pycache__")
        except FileNotFoundError:
            cached = []
    stem = name.removesuffix(".py")
    stale = [f"{directory}/__pycache__/{n}" for n in cached if n.startswith(f"{stem}.")]
    before = len(changed)
    for old in (path, *stale):
        if remote_stat(sftp, old) is not None:
            sftp.remove(old)
            changed.append(f"removed {old}")
    return len(changed) != before


# How each built file proves it runs on the node, given its staged path: the module loads
# with every symbol bound (as libpam loads it), the checker answers --version.
_PROBES: dict[str, Callable[[str], list[str]]] = {
    MODULE: lambda staged: [
        "/usr/bin/python3",
        "-I",
        "-S",
        "-c",
        "import ctypes, os, sys; ctypes.CDLL(sys.argv[1], mode=os.RTLD_NOW)",
        staged,
    ],
    CHECKER: lambda staged: [staged, "--version"],
}
BUILT_PATHS = frozenset(_PROBES)


def install_built(
    pool: SshPool,
    target: NodeTarget,
    built: Sequence[tuple[str, bytes, int]],
    changed: list[str],
    probes: Mapping[str, Callable[[str], list[str]]] = _PROBES,
) -> None:
    """The module and its checker, replaced only once they are proven to run on the node.

    A file that differs is written beside the live one (`.NAME.new`, fsynced), run there
    (`_PROBES`), and only then renamed over it: a node missing a library the build needs
    (libsodium) keeps the module it had, and the PAM files that name it keep working."""
    staged: list[tuple[str, str]] = []
    with pool.sftp(target) as sftp:
        for path, data, mode in built:
            _ensure_dir(sftp, path.rsplit("/", 1)[0], 0o755, changed)
            if read_regular(sftp, path, MAX_REMOTE_FILE) == data:
                continue
            directory, _, name = path.rpartition("/")
            put_atomic(sftp, f"{directory}/.{name}.new", data, mode, fsync=True)
            staged.append((path, f"{directory}/.{name}.new"))
    failed = None
    for path, temp in staged:
        result = pool.run(target, probes[path](temp))
        if not result.ok and failed is None:
            said = (result.error or result.stderr).strip().splitlines()
            failed = (path, said[-1][-200:] if said else "no answer")
    with pool.sftp(target) as sftp:
        for path, temp in staged:
            if failed is None:
                sftp.posix_rename(temp, path)
                changed.append(f"installed {path}")
            elif remote_stat(sftp, temp) is not None:
                sftp.remove(temp)
    if failed is not None:
        raise RefusedError(
            f"{failed[0]} does not run on the node ({failed[1]}); nothing was replaced",
            fix="install what it needs there (libsodium), or build it on the node "
            "(make -C pam install), then run bootstrap again",
        )


def _check_compat(pool: SshPool, target: NodeTarget, compat: Compat) -> None:
    """Refuse, before writing anything, a node the built module cannot run on."""
    machine = pool.run(target, ["uname", "-m"])
    libc = pool.run(target, ["getconf", "GNU_LIBC_VERSION"])
    if machine.error is not None:
        raise UnavailableError(machine.error)
    problem = compat.problem(machine.stdout if machine.ok else "", libc.stdout if libc.ok else "")
    if problem is not None:
        raise RefusedError(problem)


def _remove_obsolete(sftp: paramiko.SFTPClient, changed: list[str]) -> None:
    """Files of an older hook that no PAM block names any more (with their .pyc)."""
    for path in OBSOLETE_FILES:
        _remove_with_pyc(sftp, path, changed)


def _install_pam(
    sftp: paramiko.SFTPClient, bundle: Bundle, joblaunch_service: str, changed: list[str]
) -> None:
    _check_root_dir(sftp, PAM_D)
    for service, block, required in pam_services(joblaunch_service):
        path = f"{PAM_D}/{service}"
        current = read_regular(sftp, path, MAX_REMOTE_FILE)
        if current is None and required:
            raise RefusedError(f"{path} does not exist", fix="install sudo and sshd first")
        if current is None and service == "sudo-i":
            continue
        old = None if current is None else current.decode("utf-8", "surrogateescape")
        tail = NEW_PAM_TAIL if block == "joblaunch" else ""
        try:
            text = insert_block(old, bundle.blocks[block], tail)
        except RefusedError as exc:
            raise RefusedError(f"{path}: {exc.message}", fix="fix the markers by hand") from None
        if text != old:
            put_atomic(sftp, path, text.encode("utf-8", "surrogateescape"), 0o644, fsync=True)
            changed.append(f"{'updated' if old is not None else 'created'} {path}")


def _activate_program(
    pool: SshPool,
    target: NodeTarget,
    tunnel: NodeTunnel | None,
    changed: list[str],
    restart: bool,
    compile_it: bool,
    watch_new: bool,
) -> None:
    """Restart what runs the new files: the recording tunnel, the byte code, the watcher."""
    if restart and tunnel is not None:
        _run_or_fail(pool, target, _restart_units(tunnel.units), "the recording tunnel")
    if compile_it:
        _run_or_fail(
            pool, target, ["/usr/bin/python3", "-I", "-S", "-m", "py_compile", *_python_files()],
            "py_compile",
        )  # fmt: skip
        changed.append(f"compiled {NODE_PKG} and {KEYTAB_PY}")
    if compile_it or watch_new:
        # The watcher runs the node program: a new program means a new watcher.
        _run_or_fail(pool, target, _restart_units([WATCH_UNIT]), "broker-node-watch")


def _package_owns(pool: SshPool, target: NodeTarget, bundle: Bundle) -> bool:
    """Whether the node's hpc-access-broker-node package holds the program, the module and
    the watcher unit (its marker names the node files this broker ships); refused, before
    anything is written, when the package holds other ones (packaged.py)."""
    with pool.sftp(target) as sftp:
        marker = read_regular(sftp, packaged.MARKER, packaged.MAX_MARKER)
    return packaged.package_owns_program(marker, bundle.digest, broker.__version__)


def _answering_status(
    pool: SshPool, target: NodeTarget, bundle: Bundle, max_skew: float
) -> NodeStatus:
    """The installed program's status; refused (PAM files untouched) if it does not answer
    or the PAM module it reports does not load."""
    sent = time.time()
    answer = pool.run(target, nodeprog.argv_for("status"), b"{}")
    status = parse_status(answer, sent, time.time(), max_skew)
    if answer.error is not None or status.hook_version is None:
        raise RefusedError(
            f"the installed node program does not answer ({status.problem}); "
            "PAM files left untouched"
        )
    if bundle.compat is not None and status.module_problem is not None:
        raise RefusedError(
            f"the PAM module does not load on the node ({status.module_problem}); PAM "
            "files left untouched",
            fix="build it on the node (make -C pam install) and run bootstrap again",
        )
    return status


def bootstrap_node(
    pool: SshPool,
    target: NodeTarget,
    bundle: Bundle,
    *,
    node_conf: str,
    key_line: str,
    joblaunch_service: str,
    max_skew: float,
    tunnel: NodeTunnel | None = None,
) -> BootstrapResult:
    """Install the node side on one node; errors are reported, never raised."""
    started = time.monotonic()
    changed: list[str] = []
    status: NodeStatus | None = None
    try:
        owned = _package_owns(pool, target, bundle)
        if bundle.compat is not None and not owned:
            _check_compat(pool, target, bundle.compat)
            built = [f for f in bundle.files if f[0] in BUILT_PATHS]
            install_built(pool, target, built, changed)
        compile_it, restart, watch_new = _install_program(
            pool, target, bundle, node_conf, key_line, tunnel, changed, owned
        )
        _activate_program(pool, target, tunnel, changed, restart, compile_it, watch_new)
        status = _answering_status(pool, target, bundle, max_skew)
        with pool.sftp(target) as sftp:
            _install_pam(sftp, bundle, joblaunch_service, changed)
            if bundle.compat is not None:
                _remove_obsolete(sftp, changed)
        if changed:
            # Renames are durable once their file systems are synced (/etc, /usr, /var).
            pool.run(target, ["sync", "-f", NODE_CONF, NODE_PKG, "/var/lib/broker"])
            sent = time.time()
            answer = pool.run(target, nodeprog.argv_for("status"), b"{}")
            status = parse_status(answer, sent, time.time(), max_skew)
    except BrokerError as exc:
        return _failed(target, changed, exc.one_line(), status, started)
    except (OSError, EOFError, paramiko.SSHException) as exc:
        return _failed(target, changed, f"{type(exc).__name__}: {exc}", status, started)
    elapsed = (time.monotonic() - started) * 1000
    return BootstrapResult(target.name, True, changed, None, status, elapsed)


def _failed(
    target: NodeTarget,
    changed: list[str],
    error: str,
    status: NodeStatus | None,
    started: float,
) -> BootstrapResult:
    message = error if error.startswith(target.name) else f"{target.name}: {error}"
    elapsed = (time.monotonic() - started) * 1000
    return BootstrapResult(target.name, False, changed, message[:500], status, elapsed)


# ---------------------------------------------------------------- many nodes


def bootstrap(
    store: Store,
    pool: SshPool,
    names: Sequence[str],
    *,
    policy: Policy,
    key_line: str,
    joblaunch_service: str,
    max_skew: float,
    actor: str,
    bundle: Bundle | None = None,
    on_done: Callable[[BootstrapResult], None] | None = None,
    tunnels: Callable[[NodeTarget], NodeTunnel] | None = None,
) -> list[BootstrapResult]:
    """Bootstrap enrolled nodes in parallel; audit what changed (node.bootstrap) per node."""
    targets = inventory.targets(store, names)
    use = bundle or load_bundle()
    key = check_key_file(key_line)
    confs = {t.name: render_node_conf(policy, t.name, joblaunch_service) for t in targets}

    def one(target: NodeTarget) -> BootstrapResult:
        result = bootstrap_node(
            pool,
            target,
            use,
            node_conf=confs[target.name],
            key_line=key,
            joblaunch_service=joblaunch_service,
            max_skew=max_skew,
            tunnel=None if tunnels is None else tunnels(target),
        )
        if on_done is not None:
            on_done(result)
        return result

    results: list[BootstrapResult] = pool.map(one, targets)
    for result in results:
        if result.ok or result.changed:
            inventory.mark_bootstrapped(
                store, result.node, result.changed, actor, ok=result.ok, error=result.error
            )
    observations = [r.status.observation() for r in results if r.status is not None]
    inventory.record_status(store, [o for o in observations if o is not None], actor)
    return results
