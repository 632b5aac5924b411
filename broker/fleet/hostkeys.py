"""Host keys: see a node's key without trusting it, compare it with what the operator expects.

Enrollment is trust on first use done deliberately: the broker fetches the
key (key exchange only, never authentication, so nothing is sent to an
impostor), and pins it only when it matches a fingerprint the operator
supplied or confirmed, or a known_hosts file they vouch for. A node pinned
with one key that now shows another is refused until re-pinned explicitly.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import paramiko

from broker.core.errors import RefusedError, UnavailableError, UsageError

# Plain host key types (no certificates); the algorithms that may present each.
KEY_ALGORITHMS: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("ssh-ed25519",),
    "ecdsa-sha2-nistp256": ("ecdsa-sha2-nistp256",),
    "ecdsa-sha2-nistp384": ("ecdsa-sha2-nistp384",),
    "ecdsa-sha2-nistp521": ("ecdsa-sha2-nistp521",),
    "ssh-rsa": ("rsa-sha2-512", "rsa-sha2-256"),
}
FINGERPRINT = re.compile(r"^SHA256:[A-Za-z0-9+/]{43}$")
MAX_KEY_B64 = 4096
MAX_KNOWN_HOSTS = 16 * 1024 * 1024


@dataclass(frozen=True)
class HostKey:
    key_type: str
    key_b64: str
    fingerprint: str

    @classmethod
    def from_blob(cls, blob: bytes) -> HostKey:
        key_type = blob_type(blob)
        if key_type not in KEY_ALGORITHMS:
            raise RefusedError(f"host key type {key_type!r} is not supported")
        return cls(key_type, base64.b64encode(blob).decode("ascii"), fingerprint(blob))


@dataclass(frozen=True)
class Expected:
    """A fingerprint the operator vouches for; the key type when known (from known_hosts)."""

    fingerprint: str
    key_type: str | None = None


def fingerprint(blob: bytes) -> str:
    """OpenSSH's `SHA256:<base64 of sha256(blob), no padding>`, as `ssh-keygen -l` prints."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii")
    return "SHA256:" + digest.rstrip("=")


def check_fingerprint(text: str) -> str:
    """An operator-given fingerprint in the SHA256 form, or refused (MD5 is not accepted)."""
    if not FINGERPRINT.fullmatch(text):
        raise UsageError(
            f"bad fingerprint {text[:80]!r}",
            fix="give the SHA256 form, e.g. `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`"
            " on the node prints SHA256:...",
        )
    return text


def blob_type(blob: bytes) -> str:
    """The key type named inside an SSH public key blob (its first wire string)."""
    if len(blob) < 4:
        raise RefusedError("malformed host key")
    (length,) = struct.unpack(">I", blob[:4])
    if not 1 <= length <= 64 or len(blob) < 4 + length:
        raise RefusedError("malformed host key")
    name = blob[4 : 4 + length]
    if not re.fullmatch(rb"[a-z0-9@.-]+", name):
        raise RefusedError("malformed host key")
    return name.decode("ascii")


def decode_key(key_type: str, key_b64: str) -> bytes:
    """The blob of a known_hosts/authorized_keys key, checked: allowed type, matching inside."""
    if key_type not in KEY_ALGORITHMS:
        raise RefusedError(f"host key type {key_type[:40]!r} is not supported")
    if len(key_b64) > MAX_KEY_B64 or not re.fullmatch(r"[A-Za-z0-9+/]+={0,2}", key_b64):
        raise RefusedError("malformed host key (not base64)")
    try:
        blob = base64.b64decode(key_b64, validate=True)
    except (binascii.Error, ValueError):
        raise RefusedError("malformed host key (not base64)") from None
    if blob_type(blob) != key_type:
        raise RefusedError(f"host key says it is {blob_type(blob)}, not {key_type}")
    return blob


# ---------------------------------------------------------------- known_hosts files


def host_names(name: str, address: str, port: int) -> list[str]:
    """How a node may be written in known_hosts: bare for port 22, `[host]:port` otherwise."""
    names = list(dict.fromkeys([name, address]))
    return names if port == 22 else [f"[{n}]:{port}" for n in names]


def _hashed_match(pattern: str, candidates: Sequence[str]) -> bool:
    """`|1|salt|hmac` entries (HashKnownHosts): HMAC-SHA1 of the name keyed by the salt."""
    parts = pattern.split("|")
    if len(parts) != 4 or parts[1] != "1":
        return False
    try:
        salt = base64.b64decode(parts[2], validate=True)
        want = base64.b64decode(parts[3], validate=True)
    except (binascii.Error, ValueError):
        return False
    return any(
        hmac.compare_digest(hmac.new(salt, c.encode(), hashlib.sha1).digest(), want)
        for c in candidates
    )


