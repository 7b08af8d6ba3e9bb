"""make bench (k) runs the real Plan, batches and Aggregate, each in a clean process, and compares each peak with
the memory infra/functions.py gives the function."""

from __future__ import annotations

import json
from pathlib import Path

from bench import scale


def test_row_k_measures_plan_and_aggregate_against_their_function_memory(tmp_path: Path) -> None:
    # Given the row's job at 1,000 tasks; When row (k) runs it (Aggregate must count every task ok, or the row fails)
    figures = scale.functions_row(1_000, 1, tmp_path)

    # Then each step's peak and time are measured, next to the memory the stack gives its function
    assert set(figures) == {"Plan", "Aggregate"}
    for measured in figures.values():
        assert 0 < measured["peak_mb"] < measured["memory_mb"]
        assert measured["seconds"] > 0


def test_row_k_at_the_byte_caps_builds_items_of_the_given_size_up_to_the_total(tmp_path: Path) -> None:
    # Given items of 20,000 bytes up to 200,000 bytes in all (the shape of max_item_bytes and max_job_bytes)
    items = scale.big_items(20_000, 200_000)
    assert {len(json.dumps(item).encode()) for item in items} == {20_000}
    assert len(items) * 20_001 <= 200_000

    # When row (k) runs at them, Then Plan plans every item's votes under those caps and the peaks are measured
    figures = scale.functions_row(1_000, 1, tmp_path, item_bytes=20_000, job_bytes=200_000)
    for measured in figures.values():
        assert 0 < measured["peak_mb"] < measured["memory_mb"]
