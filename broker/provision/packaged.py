"""Nodes installed by the `hpc-access-broker-node` Debian package (packaging/node/): the
marker the package installs, the digest of the node files it was built from, and whether
`broker node bootstrap` may leave the package's files alone. Pure: bootstrap.py reads the
marker from the node and acts on the answer.

Why a digest and not the version number: two builds of one version can carry different node
files (a development tree), and the broker must never trust a node program it did not ship.
The digest is taken over the pam/ sources, not the compiled module, because a module built
on the node's distribution differs byte for byte from the broker host's build of the same
code. packaging/node/build.sh computes the same digest the same way (`--digest`)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from broker.core.errors import RefusedError

PACKAGE = "hpc-access-broker-node"
MARKER = "/usr/lib/broker/PACKAGED"
MAX_MARKER = 4096
# The pam/ files a package build is made of, as shell globs (build.sh uses the same list).
DIGEST_GLOBS = (
    "Makefile",
    "broker-keytab",
    "broker-node",
    "broker-relay-flush",
    "broker_keytab.py",
    "broker_keytab_gss.py",
    "broker_node/*.py",
    "pam-configs/broker",
    "src/*.c",
    "src/*.h",
    "systemd/*.service",
)
_VERSION = re.compile(r"^[0-9][0-9A-Za-z.+~-]{0,63}$")
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Marker:
    """What /usr/lib/broker/PACKAGED says: the package's version and the digest of the node
    files it was built from."""

    version: str
    digest: str


def node_digest(source: Path) -> str | None:
    """SHA-256 over `sha256sum`'s lines for the DIGEST_GLOBS files below `source`, sorted by
    name (bytewise), as `sha256sum FILES | sha256sum` prints it; None when a C source is
    missing (a broker installed without pam/src cannot vouch for any package)."""
    names = sorted({p.relative_to(source).as_posix() for g in DIGEST_GLOBS for p in source.glob(g)})
    if not any(n.startswith("src/") for n in names):
        return None
    lines = "".join(
        f"{hashlib.sha256((source / n).read_bytes()).hexdigest()}  {n}\n" for n in names
    )
    return hashlib.sha256(lines.encode()).hexdigest()


def parse_marker(data: bytes) -> Marker:
    """The marker's `package=`, `version=` and `digest=` lines, each allow-listed; anything
    else is refused (a node whose marker cannot be read is not trusted to be packaged)."""
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        text = ""
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if line.startswith("#") or not line:
            continue
        if not sep or key in values or key not in ("package", "version", "digest"):
            values = {}
            break
        values[key] = value
    if (
        values.get("package") != PACKAGE
        or not _VERSION.fullmatch(values.get("version", ""))
        or not _DIGEST.fullmatch(values.get("digest", ""))
    ):
        raise RefusedError(
            f"{MARKER} is unreadable",
            fix=f"reinstall the package on the node: apt install --reinstall {PACKAGE}",
        )
    return Marker(values["version"], values["digest"])


def package_owns_program(marker: bytes | None, digest: str | None, version: str) -> bool:
    """Whether bootstrap leaves the node program, the module and the watcher unit to the
    package: False without a marker (bootstrap installs them, as always); True when the
    package was built from the same node files as this broker's (`digest`); refused
    otherwise, since overwriting a package's files would be undone by its next upgrade
    and pushing nothing would leave a node program this broker does not know."""
    if marker is None:
        return False
    found = parse_marker(marker)
    if digest is not None and found.digest == digest:
        return True
    why = (
        "this broker has no pam/src to compare with"
        if digest is None
        else "built from other node files than this broker's"
    )
    raise RefusedError(
        f"the node has {PACKAGE} {found.version}, {why}; nothing was written",
        fix=f"install the {PACKAGE} package built with this broker ({version}) on the node, "
        "then run bootstrap again",
    )
