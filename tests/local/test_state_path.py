"""The states a job enters on the local state machine, read from the execution's history (as Step Functions bills them).

A job without a second pass enters seven states; the second pass is decided by the Choice after Aggregate
(CheckStatus), so the jobs that have one enter only its Maps and the Aggregate invocations that plan its stages.
"""

from __future__ import annotations

import json
from typing import Any, get_type_hints

import boto3

from fanout.runtime import local_aws
from fanout_core.contracts import AggregateSummary

LABELS = ["positive", "neutral", "negative"]
FIRST_PASS = ["Plan", "ChooseMode", "RunBatches", "RunBatch"]


def job(job_id: str, model: str = "sim:latency_ms=1,jitter_ms=0,seed=4", **aggregate: Any) -> dict[str, Any]:
    """A voting job whose 12 items x 3 votes fit one batch."""
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": 3,
        "model": model,
        "prompt": "Classify: {text}",
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}},
        "aggregate": {"field": "label", **aggregate},
        "items": [{"id": f"t-{n}", "text": f"ticket {n}", "expected": LABELS[n % 3]} for n in range(12)],
        "limits": {"batch_size": 100},
    }


def run(document: dict[str, Any]) -> tuple[dict[str, Any], list[str], int]:
    """(DescribeExecution, the states entered in order, the runtime's count of state transitions)."""
    with local_aws() as runtime:
        arn = runtime.start(document, document["job_id"])
        execution = runtime.wait(arn)
        sfn = boto3.client("stepfunctions")
        entered = [
            e["stateEnteredEventDetails"]["name"]
            for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn)
            for e in page["events"]
            if "stateEnteredEventDetails" in e
        ]
        described = sfn.describe_execution(executionArn=arn)
    return described, entered, execution.state_transitions


def test_a_one_batch_job_without_a_second_pass_takes_seven_transitions() -> None:
    # When a plain voting job of one batch runs
    described, entered, transitions = run(job("plain"))

    # Then it enters Plan, the mode's Choice, the Map and its batch, Aggregate, CheckStatus and Done: nothing else
    assert described["status"] == "SUCCEEDED"
    assert entered == [*FIRST_PASS, "Aggregate", "CheckStatus", "Done"]
    assert transitions == 7
    # and its output is Aggregate's summary alone, not the state the loop carries
    output = json.loads(described["output"])
    assert set(output) == set(get_type_hints(AggregateSummary))
    assert output["status"] == "complete" and output["counts"]["tasks"] == 36


def test_a_judged_job_plans_its_stage_in_aggregate_and_runs_it_before_aggregating() -> None:
    # Given a judge for the items whose votes disagree (a model right 40% of the time: many do)
    document = job("judged", model="sim:latency_ms=1,jitter_ms=0,accuracy=0.4,seed=4", strategy="judge", judge={"model": "sim"})

    # When it runs
    described, entered, transitions = run(document)

    # Then Aggregate planned the judge's batch, the second Map ran it, and Aggregate then aggregated (no stage follows)
    assert described["status"] == "SUCCEEDED"
    stage = ["Aggregate", "CheckStatus", "RunSecondPass", "RunPassBatch"]
    assert entered == [*FIRST_PASS, *stage, "Aggregate", "CheckStatus", "Done"]
    assert transitions == 11  # 15 when the second pass had four states of its own between the first Map and Aggregate
    output = json.loads(described["output"])
    assert set(output) == set(get_type_hints(AggregateSummary))
    assert output["usage"]["by_model"]["sim"]["model_calls"] > 0  # the judge's verdicts are in the result


def test_a_second_pass_with_nothing_to_ask_goes_from_planning_to_aggregating() -> None:
    # Given a judge, and votes that always agree (so no item is contested)
    document = job(
        "unanimous", model="sim:latency_ms=1,jitter_ms=0,accuracy=1.0,seed=4", strategy="judge", judge={"model": "sim"}
    )

    # When it runs
    described, entered, _ = run(document)

    # Then the planning invocation found no call to make (done) and the next one aggregated
    assert described["status"] == "SUCCEEDED"
    assert entered == [*FIRST_PASS, "Aggregate", "CheckStatus", "Aggregate", "CheckStatus", "Done"]
    output = json.loads(described["output"])
    assert output["status"] == "complete" and "sim" not in output["usage"]["by_model"]


def test_a_job_whose_every_task_failed_ends_in_job_failed_with_the_summarys_message() -> None:
    # Given a model whose every answer misses the schema
    described, entered, _ = run(job("all-invalid", model="sim:latency_ms=1,jitter_ms=0,invalid_rate=1.0,seed=4"))

    # Then CheckStatus sent it to JobFailed, whose cause is the summary's message
    assert (described["status"], described.get("error")) == ("FAILED", "JobFailed")
    assert entered == [*FIRST_PASS, "Aggregate", "CheckStatus", "JobFailed"]
    assert described["cause"].startswith("failed: 0 of 36 tasks ok, ")
