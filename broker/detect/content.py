"""Which session_match rules a block of session text matches, and on which line.

Two steps, so the rules run at line rate and still report what they always
reported. First one Hyperscan database per stream kind (all its rules'
patterns) says which patterns match and where each one's first match ends
(broker/core/multimatch.py; C, GIL released, 64 KiB slices). Then, only for a
rule that matched and is not cooling down, Python's `re` (the rule's own
alternation, `Rule.regex`) finds the exact match from the start of that line:
the leftmost match in the block, the lowest-numbered pattern at that place,
its line for the excerpt, exactly as the detector found them with `re` alone.

Why from that line: the leftmost match cannot end before the first end the
engine saw, and cannot start after it, so for a match that stays on one line
its line is the line of that first end. A match that crosses a newline (a
pattern with `\\s` or `[^x]` can) and starts on an earlier line is looked for
in the whole block when the line holds no match that starts early enough.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from broker.core import multimatch
from broker.policy.detection_rules import Rule

log = logging.getLogger("broker.detect")

EXCERPT_MAX = 200
_UNPRINTABLE = re.compile(rb"[^\x20-\x7e]+")
KINDS = ("command", "input", "output")


def excerpt(line: bytes) -> str:
    return _UNPRINTABLE.sub(b" ", line).decode("ascii").strip()[:EXCERPT_MAX]


@dataclass(frozen=True, slots=True)
class Hit:
    rule: Rule
    pattern: int  # index into rule.patterns
    line: bytes  # the line(s) the match is on


class _KindSet:
    """The rules one stream kind sees, their patterns in one engine database."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = list(rules)
        self.owner = [i for i, r in enumerate(self.rules) for _ in r.patterns]
        self.set = multimatch.PatternSet([p for r in self.rules for p in r.patterns])


class ContentMatcher:
    """The session_match rules in force, by stream kind. `unavailable` says why the engine
    cannot run here (then `hits` raises: the runner must not read bytes it cannot judge)."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.unavailable = multimatch.unavailable() if rules else None
        usable = [r for r in rules if self.unavailable is None and _compiles(r)]
        self._kinds = {k: _KindSet([r for r in usable if k in r.streams]) for k in KINDS}

    def rules(self, kind: str) -> list[Rule]:
        return self._kinds[kind].rules

    def hits(self, kind: str, text: bytes, cooling: Callable[[Rule], bool]) -> Iterator[Hit]:
        """Each rule (in policy order) that matches `text`, unless `cooling` says its
        finding would be dropped anyway (then `re` is spared the work)."""
        if self.unavailable is not None:
            raise RuntimeError(self.unavailable)
        kind_set = self._kinds[kind]
        ends = kind_set.set.first_ends(text)
        first: dict[int, int] = {}
        for pid, end in ends.items():
            owner = kind_set.owner[pid]
            first[owner] = min(end, first.get(owner, end))
        for index in sorted(first):
            rule = kind_set.rules[index]
            if cooling(rule):
                continue
            hit = _locate(rule, text, first[index])
            if hit is not None:
                yield hit


def _locate(rule: Rule, text: bytes, end: int) -> Hit | None:
    """The rule's leftmost match in `text`, given where the engine saw a match end first."""
    regex = rule.regex
    assert regex is not None
    match = regex.search(text, text.rfind(b"\n", 0, end - 1) + 1)
    if match is None or match.start() >= end:
        match = regex.search(text)  # a match that began on an earlier line
    if match is None:
        log.warning("detection rule %s: the engine matched, Python's re did not", rule.name)
        return None
    start = text.rfind(b"\n", 0, match.start()) + 1
    stop = text.find(b"\n", match.end())
    pattern = int((match.lastgroup or "p0")[1:])
    return Hit(rule, pattern, text[start : stop if stop >= 0 else len(text)])


def _compiles(rule: Rule) -> bool:
    """The policy check refuses patterns either engine cannot run; never let one that
    slipped through (an older policy) stop the other rules."""
    try:
        if rule.regex is None:
            return False
    except re.error:
        log.error("detection rule %s: its patterns do not compile; rule skipped", rule.name)
        return False
    bad = [p for p in rule.patterns if multimatch.problem(p) is not None]
    if bad:
        log.error("detection rule %s: the engine cannot run %r; rule skipped", rule.name, bad[0])
        return False
    return True
