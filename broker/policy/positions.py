"""Where each key of a TOML document is written, so every policy error can say file:line.

tomllib returns values without positions. This scanner walks text that
tomllib has already accepted and records the line of every table header,
key (bare, quoted or dotted), inline-table key and array element, under
the same path the parsed data uses: `("roles", "gpu-root", "max_duration")`,
`("bindings", 3, "roles", 1)`. It relies on the text being valid TOML, so it
only has to skip strings, comments and scalars correctly, not judge them.
"""

from __future__ import annotations

import bisect
import re
import tomllib

Path = tuple[str | int, ...]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_SPACE = " \t"
_SCALAR_END = re.compile(r"[,\]}\n#]")


class KeyLines:
    """Lines (1-based) of the keys of one TOML text; unknown paths fall back to their parent."""

    def __init__(self, lines: dict[Path, int]) -> None:
        self._lines = lines

    @classmethod
    def of(cls, text: str) -> KeyLines:
        return cls(_Scanner(text).run())

    def line(self, path: Path) -> int:
        """The line of `path`, or of its nearest recorded ancestor (1 for the document)."""
        for end in range(len(path), 0, -1):
            found = self._lines.get(path[:end])
            if found is not None:
                return found
        return 1

    def known(self, path: Path) -> bool:
        return path in self._lines


class _Scanner:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.n = len(text)
        self._newlines = [m.start() for m in re.finditer("\n", text)]
        self.out: dict[Path, int] = {}
        # Current element index of every array of tables, by its resolved path.
        self.arrays: dict[Path, int] = {}

    def run(self) -> dict[Path, int]:
        table: Path = ()
        while True:
            self._skip(newlines=True)
            if self.i >= self.n:
                return self.out
            if self.s.startswith("[[", self.i):
                table = self._header(array=True)
            elif self.s[self.i] == "[":
                table = self._header(array=False)
            else:
                self._key_value(table)

    # ------------------------------------------------------------ structure

    def _line_at(self, offset: int) -> int:
        return bisect.bisect_left(self._newlines, offset) + 1

    def _record(self, path: Path, offset: int) -> None:
        self.out.setdefault(path, self._line_at(offset))

    def _header(self, *, array: bool) -> Path:
        start = self.i
        self.i += 2 if array else 1
        keys = self._key()
        self._skip()
        self.i += 2 if array else 1
        resolved: Path = ()
        for position, key in enumerate(keys):
            resolved = (*resolved, key)
            last = position == len(keys) - 1
            if array and last:
                index = self.arrays.get(resolved, -1) + 1
                self.arrays[resolved] = index
                self._record(resolved, start)
                resolved = (*resolved, index)
            elif resolved in self.arrays:
                self._record(resolved, start)
                resolved = (*resolved, self.arrays[resolved])
            self._record(resolved, start)
        return resolved

    def _key_value(self, table: Path) -> None:
        start = self.i
        keys = self._key()
        path = table
        for key in keys:
            path = (*path, key)
            self._record(path, start)
        self._skip()
        self.i += 1  # '='
        self._skip()
        self._value(path)

    def _value(self, path: Path) -> None:
        char = self.s[self.i]
        if char == "[":
            self._array(path)
        elif char == "{":
            self._inline_table(path)
        elif char in "\"'":
            self._string()
        else:
            found = _SCALAR_END.search(self.s, self.i)
            self.i = found.start() if found else self.n

    def _array(self, path: Path) -> None:
        self.i += 1
        index = 0
        while True:
            self._skip(newlines=True)
            if self.s[self.i] == "]":
                self.i += 1
                return
            if self.s[self.i] == ",":
                self.i += 1
                continue
            self._record((*path, index), self.i)
            self._value((*path, index))
            index += 1

    def _inline_table(self, path: Path) -> None:
        self.i += 1
        while True:
            self._skip(newlines=True)
            if self.s[self.i] == "}":
                self.i += 1
                return
            if self.s[self.i] == ",":
                self.i += 1
                continue
            self._key_value(path)

    # ------------------------------------------------------------ tokens

    def _key(self) -> list[str]:
        """A dotted key; quoted parts are decoded exactly as tomllib decodes them."""
        keys: list[str] = []
        while True:
            self._skip()
            char = self.s[self.i]
            if char in "\"'":
                start = self.i
                self._string()
                keys.append(_decode_string(self.s[start : self.i]))
            else:
                match = _BARE_KEY.match(self.s, self.i)
                if match is None:
                    raise ValueError(f"not a TOML key at offset {self.i}")
                keys.append(match.group())
                self.i = match.end()
            self._skip()
            if self.i < self.n and self.s[self.i] == ".":
                self.i += 1
                continue
            return keys

    def _string(self) -> None:
        quote = self.s[self.i]
        if self.s.startswith(quote * 3, self.i):
            self.i += 3
            while True:
                if quote == '"' and self.s[self.i] == "\\":
                    self.i += 2
                    continue
                if self.s.startswith(quote * 3, self.i):
                    self.i += 3
                    # Up to two quotes may sit right before the closing delimiter.
                    extra = 0
                    while extra < 2 and self.i < self.n and self.s[self.i] == quote:
                        self.i += 1
                        extra += 1
                    return
                self.i += 1
        self.i += 1
        while True:
            char = self.s[self.i]
            if quote == '"' and char == "\\":
                self.i += 2
                continue
            self.i += 1
            if char == quote:
                return

    def _skip(self, *, newlines: bool = False) -> None:
        """Skip blanks and comments (and newlines, where the grammar allows them)."""
        while self.i < self.n:
            char = self.s[self.i]
            if char in _SPACE or (newlines and char in "\r\n"):
                self.i += 1
            elif char == "#":
                end = self.s.find("\n", self.i)
                self.i = self.n if end < 0 else end
            else:
                return


def _decode_string(token: str) -> str:
    value = tomllib.loads(f"k = {token}")["k"]
    if not isinstance(value, str):
        raise ValueError(f"not a TOML string: {token!r}")
    return value
