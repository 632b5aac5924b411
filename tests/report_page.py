"""Check a rendered report page in headless Chromium: shared by the unit test (a seeded store)
and the lab's variant (the real lab report). `check_report_page(path, document)` loads the
page with tests/browser.py and asserts what a reader would notice, then returns what the
browser saw (its screenshot, for docs/report-screenshot.png)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from broker.report.charts import CHART_KEYS
from tests import browser

# What the browser test reads from the page, in the browser (the page itself has no script).
PROBE = """(() => {
  const charts = [...document.querySelectorAll('figure.chart')].map(f => {
    const svg = f.querySelector('svg');
    return {key: f.dataset.chart, empty: f.dataset.empty, labelled: svg.getAttribute('aria-labelledby'),
            shapes: svg.querySelectorAll('path, rect').length, texts: svg.querySelectorAll('text').length,
            words: svg.textContent, width: svg.getBoundingClientRect().width,
            height: svg.getBoundingClientRect().height};
  });
  const badges = [...document.querySelectorAll('article .badge')].map(b => ({
    status: b.dataset.status, text: b.textContent.trim(), colour: getComputedStyle(b).color}));
  return {charts, badges, overflow: document.documentElement.scrollWidth,
          document: JSON.parse(document.getElementById('broker-report').textContent)};
})()"""

BADGE_TEXT = {
    "ok": "\u2713 OK",
    "attention": "! ATTENTION",
    "not applicable": "\u2013 NOT APPLICABLE",
}


def check_report_page(path: Path, document: dict[str, Any]) -> browser.PageReport:
    """Loaded without console errors, requests or failed loads; the five charts present,
    labelled, drawn (or saying "No data in period"); one badge per control, in words; the
    embedded document, parsed by the browser, equal to `document`; printable at A4."""
    seen = browser.load_page(path, probe=PROBE)
    assert (seen.console_errors, seen.requests, seen.failed) == ([], [], [])
    charts = seen.probe["charts"]
    assert [c["key"] for c in charts] == list(CHART_KEYS)
    for chart in charts:
        assert chart["labelled"] == f"{chart['key']}-title {chart['key']}-desc"
        if chart["empty"] == "true":
            assert "No data in period" in chart["words"], chart
        else:
            assert chart["shapes"] > 5 and chart["texts"] > 3, chart
    wanted = [BADGE_TEXT[c["status"]] for c in document["controls"]]
    assert [b["text"] for b in seen.probe["badges"]] == wanted
    assert seen.probe["document"] == document
    assert seen.screenshot.startswith(b"\x89PNG")
    _check_print(seen)
    return seen


def _check_print(seen: browser.PageReport) -> None:
    """Printed: every chart fits A4's printable width and a page's height, nothing overflows
    sideways, and status reads without colour (the badges print black, words included)."""
    printed = seen.print_probe
    assert printed["overflow"] <= browser.A4_PRINT_PX
    for chart in printed["charts"]:
        assert chart["width"] <= browser.A4_PRINT_PX and chart["height"] < 1000, chart
    assert {b["colour"] for b in printed["badges"]} <= {"rgb(0, 0, 0)"}
    assert seen.pdf.startswith(b"%PDF") and seen.pdf_pages >= 1
