"""The fault matrix on the local runtime: whatever the model service does, every task is counted exactly once,
nothing is answered twice, and the job ends complete or partial (bench/faults.py prints the same figures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.faults import SCENARIOS, Scenario, run_scenario


@pytest.mark.slow
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_every_task_is_counted_once_whatever_the_fault(tmp_path: Path, scenario: Scenario) -> None:
    figures = run_scenario(scenario, tmp_path)

    assert figures["status"] in ("complete", "partial")
    assert figures["exit"] == (0 if figures["status"] == "complete" else 3)
    assert figures["adds_up"] and figures["items_present"]
    assert figures["tasks_with_a_record"] == figures["tasks"] == 120
    assert figures["records_per_task"] == 1  # no task answered twice
    if "throttling" not in scenario.name and "5xx" not in scenario.name and "all" not in scenario.name:
        # without retryable faults, every call is one task's one answer (repairs and timeouts add their retries)
        assert figures["model_calls"] >= 120
    if scenario.inject is not None or scenario.aggregate_twice or scenario.name == "healthy":
        assert figures["model_calls"] == 120  # a crashed batch's retry calls only the unfinished tasks
        assert figures["status"] == "complete"
