"""The report's five charts drawn as inline SVG with matplotlib, one summary line each.

Why matplotlib, as SVG: it is a well-kept library with a wheel for every platform the broker
host runs on, it needs no display (the SVG backend, through `Figure.savefig`, never pyplot),
and SVG keeps text as text (`svg.fonttype = none`), so a printed report is crisp and its
numbers can be selected and searched. Nothing here fetches anything: the page stays one file.

Deterministic on purpose: the same document draws byte-identical SVG (a fixed `svg.hashsalt`
per chart, no Date metadata), so two renders of a signed report can be compared with `cmp`.

The charts' data comes from a signed document that may have been edited or hand-made, so it is
checked against the shape `charts.chart_series` writes before anything is drawn; a wrong shape
is one UsageError naming the field. matplotlib is imported only when a page is drawn (about
half a second), so the CLI and the daemon pay nothing for it otherwise.
"""

from __future__ import annotations

import html
import io
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

from broker.core.errors import UsageError
from broker.report.charts import CHART_KEYS, NO_ZONE

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TITLES = {
    "elevations": "Elevations per day, by zone",
    "approval_wait": "Time from request to approval",
    "session_length": "Session length",
    "mfa_failures": "MFA failures per day (all zones: a second factor belongs to an account)",
    "keytab_age": "Keytab age per service account, at the end of the period",
}
NO_DATA = "No data in period"
MAX_ACCOUNTS = 40  # keytab bars drawn; the summary names how many more there are

# Colour-blind-safe (Okabe-Ito) with hatches, so series still differ on a grey printout.
COLOURS = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442")
HATCHES = ("", "//", "..", "xx", "\\\\", "++", "--")
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
WIDTH_IN = 7.5  # 190 mm: the page's text width, so A4 prints it without scaling up


@dataclass(frozen=True)
class Chart:
    """One drawn chart: the SVG markup to inline, its title and a sentence saying what it shows
    (the figure's caption and the SVG's accessible description)."""

    key: str
    title: str
    summary: str
    svg: str
    empty: bool


def draw_charts(charts: Any) -> list[Chart]:
    """Check the document's `charts` and draw each, in the page's order."""
    if not isinstance(charts, Mapping):
        raise _malformed("charts", "an object")
    drawers: dict[str, Callable[[Any], tuple[Callable[[Axes], None] | None, str, float]]] = {
        "elevations": _elevations,
        "approval_wait": lambda d: _histogram(d, "approved requests", "approval_wait"),
        "session_length": lambda d: _histogram(d, "recorded sessions", "session_length"),
        "mfa_failures": _mfa_failures,
        "keytab_age": _keytab_age,
    }
    drawn = []
    for key in CHART_KEYS:
        if key not in charts:
            raise _malformed(f"charts.{key}", "present")
        plot, summary, height = drawers[key](charts[key])
        svg = _svg(key, TITLES[key], summary, plot, height)
        drawn.append(Chart(key, TITLES[key], summary, svg, plot is None))
    return drawn


# --- the shape of the data -------------------------------------------------------------


def _malformed(where: str, expected: str) -> UsageError:
    return UsageError(
        f"the report document is malformed: {where} is not {expected}",
        fix="render a document written by `broker report`, unedited",
    )


def _field(data: Any, key: str, where: str) -> Any:
    if not isinstance(data, Mapping) or key not in data:
        raise _malformed(f"{where}.{key}", "present")
    return data[key]


def _counts(value: Any, where: str, length: int | None = None) -> list[int]:
    ok = isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value
    )
    if not ok or (length is not None and len(value) != length):
        size = "" if length is None else f" of length {length}"
        raise _malformed(where, f"a list of counts{size}")
    return list(value)


def _days(value: Any, where: str) -> list[date]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _malformed(where, "a list of days")
    try:
        return [date.fromisoformat(v) for v in value]
    except ValueError:
        raise _malformed(where, "a list of YYYY-MM-DD days") from None


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.0f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


# --- the five charts: each returns (plot or None when empty, summary, height in inches) ---


