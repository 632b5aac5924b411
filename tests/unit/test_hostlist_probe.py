from pathlib import Path

import pytest

from broker.core.errors import UsageError
from broker.core.hostlist import expand, fold
from broker.fleet.probe import parse_probe
from broker.fleet.ssh import CommandResult


def test_hostlists_expand_like_clustershell() -> None:
    assert expand("gpu[01-03],stor01") == ["gpu01", "gpu02", "gpu03", "stor01"]
    assert len(expand("gpu[001-512]")) == 512
    assert fold(["gpu01", "gpu02", "gpu03"]) == "gpu[01-03]"


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "gpu[01-",
        "GPU01",
        "gpu01;id",
        "gpu 01",
        "gpu01\n",
        "gpü01",
        "-gpu",
        "a_b",
        "node%01",
        "ALL",
    ],
)
def test_hostile_or_malformed_lists_are_refused(expression: str) -> None:
    with pytest.raises(UsageError):
        expand(expression)


def test_huge_lists_are_refused() -> None:
    with pytest.raises(UsageError, match="more than"):
        expand("n[0-200000]")


def ok(stdout: str) -> CommandResult:
    return CommandResult("gpu01", 0, stdout, "", None, 12.0)


def test_probe_skew_is_relative_to_the_round_trip_midpoint() -> None:
    probe = parse_probe(ok("gpu01 1000.5\n"), sent=1000.0, received=1000.2)
    assert probe.reachable and probe.hostname == "gpu01"
    assert probe.skew_s == pytest.approx(0.4)


def test_probe_failures_keep_the_reason() -> None:
    failed = CommandResult("gpu01", None, "", "", "gpu01: host key changed", 5.0)
    probe = parse_probe(failed, 0, 0)
    assert not probe.reachable and probe.error == "gpu01: host key changed"
    garbled = parse_probe(ok("nonsense"), 0, 0)
    assert garbled.reachable and garbled.error == "unexpected probe output"


@pytest.mark.parametrize(
    "expression",
    [
        "@x';touch /tmp/broker-hostlist-pwned;'",  # a group: ClusterShell would run an upcall
        "@all",
        "*",
        "n[1-3-4]",
        "n[+1-2]",
        "n[1-2]&n1",
        "a!b",
        "@x:y",
        "GPU01",
        "gpu[3-1]",
    ],
)
def test_hostlists_outside_the_grammar_are_refused_before_clustershell_sees_them(
    expression: str, tmp_path: Path
) -> None:
    with pytest.raises(UsageError):
        expand(expression)
    assert not Path("/tmp/broker-hostlist-pwned").exists()


def test_names_that_resolve_as_addresses_and_huge_ranges_are_refused_without_expanding() -> None:
    for expression in ("[1-3]", "2130706433", "127.1"):
        with pytest.raises(UsageError, match="at least one letter"):
            expand(expression)
    with pytest.raises(UsageError, match="names 100000000 nodes"):
        expand("n[0-99999999]")  # counted, not expanded
