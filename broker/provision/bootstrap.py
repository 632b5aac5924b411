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
"""

from __future__ import annotations

import base64
import binascii
import re
import stat
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import paramiko

import broker
from broker.core.errors import BrokerError, RefusedError, UnavailableError, UsageError
from broker.fleet import inventory, nodeprog
from broker.fleet.pool import SshPool, put_atomic, read_regular, remote_stat
from broker.fleet.ssh import NodeTarget
from broker.fleet.status import NodeStatus, parse_status
from broker.policy.model import Policy
from broker.sessions import carrier
from broker.sessions.setup import NodeTunnel
from broker.store.db import Store

LIBEXEC = "/usr/libexec/broker"
MODULE_DIR = "/usr/lib/broker"
MODULE = f"{MODULE_DIR}/pam_broker.so"
CHECKER = f"{LIBEXEC}/broker-grant-check"
NODE_PKG = f"{LIBEXEC}/broker_node"
# Its modules (pam/broker_node/). __init__.py goes last: until it is there, a node's older
# single-file broker_node.py keeps answering, and once it is, every module is in place.
NODE_MODULES = (
    "contract",
    "files",
    "store",
    "grants",
    "procs",
    "spool",
    "usage",
    "drift",
    "status",
    "install",
    "revoke",
    "commands",
    "__init__",
)
# Left by older versions: shadowed by the package, removed once it is installed.
STALE_FILES = (f"{LIBEXEC}/broker_node.py",)
KEYTAB_PY = f"{LIBEXEC}/broker_keytab.py"
NODE_CONF = "/etc/broker/node.conf"
GRANT_KEY = "/etc/broker/grant-key.pub"
PAM_D = "/etc/pam.d"
BEGIN, END = "# BEGIN broker", "# END broker"
NEW_PAM_TAIL = "@include common-account\n"
MAX_REMOTE_FILE = 4 * 1024 * 1024
# Directories of docs/grants.md, parents first, with their modes (root-owned).
NODE_DIRS: tuple[tuple[str, int], ...] = (
    (LIBEXEC, 0o755),
    (MODULE_DIR, 0o755),
    (NODE_PKG, 0o755),
    ("/etc/broker", 0o755),
    ("/var/lib/broker", 0o700),
    ("/var/lib/broker/grants", 0o700),
    ("/var/lib/broker/revoked", 0o700),
    ("/var/spool/broker", 0o700),
    ("/var/spool/broker/events", 0o700),
    ("/var/log/broker-io", 0o700),
)
# pam/ file -> where it goes on the node, mode.
PROGRAM_FILES: tuple[tuple[str, str, int], ...] = (
    *((f"broker_node/{name}.py", f"{NODE_PKG}/{name}.py", 0o644) for name in NODE_MODULES),
    ("broker-node", f"{LIBEXEC}/broker-node", 0o755),
    ("broker_keytab.py", KEYTAB_PY, 0o644),
    ("broker-keytab", f"{LIBEXEC}/broker-keytab", 0o755),
    ("broker-relay-flush", f"{LIBEXEC}/broker-relay-flush", 0o755),
)
# pam/build/ (`make -C pam`) -> where it goes on the node, mode.
BUILT_FILES: tuple[tuple[str, str, int], ...] = (
    ("pam_broker.so", MODULE, 0o644),
    ("broker-grant-check", CHECKER, 0o755),
)
COMPAT_FILE = "pam_broker.compat"
# Left by hook version 1 (pam_exec + Python): removed once the blocks name the module.
OBSOLETE_FILES = (f"{LIBEXEC}/pam-hook", f"{NODE_PKG}/hook.py", f"{NODE_PKG}/ed25519.py")
# pam/pam.d/<block>.block -> the PAM services that get it ("joblaunch": the configured one).
PAM_BLOCKS = ("sudo", "sshd", "joblaunch")
_GROUP = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_SERVICE = re.compile(r"^[a-z0-9_.-]{1,64}$")
_KEY_LINE = re.compile(r"^broker-grant-key-v1 ([A-Za-z0-9+/]{43}=)\n?$")


@dataclass(frozen=True)
class Compat:
    """What the built module needs of a node (pam/build/pam_broker.compat, written by make)."""

    machine: str
    glibc: tuple[int, ...]
    needs: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Compat:
        values = dict(line.partition("=")[::2] for line in text.splitlines() if "=" in line)
        glibc = _version(values.get("glibc", ""))
        machine = values.get("machine", "")
        if not glibc or not re.fullmatch(r"[a-z0-9_]{1,32}", machine):
            raise UnavailableError(
                f"{COMPAT_FILE} is unreadable", fix="rebuild the module: make -C pam clean all"
            )
        return cls(machine, glibc, tuple(values.get("needs", "").split()))

    def problem(self, machine: str, libc: str) -> str | None:
        """Why the module cannot run on a node with this `uname -m` and `getconf
        GNU_LIBC_VERSION` answer (None: it can)."""
        name, _, number = libc.strip().partition(" ")
        have = _version(number) if name == "glibc" else ()
        built = f"built for {self.machine} with glibc >= {'.'.join(map(str, self.glibc))}"
        if machine.strip() != self.machine or not have or have < self.glibc:
            shown = "".join(c if c.isprintable() else "?" for c in f"{machine.strip()}, {libc}")
            return (
                f"the PAM module was {built}, the node has {shown[:80]}: build it on the node "
                "(make -C pam install) and run bootstrap again"
            )
        return None


def _version(text: str) -> tuple[int, ...]:
    parts = text.strip().split(".")
    if not 1 < len(parts) <= 4 or not all(p.isdigit() and len(p) <= 4 for p in parts):
        return ()
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class Bundle:
    """What bootstrap installs from the repository: program files, the built module and its
    checker, what they need of a node, and the PAM blocks."""

    files: tuple[tuple[str, bytes, int], ...]  # remote path, content, mode
    blocks: Mapping[str, str]  # "sudo" | "sshd" | "joblaunch" -> marked block text
    compat: Compat | None = None  # None: no built module in this bundle (tests of the program)


@dataclass(frozen=True)
class BootstrapResult:
    node: str
    ok: bool
    changed: list[str] = field(default_factory=list)
    error: str | None = None
    status: NodeStatus | None = None
    elapsed_ms: float = 0.0


# ---------------------------------------------------------------- what to install (pure)


def pam_source_dir() -> Path:
    """The node files: pam/ beside the package in a checkout, or where a wheel installs
    them (`<prefix>/share/hpc-access-broker/pam`, see pyproject's data-files)."""
    beside = Path(broker.__file__).resolve().parents[1] / "pam"
    if beside.is_dir():
        return beside
    return Path(sys.prefix) / "share" / "hpc-access-broker" / "pam"


def load_bundle(directory: Path | None = None) -> Bundle:
    """Read the node program and PAM blocks; refuse when any is missing."""
    source = directory or pam_source_dir()
    wanted = [source / name for name, _path, _mode in PROGRAM_FILES]
    wanted += [source / "pam.d" / f"{name}.block" for name in PAM_BLOCKS]
    missing = [str(p) for p in wanted if not p.is_file()]
    if missing:
        raise UnavailableError(
            f"the node program is incomplete: missing {', '.join(missing)}",
            fix="run the broker from a complete checkout or installation (pam/ beside broker/)",
        )
    built = source / "build"
    absent = [n for n in (*(b[0] for b in BUILT_FILES), COMPAT_FILE) if not (built / n).is_file()]
    if absent:
        raise UnavailableError(
            f"the PAM module is not built: missing {', '.join(str(built / n) for n in absent)}",
            fix=f"build it: make -C {source} (needs a C compiler, libpam0g-dev and libssl-dev)",
        )
    files = tuple(
        (remote, (source / name).read_bytes(), mode) for name, remote, mode in PROGRAM_FILES
    ) + tuple((remote, (built / name).read_bytes(), mode) for name, remote, mode in BUILT_FILES)
    blocks = {
        name: marked((source / "pam.d" / f"{name}.block").read_text("ascii")) for name in PAM_BLOCKS
    }
    return Bundle(files, blocks, Compat.parse((built / COMPAT_FILE).read_text("ascii")))


def marked(block: str) -> str:
    """The block between `# BEGIN broker` and `# END broker` lines, ending in a newline."""
    lines = [line.rstrip() for line in block.strip("\n").split("\n")]
    if lines[:1] != [BEGIN]:
        lines.insert(0, BEGIN)
    if lines[-1:] != [END]:
        lines.append(END)
    if lines.count(BEGIN) != 1 or lines.count(END) != 1:
        raise UsageError("a PAM block may hold only one pair of broker markers")
    return "\n".join(lines) + "\n"


def insert_block(existing: str | None, block: str, new_file_tail: str = "") -> str:
    """`existing` PAM file text with `block` at the top (after a `#%PAM-1.0` line), replacing
    any broker block already there; a file that does not exist gets block + tail."""
    block = marked(block)
    if existing is None:
        return block + new_file_tail
    kept: list[str] = []
    inside = False
    for line in existing.splitlines(keepends=True):
        bare = line.strip()
        if bare == BEGIN:
            if inside:
                raise RefusedError("two `# BEGIN broker` lines without an `# END broker`")
            inside = True
        elif bare == END:
            if not inside:
                raise RefusedError("an `# END broker` line without its `# BEGIN broker`")
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        raise RefusedError("a `# BEGIN broker` line without its `# END broker`")
    if kept and not kept[-1].endswith("\n"):
        kept[-1] += "\n"
    head = 1 if kept and kept[0].startswith("#%PAM") else 0
    return "".join(kept[:head]) + block + "".join(kept[head:])


def login_gated(policy: Policy, node: str) -> bool:
    """sshd is gated on a node some role with `login = true` covers."""
    return any(role.login and policy.covers(role, node) for role in policy.roles.values())


def render_node_conf(policy: Policy, node: str, joblaunch_service: str) -> str:
    """/etc/broker/node.conf for `node` under `policy` (docs/grants.md)."""
    inventory.check_name(node)
    group = policy.break_glass_group or ""
    if group and not _GROUP.fullmatch(group):
        raise RefusedError(
            f"break_glass_group {group[:80]!r} cannot be a node's local group name",
            fix="use letters, digits, '_', '.' and '-' (at most 64)",
        )
    if not _SERVICE.fullmatch(joblaunch_service) or joblaunch_service in (
        "sudo",
        "sudo-i",
        "sshd",
    ):
        raise UsageError(
            f"ssh.joblaunch_service {joblaunch_service!r} is not a job launcher's PAM service",
            fix="set it to the launcher's service name (Slurm: slurm)",
        )
    return (
        "# Written by `broker node bootstrap`; changes are overwritten.\n"
        f"node={node}\n"
        f"login_gated={int(login_gated(policy, node))}\n"
        f"break_glass_group={group}\n"
        f"joblaunch_service={joblaunch_service}\n"
    )


def check_key_line(line: str) -> str:
    """The verification key line, `broker-grant-key-v1 <base64 of 32 bytes>`, with its newline."""
    match = _KEY_LINE.fullmatch(line)
    try:
        raw = base64.b64decode(match[1], validate=True) if match else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise UsageError("the grant verification key line is malformed")
    return line if line.endswith("\n") else line + "\n"


def pam_services(joblaunch_service: str) -> list[tuple[str, str, bool]]:
    """(service file, block, required): sudo-i gets the sudo block when the node has it."""
    return [
        ("sudo", "sudo", True),
        ("sudo-i", "sudo", False),
        ("sshd", "sshd", True),
        (joblaunch_service, "joblaunch", False),
    ]


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
    for leaf in tunnel.leaves:
        cert = read_regular(sftp, leaf.cert, MAX_REMOTE_FILE)
        if not tunnel.cert_ok(leaf, cert) or remote_stat(sftp, leaf.key) is None:
            issued = tunnel.issue(leaf)
            put_atomic(sftp, leaf.key, issued.key_pem, 0o600)
            put_atomic(sftp, leaf.cert, issued.cert_pem, 0o644)
            changed.append(f"issued {leaf.cert}")
    return len(changed) != before


def _restart_units(units: Sequence[str]) -> list[str]:
    """systemd on the node starts (or restarts) the tunnel and a relay's units; without it
    (containers, the lab) whatever supervises the node runs them (docs/sessions.md)."""
    names = [u.rsplit("/", 1)[-1] for u in units]
    if not all(re.fullmatch(r"broker-logsrv[a-z-]*\.(service|timer)", n) for n in names):
        raise ValueError("only the broker's recording units are restarted")
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
        put_atomic(sftp, path, data, mode)
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


def _remove_with_pyc(sftp: paramiko.SFTPClient, path: str, changed: list[str]) -> None:
    """Remove a file and, for a module, the .pyc files in the __pycache__ beside it."""
    directory, _, name = path.rpartition("/")
    cached: list[str] = []
    if name.endswith(".py"):
        try:
            cached = sftp.listdir(f"{directory}/__pycache__")
        except FileNotFoundError:
            cached = []
    stem = name.removesuffix(".py")
    stale = [f"{directory}/__pycache__/{n}" for n in cached if n.startswith(f"{stem}.")]
    for old in (path, *stale):
        if remote_stat(sftp, old) is not None:
            sftp.remove(old)
            changed.append(f"removed {old}")


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
            put_atomic(sftp, path, text.encode("utf-8", "surrogateescape"), 0o644)
            changed.append(f"{'updated' if old is not None else 'created'} {path}")


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
        if bundle.compat is not None:
            _check_compat(pool, target, bundle.compat)
        with pool.sftp(target) as sftp:
            for path, mode in NODE_DIRS:
                _ensure_dir(sftp, path, mode, changed)
            files = (
                *bundle.files,
                (NODE_CONF, node_conf.encode("ascii"), 0o644),
                (GRANT_KEY, check_key_line(key_line).encode("ascii"), 0o644),
            )
            program_new = False
            for path, data, mode in files:
                rewritten = _ensure_file(sftp, path, data, mode, changed)
                program_new = program_new or (rewritten and path.endswith(".py"))
            _remove_stale(sftp, changed)
            compile_it = program_new or not _compiled(sftp)
            restart = tunnel is not None and _install_tunnel(sftp, tunnel, changed)
        if restart and tunnel is not None:
            result = pool.run(target, _restart_units(tunnel.units))
            if not result.ok:
                raise UnavailableError(
                    result.error or f"the recording tunnel did not start: {result.stderr[-200:]}"
                )
        if compile_it:
            result = pool.run(
                target, ["/usr/bin/python3", "-I", "-S", "-m", "py_compile", *_python_files()]
            )
            if not result.ok:
                raise UnavailableError(
                    result.error or f"py_compile failed: {result.stderr.strip()[-200:]}"
                )
            changed.append(f"compiled {NODE_PKG} and {KEYTAB_PY}")
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
    key = check_key_line(key_line)
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
