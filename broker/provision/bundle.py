"""What `broker node bootstrap` installs and where (docs/grants.md): the node's paths and
modes, the files from pam/ and pam/build/, what the built module needs of a node, the PAM
blocks and node.conf. Pure: nothing here touches a node (bootstrap.py does)."""

from __future__ import annotations

import base64
import binascii
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import broker
from broker.core.errors import RefusedError, UnavailableError, UsageError
from broker.fleet import inventory
from broker.policy.model import Policy
from broker.provision import packaged

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
    "cgroups",
    "revoke",
    "escapes",
    "unlogged",
    "watch",
    "dropins",
    "status",
    "install",
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
    ("broker_keytab_gss.py", f"{LIBEXEC}/broker_keytab_gss.py", 0o644),
    ("broker-keytab", f"{LIBEXEC}/broker-keytab", 0o755),
    ("broker-relay-flush", f"{LIBEXEC}/broker-relay-flush", 0o755),
    ("systemd/broker-node-watch.service", "/etc/systemd/system/broker-node-watch.service", 0o644),
)
WATCH_UNIT = "broker-node-watch.service"
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
_KEY_LINE = re.compile(r"^broker-grant-key-v1 ([A-Za-z0-9+/]{43}=)$")
MAX_NODE_KEYS = 8  # pam/src/bk_contract.h BK_MAX_KEYS


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
    digest: str | None = None  # of the pam/ sources (packaged.node_digest): packaged nodes


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
            fix=f"build it: make -C {source} (needs a C compiler, libpam0g-dev and libsodium-dev)",
        )
    files = tuple(
        (remote, (source / name).read_bytes(), mode) for name, remote, mode in PROGRAM_FILES
    ) + tuple((remote, (built / name).read_bytes(), mode) for name, remote, mode in BUILT_FILES)
    blocks = {
        name: marked((source / "pam.d" / f"{name}.block").read_text("ascii")) for name in PAM_BLOCKS
    }
    compat = Compat.parse((built / COMPAT_FILE).read_text("ascii"))
    return Bundle(files, blocks, compat, packaged.node_digest(source))


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


def check_key_file(text: str) -> str:
    """grant-key.pub as nodes read it: 1..8 `broker-grant-key-v1 <base64 of 32 bytes>` lines,
    no key twice, each with its newline (pam/src/bk_contract.c refuses anything else, so a
    file that would lock every grant out is refused here before it is written)."""
    text = text if text.endswith("\n") else text + "\n"
    lines = text[:-1].split("\n")
    if not 1 <= len(lines) <= MAX_NODE_KEYS:
        raise UsageError(f"a node trusts 1 to {MAX_NODE_KEYS} grant keys, not {len(lines)}")
    keys: set[bytes] = set()
    for number, line in enumerate(lines, start=1):
        match = _KEY_LINE.fullmatch(line)
        try:
            raw = base64.b64decode(match[1], validate=True) if match else b""
        except (binascii.Error, ValueError):
            raw = b""
        if len(raw) != 32:
            raise UsageError(f"grant verification key line {number} is malformed")
        if raw in keys:
            raise UsageError(f"grant verification key line {number} repeats an earlier key")
        keys.add(raw)
    return text


def pam_services(joblaunch_service: str) -> list[tuple[str, str, bool]]:
    """(service file, block, required): sudo-i gets the sudo block when the node has it."""
    return [
        ("sudo", "sudo", True),
        ("sudo-i", "sudo", False),
        ("sshd", "sshd", True),
        (joblaunch_service, "joblaunch", False),
    ]
