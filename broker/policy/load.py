"""Policy TOML to a validated `Policy`; every problem is one line that starts with file:line.

Loading checks the schema (types, unknown keys, allow-listed names,
durations, hostlists, paths, modes, enctypes) and the meaning (references
to zones, roles, command sets and, when a directory snapshot is at hand,
groups; a node in two zones; two service accounts writing one keytab).
The sections themselves are read in `sections` and `service_accounts`;
judgement calls (root without MFA, ALL without a maximum) are `lint`'s.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

from broker.core.errors import RefusedError, UsageError
from broker.policy.model import Policy
from broker.policy.positions import KeyLines
from broker.policy.positions import Path as KeyPath
from broker.policy.reader import NO_VALUE, Problems, key_text, value_text
from broker.policy.sections import Loader

_TOML_AT = re.compile(r"\(at line (\d+), column \d+\)")
# Arrays and inline tables nested deeper than this are refused before tomllib, which
# recurses once per level (a few thousand levels raise RecursionError). A policy
# needs three or four (`approvals = { groups = [...] }` under a role).
MAX_NESTING = 32
# What the nesting scan looks at: strings and comments (skipped whole, so brackets
# in them do not count: hostlists are full of them) and the brackets themselves.
_NESTING_TOKENS = re.compile(
    r'"""(?:\\.|[^\\])*?"""{1,3}'  # multi-line basic string (up to 2 quotes before its end)
    r"|'''.*?'{3,5}"  # multi-line literal string
    r'|"(?:\\.|[^"\\\n])*"'  # basic string
    r"|'[^'\n]*'"  # literal string
    r"|#[^\n]*"  # comment
    r"|[\[\]{}]",
    re.DOTALL,
)


@dataclass(frozen=True)
class Problem:
    """One error in a policy file, located."""

    source: str
    line: int
    key: str
    message: str  # `key = value: reason`, or `key: reason`

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.message}"


class PolicyError(RefusedError):
    """A policy file that cannot be used; the message holds one located line per problem."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class LoadedPolicy:
    """A valid policy with the exact text it came from and where its keys are written."""

    policy: Policy
    text: str
    sha256: str
    source: str
    lines: KeyLines


def read_policy_file(path: Path) -> str:
    """The file's text (UTF-8); a missing or unreadable file is a usage error."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise UsageError(
            f"no policy file at {path}",
            fix="give the path of a policy file; see deploy/examples/policy.toml",
        ) from None
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from exc


def sha256_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_policy(
    text: str, source: str, *, known_groups: frozenset[str] | None = None
) -> tuple[LoadedPolicy | None, list[Problem]]:
    """Validate `text`; the policy when there is no problem, and every problem found.

    `known_groups` (lower-cased names from the directory snapshot) turns on
    the unknown-group check; None skips it.
    """
    deep = _too_deep(text)
    if deep is not None:
        message = (
            f"arrays and inline tables nested too deeply (more than {MAX_NESTING} levels); "
            "a policy needs only a few"
        )
        return None, [Problem(source, deep, "", message)]
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = _TOML_AT.search(str(exc))
        line = int(found.group(1)) if found else text.count("\n") + 1
        return None, [Problem(source, line, "", f"not valid TOML: {exc}")]
    except (RecursionError, MemoryError):
        # A shape the scan above does not catch; never a crash (a 500 in the daemon).
        return None, [Problem(source, 1, "", "not valid TOML: nested too deeply to read")]
    problems = Problems()
    policy = Loader(problems, known_groups).policy(data)
    lines = KeyLines.of(text)
    located = [_locate(source, lines, p.path, p.reason, p.value) for p in problems.items]
    if located or policy is None:
        located.sort(key=lambda p: p.line)
        return None, located
    return LoadedPolicy(policy, text, sha256_of(text), source, lines), []


def load_policy(
    text: str, source: str, *, known_groups: frozenset[str] | None = None
) -> LoadedPolicy:
    """Like `parse_policy`, raising `PolicyError` with every problem."""
    loaded, problems = parse_policy(text, source, known_groups=known_groups)
    if loaded is None:
        raise PolicyError(problems)
    return loaded


def _too_deep(text: str) -> int | None:
    """The line where arrays and inline tables first nest deeper than MAX_NESTING, if any.

    A light scan, not a parser: for valid TOML its depth is exact (table
    headers `[[x]]` count 2, then 0 again); for invalid TOML it may be off, and
    tomllib then reports the real mistake.
    """
    depth = 0
    for token in _NESTING_TOKENS.finditer(text):
        char = token.group()
        if char in "[{":
            depth += 1
            if depth > MAX_NESTING:
                return text.count("\n", 0, token.start()) + 1
        elif char in "]}":
            depth = max(depth - 1, 0)
    return None


def _locate(source: str, lines: KeyLines, path: KeyPath, reason: str, value: object) -> Problem:
    key = key_text(path)
    if value is NO_VALUE or isinstance(value, dict | list):
        message = f"{key}: {reason}" if key else reason
    else:
        message = f"{key} = {value_text(value)}: {reason}"
    return Problem(source, lines.line(path), key, message)
