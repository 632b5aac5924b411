"""One grant's sudoers drop-in, rendered from sudoers_templates/ and checked by visudo.

The template escapes nothing. Every value passes an allow-list (the policy's own
checks in `broker.policy.names`) and a deny-list of sudoers metacharacters first;
anything else is refused, never quoted, so no user, set or command name can add a
rule, an option or a line. The grant's reason has no field here: it never reaches
sudoers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import NoReturn

import jinja2

from broker.core.errors import FailedError, RefusedError, UnavailableError, UsageError
from broker.core.hostlist import NODE_NAME
from broker.core.timeutil import to_generalized, to_second_text
from broker.policy import names

GRANT_ID = re.compile(r"g[0-9a-f]{16}")
# In a checkout beside the package; from a wheel under <prefix>/share (pyproject data-files).
_BESIDE = Path(__file__).resolve().parents[2] / "sudoers_templates"
TEMPLATES_DIR = (
    _BESIDE
    if _BESIDE.is_dir()
    else Path(sys.prefix) / "share" / "hpc-access-broker" / "sudoers_templates"
)
TEMPLATE = "grant.sudoers.j2"
DEFAULT_LOG_SERVER = "127.0.0.1:30343"
_LOG_SERVER = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*)"
    r":(?:[1-9][0-9]{0,4})"
)
ALL = "ALL"
HOST_MAX = 253
# sudo keeps TIMEOUT in a C int and refuses larger values ("timeout value too large").
TIMEOUT_MAX = 2**31 - 1
# Characters the sudoers parser gives a meaning to, and line breaks. The allow-lists
# already exclude most; checking them first makes the refusal name the character.
_SPECIALS = frozenset("\n\r\"'%,!\\:=")
# visudo is looked up here only, never on the caller's PATH.
_SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
_VISUDO_TIMEOUT_S = 30
_INCLUDE = re.compile(r"^\s*[@#]include", re.MULTILINE)
_CARET_LINE = re.compile(r"^[\s^~]*$")


@dataclass(frozen=True)
class SudoersGrant:
    """What one drop-in says: who, as whom, when, which commands (empty = ALL)."""

    grant_id: str
    user: str
    runas: str
    not_before: datetime
    not_after: datetime
    command_sets: tuple[tuple[str, tuple[str, ...]], ...]
    # The node this copy is for: the rule's host field, so the file grants nothing on a
    # node whose hostname differs (a copied drop-in is inert even before PAM decides).
    host: str
    # Where sudo streams the session recording (the node's tunnel to sudo_logsrvd).
    log_server: str = DEFAULT_LOG_SERVER


@dataclass(frozen=True)
class _Alias:
    """One Cmnd_Alias line of the template."""

    name: str
    commands: tuple[str, ...]


def drop_in_name(grant_id: str) -> str:
    """`broker_<id>`: no dot, since sudo skips drop-ins whose name has one."""
    return "broker_" + _grant_id(grant_id)


def render_grant(grant: SudoersGrant, templates_dir: Path | None = None) -> str:
    """The drop-in text, or UsageError naming the first value outside the allow-lists."""
    grant_id = _grant_id(grant.grant_id)
    user = _account("user", grant.user)
    runas = _account("runas", grant.runas)
    not_before = _moment("not_before", grant.not_before)
    not_after = _moment("not_after", grant.not_after)
    timeout = _timeout(not_before, not_after)
    host = _host(grant.host)
    log_server = grant.log_server
    if not _LOG_SERVER.fullmatch(log_server) or int(log_server.rpartition(":")[2]) > 65535:
        _refuse("log_server", log_server, "expected host:port, e.g. 127.0.0.1:30343")
    aliases = _aliases(grant_id, grant.command_sets)
    template = _environment(str(templates_dir or TEMPLATES_DIR)).get_template(TEMPLATE)
    return template.render(
        grant_id=grant_id,
        user=user,
        host=host,
        runas=runas,
        valid_from=to_second_text(not_before),
        expires=to_second_text(not_after),
        not_before=to_generalized(not_before),
        not_after=to_generalized(not_after),
        timeout=timeout,
        log_server=log_server,
        aliases=aliases,
        commands=", ".join(alias.name for alias in aliases) if aliases else ALL,
    )


def check_with_visudo(text: str) -> None:
    """Run the local `visudo -cf` on `text`; RefusedError with visudo's words if it fails."""
    if _INCLUDE.search(text):
        raise RefusedError(
            "sudoers text with an include directive",
            fix="a grant's drop-in never includes other files; render it with render_grant",
        )
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise RefusedError(
            "sudoers text that is not valid UTF-8", fix="render it with render_grant"
        ) from None
    visudo = shutil.which("visudo", path=_SYSTEM_PATH)
    if visudo is None:
        raise UnavailableError(
            f"visudo not found in {_SYSTEM_PATH}",
            fix="install sudo on the broker host; drop-ins are checked before they are pushed",
        )
    with tempfile.TemporaryDirectory(prefix="broker-sudoers-") as private:
        path = Path(private) / "drop-in"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        try:
            done = subprocess.run(
                [visudo, "-c", "-f", str(path)],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                errors="replace",
                env={"PATH": _SYSTEM_PATH, "LC_ALL": "C"},
                timeout=_VISUDO_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise FailedError(
                f"visudo did not finish within {_VISUDO_TIMEOUT_S} s",
                fix="check the broker host's load and its sudo installation",
            ) from None
    if done.returncode != 0:
        said = (done.stderr + "\n" + done.stdout).replace(str(path), "drop-in")
        lines = [line.strip() for line in said.splitlines() if not _CARET_LINE.match(line)]
        raise RefusedError(
            f"visudo refused the drop-in: {' | '.join(lines)[:500]}",
            fix="fix the values or the template (sudoers_templates/) that produced it",
        )


@lru_cache(maxsize=4)
def _environment(templates_dir: str) -> jinja2.Environment:
    if not Path(templates_dir, TEMPLATE).is_file():
        raise FailedError(
            f"sudoers template {TEMPLATE} not found in {templates_dir}",
            fix="reinstall the broker: sudoers_templates/ ships with it",
        )
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # noqa: S701 - sudoers, not HTML: values are allow-listed, not escaped
        keep_trailing_newline=True,
    )


