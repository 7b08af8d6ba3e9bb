"""report.md in time linear in the items it reports on."""

from __future__ import annotations

import time
from typing import Any

from fanout_core.report import report_markdown


def test_report_md_is_linear_in_items() -> None:
    # Given results of 20,000 and 80,000 items, most of them confident (the case that was quadratic)
    def result_of(n: int) -> dict[str, Any]:
        items = [{"id": f"i{k}", "answer": "yes", "confidence": 1.0 if k % 50 else 0.2, "votes": {"yes": 5}} for k in range(n)]
        counts = {"items": n, "tasks": 5 * n, "ok": 5 * n, "invalid": 0, "failed": 0}
        usage = {"model_calls": 5 * n, "input_tokens": 0, "output_tokens": 0}
        return {"job_id": "j", "pattern": "voting", "status": "complete", "counts": counts, "items": items, "usage": usage}

    def seconds(n: int) -> float:
        result = result_of(n)
        started = time.perf_counter()
        report_markdown(result)
        return time.perf_counter() - started

    small, large = min(seconds(20_000) for _ in range(3)), min(seconds(80_000) for _ in range(3))

    # Then four times the items take about four times as long (quadratic would be sixteen), and little of it
    assert large < 8 * small + 0.05
    assert large < 2.0
