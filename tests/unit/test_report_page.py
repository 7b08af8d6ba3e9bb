"""report.html's data and markup: one-pass placeholders, script-safe JSON, a table bounded whatever the job's size."""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from html.parser import HTMLParser
from typing import Any

import pytest

from fanout_core import report_html as page_module
from fanout_core.report_html import page_data, report_html


def result_of(items: list[dict[str, Any]], job_id: str = "page-check") -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "strategy": "majority",
        "status": "complete",
        "counts": {"items": len(items), "tasks": 3 * len(items), "ok": 3 * len(items), "invalid": 0, "failed": 0},
        "items": items,
        "usage": {"model_calls": 3, "input_tokens": 1, "output_tokens": 1, "estimated_cost_usd": 0.0},
    }


def data_block(page: str) -> str:
    return page.split('id="fanout-data">', 1)[1].split("</script>", 1)[0]


class _Head(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.title, self.csp, self._in_title = "", "", False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self._in_title = tag == "title"
        if tag == "meta" and a.get("http-equiv") == "Content-Security-Policy":
            self.csp = a.get("content") or ""

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def test_a_value_holding_a_placeholder_is_not_substituted_again() -> None:
    # Given a job_id and an answer that spell the page's placeholders
    job_id = "x%DATA%y%CSP%"
    items = [{"id": "a", "answer": "%TITLE% and %DATA%", "confidence": 1.0, "votes": {"%CSP%": 3}}]

    # When the page is made
    page = report_html(result_of(items, job_id=job_id))

    # Then the title is the job_id as written, the policy is the policy, and the data holds the answer as written
    head = _Head()
    head.feed(page)
    assert head.title == f"fanout report: {job_id}"
    assert head.csp == page_module.CSP
    data = json.loads(data_block(page))
    assert data["job_id"] == job_id
    assert data["rows"][0]["answer"] == "%TITLE% and %DATA%" and data["rows"][0]["votes"] == "%CSP%: 3"
    assert page.count('id="fanout-data"') == 1


def test_the_data_block_cannot_end_the_script_or_its_line() -> None:
    hostile = "</script><!-- <script>alert(1)</script> &amp; \u2028 \u2029 >"
    page = report_html(result_of([{"id": hostile, "answer": hostile, "confidence": 0.5}], job_id=hostile))

    block = data_block(page)
    # nothing the HTML parser or an older JavaScript parser reads specially is left raw in the block
    for raw in ("<", ">", "&", "\u2028", "\u2029"):
        assert raw not in block
    # and the values come back unchanged
    data = json.loads(block)
    assert data["job_id"] == hostile and data["rows"][0]["id"] == hostile and data["rows"][0]["answer"] == hostile


def items_of(count: int) -> Iterator[dict[str, Any]]:
    for n in range(count):
        confidence = (n % 10) / 10 + 0.05
        yield {
            "id": f"item-{n:06d}",
            "answer": "yes" if n % 3 else "no " * 40,
            "confidence": confidence,
            "votes": {"yes": 2, "no": 1},
            "tie": n % 97 == 0,
            "status": "ok",
            "expected": "yes",
            "correct": n % 3 != 0,
            **({"errors": [{"slot": "v1", "status": "failed", "error": "boom"}]} if n % 50 == 0 else {}),
        }


def test_the_table_keeps_the_most_doubtful_rows_and_the_figures_count_every_item(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_module, "MAX_ROWS", 25)
    monkeypatch.setattr(page_module, "MAX_FAILURES", 4)
    every = list(items_of(400))

    # When the page data is made from a stream of 400 items
    data = page_data(result_of([]), iter(every))

    # Then the table holds the 25 rows that come first in the table's order, in input order
    def order(item: dict[str, Any]) -> tuple[int, float, int]:
        n = every.index(item)
        if item["tie"] or item["confidence"] < page_module.LOW_CONFIDENCE:
            return (0, item["confidence"], n)
        return (1, 0.0, n)

    wanted = sorted(sorted(every, key=order)[:25], key=every.index)
    assert [r["id"] for r in data["rows"]] == [i["id"] for i in wanted]
    assert data["rows_total"] == 400
    # and the histogram, calibration and failure count are over all 400
    assert sum(data["histogram"]) == 400
    assert sum(b["count"] for b in data["calibration"]) == 400
    assert len(data["failures"]) == 4 and data["failures_total"] == 8


def peak_bytes(count: int) -> int:
    tracemalloc.start()
    try:
        report_html(result_of([]), items_of(count))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_the_page_of_a_large_stream_needs_no_more_memory_than_of_a_smaller_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(page_module, "MAX_ROWS", 200)
    report_html(result_of([]), items_of(10))  # the page's template is read once, outside what is measured

    # When pages are made from a stream of 2,000 and of 8,000 items
    small, large = peak_bytes(2_000), peak_bytes(8_000)

    # Then four times the items take nowhere near four times the memory (every row held would)
    assert large < 1.5 * small, (small, large)
