"""Grant files, checked only by broker-grant-check: the same C code as pam_broker.so, so the
node has one implementation of the grant contract (parsing, key, signature, revocation).

The checker runs as an argv list (never a shell) with a timeout; its `key=value` output is
parsed strictly. A checker that is missing, fails or says something unexpected fails
closed: every grant is reported invalid, with a problem saying the checker is unavailable.
"""

from __future__ import annotations

import os

from .contract import TMP_PREFIX, Paths, _Record, clean

TIMEOUT = 10.0  # seconds; it reads at most a few hundred small files
MAX_OUTPUT = 16 << 20
_TEXT = ("name", "reason", "problem", "id", "node", "user", "runas", "commands", "approvers")
_NUMBERS = ("not_before", "not_after", "issued_at", "max_sessions")
_FLAGS = ("valid", "login", "workloads")
_KEYS = frozenset((*_TEXT, *_NUMBERS, *_FLAGS, "key_id"))


class Unavailable(Exception):
    """The checker did not give a verdict we can read."""


class CheckedGrant(_Record):
    """One grant file as broker-grant-check saw it. `id` is None when the file did not parse
    (then the other grant fields are empty or 0); `problem` is None when valid."""

    __slots__ = (  # noqa: RUF023 - the order is the constructor's
        "name",
        "id",
        "node",
        "user",
        "runas",
        "commands",
        "not_before",
        "not_after",
        "login",
        "workloads",
        "max_sessions",
        "valid",
        "reason",
        "problem",
    )
    name: str
    id: str | None
    node: str
    user: str
    runas: str
    commands: tuple[str, ...]
    not_before: int
    not_after: int
    login: bool
    workloads: bool
    max_sessions: int
    valid: bool
    reason: str | None
    problem: str | None


class Checked(_Record):
    """A checker run: node.conf's or the key's problem (every grant is then invalid), the
    verdicts, and why the checker gave none when it did not (fail closed)."""

    __slots__ = ("config_problem", "grants", "unavailable")
    config_problem: str | None
    grants: tuple[CheckedGrant, ...]
    unavailable: str | None


def check_all(paths: Paths, now: int) -> Checked:
    """Every file in the grants directory (temporary files left out), sorted by name."""
    try:
        config, blocks, grants_problem = _run(paths, now, ["--all"], b"")
    except Unavailable as exc:
        return Checked(None, _all_invalid(paths, "unavailable", str(exc)), str(exc))
    if grants_problem is not None:
        if not os.path.lexists(paths.grants):
            return Checked(config, (), None)
        return Checked(config, _all_invalid(paths, "bad_file", grants_problem), None)
    return Checked(config, tuple(sorted(blocks, key=lambda g: g.name)), None)


def check_text(paths: Paths, now: int, data: bytes, any_start: bool = False) -> Checked:
    """The grant file `data` (from install-grant), named "-"; `any_start` lets a grant that
    is not valid yet pass."""
    extra = ["--stdin", "--any-start"] if any_start else ["--stdin"]
    try:
        config, blocks, grants_problem = _run(paths, now, extra, data)
        if len(blocks) != 1 or grants_problem is not None:
            raise Unavailable("broker-grant-check unavailable: not one verdict for one grant")
    except Unavailable as exc:
        return Checked(None, (_invalid("-", "unavailable", str(exc)),), str(exc))
    return Checked(config, blocks, None)


def _all_invalid(paths: Paths, reason: str, problem: str) -> tuple[CheckedGrant, ...]:
    """What is in the grants directory, each invalid for `problem`: no verdict, no grant."""
    try:
        names = sorted(os.listdir(paths.grants))
    except OSError:
        names = []
    wanted = (clean(n, 40) for n in names if not n.startswith(TMP_PREFIX))
    return tuple(_invalid(name, reason, problem) for name in wanted)


