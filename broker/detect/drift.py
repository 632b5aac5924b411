"""Drift: what an elevated session left behind on a node, from `broker-node drift-scan`.

A scan is a manifest of the places root can leave something that outlives the
session (sudoers, PAM, polkit, setuid files, systemd units, cron, authorized_keys,
the account files), taken when a grant lands and again when its session ends;
`diff` names what changed between the two, `unexpected` drops the changes the
policy expects.

The reply comes from a node the broker does not control: `parse_scan` checks
every field against allow-lists and raises `IntegrityError` on the first
problem (a half-trusted manifest would hide exactly the drift it should show);
it never returns a partial manifest. Stored manifests go through the same
checks on the way back (`Manifest.from_json`).

Key material never leaves this module whole: an authorized_keys line is shown
as its type, the last 16 characters of the key and its comment.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase
from types import MappingProxyType
from typing import Any, Literal

from broker.core.errors import IntegrityError

CATEGORIES = frozenset(
    {"sudoers", "pam", "polkit", "setuid", "systemd", "cron", "authorized_keys", "accounts"}
)
TEXT_CATEGORIES = frozenset({"sudoers", "cron", "authorized_keys", "accounts"})
TYPES = frozenset({"f", "d", "l", "o"})
MAX_ENTRIES = 50_000
MAX_PATH = 4096  # characters, as the node escapes them
MAX_TEXT = 64 * 1024  # characters of one text (the node sends files of at most 64 KiB)
MAX_TEXTS = 8 * 1024 * 1024  # UTF-8 bytes of all texts together
MAX_ERRORS = 1000
MAX_ERROR = 500
MAX_LINES = 50  # lines shown per change and direction
MAX_LINE = 300  # characters per line shown
MAX_SUMMARY = 500

Kind = Literal["added", "removed", "changed"]
ASPECTS = ("content", "mode", "owner", "type", "target")

_REPLY_KEYS = frozenset({"entries", "texts", "truncated", "errors"})
_ENTRY_KEYS = frozenset({"type", "mode", "uid", "gid", "size", "sha256", "target", "category"})
_SHA256 = re.compile(r"[0-9a-f]{64}")
_KEY_TYPE = re.compile(r"(?:ssh|ecdsa|sk|rsa)-[A-Za-z0-9@._+-]{1,80}")
_KEY_BODY = re.compile(r"[A-Za-z0-9+/]{16,}={0,3}")
_OPTION_NAME = re.compile(r"[A-Za-z0-9-]{1,40}")
_TYPE_NAMES = {"f": "file", "d": "directory", "l": "symlink", "o": "special file"}


@dataclass(frozen=True)
class Entry:
    """One listed path (the manifest's key) as the node saw it."""

    type: str  # f regular file, d directory, l symlink, o anything else
    mode: int  # permission bits with setuid/setgid/sticky (0..0o7777)
    uid: int
    gid: int
    size: int
    sha256: str | None  # regular files of at most 64 MiB that could be read
    target: str | None  # symlinks
    category: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "mode": self.mode,
            "uid": self.uid,
            "gid": self.gid,
            "size": self.size,
            "sha256": self.sha256,
            "target": self.target,
            "category": self.category,
        }


