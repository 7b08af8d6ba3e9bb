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


# -- tier batch: the batch inference jobs' part of the budget --------------------------------------------------


RESULTS_BUCKET = "fanout-local-results"


def _batch_rates() -> tuple[float, float]:
    factor = tier_factor(MODEL, "batch")
    assert factor is not None and factor < 1
    return PRICES["sim"]["input_per_million"] * factor, PRICES["sim"]["output_per_million"] * factor


def _most(line: bytes, max_tokens: int) -> float:
    """The most a record of a batch job can cost at the batch price: one input token a byte, max_tokens of output."""
    rate_in, rate_out = _batch_rates()
    return (len(line) * rate_in + max_tokens * rate_out) / 1e6


def _run_local(runtime: Any, body: dict[str, Any], name: str) -> dict[str, Any]:
    import boto3

    from fanout.runtime import REGION

    execution = runtime.wait(runtime.start(body, name))
    assert execution.status == "SUCCEEDED"
    s3 = boto3.client("s3", region_name=REGION)
    result: dict[str, Any] = json.loads(
        s3.get_object(Bucket=RESULTS_BUCKET, Key=f"results/{body['job_id']}/result.json")["Body"].read()
    )
    return result


def _input_lines(runtime: Any, created: dict[str, Any]) -> list[bytes]:
    import boto3

    from fanout.runtime import REGION

    bucket, key = created["inputDataConfig"]["s3InputDataConfig"]["s3Uri"][5:].split("/", 1)
    body = boto3.client("s3", region_name=REGION).get_object(Bucket=bucket, Key=key)["Body"].read()
    return [line + b"\n" for line in body.splitlines()]


def _pacing_reports(job_id: str) -> dict[str, dict[str, Any]]:
    import boto3

    from fanout.runtime import REGION

    s3 = boto3.client("s3", region_name=REGION)
    listed = s3.list_objects_v2(Bucket=RESULTS_BUCKET, Prefix=f"runs/{job_id}/pacing/").get("Contents", [])
    return {
        o["Key"].rsplit("/", 1)[1]: json.loads(s3.get_object(Bucket=RESULTS_BUCKET, Key=o["Key"])["Body"].read()) for o in listed
    }


@pytest.mark.slow
def test_a_batch_budget_puts_only_the_tasks_it_allows_in_jobs_and_a_rerun_asks_the_rest() -> None:
    from fanout.runtime import local_aws

    max_tokens = job("x")["inference"]["max_tokens"]
    with local_aws() as runtime:
        # Given what each record of the job's batch job can cost at most, from an unbudgeted run of it
        _run_local(runtime, job("batch-free", items=60, tier="batch"), "batch-free-1")
        assert runtime.batch_jobs is not None
        (free,) = runtime.batch_jobs.created
        mosts = [_most(line, max_tokens) for line in _input_lines(runtime, free)]
        assert len(mosts) == 180
        # and a budget that holds the first 130 records at their most
        limit = sum(mosts[:130])

        # When the job runs at tier batch with that budget, then again with a larger one
        body = job("batch-budget", items=60, tier="batch", max_cost_usd=limit)
        result = _run_local(runtime, body, "batch-budget-1")
        (made,) = runtime.batch_jobs.created[1:]
        records = _input_lines(runtime, made)
        again = _run_local(runtime, {**body, "limits": {**body["limits"], "max_cost_usd": 1.0}}, "batch-budget-2")
        after = runtime.batch_jobs.created[2:]

    # Then the batch job holds exactly the records the budget allows at the batch price, no more
    assert len(records) == 130
    assert sum(_most(line, max_tokens) for line in records) <= limit
    # and every task left out is a failed record that says why, with every item accounted for
    assert result["status"] == "partial" and result["reason"] == "budget"
    assert result["counts"]["ok"] == 130 and result["counts"]["failed"] == 50
    assert result["budget"]["tasks_not_called"] == 50 and result["budget"]["spent_usd"] <= limit
    assert result["usage"]["estimated_cost_usd"] <= limit
    stopped = [e for i in result["items"] for e in i.get("errors", []) if "limits.max_cost_usd" in (e["error"] or "")]
    assert len(stopped) == 50
    assert [i["id"] for i in result["items"]] == [f"t-{n}" for n in range(60)]
    # and the re-run with a larger budget asks exactly those (on-demand: under a batch job's minimum records)
    assert after == []
    assert again["status"] == "complete" and again["counts"]["ok"] == 180
    assert again["usage"]["model_calls"] == 50 and set(again["usage"]["by_model"]) == {MODEL}


@pytest.mark.slow
def test_the_on_demand_fallback_of_a_batch_job_gets_only_what_the_jobs_left(monkeypatch: pytest.MonkeyPatch) -> None:
    from fanout import local_batch_jobs
    from fanout.runtime import local_aws

    # Given a batch job in which some records fail, with a budget that holds every record at its most
    monkeypatch.setenv(local_batch_jobs.RECORD_ERRORS_SETTING, "0.1")
    max_tokens = job("x")["inference"]["max_tokens"]
    with local_aws() as runtime:
        _run_local(runtime, job("left-free", items=60, tier="batch"), "left-free-1")
        assert runtime.batch_jobs is not None
        limit = 1.2 * sum(_most(line, max_tokens) for line in _input_lines(runtime, runtime.batch_jobs.created[0]))

        result = _run_local(runtime, job("left-budget", items=60, tier="batch", max_cost_usd=limit), "left-budget-1")
        reports = _pacing_reports("left-budget")

    # Then the jobs' part of the budget is what their records cost once joined
    jobs_part = reports.pop("inference.json")
    assert jobs_part["batch_jobs"]["settled"] is True
    batch_cost = jobs_part["budget"]["spent_usd"]
    by_model = result["usage"]["by_model"]
    rate_in, rate_out = _batch_rates()
    billed = by_model[f"{MODEL}@batch"]
    assert batch_cost == pytest.approx((billed["input_tokens"] * rate_in + billed["output_tokens"] * rate_out) / 1e6)
    # and the failed records were called on-demand with only what the jobs left of the budget
    assert by_model[MODEL]["model_calls"] == result["tier"]["batch_inference"]["fallback"] > 0
    assert reports and all(r["budget"]["limit_usd"] == pytest.approx(limit - batch_cost) for r in reports.values())
    assert result["status"] == "complete" and result["counts"]["ok"] == 180
    assert result["budget"]["spent_usd"] == pytest.approx(result["usage"]["estimated_cost_usd"], rel=1e-3)
    assert result["budget"]["spent_usd"] <= limit
