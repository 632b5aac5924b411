"""Which database the broker keeps its state in: `store.url`, read against an allow-list.

Absent or `sqlite:///ABS/PATH` is the SQLite file (the default, one broker); a libpq URL
(`postgresql://...`) or libpq keywords (`host=... dbname=...`) is PostgreSQL. Only the
keywords below are accepted, each value against a pattern, so nothing unexpected (a
`password`, a service file, an option string) reaches libpq. A password is never taken
from the configuration: it belongs in a passfile (mode 0600, `passfile=` or PGPASSFILE), so
the URL can be shown in messages and `config check` as it is.

Pure: config validates with it at load time, the store connects with what it returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}"
_ABS_PATH = r"/[A-Za-z0-9_./-]{0,4095}"
_HOSTNAME = r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,252})"
_IPV6 = r"\[?[0-9A-Fa-f:]{2,39}\]?"
# Every libpq keyword the broker passes on, with what its value may be.
KEYWORDS: dict[str, re.Pattern[str]] = {
    "host": re.compile(rf"{_ABS_PATH}|{_HOSTNAME}|{_IPV6}"),
    "port": re.compile(r"[1-9][0-9]{0,4}"),
    "dbname": re.compile(_NAME),
    "user": re.compile(_NAME),
    "passfile": re.compile(_ABS_PATH),
    "sslmode": re.compile(r"disable|require|verify-ca|verify-full"),
    "sslrootcert": re.compile(_ABS_PATH),
    "sslcert": re.compile(_ABS_PATH),
    "sslkey": re.compile(_ABS_PATH),
    "connect_timeout": re.compile(r"[1-9][0-9]{0,2}"),
    "application_name": re.compile(r"[A-Za-z0-9_.-]{1,63}"),
    "target_session_attrs": re.compile(r"read-write|primary"),
}
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}


class StoreUrlError(ValueError):
    """`store.url` is not one the broker accepts; the message says which part and why."""


@dataclass(frozen=True)
class StoreUrl:
    """A checked `store.url`: the SQLite file, or the libpq keywords of a PostgreSQL database."""

    engine: Literal["sqlite", "postgresql"]
    path: PurePosixPath | None = None
    params: tuple[tuple[str, str], ...] = ()

    def keywords(self) -> dict[str, str]:
        return dict(self.params)

    def display(self) -> str:
        """How messages name the database (no secret can be in it: passwords are refused)."""
        if self.engine == "sqlite":
            return str(self.path)
        return "postgresql:" + " ".join(f"{k}={v}" for k, v in self.params)


def parse_store_url(text: str) -> StoreUrl:
    """The checked form of `text`, or StoreUrlError naming the part that is not accepted."""
    if text.startswith("sqlite:"):
        return _sqlite(text)
    if text.startswith(("postgresql://", "postgres://")):
        return _checked(_from_url(text))
    if "=" in text and "://" not in text:
        return _checked(_from_keywords(text))
    raise StoreUrlError(
        "expected sqlite:///ABSOLUTE/PATH, postgresql://[USER@]HOST[:PORT]/DBNAME[?KEY=VALUE...]"
        " or libpq keywords (host=... dbname=...)"
    )


def _sqlite(text: str) -> StoreUrl:
    parts = urlsplit(text)
    if parts.netloc or parts.query or parts.fragment or not parts.path.startswith("/"):
        raise StoreUrlError("expected sqlite:///ABSOLUTE/PATH (three slashes, no host or query)")
    path = PurePosixPath(unquote(parts.path))
    if ".." in path.parts or not re.fullmatch(_ABS_PATH, str(path)):
        raise StoreUrlError(f"{path} is not an absolute path of [A-Za-z0-9_./-] without '..'")
    return StoreUrl("sqlite", path=path)


def _from_url(text: str) -> list[tuple[str, str]]:
    parts = urlsplit(text)
    if parts.password is not None or ":@" in parts.netloc:
        raise StoreUrlError(_KEEP_IT_IN_A_FILE)
    if parts.fragment or "," in parts.netloc:
        raise StoreUrlError("a fragment or several hosts are not accepted; name one host")
    pairs: list[tuple[str, str]] = []
    if parts.username:
        pairs.append(("user", unquote(parts.username)))
    if parts.hostname:
        pairs.append(("host", parts.hostname))
    try:
        port = parts.port
    except ValueError as exc:
        raise StoreUrlError(f"the port is not a number from 1 to 65535 ({exc})") from exc
    if port is not None:
        pairs.append(("port", str(port)))
    if parts.path not in ("", "/"):
        pairs.append(("dbname", unquote(parts.path[1:])))
    try:
        query = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise StoreUrlError(f"the query is not KEY=VALUE&... ({exc})") from exc
    return pairs + query


def _from_keywords(text: str) -> list[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    for item in text.split():
        key, sep, value = item.partition("=")
        if key.strip() == "password":
            raise StoreUrlError(_KEEP_IT_IN_A_FILE)
        if not sep or "'" in item or "\\" in item:
            # Named by its key only: the value may be a secret typed in the wrong place.
            raise StoreUrlError(
                f"the item starting {key[:32]!r} is not KEY=VALUE (no quotes, no spaces in values)"
            )
        pairs.append((key, value))
    return pairs


_KEEP_IT_IN_A_FILE = (
    "a password is not accepted in store.url: put it in a passfile (mode 0600) and name it"
    " with passfile=/PATH, or set PGPASSFILE for the broker's service"
)


def _checked(pairs: list[tuple[str, str]]) -> StoreUrl:
    seen: dict[str, str] = {}
    for key, value in pairs:
        if key == "password":
            raise StoreUrlError(_KEEP_IT_IN_A_FILE)
        pattern = KEYWORDS.get(key)
        if pattern is None:
            raise StoreUrlError(f"{key!r} is not accepted; accepted keys: {', '.join(KEYWORDS)}")
        if key in seen:
            raise StoreUrlError(f"{key!r} is given twice")
        if not pattern.fullmatch(value) or ".." in value:
            # The value is not echoed: a mistyped one may hold a password (user=alice:secret).
            raise StoreUrlError(f"the value of {key} is not an accepted {key}")
        seen[key] = value
    if "dbname" not in seen:
        raise StoreUrlError("no database named: add /DBNAME to the URL or dbname=DBNAME")
    host = seen.get("host", "")
    remote = bool(host) and not host.startswith("/") and host not in _LOOPBACK
    if remote and (seen.get("sslmode") != "verify-full" or "sslrootcert" not in seen):
        raise StoreUrlError(
            f"host {host} is reached over the network: set sslmode=verify-full and"
            " sslrootcert=/PATH (the CA that signed the server's certificate) so the audit"
            " chain never crosses it unauthenticated"
        )
    return StoreUrl("postgresql", params=tuple(seen.items()))
