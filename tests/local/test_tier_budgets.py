"""limits.max_cost_usd at the tier the calls are bought at: flex and priority calls are held and counted at their
tier's rates, as their usage is priced, so a budget stops where the tier's prices say."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import main
from fanout_core.tiers import tier_factor

SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["positive", "neutral", "negative"]}}}
LABELS = ("positive", "neutral", "negative")
# the simulator is free: a job price for it gives the budget something to count
PRICES = {"sim": {"input_per_million": 1.0, "output_per_million": 4.0}}
MODEL = "sim:latency_ms=2"


def job(job_id: str, items: int = 40, votes: int = 3, **limits: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": votes,
        "model": MODEL,
        "prompt": "Classify the sentiment of this ticket: {text}",
        "inference": {"temperature": 0.8, "max_tokens": 16},
        "items": [{"id": f"t-{n}", "text": f"ticket number {n}", "expected": LABELS[n % 3]} for n in range(items)],
        "output_schema": SCHEMA,
        "aggregate": {"strategy": "majority", "field": "label"},
        "prices": {MODEL: PRICES["sim"]},
        "limits": {"max_concurrency": 4, **limits},
    }


def run(tmp_path: Path, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    path = tmp_path / f"{body['job_id']}.json"
    path.write_text(json.dumps(body))
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    result: dict[str, Any] = json.loads((tmp_path / "out" / body["job_id"] / "result.json").read_text())
    return code, result


@pytest.mark.slow
def test_a_flex_budget_that_fits_at_flex_rates_answers_every_task(tmp_path: Path) -> None:
    # Given what the job costs at flex with no budget, and a budget half as large again: under on-demand's cost
    _, free = run(tmp_path, job("flex-free", tier="flex"))
    flex_cost = free["usage"]["estimated_cost_usd"]
    factor = tier_factor(MODEL, "flex")
    assert factor is not None and flex_cost / factor > 1.5 * flex_cost
    limit = 1.5 * flex_cost

    # When the job runs on-demand and at flex with that budget
    od_code, on_demand = run(tmp_path, job("flex-od", tier="on_demand", max_cost_usd=limit))
    code, flex = run(tmp_path, job("flex-budget", tier="flex", max_cost_usd=limit))

    # Then on-demand stops at the budget, and flex, priced at its own rates, answers every task within it
    assert od_code == 3 and on_demand["reason"] == "budget" and on_demand["budget"]["tasks_not_called"] > 0
    assert code == 0 and flex["status"] == "complete" and flex["counts"]["ok"] == 120
    assert flex["budget"]["tasks_not_called"] == 0
    assert flex["budget"]["spent_usd"] == pytest.approx(flex["usage"]["estimated_cost_usd"], rel=1e-3)
    assert flex["usage"]["estimated_cost_usd"] <= limit
    # and the plan shows flex's estimate next to on-demand's
    assert flex["tier"]["estimated_cost_usd"] == pytest.approx(flex["tier"]["on_demand_cost_usd"] * factor)


@pytest.mark.slow
def test_a_priority_budget_stops_where_priority_rates_say(tmp_path: Path) -> None:
    # Given a priority job with a budget for about half of what it costs at priority
    _, free = run(tmp_path, job("prio-free", tier="priority"))
    limit = free["usage"]["estimated_cost_usd"] / 2

    code, result = run(tmp_path, job("prio-budget", tier="priority", max_cost_usd=limit))

    # Then the calls stop at the budget counted at priority rates: what the usage costs at priority is within it
    assert code == 3 and result["status"] == "partial" and result["reason"] == "budget"
    assert set(result["usage"]["by_model"]) == {f"{MODEL}@priority"}
    assert result["usage"]["estimated_cost_usd"] <= limit
    assert result["budget"]["spent_usd"] == pytest.approx(result["usage"]["estimated_cost_usd"], rel=1e-3)
    # and every item is there, the tasks not called saying why
    assert [i["id"] for i in result["items"]] == [f"t-{n}" for n in range(40)]
    stopped = result["budget"]["tasks_not_called"]
    assert stopped > 0 and result["counts"]["ok"] + result["counts"]["failed"] == 120
    assert result["counts"]["failed"] == stopped
