"""make bench (k) runs the real Plan, batches and Aggregate, each in a clean process, and compares each peak with
the memory infra/functions.py gives the function."""

from __future__ import annotations

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
