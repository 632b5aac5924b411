"""The TOML key locator: every way TOML can spell a key lands on the line it is written on."""

from __future__ import annotations

import tomllib
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from broker.policy.positions import KeyLines, Path

DOCUMENT = """\
# comment with [brackets] and = signs
version = 1
title = "a # not a comment [x]"
multi = \"\"\"
line with ''' and "quotes" and [[fake]]
\"\"\"
literal = '''
[not.a.table]
'''

[zones.compute]
kind = "compute"   # trailing comment
nodes = [
  "gpu[001-512]",  # first
  'gpu[600-601]',
]

[roles."quoted.name"]
dotted.inner.key = true
"esc\\u0041ped" = 1
inline = { a = 1, b.c = [1, 2], d = { e = "}" } }

[[bindings]]
group = "a"

[[bindings]]
group = "b"
roles = ["x",
   "y"]

[[fruits]]
name = "apple"
[[fruits.varieties]]
name = "red"
[[fruits.varieties]]
name = "green"
[[fruits]]
name = "banana"
[[fruits.varieties]]
name = "plantain"
"""


def line_of(text: str, needle: str) -> int:
    return text.splitlines().index(needle) + 1


def test_the_sample_document_parses() -> None:
    tomllib.loads(DOCUMENT)


def test_tables_keys_and_comments() -> None:
    lines = KeyLines.of(DOCUMENT)
    assert lines.line(("version",)) == 2
    assert lines.line(("title",)) == 3
    assert lines.line(("literal",)) == 7
    assert lines.line(("zones",)) == 11
    assert lines.line(("zones", "compute", "kind")) == 12
    assert lines.line(("zones", "compute", "nodes")) == 13
    assert lines.line(("zones", "compute", "nodes", 0)) == 14
    assert lines.line(("zones", "compute", "nodes", 1)) == 15


def test_multiline_strings_hide_fake_tables() -> None:
    lines = KeyLines.of(DOCUMENT)
    assert not lines.known(("fake",))
    assert not lines.known(("not", "a", "table"))


def test_quoted_dotted_and_inline_keys() -> None:
    lines = KeyLines.of(DOCUMENT)
    role = ("roles", "quoted.name")
    assert lines.line(role) == 18
    assert lines.line((*role, "dotted", "inner", "key")) == 19
    assert lines.line((*role, "escAped")) == 20
    assert lines.line((*role, "inline", "b", "c", 1)) == 21
    assert lines.line((*role, "inline", "d", "e")) == 21


def test_arrays_of_tables_count_their_elements() -> None:
    lines = KeyLines.of(DOCUMENT)
    assert lines.line(("bindings", 0, "group")) == line_of(DOCUMENT, 'group = "a"')
    assert lines.line(("bindings", 1, "group")) == line_of(DOCUMENT, 'group = "b"')
    assert lines.line(("bindings", 1, "roles", 1)) == line_of(DOCUMENT, '   "y"]')


def test_nested_arrays_of_tables_restart_per_parent() -> None:
    lines = KeyLines.of(DOCUMENT)
    assert lines.line(("fruits", 0, "varieties", 1, "name")) == line_of(DOCUMENT, 'name = "green"')
    assert lines.line(("fruits", 1, "varieties", 0, "name")) == line_of(
        DOCUMENT, 'name = "plantain"'
    )
    assert lines.line(("fruits", 1, "name")) == line_of(DOCUMENT, 'name = "banana"')


def test_unknown_paths_fall_back_to_the_nearest_parent() -> None:
    lines = KeyLines.of(DOCUMENT)
    assert lines.line(("zones", "compute", "missing")) == 11
    assert lines.line(("nothing", "here")) == 1


def test_windows_line_endings() -> None:
    text = 'a = 1\r\n[t]\r\nb = "x"\r\n'
    tomllib.loads(text)
    lines = KeyLines.of(text)
    assert lines.line(("t", "b")) == 3


# ---------------------------------------------------------------- property: random documents

_KEY = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=6),
)
_SCALAR = st.one_of(
    st.integers(-5, 5),
    st.booleans(),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=8),
)


def _quote(text: str) -> str:
    """A TOML basic string: escapes for quotes, backslashes and control characters only."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _key(name: str) -> str:
    if name.replace("_", "a").replace("-", "a").isalnum() and name.isascii():
        return name
    return _quote(name)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, list):
        return "[\n  " + ",\n  ".join(_value(v) for v in value) + ",\n]"
    return str(value)


_TABLE = st.dictionaries(
    _KEY, st.one_of(_SCALAR, st.lists(_SCALAR, min_size=1, max_size=3)), min_size=1, max_size=4
)
_DOC = st.dictionaries(_KEY, _TABLE, min_size=1, max_size=4)


@settings(max_examples=150, deadline=None)
@given(doc=_DOC, style=st.sampled_from(["tables", "dotted", "inline"]))
def test_random_documents_locate_every_leaf(doc: dict[str, dict[str, Any]], style: str) -> None:
    """Write a document in one of three styles; each key must land on the line that names it."""
    out: list[str] = []
    where: dict[Path, int] = {}
    for table, items in doc.items():
        if style == "tables":
            out.append(f"[{_key(table)}]")
            for key, value in items.items():
                where[(table, key)] = len(out) + 1
                text = f"{_key(key)} = {_value(value)}"
                if isinstance(value, list):
                    for index in range(len(value)):
                        where[(table, key, index)] = len(out) + 2 + index
                out.extend(text.split("\n"))
        elif style == "dotted":
            for key, value in items.items():
                where[(table, key)] = len(out) + 1
                text = f"{_key(table)} . {_key(key)} = {_value(value)}"
                if isinstance(value, list):
                    for index in range(len(value)):
                        where[(table, key, index)] = len(out) + 2 + index
                out.extend(text.split("\n"))
        else:
            where.update({(table, key): len(out) + 1 for key in items})
            flat = ", ".join(
                f"{_key(k)} = {_value(v).replace(chr(10), ' ')}" for k, v in items.items()
            )
            out.append(f"{_key(table)} = {{ {flat} }}")
    text = "\n".join(out) + "\n"
    assert tomllib.loads(text) == doc
    lines = KeyLines.of(text)
    for path, expected in where.items():
        assert lines.line(path) == expected, (path, text)
