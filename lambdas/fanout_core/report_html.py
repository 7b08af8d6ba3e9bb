"""report.html: one self-contained page of a result (no CDN, no fonts, no network), next to report.md.

The page holds its data as JSON in a ``<script type="application/json">`` block (``<`` escaped, so an item
cannot close it) and draws everything with inline script through ``textContent``: an item's text is never
parsed as HTML. A Content-Security-Policy forbids every fetch, so even a hostile item cannot make the page
reach the network. Sections: summary, usage and cost, confidence histogram, calibration (when items carry
``expected``), every item in a table that sorts and filters (tied and low-confidence first), failures.
"""

from __future__ import annotations

import functools
import heapq
import html
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from fanout_core.contracts import Result
from fanout_core.report import number_signal

LOW_CONFIDENCE = 0.6
BINS = 10
CELL_CHARS = 400  # what one table cell shows of a long answer or section output
MAX_FAILURES = 2000
# the table lists at most this many items (the most doubtful first); every item is in results.jsonl
MAX_ROWS = 10_000

CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:; "
    "base-uri 'none'; form-action 'none'"
)


def report_html(result: Result, items: Iterable[dict[str, Any]] | None = None) -> str:
    """The page of ``result``; ``items`` (read once, e.g. streamed from results.jsonl) stands for ``result["items"]``."""
    data = page_data(result, result.get("items", []) if items is None else items)
    title = html.escape(f"fanout report: {result.get('job_id', '')}")
    return fill(_page(), {"TITLE": title, "CSP": _attribute(CSP), "DATA": script_json(data)})


_PLACEHOLDER = re.compile(r"%(TITLE|CSP|DATA)%")
# inside <script> the HTML parser ends the block at "</script" and treats "<!--" specially, whatever JSON says;
# U+2028/U+2029 end a line in older JavaScript parsers. Each appears only inside a JSON string, where \uXXXX is equal.
_SCRIPT_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def fill(page: str, values: dict[str, str]) -> str:
    """Every placeholder replaced in one pass: a value that holds a placeholder's name is never substituted again."""
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], page)


def script_json(data: Any) -> str:
    """JSON safe to place inside a <script> block: nothing in it can end the block or the script's line."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return re.sub("[<>&\u2028\u2029]", lambda match: _SCRIPT_UNSAFE[match.group(0)], text)


def _attribute(value: str) -> str:
    # a double-quoted attribute value: & < > and " escaped (the CSP's single quotes stay as they are)
    return html.escape(value, quote=False).replace('"', "&quot;")


def page_data(result: Result, items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """What the page shows, computed here so the script only lays it out.

    ``items`` is read once and never held: the histogram, calibration and failures are tallied as it goes,
    and the table keeps the MAX_ROWS rows that come first in its order (tied and low confidence first),
    so the page's memory is bounded whatever the job's size.
    """
    tally = _Tally()
    rows = heapq.nsmallest(MAX_ROWS, (tally.add(index, item) for index, item in enumerate(items)), key=_table_order)
    rows.sort(key=lambda row: row["n"])
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
        "histogram": tally.histogram,
        "calibration": tally.calibration(),
        "rows": rows,
        "rows_total": tally.items,
        "failures": tally.failures,
        "failures_total": tally.failures_total,
        "synthesis": _short((result.get("synthesis") or {}).get("text"), 4000),
    }


def _table_order(row: dict[str, Any]) -> tuple[int, float, int]:
    """The table's first order (the page's script sorts the same way): tied and low confidence first, lowest first."""
    confidence = row["confidence"]
    if row["tie"] or (confidence is not None and confidence < LOW_CONFIDENCE):
        return (0, 2.0 if confidence is None else confidence, row["n"])
    return (1, 0.0, row["n"])


class _Tally:
    """The figures over every item, kept in constant memory (failures up to MAX_FAILURES)."""

    def __init__(self) -> None:
        self.items = 0
        self.histogram = [0] * BINS
        self.bins: list[list[float]] = [[0, 0.0, 0] for _ in range(BINS)]  # judged count, confidence sum, correct
        self.failures: list[dict[str, Any]] = []
        self.failures_total = 0

    def add(self, index: int, item: dict[str, Any]) -> dict[str, Any]:
        row = _row(index, item)
        self.items += 1
        confidence = row["confidence"]
        if confidence is not None:
            at = min(BINS - 1, max(0, int(confidence * BINS)))
            self.histogram[at] += 1
            if row["correct"] is not None:
                members = self.bins[at]
                members[0] += 1
                members[1] += confidence
                members[2] += 1 if row["correct"] else 0
        for error in item.get("errors", []) or []:
            self.failures_total += 1
            if len(self.failures) < MAX_FAILURES:
                slot, status = error.get("slot"), error.get("status")
                self.failures.append({"item": row["id"], "task": slot, "status": status, "reason": _short(error.get("error"))})
        return row

    def calibration(self) -> list[dict[str, Any]] | None:
        if not any(count for count, _, _ in self.bins):
            return None
        return [
            {"bin": index, "count": int(count), "confidence": round(total / count, 4), "accuracy": round(correct / count, 4)}
            for index, (count, total, correct) in enumerate(self.bins)
            if count
        ]


def _row(index: int, item: dict[str, Any]) -> dict[str, Any]:
    confidence = item.get("confidence")
    if "sections" in item:
        answer = "; ".join(f"{name}: {_short(out, 120)}" for name, out in (item.get("sections") or {}).items())
    else:
        answer = _short(item.get("answer"))
    return {
        "n": index,
        "id": _short(str(item.get("id", ""))),
        "answer": _short(answer),
        "confidence": float(confidence) if isinstance(confidence, int | float) else None,
        # a mean or median has no confidence: n, spread and range instead (report.md shows the same)
        "signal": number_signal(item) or "",
        "votes": ", ".join(f"{k}: {v}" for k, v in (item.get("votes") or {}).items()) + _escalated(item),
        "tie": bool(item.get("tie")),
        "status": item.get("status", ""),
        "expected": _short(item.get("expected")) if "expected" in item else "",
        "correct": item.get("correct") if isinstance(item.get("correct"), bool) else None,
    }


def _escalated(item: dict[str, Any]) -> str:
    """An escalated item's votes cell says so: its first-pass answer, and the second pass's calls and cost."""
    detail = item.get("escalation") if item.get("escalated") else None
    if not isinstance(detail, dict):
        return ""
    before = detail.get("first_pass") or {}
    cost = detail.get("estimated_cost_usd")
    shown = "cost unknown" if cost is None else f"${cost:.4f}"
    return (
        f" (escalated from {_short(before.get('answer'), 60)} at {before.get('confidence', 0):.2f}: "
        f"{detail.get('model_calls', 0)} calls, {shown})"
    )


def _short(value: Any, limit: int = CELL_CHARS) -> str:
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@functools.cache
def _page() -> str:
    # the page's markup, style and script, kept in a file of their own (packaged with the module)
    return (Path(__file__).parent / "report_page.html").read_text(encoding="utf-8")
