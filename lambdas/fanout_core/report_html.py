"""report.html: one self-contained page of a result (no CDN, no fonts, no network), next to report.md.

The page holds its data as JSON in a ``<script type="application/json">`` block (``<`` escaped, so an item
cannot close it) and draws everything with inline script through ``textContent``: an item's text is never
parsed as HTML. A Content-Security-Policy forbids every fetch, so even a hostile item cannot make the page
reach the network. Sections: summary, usage and cost, confidence histogram, calibration (when items carry
``expected``), every item in a table that sorts and filters (tied and low-confidence first), failures.
"""

from __future__ import annotations

import functools
import html
import json
from pathlib import Path
from typing import Any

LOW_CONFIDENCE = 0.6
BINS = 10
CELL_CHARS = 400  # what one table cell shows of a long answer or section output
MAX_FAILURES = 2000

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)


def report_html(result: dict[str, Any]) -> str:
    data = page_data(result)
    # "<" escaped: nothing in the data can end the script block, whatever an item holds
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")
    title = html.escape(f"fanout report: {result.get('job_id', '')}")
    return _page().replace("%TITLE%", title).replace("%CSP%", CSP).replace("%DATA%", payload)


def page_data(result: dict[str, Any]) -> dict[str, Any]:
    """What the page shows, computed here so the script only lays it out."""
    items = result.get("items", [])
    rows = [_row(index, item) for index, item in enumerate(items)]
    scored = [(r["confidence"], r["correct"]) for r in rows if r["confidence"] is not None]
    histogram = [0] * BINS
    for confidence, _ in scored:
        histogram[min(BINS - 1, max(0, int(confidence * BINS)))] += 1
    calibration = None
    judged = [(c, ok) for c, ok in scored if ok is not None]
    if judged:
        calibration = []
        for index in range(BINS):
            members = [(c, ok) for c, ok in judged if min(BINS - 1, max(0, int(c * BINS))) == index]
            if members:
                calibration.append(
                    {
                        "bin": index,
                        "count": len(members),
                        "confidence": round(sum(c for c, _ in members) / len(members), 4),
                        "accuracy": round(sum(1 for _, ok in members if ok) / len(members), 4),
                    }
                )
    failures = [
        {"item": item.get("id"), "task": e.get("slot"), "status": e.get("status"), "reason": _short(e.get("error"))}
        for item in items
        for e in item.get("errors", []) or []
    ]
    return {
        "job_id": result.get("job_id"),
        "pattern": result.get("pattern"),
        "strategy": result.get("strategy"),
        "status": result.get("status"),
        "synthetic": bool(result.get("synthetic")),
        "counts": result.get("counts", {}),
        "usage": result.get("usage", {}),
        "evaluation": {k: v for k, v in (result.get("evaluation") or {}).items() if not isinstance(v, list | dict)},
        "low": LOW_CONFIDENCE,
        "histogram": histogram,
        "calibration": calibration,
        "rows": rows,
        "failures": failures[:MAX_FAILURES],
        "failures_total": len(failures),
        "synthesis": _short((result.get("synthesis") or {}).get("text"), 4000),
    }


def _row(index: int, item: dict[str, Any]) -> dict[str, Any]:
    confidence = item.get("confidence")
    if "sections" in item:
        answer = "; ".join(f"{name}: {_short(out, 120)}" for name, out in (item.get("sections") or {}).items())
    else:
        answer = _short(item.get("answer"))
    return {
        "n": index,
        "id": str(item.get("id", "")),
        "answer": _short(answer),
        "confidence": float(confidence) if isinstance(confidence, int | float) else None,
        "votes": ", ".join(f"{k}: {v}" for k, v in (item.get("votes") or {}).items()),
        "tie": bool(item.get("tie")),
        "status": item.get("status", ""),
        "expected": _short(item.get("expected")) if "expected" in item else "",
        "correct": item.get("correct") if isinstance(item.get("correct"), bool) else None,
    }


def _short(value: Any, limit: int = CELL_CHARS) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _page() -> str:
    # the page's markup, style and script, kept in a file of their own (packaged with the module)
    return (Path(__file__).parent / "report_page.html").read_text(encoding="utf-8")