def _invalid(name: str, reason: str, problem: str) -> CheckedGrant:
    """A verdict the checker did not give: invalid, unparsed (`reason` "unavailable" when
    there was no checker to ask)."""
    return CheckedGrant(name, None, "", "", "", (), 0, 0, False, False, 0, False, reason, problem)


def _run(
    paths: Paths, now: int, mode: list[str], data: bytes
) -> tuple[str | None, tuple[CheckedGrant, ...], str | None]:
    """Run the checker; (config_problem, verdicts, grants_problem) or Unavailable."""
    import subprocess

    argv = [paths.checker, "--root", paths.root, "--now", str(int(now)), *mode]
    try:
        done = subprocess.run(
            argv,
            input=data,
            capture_output=True,
            timeout=TIMEOUT,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
        )
    except subprocess.TimeoutExpired:
        raise Unavailable(
            f"broker-grant-check unavailable: timed out after {TIMEOUT:.0f} s"
        ) from None
    except (OSError, subprocess.SubprocessError) as exc:
        raise Unavailable(f"broker-grant-check unavailable: {clean(exc, 200)}") from None
    if done.returncode != 0:
        why = clean(done.stderr.decode("ascii", "replace").strip(), 200)
        raise Unavailable(f"broker-grant-check unavailable: exit {done.returncode} {why}".strip())
    if len(done.stdout) > MAX_OUTPUT:
        raise Unavailable("broker-grant-check unavailable: output too large")
    return parse_output(done.stdout)


def parse_output(output: bytes) -> tuple[str | None, tuple[CheckedGrant, ...], str | None]:
    """The checker's output: `config_problem=` first if any, then blocks ending in `end`, or
    `grants_problem=` when the grants directory cannot be read; Unavailable on anything else."""
    try:
        lines = output.decode("ascii").split("\n")
    except UnicodeDecodeError:
        raise Unavailable("broker-grant-check unavailable: output not ASCII") from None
    if lines.pop() != "":
        raise Unavailable("broker-grant-check unavailable: output cut short")
    config = grants_problem = None
    if lines and lines[0].startswith("config_problem="):
        config = lines.pop(0).partition("=")[2]
    if lines and lines[-1].startswith("grants_problem="):
        grants_problem = lines.pop().partition("=")[2]
    blocks: list[CheckedGrant] = []
    block: dict[str, str] = {}
    for line in lines:
        if line == "end":
            blocks.append(_grant(block))
            block = {}
            continue
        key, sep, value = line.partition("=")
        if not sep or key not in _KEYS or key in block or (key == "name") != (not block):
            raise Unavailable(f"broker-grant-check unavailable: unexpected line {clean(line, 60)}")
        block[key] = value
    if block:
        raise Unavailable("broker-grant-check unavailable: output cut short")
    return config, tuple(blocks), grants_problem


def _grant(block: dict[str, str]) -> CheckedGrant:
    """One block as a record; Unavailable when a field is missing or malformed."""
    valid = block.get("valid")
    numbers = [block.get(key, "0" if "id" not in block else "") for key in _NUMBERS]
    flags = [block.get(key, "0" if "id" not in block else "") for key in ("login", "workloads")]
    if (
        valid not in ("0", "1")
        or (valid == "1") == ("problem" in block)
        or (valid == "1" and "id" not in block)
        or not all(n.isascii() and n.isdigit() for n in numbers)
        or not all(f in ("0", "1") for f in flags)
    ):
        raise Unavailable("broker-grant-check unavailable: a verdict it gave is malformed")
    commands = block.get("commands", "")
    not_before, not_after, _issued, sessions = (int(n) for n in numbers)
    return CheckedGrant(
        block["name"],
        block.get("id"),
        block.get("node", ""),
        block.get("user", ""),
        block.get("runas", ""),
        tuple(commands.split(",")) if commands else (),
        not_before,
        not_after,
        flags[0] == "1",
        flags[1] == "1",
        sessions,
        valid == "1",
        block.get("reason"),
        block.get("problem"),
    )
