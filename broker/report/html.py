"""The report as one self-contained HTML page: controls, evidence, attention items, charts.

Why one file with nothing to fetch: an auditor opens it from a mail or a share, offline, and
prints it. The page carries its own stylesheet, its charts as inline SVG (figures.py) and no
script; a Content-Security-Policy meta (`default-src 'none'`) makes the browser refuse any
fetch a future edit might add, so the browser test would see it.

Why the document rides along: the page embeds the signed JSON document it was drawn from in
`<script type="application/json" id="broker-report">`, so `broker report verify` can check its
signature from the page alone, then draw the page again from it and compare (rendering is
deterministic, so any edit to what the page shows is caught). Every `<`, `>` and `&` in it is written
as a JSON escape, so no value (a reason, an account name) can close the element or open
markup; JSON parsing gives the same document back.

Jinja2 renders with autoescape on and undefined names as errors. Status badges carry a word
and a symbol, not only a colour, so a grey printout still reads.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import jinja2
from markupsafe import Markup
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from broker.core.errors import UsageError
from broker.report.document import SCRIPT_ID
from broker.report.figures import draw_charts

SCHEMA = "broker-report/1"
TEMPLATES = Path(__file__).with_name("templates")
PAGE = "report.html.j2"

# Status -> (CSS class, symbol, word): the badge never depends on colour alone.
BADGES = {
    "ok": ("badge-ok", "\u2713", "OK"),
    "attention": ("badge-attention", "!", "ATTENTION"),
    "not applicable": ("badge-na", "\u2013", "NOT APPLICABLE"),
}


class _Shape(BaseModel):
    """What the page reads of the document; other fields are kept in the embedded JSON only."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class Evidence(_Shape):
    label: str
    value: int | float | str
    command: str


class Attention(_Shape):
    item: str
    command: str


class Control(_Shape):
    id: str
    title: str
    enforces: str
    status: Literal["ok", "attention", "not applicable"]
    evidence: list[Evidence]
    attention: list[Attention]


class Period(_Shape):
    since: str
    until: str


class AuditHead(_Shape):
    seq: int
    hash: str


class Signature(_Shape):
    alg: str
    key_id: str


class Document(_Shape):
    schema_: Literal["broker-report/1"] = Field(alias="schema")
    generated_at: str
    broker: str
    period: Period
    zone: str | None
    audit_head: AuditHead
    controls: list[Control]
    signature: Signature

    @classmethod
    def read(cls, document: Any) -> Document:
        """Check the document's shape; one UsageError naming the first wrong field."""
        if not isinstance(document, dict):
            raise UsageError("the report document is malformed: it is not a JSON object")
        try:
            return cls.model_validate(document)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise UsageError(
                f"the report document is malformed: {where or 'document'}: {first['msg']}",
                fix="render a document written by `broker report`, unedited",
            ) from None


def embedded_json(document: dict[str, Any]) -> Markup:
    """The document as JSON safe inside a `<script>` element: `<`, `>` and `&` escaped."""
    try:
        text = json.dumps(document, ensure_ascii=False, sort_keys=True, allow_nan=False)
    except ValueError:  # NaN or Infinity: Python's json reads them, no other reader does
        raise UsageError(
            "the report document is malformed: it holds NaN or Infinity, which is not JSON",
            fix="render a document written by `broker report`, unedited",
        ) from None
    safe = text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")
    return Markup(safe)  # noqa: S704 - no markup character is left in it (escaped just above)


def render_html(document: dict[str, Any]) -> str:
    """The whole page for a report document (the shape `broker report` writes)."""
    shape = Document.read(document)
    embedded = embedded_json(document)
    charts = draw_charts(document.get("charts"))
    page = _environment().get_template(PAGE)
    return page.render(
        doc=shape,
        zone=shape.zone if shape.zone is not None else "all zones",
        badges=BADGES,
        charts=[(c, Markup(c.svg)) for c in charts],  # noqa: S704 - matplotlib's, text escaped
        embedded=embedded,
        element_id=SCRIPT_ID,
        stylesheet=Markup((TEMPLATES / "report.css").read_text(encoding="utf-8")),  # noqa: S704
    )


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        undefined=jinja2.StrictUndefined,
        autoescape=True,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