def _refuse(field: str, value: object, fix: str) -> NoReturn:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    raise UsageError(f"sudoers grant: bad {field} {shown}", fix=fix)


def _plain(field: str, value: object) -> str:
    """Non-empty ASCII text without control characters or sudoers metacharacters."""
    if not isinstance(value, str):
        _refuse(field, value, "give text")
    if not value:
        _refuse(field, value, "give a value; empty text is refused")
    if not value.isascii():
        _refuse(field, value, "use ASCII only; look-alike Unicode letters are refused")
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        _refuse(field, value, "no line breaks or control characters")
    special = next((char for char in value if char in _SPECIALS), None)
    if special is not None:
        _refuse(field, value, f"{special!r} has a meaning in sudoers and is never written there")
    return value


def _grant_id(value: object) -> str:
    text = _plain("grant_id", value)
    if not GRANT_ID.fullmatch(text):
        _refuse("grant_id", text, "a grant id is 'g' and 16 lower-case hex digits")
    return text


def _account(field: str, value: object) -> str:
    """A POSIX user name; never ALL, a %group, a +netgroup or a #uid."""
    text = _plain(field, value)
    if text.upper() == ALL:
        _refuse(field, text, "name one user; ALL is sudoers' wildcard")
    if text[0] in "%+#":
        _refuse(field, text, "name one user; %, + and # start a group, netgroup or uid")
    if (reason := names.posix_name(text)) is not None:
        _refuse(field, text, reason)
    return text


def check_hosts(nodes: Sequence[str]) -> None:
    """Every node name passes the host field's allow-list (UsageError naming the first that
    does not): what differs between a grant's per-node drop-ins, checked without rendering
    each one (a request may name thousands of nodes)."""
    for node in nodes:
        _host(node)


def _host(value: object) -> str:
    """The node's inventory name, as sudo matches it against the host's name: a lower-case
    hostname (never ALL, an alias, a netgroup, an address pattern or a wildcard)."""
    text = _plain("host", value)
    if not NODE_NAME.fullmatch(text) or len(text) > HOST_MAX:
        _refuse("host", text, "a node name: lower-case hostname labels joined by dots")
    return text


def _moment(field: str, value: object) -> datetime:
    if not isinstance(value, datetime):
        _refuse(field, value, "give a datetime")
    if value.tzinfo is None or value.utcoffset() != timedelta(0):
        _refuse(field, value, "give a timezone-aware UTC time")
    if value.microsecond:
        _refuse(field, value, "give whole seconds; sudoers times have no fractions")
    return value.astimezone(UTC)


def _timeout(not_before: datetime, not_after: datetime) -> int:
    """The grant's whole duration in seconds, as sudo's TIMEOUT."""
    if not_before >= not_after:
        _refuse("not_after", not_after, "not_after must be later than not_before")
    seconds = (not_after - not_before) // timedelta(seconds=1)
    if seconds > TIMEOUT_MAX:
        _refuse("not_after", not_after, f"a grant lasts at most {TIMEOUT_MAX} seconds")
    return seconds


def _aliases(grant_id: str, command_sets: tuple[tuple[str, tuple[str, ...]], ...]) -> list[_Alias]:
    """One Cmnd_Alias per set, `BROKER_<SET>_<ID>`: aliases are global across drop-ins."""
    if not isinstance(command_sets, tuple):
        _refuse("command_sets", command_sets, "give a tuple of (name, commands) pairs")
    aliases: list[_Alias] = []
    seen: set[str] = set()
    for entry in command_sets:
        if not (isinstance(entry, tuple) and len(entry) == 2):
            _refuse("command_sets", entry, "give (name, commands) pairs")
        name = _plain("command set name", entry[0])
        if (reason := names.policy_name(name)) is not None:
            _refuse("command set name", name, reason)
        if name in seen:
            _refuse("command set name", name, "name each command set once")
        seen.add(name)
        commands = entry[1]
        if not (isinstance(commands, tuple) and commands):
            _refuse(f"commands of set {name}", commands, "give a non-empty tuple of commands")
        checked = tuple(_command(name, command) for command in commands)
        aliases.append(_Alias(f"{names.cmnd_alias(name)}_{grant_id.upper()}", checked))
    return aliases


def _command(set_name: str, value: object) -> str:
    field = f"command in set {set_name}"
    text = _plain(field, value)
    if text != " ".join(text.split()):
        # names.command lets "/usr/bin/tool " through; sudo reads it as the bare program,
        # which allows any arguments.
        _refuse(field, text, "separate arguments by single spaces, with none at either end")
    if ALL in text.split(" "):
        _refuse(field, text, 'ALL is every command; grant a role with commands = "ALL" instead')
    if (reason := names.command(text)) is not None:
        _refuse(field, text, reason)
    return text