@dataclass(frozen=True)
class Manifest:
    """A checked drift-scan: entries by absolute node path, the texts of the account,
    sudoers, cron and authorized_keys files, and whether the node stopped early."""

    entries: Mapping[str, Entry]
    texts: Mapping[str, str]
    truncated: bool = False
    errors: tuple[str, ...] = ()

    def to_json(self) -> str:
        """The reply's own shape, for drift_baselines.manifest (`from_json` reads it back)."""
        return json.dumps(
            {
                "entries": {path: entry.to_dict() for path, entry in self.entries.items()},
                "texts": dict(self.texts),
                "truncated": self.truncated,
                "errors": list(self.errors),
            },
            sort_keys=True,
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """A stored manifest, checked like a node's reply; IntegrityError if it is not one."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as exc:
            raise IntegrityError(f"stored drift manifest is not JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise IntegrityError("stored drift manifest is not a JSON object")
        return parse_scan(data)


@dataclass(frozen=True)
class Change:
    """What happened to one path between two manifests.

    `what` names the aspects that changed (of ASPECTS; empty for added/removed);
    `details` says how, one short phrase each ("mode 0440 -> 0666", for an added
    entry what it is). The lines are display text (cleaned, capped at MAX_LINES of
    MAX_LINE characters, keys shortened); the totals count every line.
    """

    path: str
    category: str
    kind: Kind
    what: tuple[str, ...] = ()
    lines_added: tuple[str, ...] = ()
    lines_removed: tuple[str, ...] = ()
    added_total: int = 0
    removed_total: int = 0
    details: tuple[str, ...] = ()

    def summary(self) -> str:
        """One line, e.g. `added /root/.ssh/authorized_keys (authorized_keys): +1 line
        ssh-ed25519 …AbCd user@host`."""
        parts: list[str] = []
        has_lines = bool(self.added_total or self.removed_total)
        if self.kind == "changed" or not has_lines:
            parts.extend(self.details)
        if self.kind == "changed" and "content" in self.what and not has_lines:
            parts.insert(0, "content")
        for sign, total, lines in (
            ("+", self.added_total, self.lines_added),
            ("-", self.removed_total, self.lines_removed),
        ):
            if total:
                first = f" {lines[0]}" if lines else ""
                more = f" (+{total - 1} more)" if total > 1 and lines else ""
                parts.append(f"{sign}{total} line{'s' if total != 1 else ''}{first}{more}")
        text = f"{self.kind} {self.path} ({self.category})"
        if parts:
            text += ": " + ", ".join(parts)
        return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 1] + "…"


# ---------------------------------------------------------------- parsing a reply


def _refuse(problem: str) -> IntegrityError:
    return IntegrityError(f"drift-scan reply refused: {problem}")


def _shown(value: object, limit: int = 80) -> str:
    """Untrusted text for an error message: printable, bounded."""
    text = "".join(c if c.isprintable() else "?" for c in str(value))
    return repr(text if len(text) <= limit else text[:limit] + "...")


def check_path(path: object) -> str:
    """An absolute, normalised, printable node path (the node escapes anything else)."""
    if not isinstance(path, str):
        raise _refuse("a path is not a string")
    if not path.startswith("/") or len(path) > MAX_PATH:
        raise _refuse(f"path {_shown(path)} is not absolute or too long")
    if not path.isprintable():
        raise _refuse(f"path {_shown(path)} holds a control character")
    if path != "/" and any(part in ("", ".", "..") for part in path[1:].split("/")):
        raise _refuse(f"path {_shown(path)} is not normalised")
    return path


def _int(value: object, name: str, path: str, top: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
        raise _refuse(f"{path}: {name} is not an integer in 0..{top}")
    return value


def _entry(where: str, raw: object) -> Entry:
    path = _shown(where)
    if not isinstance(raw, dict) or set(raw) != _ENTRY_KEYS:
        raise _refuse(f"{path}: an entry must have exactly {sorted(_ENTRY_KEYS)}")
    kind, category = raw["type"], raw["category"]
    if kind not in TYPES:
        raise _refuse(f"{path}: type {_shown(kind)}")
    if category not in CATEGORIES:
        raise _refuse(f"{path}: category {_shown(category)}")
    digest, target = raw["sha256"], raw["target"]
    if digest is not None and not (
        kind == "f" and isinstance(digest, str) and _SHA256.fullmatch(digest)
    ):
        raise _refuse(f"{path}: sha256 must be 64 lower-case hex digits, for files only")
    if target is not None and not (
        kind == "l"
        and isinstance(target, str)
        and 0 < len(target) <= MAX_PATH
        and target.isprintable()
    ):
        raise _refuse(f"{path}: target must be printable text, for symlinks only")
    return Entry(
        str(kind),
        _int(raw["mode"], "mode", path, 0o7777),
        _int(raw["uid"], "uid", path, 2**32 - 1),
        _int(raw["gid"], "gid", path, 2**32 - 1),
        _int(raw["size"], "size", path, 2**63 - 1),
        digest,
        target,
        str(category),
    )


def _clean_error(value: object) -> str:
    if not isinstance(value, str):
        raise _refuse("an error is not a string")
    text = "".join(c if c.isprintable() else "?" for c in value)
    return text if len(text) <= MAX_ERROR else text[: MAX_ERROR - 3] + "..."


def parse_scan(data: Mapping[str, Any]) -> Manifest:
    """A node's drift-scan reply as a Manifest; IntegrityError on anything not allowed.

    Paths must be absolute and normalised (no `.`, `..` or empty parts) and printable;
    entries have exactly the documented fields and types; texts belong to listed regular
    files of the text categories and stay within MAX_TEXT characters each and MAX_TEXTS
    UTF-8 bytes together. The node's error messages are kept, cleaned and bounded.
    """
    if not isinstance(data, Mapping) or set(data) != _REPLY_KEYS:
        raise _refuse(f"expected exactly {sorted(_REPLY_KEYS)}")
    raw_entries, raw_texts = data["entries"], data["texts"]
    truncated, raw_errors = data["truncated"], data["errors"]
    if not isinstance(raw_entries, dict) or len(raw_entries) > MAX_ENTRIES:
        raise _refuse(f"entries must be an object of at most {MAX_ENTRIES}")
    entries = {check_path(path): _entry(path, raw) for path, raw in raw_entries.items()}
    if not isinstance(raw_texts, dict):
        raise _refuse("texts must be an object")
    texts: dict[str, str] = {}
    total = 0
    for path, text in raw_texts.items():
        entry = entries.get(check_path(path))
        if entry is None or entry.type != "f" or entry.category not in TEXT_CATEGORIES:
            raise _refuse(f"text for {_shown(path)}, which is not a listed file of its kind")
        if not isinstance(text, str) or len(text) > MAX_TEXT:
            raise _refuse(f"{_shown(path)}: text must be a string of at most {MAX_TEXT} characters")
        try:
            total += len(text.encode("utf-8"))
        except UnicodeEncodeError:
            raise _refuse(f"{_shown(path)}: text is not valid Unicode") from None
        if total > MAX_TEXTS:
            raise _refuse(f"texts larger than {MAX_TEXTS} bytes")
        texts[path] = text
    if not isinstance(truncated, bool):
        raise _refuse("truncated must be true or false")
    if not isinstance(raw_errors, list) or len(raw_errors) > MAX_ERRORS:
        raise _refuse(f"errors must be a list of at most {MAX_ERRORS}")
    errors = tuple(_clean_error(error) for error in raw_errors)
    return Manifest(MappingProxyType(entries), MappingProxyType(texts), truncated, errors)


# ---------------------------------------------------------------- comparing two manifests


def diff(baseline: Manifest, current: Manifest) -> list[Change]:
    """Every added, removed and changed path, sorted by path.

    When the current scan was truncated, paths missing from it are not called removed
    (the node may have stopped before reaching them). A directory's size is not compared
    (it moves with its entries); a file's content is its sha256, or its size when neither
    scan could hash it.
    """
    changes: list[Change] = []
    for path in sorted(set(baseline.entries) | set(current.entries)):
        old, new = baseline.entries.get(path), current.entries.get(path)
        old_text, new_text = baseline.texts.get(path), current.texts.get(path)
        if old is None and new is not None:
            added, _, added_total, _ = _line_diff(None, new_text, new.category)
            changes.append(
                Change(
                    path,
                    new.category,
                    "added",
                    lines_added=added,
                    added_total=added_total,
                    details=_describe(new),
                )
            )
        elif new is None and old is not None:
            if current.truncated:
                continue
            _, removed, _, removed_total = _line_diff(old_text, None, old.category)
            changes.append(
                Change(
                    path,
                    old.category,
                    "removed",
                    lines_removed=removed,
                    removed_total=removed_total,
                    details=_describe(old),
                )
            )
        elif old is not None and new is not None:
            what, details = _compare(old, new)
            if not what:
                continue
            lines: tuple[tuple[str, ...], tuple[str, ...], int, int] = ((), (), 0, 0)
            if "content" in what and old_text is not None and new_text is not None:
                lines = _line_diff(old_text, new_text, new.category)
            changes.append(
                Change(
                    path,
                    new.category,
                    "changed",
                    what=what,
                    lines_added=lines[0],
                    lines_removed=lines[1],
                    added_total=lines[2],
                    removed_total=lines[3],
                    details=details,
                )
            )
    return changes


def unexpected(changes: Sequence[Change], expected: Sequence[str]) -> list[Change]:
    """The changes whose path matches none of the `expected` globs (fnmatch, case-sensitive;
    `*` also matches `/`, so `/etc/cron.d/backup-*` covers that directory's backup files)."""
    globs = (expected,) if isinstance(expected, str) else tuple(expected)
    return [c for c in changes if not any(fnmatchcase(c.path, glob) for glob in globs)]


def _describe(entry: Entry) -> tuple[str, ...]:
    what = _TYPE_NAMES[entry.type]
    if entry.type == "l":
        what += f" -> {entry.target or '?'}"
    return (what, f"mode {entry.mode:04o}", f"owner {entry.uid}:{entry.gid}")


def _compare(old: Entry, new: Entry) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The aspects that differ, in ASPECTS order, and a phrase for each but content."""
    found: dict[str, str | None] = {}
    if old.type == new.type == "f" and (
        old.sha256 != new.sha256 or (old.sha256 is None and old.size != new.size)
    ):
        found["content"] = None
    if old.mode != new.mode:
        found["mode"] = f"mode {old.mode:04o} -> {new.mode:04o}"
    if (old.uid, old.gid) != (new.uid, new.gid):
        found["owner"] = f"owner {old.uid}:{old.gid} -> {new.uid}:{new.gid}"
    if old.type != new.type:
        found["type"] = f"type {_TYPE_NAMES[old.type]} -> {_TYPE_NAMES[new.type]}"
    if old.type == new.type == "l" and old.target != new.target:
        found["target"] = f"target {old.target or '?'} -> {new.target or '?'}"
    what = tuple(aspect for aspect in ASPECTS if aspect in found)
    return what, tuple(text for text in found.values() if text is not None)


def _lines(text: str | None) -> list[str]:
    if text is None:
        return []
    return [line.rstrip("\r") for line in text.split("\n") if line.strip()]


def _line_diff(
    old: str | None, new: str | None, category: str
) -> tuple[tuple[str, ...], tuple[str, ...], int, int]:
    """Lines only in `new` (in its order) and only in `old`, as a multiset: shown lines
    and totals. Order alone changing is a content change without lines."""
    old_lines, new_lines = _lines(old), _lines(new)
    added = _only_in(new_lines, Counter(old_lines))
    removed = _only_in(old_lines, Counter(new_lines))
    return (
        tuple(_show(line, category) for line in added[:MAX_LINES]),
        tuple(_show(line, category) for line in removed[:MAX_LINES]),
        len(added),
        len(removed),
    )


def _only_in(lines: list[str], other: Counter[str]) -> list[str]:
    left = Counter(other)
    out: list[str] = []
    for line in lines:
        if left[line] > 0:
            left[line] -= 1
        else:
            out.append(line)
    return out


def _show(line: str, category: str) -> str:
    text = mask_key_line(line) if category == "authorized_keys" else line.strip()
    text = "".join(c if c.isprintable() else (" " if c == "\t" else "?") for c in text)
    return text if len(text) <= MAX_LINE else text[: MAX_LINE - 1] + "…"


def _split_field(text: str) -> tuple[str, str]:
    """The first whitespace-separated field (double quotes keep spaces) and the rest."""
    quoted = False
    index = 0
    while index < len(text):
        char = text[index]
        if char == "\\" and quoted:
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char in " \t" and not quoted:
            break
        index += 1
    return text[:index], text[index:].lstrip(" \t")


def _option_names(options: str) -> list[str]:
    names: list[str] = []
    quoted = False
    current = ""
    for char in options + ",":
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            name = current.split("=", 1)[0]
            names.append(name if _OPTION_NAME.fullmatch(name) else "?")
            current = ""
        else:
            current += char
    return names


def mask_key_line(line: str) -> str:
    """An authorized_keys line without its key: `[options] type …last16 comment`.

    Comments (`#`) are shown as they are; anything that is not a key line is shown only
    by its length (a private key pasted by mistake must not end up in an alert).
    """
    text = line.strip()
    if not text or text.startswith("#"):
        return text
    first, rest = _split_field(text)
    options: list[str] = []
    if not _KEY_TYPE.fullmatch(first):
        options = _option_names(first)
        first, rest = _split_field(rest)
    parts = rest.split(None, 1)
    if not _KEY_TYPE.fullmatch(first) or not parts or not _KEY_BODY.fullmatch(parts[0]):
        return f"(not a key line, {len(text)} characters)"
    shown = f"{first} …{parts[0][-16:]}"
    if len(parts) > 1:
        shown += f" {parts[1].strip()}"
    return f"[{','.join(options)}] {shown}" if options else shown
