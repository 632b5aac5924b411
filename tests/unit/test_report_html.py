"""The HTML report (broker/report/html.py): one self-contained page that draws the signed
document, embeds it intact, refuses a malformed one, and loads cleanly in a real browser."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from broker.core.errors import UsageError
from broker.report.charts import CHART_KEYS, chart_series
from broker.report.document import parse
from broker.report.html import render_html
from broker.store.db import Store
from tests import browser
from tests.helpers import REPO
from tests.report_page import check_report_page
from tests.unit import report_samples as samples

needs_chromium = pytest.mark.skipif(
    not browser.available(),
    reason=f"{browser.CHROMIUM} is not installed (deploy/install-deps.sh installs chromium)",
)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    opened = samples.open_store(tmp_path_factory.mktemp("report-html") / "broker.db")
    samples.seed(opened)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def document(store: Store) -> dict[str, Any]:
    charts = chart_series(store.conn, samples.SINCE, samples.UNTIL, None, zone_of=samples.ZONE_OF)
    # Through JSON, as the signed document reaches the renderer.
    loaded: dict[str, Any] = json.loads(json.dumps(samples.document(charts)))
    return loaded


@pytest.fixture(scope="module")
def page(document: dict[str, Any]) -> str:
    return render_html(document)


def test_the_page_references_nothing_outside_itself(page: str) -> None:
    assert "default-src 'none'" in page  # the browser refuses any fetch an edit might add
    for attribute in re.findall(r'(?:src|href)="([^"]*)"', page):
        assert attribute.startswith("#"), attribute
    for reference in re.findall(r"url\(([^)]*)\)", page):
        assert reference.startswith("#"), reference
    for construct in ("<link", "@import", "@font-face", "<iframe", "<img"):
        assert construct not in page


def test_the_embedded_document_is_the_document_even_with_markup_in_it(
    page: str, document: dict[str, Any]
) -> None:
    # One script element: the hostile attention item did not close it or open another.
    assert page.count("<script") == 1
    assert "alert(1)</script>" not in page
    assert parse(page, "report.html") == document
    assert "carol &lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; locked" in page


def test_two_renders_of_one_document_are_byte_identical(
    page: str, document: dict[str, Any]
) -> None:
    assert render_html(copy.deepcopy(document)) == page


def test_every_control_shows_its_status_in_words_and_its_evidence(page: str) -> None:
    assert page.count('data-status="ok"') == 2  # summary table and the control itself
    assert "\u2713 OK" in page and "! ATTENTION" in page and "\u2013 NOT APPLICABLE" in page
    assert "<code>broker accounts review</code>" in page
    assert "<code>broker mfa status carol</code>" in page
    assert "No evidence recorded for this control in the period." in page  # SC-8


def test_chart_text_stays_text_and_each_chart_is_labelled(page: str) -> None:
    for key in CHART_KEYS:
        assert f'<title id="{key}-title">' in page and f'<desc id="{key}-desc">' in page
    assert ">5-15 min</text>" in page  # an axis label as text, not glyph outlines
    assert "DejaVuSans-" not in page  # no embedded glyph definitions
    ids = re.findall(r'\bid="([^"]+)"', page)
    assert len(ids) == len(set(ids))  # five inlined SVGs, no clashing ids


def test_an_empty_period_draws_no_data_panels(document: dict[str, Any], tmp_path: Path) -> None:
    empty_store = samples.open_store(tmp_path / "empty.db")
    charts = chart_series(
        empty_store.conn, samples.SINCE, samples.UNTIL, None, zone_of=samples.ZONE_OF
    )
    empty_store.close()
    quiet = render_html({**document, "charts": charts})
    assert quiet.count('data-empty="true"') == 5
    assert quiet.count(">No data in period</text>") == 5


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda d: d["controls"][1].update(status="fine"), "controls.1.status"),
        (lambda d: d.update(schema="broker-report/9"), "schema"),
        (lambda d: d["charts"].pop("keytab_age"), "charts.keytab_age"),
        (lambda d: d["charts"]["mfa_failures"].update(lockouts=[1, 2, 3]), "lockouts"),
        (lambda d: d["charts"]["elevations"].update(days=["yesterday"]), "elevations.days"),
        (lambda d: d["controls"][0]["evidence"][1].update(value=float("nan")), "NaN"),
    ],
)
def test_a_malformed_document_is_one_usage_error_naming_the_field(
    document: dict[str, Any], change: Any, named: str
) -> None:
    broken = copy.deepcopy(document)
    change(broken)
    with pytest.raises(UsageError, match="malformed") as caught:
        render_html(broken)
    assert named in caught.value.message


def test_importing_the_renderer_does_not_load_matplotlib() -> None:
    """matplotlib costs half a second at import: only drawing a page may pay it."""
    code = "import sys, broker.report.html; print('matplotlib' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert done.stdout.strip() == "False"


@needs_chromium
def test_the_page_loads_in_chromium_without_errors_or_fetches(
    page: str, document: dict[str, Any], tmp_path: Path
) -> None:
    path = tmp_path / "report.html"
    path.write_text(page, encoding="utf-8")
    seen = check_report_page(path, document)
    assert all(chart["empty"] == "false" for chart in seen.probe["charts"])
    assert 1 <= seen.pdf_pages <= 6  # three controls and five charts: a few A4 pages
    keep = os.environ.get("BROKER_REPORT_SCREENSHOT")
    if keep:
        Path(keep).write_bytes(seen.screenshot)


@needs_chromium
def test_an_empty_report_loads_with_its_no_data_panels(
    document: dict[str, Any], tmp_path: Path
) -> None:
    empty_store = samples.open_store(tmp_path / "empty.db")
    charts = chart_series(
        empty_store.conn, samples.SINCE, samples.UNTIL, None, zone_of=samples.ZONE_OF
    )
    empty_store.close()
    quiet = {**document, "charts": charts}
    path = tmp_path / "quiet.html"
    path.write_text(render_html(quiet), encoding="utf-8")
    seen = check_report_page(path, quiet)
    assert {chart["empty"] for chart in seen.probe["charts"]} == {"true"}


@needs_chromium
def test_the_browser_check_sees_a_page_that_fetches(tmp_path: Path) -> None:
    """The helper's own negative: a page that reaches out is reported, not passed."""
    path = tmp_path / "leaky.html"
    path.write_text(
        '<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
        '<svg data-chart="x"></svg></body></html>',
        encoding="utf-8",
    )
    seen = browser.load_page(path, probe="document.querySelectorAll('svg').length")
    assert seen.requests == ["http://127.0.0.1:9/x.png"]
    assert seen.failed and seen.probe == 1


@needs_chromium
def test_a_fetch_edited_into_the_page_is_blocked_by_its_policy(page: str, tmp_path: Path) -> None:
    path = tmp_path / "edited.html"
    link = '<link rel="stylesheet" href="https://example.invalid/x.css">'
    path.write_text(page.replace("</head>", link + "</head>"), encoding="utf-8")
    seen = browser.load_page(path, probe="1")
    blocked = [e for e in seen.console_errors if "Content Security Policy" in e]
    assert blocked and "The action has been blocked" in blocked[0]


def test_the_screenshot_in_the_docs_is_a_png() -> None:
    shot = REPO / "docs" / "report-screenshot.png"
    assert shot.read_bytes().startswith(b"\x89PNG")
    assert "report-screenshot.png" in (REPO / "docs" / "report.md").read_text(encoding="utf-8")


def test_every_template_ships_with_the_package() -> None:
    """An installed broker (wheel, Debian package) reads the page's files beside the module:
    each must be listed as package data, or the report fails only where it is installed."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(project["tool"]["setuptools"]["package-data"]["broker.report"])
    present = {f"templates/{p.name}" for p in (REPO / "broker" / "report" / "templates").iterdir()}
    assert listed == present
