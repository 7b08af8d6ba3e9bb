"""Inline and distributed Map give the same answers; large jobs route to distributed; items_uri feeds a job."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from fanout.cli import main
from fanout.runtime import INPUT_BUCKET, RESULTS_BUCKET, local_aws
from fanout_core.settings import Settings
from fanout_core.steps import plan

ROOT = Path(__file__).resolve().parents[2]
SIM = "sim:latency_ms=2,jitter_ms=2,accuracy=0.7,invalid_rate=0.05,seed=13"


def triage(job_id: str, **limits: Any) -> dict[str, Any]:
    job = json.loads((ROOT / "examples" / "ticket-triage.json").read_text())
    job.update(job_id=job_id, limits={"max_concurrency": 6, "batch_size": 7, **limits})
    return job


def run(tmp_path: Path, job: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    path = tmp_path / f"{job['job_id']}.json"
    path.write_text(json.dumps(job))
    main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--model", SIM])
    target = tmp_path / "out" / job["job_id"]
    return json.loads((target / "result.json").read_text()), json.loads((target / "run.json").read_text())


def test_inline_and_distributed_give_identical_results(tmp_path: Path) -> None:
    # Given the same job and seed, forced inline and forced distributed
    inline, inline_run = run(tmp_path, triage("same-inline", mode="inline"))
    distributed, distributed_run = run(tmp_path, triage("same-distributed", mode="distributed"))

    # Then the modes differ and the answers do not
    assert (inline_run["mode"], distributed_run["mode"]) == ("inline", "distributed")
    # (batches of whole items: a batch size of 7 is rounded up to two items of 5 votes)
    assert inline_run["batches"] == distributed_run["batches"] == 6
    for result in (inline, distributed):
        result.pop("job_id")
    assert inline == distributed
    # and the distributed parent enters only its own states; the batches run as child executions
    assert distributed_run["state_transitions"] < inline_run["state_transitions"]
    assert distributed_run["lambda_invocations"]["fanout-subtask"] == 6


def test_a_job_over_the_inline_threshold_routes_to_distributed() -> None:
    # Given jobs of 100 and 101 batches (the inline Map's limit is 100)
    with local_aws():
        s3 = boto3.client("s3")
        settings = Settings(results_bucket=RESULTS_BUCKET, default_model="sim")
        items = [{"id": f"i{n}", "text": "t"} for n in range(101)]
        job = {"pattern": "voting", "votes": 2, "prompt": "{text}", "limits": {"batch_size": 2}}

        at_limit = plan({**job, "job_id": "at-limit", "items": items[:100]}, "e1", s3=s3, settings=settings)
        over = plan({**job, "job_id": "over", "items": items}, "e2", s3=s3, settings=settings)

        # Then only the larger one goes distributed, with its batch list in S3 rather than in the state
        assert (at_limit["mode"], at_limit["counts"]["batches"]) == ("inline", 100)
        assert (over["mode"], over["counts"]["batches"], over["batches"]) == ("distributed", 101, [])
        manifest = s3.get_object(Bucket=RESULTS_BUCKET, Key=over["manifest_key"])["Body"].read()
        assert len(json.loads(manifest)) == 101


def test_items_uri_from_a_local_file(tmp_path: Path) -> None:
    items = [{"id": f"line-{n}", "text": f"ticket {n} {{braces}}", "expected": "negative"} for n in range(25)]
    (tmp_path / "tickets.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    job = triage("from-items-file")
    del job["items"]
    job["items_uri"] = "tickets.jsonl"

    result, _ = run(tmp_path, job)

    assert [i["id"] for i in result["items"]] == [i["id"] for i in items]
    assert result["counts"]["tasks"] == 125


def test_items_uri_in_s3_through_the_state_machine() -> None:
    # Given a job in S3 whose items are a JSON list in another object
    items = [{"id": f"s3-{n}", "text": "t"} for n in range(12)]
    job = {
        "job_id": "s3-items",
        "pattern": "voting",
        "votes": 3,
        "model": "sim:latency_ms=1",
        "prompt": "{text}",
        "items_uri": f"s3://{INPUT_BUCKET}/items/list.json",
    }
    with local_aws() as runtime:
        s3 = boto3.client("s3")
        s3.put_object(Bucket=INPUT_BUCKET, Key="items/list.json", Body=json.dumps(items).encode())
        s3.put_object(Bucket=INPUT_BUCKET, Key="jobs/s3-items.json", Body=json.dumps(job).encode())

        execution = runtime.wait(runtime.start({"job_uri": f"s3://{INPUT_BUCKET}/jobs/s3-items.json"}, "s3-items-1"))

        assert execution.status == "SUCCEEDED", execution.cause
        result = json.loads(s3.get_object(Bucket=RESULTS_BUCKET, Key="results/s3-items/result.json")["Body"].read())
        assert [i["id"] for i in result["items"]] == [i["id"] for i in items]
        assert result["status"] == "complete"


@pytest.mark.parametrize("concurrency", [1, 7, 50, 120])
def test_the_plan_never_allows_more_calls_in_flight_than_the_limit(concurrency: int) -> None:
    with local_aws():
        settings = Settings(results_bucket=RESULTS_BUCKET, default_model="sim", max_concurrency_cap=1000)
        job = {
            "job_id": f"limit-{concurrency}",
            "pattern": "voting",
            "votes": 5,
            "prompt": "{text}",
            "items": [{"id": f"i{n}", "text": "t"} for n in range(400)],
            "limits": {"max_concurrency": concurrency},
        }

        planned = plan(job, "e", s3=boto3.client("s3"), settings=settings)

        assert planned["threads"] * planned["map_concurrency"] <= concurrency
        assert planned["threads"] * planned["map_concurrency"] >= min(concurrency, 2000) * 0.8


def test_validate_prints_the_plan_that_run_then_follows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a job whose batching depends on early stopping (an item's votes stay in one batch)
    job = triage("planned", max_concurrency=4)
    job["aggregate"] = {"strategy": "majority", "field": "label", "stop_when_agree": 3}
    path = tmp_path / "planned.json"
    path.write_text(json.dumps(job))

    # When it is validated and then run
    assert main(["validate", str(path)]) == 0
    printed = json.loads(capsys.readouterr().out.split("\nok:")[0])
    _, figures = run(tmp_path, job)

    # Then both speak of the same batches and mode
    assert (printed["batches"], printed["mode"], printed["items"]) == (figures["batches"], figures["mode"], 12)
    assert printed["batch_size"] % 5 == 0
