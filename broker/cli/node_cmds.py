"""`broker node`: reach nodes the way the broker will (pinned host keys, the broker's key)."""

from __future__ import annotations

from typing import Any

import typer

from broker.cli import output
from broker.cli.context import JSON_OPTION, client
from broker.core.errors import EXIT_FAILED, EXIT_UNAVAILABLE
from broker.core.hostlist import expand, fold

app = typer.Typer(help="Cluster nodes.", no_args_is_help=True)

MAX_SKEW_S = 60.0


@app.command()
def ping(
    ctx: typer.Context,
    nodes: str = typer.Argument(..., help="Hostlist expression, e.g. gpu[01-04],stor01."),
    json_out: bool = JSON_OPTION,
) -> None:
    """SSH to each node with its pinned host key: reachable, reported hostname, clock skew.

    Exit 0 when all answer with a sane clock, 1 when any is skewed by more than 60 s or
    reports another hostname, 3 when any is unreachable.
    """
    names = expand(nodes)
    with output.err.status(f"probing {len(names)} nodes through the broker daemon"):
        probes: list[dict[str, Any]] = client(ctx).post("/v1/nodes/ping", {"nodes": nodes})
    if json_out:
        output.print_json(probes)
    else:
        output.table(
            None,
            ["node", "reachable", "hostname", "skew (s)", "ms", "problem"],
            [_row(p) for p in probes],
        )
    down = [p["node"] for p in probes if not p["reachable"]]
    wrong = [p["node"] for p in probes if p["reachable"] and not _sane(p)]
    if down:
        output.fail(f"unreachable: {fold(down)}")
        raise typer.Exit(EXIT_UNAVAILABLE)
    if wrong:
        output.fail(
            f"clock skewed by more than {MAX_SKEW_S:.0f} s or wrong hostname: {fold(wrong)}"
        )
        raise typer.Exit(EXIT_FAILED)


def _sane(probe: dict[str, Any]) -> bool:
    short = (probe["hostname"] or "").split(".")[0]
    return (
        probe["skew_s"] is not None
        and abs(probe["skew_s"]) <= MAX_SKEW_S
        and short == probe["node"].split(".")[0]
    )


def _row(p: dict[str, Any]) -> list[object]:
    skew = "" if p["skew_s"] is None else f"{p['skew_s']:+.3f}"
    return [
        p["node"],
        "yes" if p["reachable"] else "NO",
        p["hostname"] or "",
        skew,
        f"{p['elapsed_ms']:.0f}",
        p["error"] or "",
    ]
