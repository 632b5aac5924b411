"""The services' SQL as PostgreSQL takes it: `?` placeholders become `%s`, a literal `%` `%%`.

The services write SQLite's qmark style. psycopg wants `%s`, and reads every `%` as the
start of one (inside quotes and comments too, it does not parse SQL), so every `%` is
doubled, and a `?` becomes `%s` only outside quoted strings, quoted identifiers and
comments, where it means nothing to either engine. Numbered or
named placeholders (`?1`, `:name`) are not SQL the services write: refused, not guessed.
"""

from __future__ import annotations

from functools import lru_cache


class PlaceholderError(ValueError):
    """A statement uses a placeholder style the PostgreSQL adapter does not translate."""


@lru_cache(maxsize=4096)
def to_pyformat(sql: str) -> str:
    """`sql` with each unquoted `?` as `%s` and each unquoted `%` as `%%`."""
    out: list[str] = []
    i, n = 0, len(sql)
    while i < n:
        ch = sql[i]
        if ch in "'\"":
            end = _closing(sql, i, ch)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        if sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        if sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
            continue
        if ch == "?":
            if i + 1 < n and sql[i + 1].isdigit():
                raise PlaceholderError(f"numbered placeholder ?{sql[i + 1]}... is not supported")
            out.append("%s")
        elif ch == "%":
            out.append("%%")
        else:
            out.append(ch)
        i += 1
    return "".join(out)


def _closing(sql: str, start: int, quote: str) -> int:
    """The index after the quote that ends the string or identifier opened at `start` (a
    doubled quote inside is part of it); the end of the text when it is never closed."""
    i = start + 1
    while True:
        end = sql.find(quote, i)
        if end < 0:
            return len(sql)
        if sql.startswith(quote * 2, end):
            i = end + 2
            continue
        return end + 1
