"""Policies too big or too deep to read are refused quickly, as file:line errors, never a crash."""

from __future__ import annotations

import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker.core.errors import UsageError
from broker.core.hostlist import expand, fold, fold_lists, fold_some
from broker.policy import load as load_module
from broker.policy import sections
from broker.policy.check import check_policy
from broker.policy.load import MAX_NESTING, PolicyError, load_policy
from broker.policy.rights import elevation_scope
from broker.policy.sections import MAX_POLICY_NODES
from tests.unit.policy_samples import LAB_POLICY, account, errors, line_of, load


def edit(old: str, new: str, text: str = LAB_POLICY) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# ---------------------------------------------------------------- nodes in all


def test_many_large_hostlists_are_refused_before_any_is_expanded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    lists = ", ".join(f'"z{i}n[1-100000]"' for i in range(10))
    text = f'version = 1\n\n[zones.big]\nkind = "compute"\nnodes = [{lists}]\n'

    def no_expanding(expression: str) -> list[str]:
        raise AssertionError(f"expanded {expression}")

    monkeypatch.setattr("broker.policy.reader.expand", no_expanding)
    started = time.perf_counter()
    with pytest.raises(PolicyError) as caught:
        load_policy(text, "policy.toml")
    assert time.perf_counter() - started < 0.5  # was minutes and gigabytes; ~1 ms here
    assert str(caught.value) == (
        "policy.toml:5: zones.big.nodes[2] = 'z2n[1-100000]': the hostlists of this policy name "
        f"1000000 nodes in all, more than {MAX_POLICY_NODES} (counted before expanding; this "
        "list goes over the limit)"
    )
    # The daemon's check route reports it the same way, as one located error.
    report = check_policy(text, "policy.toml", None)
    assert report["errors"] == 1 and "1000000 nodes in all" in report["findings"][0]["message"]


def test_the_cap_counts_zones_roles_and_service_accounts(monkeypatch: pytest.MonkeyPatch) -> None:
    # The lab policy lists 5 names in zones and 2 in service accounts' nodes: 7 in all.
    monkeypatch.setattr(sections, "MAX_POLICY_NODES", 7)
    assert len(load(LAB_POLICY).policy.zone_of) == 5
    text = edit('zones = ["storage"]\n', 'zones = ["storage"]\nnodes = "stor01"\n')
    # Counted in zones, roles, service accounts: the last list is the one over the limit.
    over = line_of(text, 'principals = ["nfs/') + 1
    assert errors(text) == [
        f"policy.toml:{over}: service_accounts.svc-nfs.nodes = 'stor01': the hostlists of this "
        "policy name 8 nodes in all, more than 7 (counted before expanding; this list goes "
        "over the limit)"
    ]


def test_over_the_cap_other_mistakes_are_still_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sections, "MAX_POLICY_NODES", 4)
    text = edit('nodes = "gpu[01-02]"', 'nodes = ["gpu[01-02]", "GPU03"]')
    text = edit('max_duration = "4h"', 'max_duration = "4x"', text)
    # 7 names in all (GPU03 is bad on its own, reported where it is read, not counted).
    found = errors(text)
    assert [e.split(": ")[:2] for e in found] == [
        ["policy.toml:16", "zones.compute.nodes[1] = 'GPU03'"],
        ["policy.toml:20", "zones.storage.nodes = 'stor01'"],
        ["policy.toml:28", "roles.gpu-root.max_duration = '4x'"],
    ]
    assert found[1].endswith(
        ": the hostlists of this policy name 7 nodes in all, more than 4 (counted before "
        "expanding; this list goes over the limit)"
    )


def test_the_benchmark_policy_still_loads_quickly() -> None:
    from bench.policy_bench import generate

    text = generate()
    started = time.perf_counter()
    loaded = load_policy(text, "bench.toml")
    assert len(loaded.policy.zone_of) == 10_000
    assert time.perf_counter() - started < 2  # the benchmark's goal; ~0.15 s here