def _elevations(data: Any) -> tuple[Callable[[Axes], None] | None, str, float]:
    days = _days(_field(data, "days", "charts.elevations"), "charts.elevations.days")
    zones = _field(data, "zones", "charts.elevations")
    total = _field(data, "total", "charts.elevations")
    if not isinstance(zones, Mapping) or not isinstance(total, int):
        raise _malformed("charts.elevations", "zones and a total")
    series = {
        str(z): _counts(v, f"charts.elevations.zones.{z}", len(days)) for z, v in zones.items()
    }
    if not days or total == 0:
        return None, "No elevation was granted in the period.", 1.2
    per_day = [sum(col) for col in zip(*series.values(), strict=True)]
    busiest = max(range(len(days)), key=lambda i: per_day[i])
    summary = (
        f"{_n(total, 'elevation')} granted on {_n(len(days), 'day')},"
        f" in {_n(len(series), 'zone')} ({', '.join(series)});"
        f" busiest day {days[busiest].isoformat()} ({per_day[busiest]})."
    )

    starts, binned, width = _binned(days, series)

    def plot(ax: Axes) -> None:
        x = [_day_number(d) + (width - 1) / 2 for d in starts]
        bottom = [0] * len(starts)
        for i, (name, counts) in enumerate(binned.items()):
            ax.bar(
                x, counts, width=0.8 * width, bottom=bottom, label=name, color=_colour(i, name),
                hatch=HATCHES[i % len(HATCHES)], edgecolor="#333333", linewidth=0.4,
            )  # fmt: skip
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        _date_axis(ax, [*starts, starts[-1] + timedelta(days=width - 1)])
        ax.set_ylabel("grants per week" if width == 7 else "grants per day")
        _legend(ax, "zone")

    return plot, summary, 3.0


def _histogram(data: Any, what: str, key: str) -> tuple[Callable[[Axes], None] | None, str, float]:
    where = f"charts.{key}"
    buckets = _field(data, "buckets", where)
    if not isinstance(buckets, list) or not buckets:
        raise _malformed(f"{where}.buckets", "a list of buckets")
    labels = [str(_field(b, "label", f"{where}.buckets")) for b in buckets]
    counts = _counts([_field(b, "count", f"{where}.buckets") for b in buckets], where)
    median, p90 = _field(data, "median_s", where), _field(data, "p90_s", where)
    for name, value in (("median_s", median), ("p90_s", p90)):
        if value is not None and not isinstance(value, int | float):
            raise _malformed(f"{where}.{name}", "a number of seconds or null")
    total = sum(counts)
    if total == 0:
        return None, f"No {what} in the period.", 1.2
    summary = f"{total} {what}; median {_seconds(median)}, 90th percentile {_seconds(p90)}."

    def plot(ax: Axes) -> None:
        bars = ax.bar(labels, counts, color=COLOURS[0], edgecolor="#333333", linewidth=0.4)
        ax.bar_label(bars, fontsize=8)
        ax.set_ylabel(what)
        ax.margins(y=0.15)
        _whole_counts(ax)

    return plot, summary, 2.8