def _line_matches(hosts: str, candidates: Sequence[str]) -> bool:
    """Exact names only: a negated pattern that matches excludes the line; wildcards never
    count as a pin of one node."""
    if hosts.startswith("|"):
        return _hashed_match(hosts, candidates)
    matched = False
    for pattern in hosts.split(","):
        negated = pattern.startswith("!")
        plain = pattern[1:] if negated else pattern
        if plain.lower() in (c.lower() for c in candidates):
            if negated:
                return False
            matched = True
    return matched


def known_keys(
    text: str, name: str, address: str, port: int
) -> tuple[list[HostKey], list[HostKey]]:
    """The node's keys in a known_hosts text: (pinned, revoked). Malformed lines, CA lines
    and lines for other hosts are skipped, as ssh skips them."""
    candidates = host_names(name, address, port)
    pinned: list[HostKey] = []
    revoked: list[HostKey] = []
    for raw in text.splitlines():
        fields = raw.split()
        if not fields or fields[0].startswith("#"):
            continue
        marker = fields.pop(0) if fields[0].startswith("@") else None
        if marker not in (None, "@revoked") or len(fields) < 3:
            continue
        hosts, key_type, key_b64 = fields[:3]
        if not _line_matches(hosts, candidates):
            continue
        try:
            key = HostKey.from_blob(decode_key(key_type, key_b64))
        except RefusedError:
            continue
        (revoked if marker else pinned).append(key)
    return pinned, revoked


def read_known_hosts(path: str, name: str, address: str, port: int) -> list[Expected]:
    """What a known_hosts file vouches for this node (refused when it names no usable key)."""
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_KNOWN_HOSTS + 1)
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc
    if len(data) > MAX_KNOWN_HOSTS:
        raise UsageError(f"{path} is larger than {MAX_KNOWN_HOSTS} bytes")
    pinned, revoked = known_keys(data.decode("utf-8", "replace"), name, address, port)
    bad = {k.fingerprint for k in revoked}
    usable = [Expected(k.fingerprint, k.key_type) for k in pinned if k.fingerprint not in bad]
    if not usable:
        raise UsageError(
            f"{path} has no usable key for {name} (looked for {', '.join(host_names(name, address, port))})",
            fix="give the node's fingerprint with --fingerprint instead",
        )
    return usable


# ---------------------------------------------------------------- fetching a key


def fetch(
    address: str, port: int, *, timeout: float, key_types: Sequence[str] | None = None
) -> HostKey:
    """The host key a node presents, after the key exchange (which proves it holds the
    private half) and nothing more: no authentication is attempted, nothing is trusted."""
    algorithms = [a for t in (key_types or ()) for a in KEY_ALGORITHMS.get(t, ())]
    where = f"{address}:{port}"
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError as exc:
        raise UnavailableError(
            f"cannot connect to {where}: {exc.strerror or exc}", fix="check the node is up"
        ) from exc
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        if algorithms:
            transport.get_security_options().key_types = algorithms
        transport.start_client(timeout=timeout)
        key = transport.get_remote_server_key()
        return HostKey.from_blob(key.asbytes())
    except (paramiko.SSHException, EOFError, OSError) as exc:
        if algorithms and "no acceptable host key" in str(exc):
            raise RefusedError(
                f"{where} offers no host key of the type expected ({', '.join(key_types or ())})",
                fix="the node's keys differ from the known_hosts file; check them on its console",
            ) from exc
        raise UnavailableError(
            f"SSH key exchange with {where} failed: {exc}",
            fix="check the node runs sshd and offers an ed25519, ecdsa or rsa host key",
        ) from exc
    finally:
        transport.close()


# ---------------------------------------------------------------- enrollment

Action = Literal["show", "pin", "same"]


def decide(
    name: str,
    pinned_fingerprint: str | None,
    seen: HostKey,
    expected: Sequence[Expected],
    *,
    confirm: bool,
    replace: bool,
) -> Action:
    """What enrolling does with the key a node showed: show it, pin it, or nothing (same)."""
    if expected and seen.fingerprint not in {e.fingerprint for e in expected}:
        wanted = ", ".join(e.fingerprint for e in expected)
        raise RefusedError(
            f"{name} presents {seen.key_type} {seen.fingerprint}, not the expected {wanted}",
            fix="compare with `ssh-keygen -lf /etc/ssh/ssh_host_*_key.pub` on the node's "
            "console; a different key may mean someone is impersonating it",
        )
    if pinned_fingerprint == seen.fingerprint:
        return "same"
    if pinned_fingerprint is not None and not replace:
        raise RefusedError(
            f"{name} is pinned to {pinned_fingerprint} but now presents {seen.key_type} "
            f"{seen.fingerprint}",
            fix="if the node was reinstalled, check the new key on its console and run "
            f"`broker node enroll {name} --replace --fingerprint {seen.fingerprint}`",
        )
    if not confirm:
        return "show"
    if not expected:
        raise UsageError(
            "confirming a host key needs the fingerprint you accepted",
            fix="send it back as expected (the CLI does this after your yes)",
        )
    return "pin"
