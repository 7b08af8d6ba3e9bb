"""The second pass under the job's limits: judge calls are paced to the model's quota as first-pass calls are, and
start only while they fit the budget the first pass left."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest

from fanout import moto_patches
from fanout.runtime import RESULTS_BUCKET, local_aws
from fanout_core.second_pass import STAGE_BATCH_BASE, is_second_pass, stage_number

CHEAP = "sim:accuracy=0.5,latency_ms=2,jitter_ms=1,difficulty=4,seed=4"
LABELS = ["positive", "neutral", "negative"]
PRICE = {"input_per_million": 1.0, "output_per_million": 4.0}


def judged(job_id: str, strategy: str = "judge", **limits: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": 3,
        "model": CHEAP,
        "prompt": "Classify: {text}",
        "inference": {"max_tokens": 16},
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}},
        "aggregate": {"field": "label", "strategy": strategy},
        "prices": {CHEAP: PRICE},
        "items": [{"id": f"t-{n}", "text": f"ticket {n}", "expected": LABELS[n % 3]} for n in range(40)],
        "limits": {"max_concurrency": 4, **limits},
    }


def run(
    job: dict[str, Any], runtime: Any = None, name: str | None = None
) -> tuple[dict[str, Any], list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(result.json, every record, the pacing reports by name) of one execution (in ``runtime``, else a new one)."""
    if runtime is None:
        with local_aws() as fresh:
            return run(job, fresh, name)
    execution = runtime.wait(runtime.start(job, name or job["job_id"]))
    assert execution.status == "SUCCEEDED"
    s3 = boto3.client("s3")
    result = json.loads(s3.get_object(Bucket=RESULTS_BUCKET, Key=f"results/{job['job_id']}/result.json")["Body"].read())
    prefix = f"runs/{job['job_id']}/"
    records = [
        json.loads(line)
        for _, body in moto_patches.new_objects("123456789012", RESULTS_BUCKET, prefix + "records/", {})
        for line in body.splitlines()
        if line.strip()
    ]
    reports = {
        key.rsplit("/", 1)[1]: json.loads(body)
        for key, body in moto_patches.new_objects("123456789012", RESULTS_BUCKET, prefix + "pacing/", {})
    }
    return result, records, reports


def _stage_reports(reports: dict[str, dict[str, Any]], stage: str) -> list[dict[str, Any]]:
    base = stage_number(stage) * STAGE_BATCH_BASE
    return [r for name, r in reports.items() if name[:-5].isdigit() and base <= int(name[:-5]) < base + STAGE_BATCH_BASE]


@pytest.mark.slow
def test_judge_calls_start_only_while_they_fit_what_the_first_pass_left_of_the_budget() -> None:
    # Given what the first pass costs on its own (the same votes under majority) and with its judge calls
    first, _, _ = run(judged("judge-first", strategy="majority"))
    whole, whole_records, _ = run(judged("judge-whole"))
    first_cost, whole_cost = first["usage"]["estimated_cost_usd"], whole["usage"]["estimated_cost_usd"]
    judge_calls = sum(1 for r in whole_records if is_second_pass(r["slot"]))
    assert judge_calls > 4 and whole_cost > first_cost
    # and a budget for the whole first pass and about half the judge calls
    limit = first_cost + (whole_cost - first_cost) / 2

    # When the judged job runs with that budget, then again with a larger one
    with local_aws() as runtime:
        result, records, reports = run(judged("judge-budget", max_cost_usd=limit), runtime)
        again, again_records, _ = run(judged("judge-budget", max_cost_usd=1.0), runtime, "judge-budget-2")

    # Then every first-pass vote was answered, and the judge calls stopped at the budget
    votes = [r for r in records if not is_second_pass(r["slot"])]
    assert len(votes) == 120 and all(r["status"] == "ok" for r in votes)
    verdicts = [r for r in records if is_second_pass(r["slot"])]
    stopped = [r for r in verdicts if r.get("stopped") == "budget"]
    assert len(verdicts) == judge_calls and 0 < len(stopped) < judge_calls
    assert all("limits.max_cost_usd" in r["error"] for r in stopped)
    # and the run spent no more than the budget, the second pass's spend counted in it
    assert result["status"] == "partial" and result["reason"] == "budget"
    assert result["usage"]["estimated_cost_usd"] <= limit
    assert result["budget"]["spent_usd"] == pytest.approx(result["usage"]["estimated_cost_usd"], rel=1e-3)
    assert result["budget"]["tasks_not_called"] == len(stopped)
    # and the judge's batches had the budget the first pass left
    judge_reports = _stage_reports(reports, "judge")
    first_spent = sum(r["budget"]["spent_usd"] for name, r in reports.items() if r not in judge_reports)
    assert judge_reports and all(r["budget"]["limit_usd"] == pytest.approx(limit - first_spent) for r in judge_reports)
    assert [i["id"] for i in result["items"]] == [f"t-{n}" for n in range(40)]
    # and the re-run asks exactly the judge calls the budget stopped, and no vote
    assert again["status"] == "complete" and "reason" not in again
    assert again["usage"]["model_calls"] == len(stopped)
    answered_again = {r["task_id"] for r in again_records if r.get("status") == "ok" and r.get("run") == "judge-budget-2"}
    assert answered_again == {r["task_id"] for r in stopped}


@pytest.mark.slow
def test_judge_calls_are_paced_to_the_given_quota() -> None:
    # Given a judged job with the model's quota given
    result, records, reports = run(judged("judge-paced", tokens_per_minute=200_000))

    # Then the judge's batches were paced to it, as the first pass's were
    assert any(is_second_pass(r["slot"]) for r in records)
    judge_reports = _stage_reports(reports, "judge")
    assert judge_reports
    for report in judge_reports:
        paced = report["models"][CHEAP]
        assert paced["learned"] is False
        assert paced["rate_tokens_per_second"] * paced["window_seconds"] == pytest.approx(200_000)
    assert result["status"] == "complete"