def _mfa_failures(data: Any) -> tuple[Callable[[Axes], None] | None, str, float]:
    where = "charts.mfa_failures"
    days = _days(_field(data, "days", where), f"{where}.days")
    failed, locked, lockouts = (
        _counts(_field(data, name, where), f"{where}.{name}", len(days))
        for name in ("failed_codes", "while_locked", "lockouts")
    )
    if sum(failed) + sum(locked) + sum(lockouts) == 0:
        return None, "No MFA failure in the period.", 1.2
    summary = (
        f"{_n(sum(failed), 'failed code')}, {_n(sum(locked), 'attempt')} refused while locked"
        f" and {_n(sum(lockouts), 'lockout')}, on {_n(len(days), 'day')}."
    )

    starts, binned, width = _binned(
        days, {"failed": failed, "locked": locked, "lockouts": lockouts}
    )
    failed, locked, lockouts = binned["failed"], binned["locked"], binned["lockouts"]

    def plot(ax: Axes) -> None:
        x = [_day_number(d) + (width - 1) / 2 for d in starts]
        ax.bar(x, failed, width=0.8 * width, label="failed codes", color=COLOURS[5],
               edgecolor="#333333", linewidth=0.4)  # fmt: skip
        ax.bar(x, locked, width=0.8 * width, bottom=failed, label="refused while locked",
               color=COLOURS[1], hatch="//", edgecolor="#333333", linewidth=0.4)  # fmt: skip
        marks = [(d, f + lk) for d, f, lk, n in zip(x, failed, locked, lockouts, strict=True) if n]
        if marks:
            ax.plot([d for d, _ in marks], [h for _, h in marks], "v", color="#000000",
                    label="lockout", linestyle="none", markersize=7)  # fmt: skip
            ax.margins(y=0.12)
        _date_axis(ax, [*starts, starts[-1] + timedelta(days=width - 1)])
        ax.set_ylabel("attempts per week" if width == 7 else "attempts per day")
        _legend(ax)

    return plot, summary, 3.0


def _keytab_age(data: Any) -> tuple[Callable[[Axes], None] | None, str, float]:
    where = "charts.keytab_age.accounts"
    accounts = _field(data, "accounts", "charts.keytab_age")
    if not isinstance(accounts, list):
        raise _malformed(where, "a list")
    rows: list[tuple[str, float | None]] = []
    for item in accounts:
        name, age = _field(item, "name", where), _field(item, "age_days", where)
        if not isinstance(name, str) or (age is not None and not isinstance(age, int | float)):
            raise _malformed(where, "a list of {name, age_days}")
        rows.append((name, None if age is None else float(age)))
    if not rows:
        return None, "No service account keytab is managed by the broker.", 1.2
    rows.sort(key=lambda r: (r[1] is not None, -(r[1] or 0.0), r[0]))  # never rotated, oldest
    never = sum(1 for _, age in rows if age is None)
    dated = [r for r in rows if r[1] is not None]
    oldest = f"; oldest {dated[0][0]}, {dated[0][1]:.1f} days" if dated else ""
    more = f"; {len(rows) - MAX_ACCOUNTS} more not drawn" if len(rows) > MAX_ACCOUNTS else ""
    summary = (
        f"{_n(len(rows), 'service account')}, {never} never rotated by the broker{oldest}{more}."
    )
    shown = rows[:MAX_ACCOUNTS][::-1]

    def plot(ax: Axes) -> None:
        names = [name for name, _ in shown]
        ages = [0.0 if age is None else age for _, age in shown]
        ax.barh(names, ages, color=COLOURS[2], edgecolor="#333333", linewidth=0.4)
        for y, (_, age) in enumerate(shown):
            text = "never rotated" if age is None else f"{age:.1f}"
            ax.annotate(text, (0 if age is None else age, y), xytext=(3, 0),
                        textcoords="offset points", va="center", fontsize=7)  # fmt: skip
        ax.set_xlabel("days since the last finished rotation")
        ax.margins(x=0.12)
        ax.set_xlim(left=0, right=max(1.0, max(ages) * 1.15))  # ages are >= 0; 0 at the axis

    return plot, summary, 0.9 + 0.22 * len(shown)


# --- matplotlib ---------------------------------------------------------------------------


def _colour(i: int, name: str) -> str:
    return "#BBBBBB" if name == NO_ZONE else COLOURS[i % len(COLOURS)]


def _binned(
    days: list[date], series: dict[str, list[int]]
) -> tuple[list[date], dict[str, list[int]], int]:
    """Days as drawn: one bar a day up to three months, one a week (from Monday) beyond, so a
    year is 53 bars, not 365 (a page of readable size and weight). The data stays per day."""
    if not days or (max(days) - min(days)).days <= 92:
        return days, series, 1
    starts = sorted({d - timedelta(days=d.weekday()) for d in days})
    index = {start: i for i, start in enumerate(starts)}
    binned = {name: [0] * len(starts) for name in series}
    for name, counts in series.items():
        for d, count in zip(days, counts, strict=True):
            binned[name][index[d - timedelta(days=d.weekday())]] += count
    return starts, binned, 7


