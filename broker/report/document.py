"""The report as a signed JSON document: assembly, canonical form, signature, extraction.

Pure (keys are handed in). Why a canonical form: the signature must survive the document
being saved, mailed, embedded in an HTML page and parsed again by a GRC tool, so it is
computed over the document re-serialised one fixed way (sorted keys, compact, ASCII),
never over the bytes of whichever file carries it. Why the audit head inside: the figures
are only as good as the chain they came from, so `broker report verify` checks that the
chain still holds that head, unchanged, as well as the signature.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from broker.audit.checkpoint import SigningKey, key_id
from broker.core import strictjson
from broker.core.errors import UsageError
from broker.report.catalogue import Control
from broker.report.evidence import Result

SCHEMA = "broker-report/1"
SCRIPT_ID = "broker-report"
MAX_DOCUMENT = 8 * 1024 * 1024  # a report file larger than this is not one of ours


def control_entry(control: Control, result: Result) -> dict[str, Any]:
    """One control as the JSON schema (docs/report.md) lays it out."""
    return {
        "id": control.id,
        "title": control.title,
        "enforces": control.enforces,
        "status": result.status,
        "evidence": result.evidence,
        "attention": result.attention,
        "details": result.details,
    }


def assemble(
    *,
    generated_at: str,
    broker: str,
    since: str,
    until: str,
    zone: str | None,
    head: tuple[int, str],
    controls: Sequence[dict[str, Any]],
    charts: dict[str, Any],
) -> dict[str, Any]:
    """The unsigned document."""
    return {
        "schema": SCHEMA,
        "generated_at": generated_at,
        "broker": broker,
        "period": {"since": since, "until": until},
        "zone": zone,
        "audit_head": {"seq": head[0], "hash": head[1]},
        "controls": list(controls),
        "charts": charts,
    }


def canonical(document: dict[str, Any]) -> bytes:
    """The signed bytes: the document without `signature`, sorted, compact, ASCII."""
    body = {k: v for k, v in document.items() if k != "signature"}
    return json.dumps(
        body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def sign(document: dict[str, Any], key: SigningKey) -> dict[str, Any]:
    """The document with its `signature` member (Ed25519 over the canonical form)."""
    value = base64.b64encode(key.private.sign(canonical(document))).decode("ascii")
    return {**document, "signature": {"alg": "ed25519", "key_id": key.key_id, "value": value}}


def signature_problem(document: dict[str, Any], public: Ed25519PublicKey) -> str | None:
    """Why the signature does not hold (one line), or None when it does."""
    sig = document.get("signature")
    if not isinstance(sig, dict) or sig.get("alg") != "ed25519":
        return "the report carries no Ed25519 signature"
    if sig.get("key_id") != key_id(public):
        return f"the report is signed by key {str(sig.get('key_id'))[:32]!r}, not this broker's key {key_id(public)}"
    try:
        raw = base64.b64decode(str(sig.get("value")), validate=True)
        public.verify(raw, canonical(document))
    except (ValueError, InvalidSignature):
        return "the signature does not match the report: it was altered after signing"
    return None


def stated_head(document: dict[str, Any]) -> tuple[int, str]:
    """The (seq, hash) the report says it was computed from; UsageError when malformed."""
    head = document.get("audit_head")
    if not isinstance(head, dict):
        raise UsageError("the report has no audit_head")
    seq, digest = head.get("seq"), head.get("hash")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or not isinstance(digest, str):
        raise UsageError("the report's audit_head is not a seq and a hash")
    return seq, digest


_OPENING = f'<script type="application/json" id="{SCRIPT_ID}">'


def embedded(page: str, source: str) -> str:
    """The JSON text a page this broker rendered embeds: exactly one element of that id, in
    the exact form the renderer writes (found with str.find, linear in the page). Whether the
    rest of the page is what the broker draws from it is `broker report verify`'s other check
    (the page drawn again must be the file, byte for byte)."""
    start = page.find(_OPENING)
    if start < 0 or page.count(_OPENING) != 1:
        raise UsageError(
            f"{source} is neither a JSON report nor an HTML report with exactly one "
            f"{_OPENING} element"
        )
    body = page[start + len(_OPENING) :]
    end = body.find("</script>")
    if end < 0:
        raise UsageError(f"{source}: the embedded report is not closed (a cut file?)")
    return body[:end]


def parse(text: str, source: str) -> dict[str, Any]:
    """A report from a JSON file or from the HTML page that embeds it (by its script id).

    Strict: duplicate keys, NaN and anything that is not a `broker-report/1` object with
    a signature are usage errors (exit 2: not a report file), not verification failures.
    """
    body = text
    if not text.lstrip().startswith("{"):
        body = embedded(text, source)
    try:
        document = strictjson.loads(body)
    except (ValueError, RecursionError) as exc:
        raise UsageError(f"{source} is not valid JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA:
        raise UsageError(f"{source} is not a {SCHEMA} document")
    if "signature" not in document:
        raise UsageError(f"{source} has no signature member")
    stated_head(document)
    return document
