"""A mean or median item has no confidence: report.md and report.html show its n, spread and range instead."""

from __future__ import annotations

from typing import Any

import pytest

from fanout_core.aggregation import aggregate
from fanout_core.job import parse_job
from fanout_core.report import report_markdown
from fanout_core.report_html import page_data


def numeric_result(strategy: str) -> dict[str, Any]:
    job = parse_job(
        {
            "job_id": "scores",
            "pattern": "voting",
            "votes": 5,
            "prompt": "Score 1-10: {text}",
            "items": [{"id": "a", "text": "a"}, {"id": "b", "text": "b"}],
            "output_schema": {"type": "object", "required": ["score"], "properties": {"score": {"type": "number"}}},
            "aggregate": {"strategy": strategy, "field": "score"},
        }
    )
    votes = {"a": [2, 3, 3, 4, 8], "b": [5, 5, 5, 5, 5]}
    records = [
        {"task_id": f"{item}#v{n}", "item_id": item, "slot": f"v{n}", "vote": n, "status": "ok", "output": {"score": v},
         "error": None, "model": "sim", "usage": {"input_tokens": 1, "output_tokens": 1}, "attempts": 1}
        for item, values in votes.items()
        for n, v in enumerate(values, start=1)
    ]  # fmt: skip
    return aggregate(job, list(job.items or []), records)


@pytest.mark.parametrize(("strategy", "spread"), [("mean", "stdev"), ("median", "iqr")])
def test_report_md_shows_n_spread_and_range_for_numbers_not_a_confidence(strategy: str, spread: str) -> None:
    # Given numeric votes aggregated by mean or median
    result = numeric_result(strategy)

    # When report.md is written
    report = report_markdown(result)

    # Then the items show n, the spread and the range of their votes, and nothing calls that a confidence
    listing = report.split("## Items", 1)[1]
    assert "| item | answer | n, spread, range | votes | tie | expected |" in listing
    row = next(line for line in listing.splitlines() if line.startswith("| a |"))
    assert f"n=5, {spread} " in row and "range 2–8" in row
    assert "| b |" in listing and "range 5–5" in listing
    assert "| confidence |" not in report and "low-confidence" not in report and "## Confidence" not in report


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_report_html_rows_carry_the_same_signal_and_no_confidence(strategy: str) -> None:
    result = numeric_result(strategy)

    data = page_data(result, result["items"])

    rows = {row["id"]: row for row in data["rows"]}
    assert rows["a"]["confidence"] is None
    assert rows["a"]["signal"].startswith("n=5, ") and rows["a"]["signal"].endswith("range 2–8")
    assert not any(data["histogram"])  # no confidence histogram for numbers: the page hides it


def test_a_voting_item_keeps_its_confidence() -> None:
    result = {
        "job_id": "labels",
        "pattern": "voting",
        "strategy": "majority",
        "status": "complete",
        "counts": {"items": 1, "tasks": 3, "ok": 3, "invalid": 0, "failed": 0},
        "items": [{"id": "x", "answer": "yes", "confidence": 0.67, "votes": {"yes": 2, "no": 1}}],
        "usage": {"model_calls": 3, "input_tokens": 1, "output_tokens": 1, "estimated_cost_usd": 0.0},
    }
    assert "| x | yes | 0.67 |" in report_markdown(result)
    assert page_data(result, result["items"])["rows"][0]["signal"] == ""