def test_zone_and_role_hostlists_are_folded_from_the_lists() -> None:
    text = edit('nodes = "gpu[01-02]"', 'nodes = ["gpu[03-04]", "gpu01", "gpu02"]')
    text = edit('zones = ["storage"]\n', 'zones = ["storage"]\nnodes = ["gpu04", "gpu03"]\n', text)
    policy = load(text).policy
    assert policy.zones["compute"].hostlist == "gpu[01-04]"
    assert policy.roles["storage-root"].hostlist == "gpu[03-04]"
    alice = account("alice", "gpu-admins", "storage-admins")
    scope = elevation_scope(policy, alice)
    assert scope["storage-root"].nodes == "gpu[03-04],stor01"
    assert scope["node-diag"].nodes == fold(sorted(policy.role_nodes(policy.roles["node-diag"])))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "gpu", "r1n", "x-"]),
            st.integers(0, 120),
            st.integers(0, 30),
            st.sampled_from([1, 2, 3]),
        ),
        min_size=1,
        max_size=5,
    )
)
def test_folding_lists_is_folding_their_names(parts: list[tuple[str, int, int, int]]) -> None:
    lists = [f"{p}[{lo:0{pad}d}-{lo + n:0{pad}d}]" for p, lo, n, pad in parts]
    names = sorted({name for expression in lists for name in expand(expression)})
    assert fold_lists(lists) == fold(names)


def test_folding_for_messages_is_bounded() -> None:
    names = expand("n[1-5000]")
    assert fold_some(names) == "n[1-1000] and 4000 more nodes"
    assert fold_some(["n2", "n10", "n1"]) == "n[1-2,10]"
    with pytest.raises(UsageError):
        fold_lists(["@all"])


# ---------------------------------------------------------------- nesting

_DEEP = [
    pytest.param("a=" + "[" * 5000 + "]" * 5000, id="arrays"),
    pytest.param("a={" + "b={" * 3000 + "}" * 3001, id="inline-tables"),
]


@pytest.mark.parametrize("text", _DEEP)
def test_deep_nesting_is_a_policy_error_not_a_crash(text: str) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(text, "policy.toml")
    assert str(caught.value) == (
        f"policy.toml:1: arrays and inline tables nested too deeply (more than {MAX_NESTING} "
        "levels); a policy needs only a few"
    )
    report = check_policy(text, "policy.toml", None)
    assert report["errors"] == 1 and "nested too deeply" in report["findings"][0]["message"]


@pytest.mark.parametrize("text", _DEEP)
def test_recursion_in_the_parser_is_caught_too(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(load_module, "MAX_NESTING", 10**6)  # past the scan, into tomllib
    with pytest.raises(PolicyError) as caught:
        load_policy(text, "policy.toml")
    assert str(caught.value) == "policy.toml:1: not valid TOML: nested too deeply to read"


def test_nesting_is_located_and_brackets_in_strings_and_comments_do_not_count() -> None:
    deep = "[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1)
    text = edit("login = true\n", f"login = true\nextra = {deep}\n")
    assert errors(text) == [
        f"policy.toml:{line_of(text, 'extra = ')}: arrays and inline tables nested too deeply "
        f"(more than {MAX_NESTING} levels); a policy needs only a few"
    ]
    many = "[{" * 100
    strings = (
        f"a = 1 # {many}\n"
        f"b = '{many}'\n"
        f'c = "{many}\\""\n'
        f'd = """{many}""""\n'
        f"e = '''{many}''''\n"
        f'f = ["[[", \'{{\', """]"""]\n'
    )
    assert errors(f"[x]\n{strings}") == [
        "policy.toml:1: x: unknown key; defined: bindings, break_glass_group, command_sets, detect, "
        "incident_response_group, roles, service_accounts, version, zones (see docs/policy.md)"
    ]
    just = "[" * MAX_NESTING + "]" * MAX_NESTING
    assert "nested" not in " ".join(errors(f"x = {just}\n"))
