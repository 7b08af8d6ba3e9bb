"""The second pass on the local state machine: escalated votes, judge verdicts and syntheses run as batches.

Each test runs the real ASL and reads the execution's history: the second pass's states are entered, and its calls
come back as records Aggregate reads (result.json), with no call made twice.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import boto3
import pytest

from fanout import moto_patches
from fanout.runtime import RESULTS_BUCKET, local_aws

ROOT = Path(__file__).resolve().parents[2]
CHEAP = "sim:accuracy=0.6,latency_ms=2,jitter_ms=1,difficulty=4,seed=4"
STRONG = "sim:accuracy=0.95,latency_ms=2,jitter_ms=1,seed=9"
LABELS = ["positive", "neutral", "negative"]


def run(job: dict[str, Any], name: str) -> tuple[str, list[str], dict[str, Any], list[dict[str, Any]]]:
    """(status, states entered in order, result.json, every record) of one execution."""
    with local_aws() as runtime:
        arn = runtime.start(job, name)
        execution = runtime.wait(arn)
        sfn = boto3.client("stepfunctions")
        entered = [
            e["stateEnteredEventDetails"]["name"]
            for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn)
            for e in page["events"]
            if "stateEnteredEventDetails" in e
        ]
        s3 = boto3.client("s3")
        result = json.loads(s3.get_object(Bucket=RESULTS_BUCKET, Key=f"results/{job['job_id']}/result.json")["Body"].read())
        records = [
            json.loads(line)
            for key, body in moto_patches.new_objects("123456789012", RESULTS_BUCKET, f"runs/{job['job_id']}/records/", {})
            for line in body.splitlines()
            if line.strip()
        ]
    return execution.status, entered, result, records


def triage(job_id: str, **aggregate: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": 3,
        "model": CHEAP,
        "prompt": "Classify: {text}",
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}},
        "aggregate": {"field": "label", **aggregate},
        "items": [{"id": f"t-{n}", "text": f"ticket {n}", "expected": LABELS[n % 3]} for n in range(30)],
        "limits": {"max_concurrency": 8, "batch_size": 15},
    }


@pytest.mark.parametrize("mode", ["inline", "distributed"])
def test_doubtful_items_get_the_strong_models_votes_in_the_second_pass(mode: str) -> None:
    # Given a cheap model for every item and a strong one for the items it leaves under 0.7 confidence
    job = triage(f"escalate-{mode}", escalate={"below": 0.7, "votes": 2, "model": STRONG})
    job["limits"]["mode"] = mode

    # When it runs
    status, entered, result, records = run(job, f"escalate-{mode}")

    # Then Aggregate planned the second pass, which ran its batch through RunBatch (inline or as child executions),
    # and Aggregate then aggregated: escalation was the job's last stage
    assert status == "SUCCEEDED" and result["status"] == "complete"
    second_map = "RunSecondPass" if mode == "inline" else "RunSecondPassDistributed"
    assert entered.count("Aggregate") == 2 and entered.count(second_map) == 1
    assert entered.index("Aggregate") < entered.index(second_map) < len(entered) - entered[::-1].index("Aggregate") - 1
    # and each doubtful item has its two strong votes, recorded once each, counted in the usage
    escalated = [i for i in result["items"] if i.get("escalated")]
    first: dict[str, Counter[str]] = {}
    for r in records:
        if r["slot"].startswith("v") and r["status"] == "ok":
            first.setdefault(r["item_id"], Counter())[r["output"]["label"]] += 1
    doubtful = {item for item, labels in first.items() if max(labels.values()) / sum(labels.values()) < 0.7}
    assert escalated and {i["id"] for i in escalated} == doubtful
    strong = [r for r in records if r["slot"].startswith("escalate:")]
    assert Counter(r["task_id"] for r in strong) == {f"{i['id']}#escalate:{n}": 1 for i in escalated for n in (1, 2)}
    assert all(r["model"] == STRONG for r in strong)
    assert result["usage"]["escalation"]["model_calls"] == len(strong) == result["usage"]["by_model"][STRONG]["model_calls"]
    assert result["usage"]["model_calls"] == 90 + len(strong)


def test_a_throttled_judge_is_retried_as_a_batch_and_every_contested_item_gets_its_verdict() -> None:
    # Given a judge whose model throttles half its calls
    judge = "sim:latency_ms=1,jitter_ms=0,throttle_rate=0.5,seed=2"
    job = triage("judged-throttled", strategy="judge", judge={"model": judge})

    # When it runs
    status, entered, result, records = run(job, "judged-throttled")

    # Then each contested item has the judge's verdict, from one record, and no uncontested item was judged
    assert status == "SUCCEEDED" and "RunPassBatch" in entered
    contested = [i for i in result["items"] if i.get("candidates", 1) > 1]
    verdicts = [r for r in records if r["slot"].startswith("judge:")]
    assert contested and all(i["judge"].get("reason") for i in contested)
    assert sorted(r["item_id"] for r in verdicts) == sorted(i["id"] for i in contested)
    assert any(r.get("throttled") for r in verdicts)  # the retry table ran inside the batch
    assert result["usage"]["by_model"][judge]["model_calls"] == sum(r["attempts"] for r in verdicts)


def test_a_sectioning_jobs_synthesis_runs_in_the_second_pass() -> None:
    # Given the market research example (three sections, a synthesis over the merged findings)
    job = json.loads((ROOT / "examples" / "market-research.json").read_text())
    job.update(job_id="synthesised", model="sim:latency_ms=1,jitter_ms=0")

    # When it runs
    status, entered, result, records = run(job, "synthesised")

    # Then the synthesis was one second-pass call, recorded, and result.json shows its text
    assert status == "SUCCEEDED" and "RunSecondPass" in entered
    synthesis = [r for r in records if r["slot"].startswith("synthesis:")]
    assert len(synthesis) == 1 and synthesis[0]["item_id"] == ""
    assert result["synthesis"]["text"].startswith("[synthetic] ")
    sections = len(job["sections"]) * len(job["items"])
    assert result["usage"]["model_calls"] == sections + 1


def test_a_rerun_asks_nothing_again_of_the_second_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given an escalating job run once through the CLI, whose summary says what escalation did
    from fanout.cli import main

    job = triage("rerun-escalate", escalate={"below": 0.7, "votes": 2, "model": STRONG})
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    out = tmp_path / "out"
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0
    first = json.loads((out / job["job_id"] / "result.json").read_text())
    spent = first["usage"]["escalation"]
    line = f"  escalated {spent['items']} items: {spent['model_calls']} second-pass calls (this run), cost $0.0000"
    assert line in capsys.readouterr().out

    # When it runs again under the same job_id
    assert main(["run", str(path), "--out", str(out), "--quiet"]) == 0

    # Then neither pass calls the model again, and the answers are the same, escalated items included
    again = json.loads((out / job["job_id"] / "result.json").read_text())
    assert json.loads((out / job["job_id"] / "run.json").read_text())["model_calls"] == 0
    assert first["usage"]["escalation"]["model_calls"] > 0
    assert again["items"] == first["items"]
    # and its usage says so for the escalation too: the same items escalated, no call made for them this run
    assert again["usage"]["escalation"]["items"] == spent["items"]
    assert again["usage"]["escalation"]["model_calls"] == again["usage"]["escalation"]["input_tokens"] == 0