def _day_number(day: date) -> float:
    """A day as matplotlib's default date axis counts it (days since 1970-01-01)."""
    return float(day.toordinal() - _EPOCH)


_EPOCH = date(1970, 1, 1).toordinal()


def _date_axis(ax: Axes, days: list[date]) -> None:
    """Whole days on the x axis with a day's margin either side, labelled by us (day and
    month; the year where it starts or changes): one day of data still reads as a day."""
    first, last = min(days), max(days)
    ax.set_xlim(_day_number(first) - 1, _day_number(last) + 1)
    step = max(1, math.ceil(((last - first).days + 1) / 8))
    ticks = [first + timedelta(days=i) for i in range(0, (last - first).days + 1, step)]
    labels = [
        f"{t.day:02d} {MONTHS[t.month - 1]}"
        + (f"\n{t.year}" if i == 0 or t.year != ticks[i - 1].year else "")
        for i, t in enumerate(ticks)
    ]
    ax.set_xticks([_day_number(t) for t in ticks], labels)
    _whole_counts(ax)


def _whole_counts(ax: Axes) -> None:
    """Counts are whole: no 0.2 of a grant on the y axis."""
    from matplotlib.ticker import MaxNLocator  # with the figure: loaded only to draw

    ax.yaxis.set_major_locator(MaxNLocator(integer=True))


def _legend(ax: Axes, title: str | None = None) -> None:
    """Beside the plot, never over a bar."""
    ax.legend(title=title, fontsize=8, title_fontsize=8, frameon=False,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))  # fmt: skip


def _n(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else plural or word + 's'}"


def _figure(height: float) -> Figure:
    from matplotlib.figure import Figure  # lazy: half a second, only when a page is drawn

    return Figure(figsize=(WIDTH_IN, height), layout="constrained")


def _svg(
    key: str, title: str, summary: str, plot: Callable[[Axes], None] | None, height: float
) -> str:
    """Draw one chart (or the no-data panel) and return it as inline SVG markup."""
    import matplotlib  # lazy, as in _figure

    style: dict[Any, Any] = {
        "svg.fonttype": "none",  # text stays text: crisp in print, selectable
        "svg.hashsalt": f"broker-report-{key}",  # deterministic ids, distinct per chart
        "text.parse_math": False,  # an account named "$x$" is a name, not TeX
        "font.family": "DejaVu Sans",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    with matplotlib.rc_context(style):
        figure = _figure(height)
        ax = figure.add_subplot()
        if plot is None:
            ax.set_axis_off()
            ax.text(0.5, 0.5, NO_DATA, ha="center", va="center", fontsize=12, color="#333333")
        else:
            plot(ax)
        out = io.StringIO()
        figure.savefig(out, format="svg", metadata={"Date": None})
    return _inline(key, title, summary, out.getvalue())


_ID = re.compile(r'\bid="([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^)"]+)')


def _inline(key: str, title: str, summary: str, svg: str) -> str:
    """matplotlib's document made fit to sit in a page beside four others: no XML prolog,
    every id and reference prefixed with the chart's key, a title and description for screen
    readers."""
    body = svg[svg.index("<svg") :]
    body = _ID.sub(lambda m: f'id="{key}-{m.group(1)}"', body)
    body = _REF.sub(lambda m: f"{m.group(1)}{key}-{m.group(2)}", body)
    head_end = body.index(">") + 1
    opening = body[: head_end - 1] + (
        f' role="img" aria-labelledby="{key}-title {key}-desc" data-chart="{key}">'
    )
    label = (
        f'<title id="{key}-title">{html.escape(title)}</title>'
        f'<desc id="{key}-desc">{html.escape(summary)}</desc>'
    )
    return opening + label + body[head_end:]
