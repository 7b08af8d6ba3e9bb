"""Tier batch end to end on the local runtime: Bedrock batch inference jobs answered in-process, joined by recordId,
failed records and failed jobs called on-demand, every item accounted for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from botocore.stub import Stubber
from botocore.validate import ParamValidator

from fanout import local_batch_jobs
from fanout.cli import main
from fanout.runtime import REGION, local_aws
from fanout_core.tiers import tier_factor

SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["positive", "neutral", "negative"]}}}
LABELS = ("positive", "neutral", "negative")
# the simulator is free: a job price for it makes the costs comparable
PRICES = {"sim": {"input_per_million": 1.0, "output_per_million": 4.0}}


def job(job_id: str, tier: str, items: int = 40, votes: int = 3) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": votes,
        "prompt": "Classify the sentiment of this ticket: {text}",
        "inference": {"temperature": 0.8, "max_tokens": 64},
        "items": [{"id": f"t-{n}", "text": f"ticket number {n}", "expected": LABELS[n % 3]} for n in range(items)],
        "output_schema": SCHEMA,
        "aggregate": {"strategy": "majority", "field": "label"},
        "prices": PRICES,
        "limits": {"tier": tier},
    }


def run(tmp_path: Path, body: dict[str, Any]) -> dict[str, Any]:
    path = tmp_path / f"{body['job_id']}.json"
    path.write_text(json.dumps(body))
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    assert code == 0
    result: dict[str, Any] = json.loads((tmp_path / "out" / body["job_id"] / "result.json").read_text())
    return result


def answers(result: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    return [(item["id"], item["answer"], item["votes"]) for item in result["items"]]


@pytest.mark.slow
def test_a_batch_job_gives_the_on_demand_answers_at_the_batch_price(tmp_path: Path) -> None:
    # Given the same job (seeded simulator) on-demand and at tier batch
    on_demand = run(tmp_path, job("tickets-od", "on_demand"))
    batch = run(tmp_path, job("tickets-batch", "batch"))

    # Then every item has the same answer and votes
    assert answers(batch) == answers(on_demand)
    assert batch["counts"] == on_demand["counts"] and batch["counts"]["ok"] == 120
    # and the calls were bought in the batch job, at the batch share of the on-demand cost, for the same tokens
    assert set(batch["usage"]["by_model"]) == {"sim@batch"}
    assert batch["usage"]["input_tokens"] == on_demand["usage"]["input_tokens"]
    factor = tier_factor("sim", "batch")
    assert factor is not None and factor < 1
    assert batch["usage"]["estimated_cost_usd"] == pytest.approx(on_demand["usage"]["estimated_cost_usd"] * factor, rel=1e-3)
    # and result.json says which tier and why, with the plan's estimate next to on-demand's
    tier = batch["tier"]
    assert tier["tier"] == "batch" and tier["reason"] == "limits.tier is batch"
    assert tier["estimated_cost_usd"] == pytest.approx(tier["on_demand_cost_usd"] * factor)
    assert tier["batch_inference"]["answered"] == 120 and tier["batch_inference"]["fallback"] == 0
    assert tier["batch_inference"]["jobs"] == [{"index": 0, "status": "Completed"}]


@pytest.mark.slow
def test_failed_records_are_called_on_demand_and_only_those(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    on_demand = run(tmp_path, job("faulty-od", "on_demand"))
    assert " tier " not in capsys.readouterr().out  # plain on-demand says nothing of tiers
    # Given a batch job in which some records fail
    monkeypatch.setenv(local_batch_jobs.RECORD_ERRORS_SETTING, "0.1")
    result = run(tmp_path, job("faulty-batch", "batch"))

    joined = result["tier"]["batch_inference"]
    assert joined["failed_records"] > 0 and joined["jobs"][0]["status"] == "PartiallyCompleted"
    # Then exactly the failed records were called on-demand, the others came from the batch job
    by_model = result["usage"]["by_model"]
    assert by_model["sim"]["model_calls"] == joined["failed_records"] == joined["fallback"]
    assert by_model["sim@batch"]["model_calls"] == joined["answered"] == 120 - joined["failed_records"]
    # and the CLI's summary says so
    expected = f"answered by batch jobs, {joined['fallback']} called on-demand"
    assert f"tier batch: limits.tier is batch; {joined['answered']} tasks {expected}" in capsys.readouterr().out
    # and every item is accounted for with the on-demand answers
    assert answers(result) == answers(on_demand)
    assert result["counts"]["ok"] == 120 and result["status"] == "complete"


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["Failed", "Expired"])
def test_a_job_that_fails_or_expires_falls_back_to_on_demand(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ending: str
) -> None:
    on_demand = run(tmp_path, job("ended-od", "on_demand"))
    # Given a batch job that fails (no output) or expires (half of its records answered)
    monkeypatch.setenv(local_batch_jobs.STATUS_SETTING, ending)
    result = run(tmp_path, job("ended-batch", "batch"))

    joined = result["tier"]["batch_inference"]
    assert joined["jobs"][0]["status"] == ending
    answered = 0 if ending == "Failed" else 60
    # Then what the job did not answer is called on-demand, and nothing twice
    assert joined["answered"] == answered and joined["fallback"] == 120 - answered
    assert result["usage"]["by_model"]["sim"]["model_calls"] == 120 - answered
    assert result["usage"]["model_calls"] == 120
    assert answers(result) == answers(on_demand) and result["counts"]["ok"] == 120


@pytest.mark.slow
def test_requests_and_records_match_botocores_models(tmp_path: Path) -> None:
    # Given a batch job run on the local runtime, keeping what its state machine sent to Bedrock
    body = job("shapes", "batch", items=34)
    with local_aws() as runtime:
        execution = runtime.wait(runtime.start(body, "shapes-1"))
        assert execution.status == "SUCCEEDED"
        assert runtime.batch_jobs is not None
        (created,) = runtime.batch_jobs.created
        s3 = boto3.client("s3", region_name=REGION)
        bucket, key = created["inputDataConfig"]["s3InputDataConfig"]["s3Uri"][5:].split("/", 1)
        lines = [json.loads(line) for line in s3.get_object(Bucket=bucket, Key=key)["Body"].read().splitlines()]
        arn = next(iter(runtime.batch_jobs.jobs))

    # Then CreateModelInvocationJob carried what botocore's bedrock model requires, at the types it takes
    client = boto3.client("bedrock", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("create_model_invocation_job", {"jobArn": arn}, created)
        stub.add_response("get_model_invocation_job", _job_status(arn), {"jobIdentifier": arn})
        assert client.create_model_invocation_job(**created)["jobArn"] == arn
        client.get_model_invocation_job(jobIdentifier=arn)
    assert created["modelInvocationType"] == "Converse" and created["timeoutDurationInHours"] == 24
    assert created["roleArn"].endswith(":role/fanout-batch-inference")
    output = created["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
    assert key.endswith(".jsonl") and output.endswith(f"/output/{created['jobName']}/")
    # and every record is one recordId with a Converse request body (modelId is the job's)
    converse = botocore.session.get_session().get_service_model("bedrock-runtime").operation_model("Converse").input_shape
    assert len(lines) == 102 and len({line["recordId"] for line in lines}) == 102
    for line in lines:
        assert set(line) == {"recordId", "modelInput"} and line["recordId"].isalnum()
        report = ParamValidator().validate({"modelId": created["modelId"], **line["modelInput"]}, converse)
        assert not report.has_errors(), report.generate_report()


def _job_status(arn: str) -> dict[str, Any]:
    import datetime as dt

    return {
        "jobArn": arn,
        "jobName": "j",
        "modelId": "sim",
        "roleArn": "arn:aws:iam::123456789012:role/fanout-batch-inference",
        "status": "Completed",
        "submitTime": dt.datetime(2026, 1, 1),
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://b/k.jsonl"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/o/"}},
    }


@pytest.mark.slow
def test_a_job_still_running_when_its_polls_run_out_is_stopped_and_its_tasks_called_on_demand(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a batch job that never ends, and a run that looks at it 3 times
    monkeypatch.setenv(local_batch_jobs.STATUS_SETTING, "InProgress")
    monkeypatch.setenv("FANOUT_BATCH_MAX_POLLS", "3")
    body = job("stuck", "batch", items=34)
    with local_aws() as runtime:
        execution = runtime.wait(runtime.start(body, "stuck-1"))
        assert runtime.batch_jobs is not None
        (arn,) = runtime.batch_jobs.jobs
        stopped = list(runtime.batch_jobs.stopped)
        s3 = boto3.client("s3", region_name=REGION)
        plan = json.loads(s3.get_object(Bucket="fanout-local-results", Key="runs/stuck/plan.json")["Body"].read())

    # Then it was stopped after its looks, with a request botocore's model takes, and every task was called on-demand
    assert execution.status == "SUCCEEDED" and stopped == [arn]
    client = boto3.client("bedrock", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("stop_model_invocation_job", {}, {"jobIdentifier": arn})
        client.stop_model_invocation_job(jobIdentifier=arn)
    joined = plan["tier"]["batch_inference"]
    assert joined["jobs"] == [{"index": 0, "status": "Stopped"}]
    assert joined["answered"] == 0 and joined["fallback"] == 102
    assert execution.output is not None and execution.output["counts"]["ok"] == 102


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["inline", "distributed"])
def test_the_fallback_runs_only_the_batches_with_tasks_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # Given a batch job of 12 on-demand batches in which some records fail
    monkeypatch.setenv(local_batch_jobs.RECORD_ERRORS_SETTING, "0.03")
    body = job(f"left-{mode}", "batch")
    body["limits"] = {"tier": "batch", "mode": mode, "batch_size": 10}
    result = run(tmp_path, body)

    # Then the subtask function ran once to join the outputs and once per batch holding a failed record, no more
    folder = tmp_path / "out" / body["job_id"]
    with_fallback = {
        path.parent.name
        for path in (folder / "records").glob("b*/*.jsonl")
        for line in path.read_text().splitlines()
        if json.loads(line).get("tier") is None
    }
    assert 0 < len(with_fallback) < 12
    figures = json.loads((folder / "run.json").read_text())
    assert figures["lambda_invocations"]["fanout-subtask"] == 1 + len(with_fallback)
    assert result["counts"]["ok"] == 120


@pytest.mark.slow
def test_a_bedrock_model_at_tier_batch_answers_as_on_demand_at_half_the_list_price(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fanout_core.catalog import info
    from tests.fakes import Script, fake_server, marker, prompt_of

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    model = "bedrock:us.anthropic.claude-haiku-4-5-20251001-v1:0"

    def answer(body: dict[str, Any]) -> dict[str, str]:
        return {"label": LABELS[marker(prompt_of(body), r"number (\d+)") % 3]}

    # Given a Converse endpoint (the batch jobs, answered in-process, call it through the same provider)
    with fake_server(Script(answer=answer), "bedrock") as (url, served):
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)
        plain = {**job("claude-od", "on_demand"), "model": model}
        plain.pop("prices")
        on_demand = run(tmp_path, plain)
        batch = run(tmp_path, {**plain, "job_id": "claude-batch", "limits": {"tier": "batch"}})

    # Then the answers are the same, and the batch calls cost the model's batch share of its list price
    assert answers(batch) == answers(on_demand) and batch["counts"]["ok"] == 120
    assert set(batch["usage"]["by_model"]) == {f"{model}@batch"}
    found = info(model)
    assert found is not None and found.batch is not None
    factor = found.batch.price_factor
    assert batch["usage"]["estimated_cost_usd"] == pytest.approx(on_demand["usage"]["estimated_cost_usd"] * factor, rel=1e-3)
    assert len(served.successes) == 240


def _stopped_while_its_job_runs(runtime: Any, body: dict[str, Any], name: str) -> str:
    """An execution whose batch job is still running (held InProgress), stopped while it waits for the job: as when a
    user stops it, or it fails or times out; Step Functions stops no job for it. The job's ARN."""
    import os
    import time

    os.environ[local_batch_jobs.STATUS_SETTING] = "InProgress"
    os.environ["FANOUT_BATCH_POLL_SECONDS"] = "3600"  # it waits an hour between looks (local_aws restores both)
    arn = runtime.start(body, name)
    assert runtime.batch_jobs is not None
    for _ in range(1200):  # until its job is created (no timing is asserted: this only bounds the wait)
        if runtime.batch_jobs.jobs:
            break
        time.sleep(0.05)
    (job_arn,) = runtime.batch_jobs.jobs
    sfn = boto3.client("stepfunctions", region_name=REGION)
    sfn.stop_execution(executionArn=arn, cause="stopped by hand")
    assert runtime.wait(arn).status == "ABORTED"
    assert runtime.batch_jobs.jobs[job_arn].status == "InProgress" and not runtime.batch_jobs.stopped
    os.environ.pop(local_batch_jobs.STATUS_SETTING)
    os.environ["FANOUT_BATCH_POLL_SECONDS"] = "0"
    return str(job_arn)


def _plan_of(job_id: str) -> dict[str, Any]:
    s3 = boto3.client("s3", region_name=REGION)
    plan: dict[str, Any] = json.loads(s3.get_object(Bucket="fanout-local-results", Key=f"runs/{job_id}/plan.json")["Body"].read())
    return plan


@pytest.mark.slow
def test_a_rerun_adopts_the_batch_job_a_stopped_execution_left_running_and_pays_for_it_once() -> None:
    # Given a tier-batch execution stopped while its batch job ran (the job keeps running, and billing)
    body = job("left-running", "batch", items=34)
    with local_aws() as runtime:
        job_arn = _stopped_while_its_job_runs(runtime, body, "left-running-1")
        assert runtime.model_calls.total() == 0  # the held job has run no record yet

        # When the job_id is run again
        execution = runtime.wait(runtime.start(body, "left-running-2"))
        assert runtime.batch_jobs is not None
        created, stopped, listed = list(runtime.batch_jobs.created), list(runtime.batch_jobs.stopped), runtime.batch_jobs.listed
        plan = _plan_of("left-running")

    # Then it waited for the earlier job instead of creating another: every record was bought once, in that job
    assert execution.status == "SUCCEEDED" and execution.output is not None
    assert len(created) == 1 and stopped == []
    assert plan["inference_jobs"][0]["job_arn"] == job_arn
    assert plan["tier"]["earlier_jobs"] == {"adopted": [job_arn], "stopped": []}
    joined = plan["tier"]["batch_inference"]
    assert joined["answered"] == 102 and joined["fallback"] == 0
    assert runtime.model_calls.total() == 102 and execution.output["counts"]["ok"] == 102
    # and Plan found it with a ListModelInvocationJobs request botocore's model takes
    client = boto3.client("bedrock", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        (request,) = listed
        stub.add_response("list_model_invocation_jobs", {"invocationJobSummaries": []}, request)
        client.list_model_invocation_jobs(**request)
    assert request == {"nameContains": created[0]["jobName"]}


@pytest.mark.slow
def test_a_rerun_of_a_changed_job_stops_the_batch_job_it_supersedes() -> None:
    # Given a tier-batch execution stopped while its batch job ran
    body = job("superseded", "batch", items=34)
    with local_aws() as runtime:
        job_arn = _stopped_while_its_job_runs(runtime, body, "superseded-1")

        # When the job_id is run again with another prompt: the running job's requests are no longer asked
        changed = {**body, "prompt": "Label the sentiment of this ticket: {text}"}
        execution = runtime.wait(runtime.start(changed, "superseded-2"))
        assert runtime.batch_jobs is not None
        created, stopped = list(runtime.batch_jobs.created), list(runtime.batch_jobs.stopped)
        plan = _plan_of("superseded")

    # Then Plan stopped the earlier job (it bills no more records) and the run bought its own, once
    assert execution.status == "SUCCEEDED" and execution.output is not None
    assert stopped == [job_arn] and len(created) == 2
    assert plan["tier"]["earlier_jobs"] == {"adopted": [], "stopped": [job_arn]}
    assert "job_arn" not in plan["inference_jobs"][0]
    assert runtime.model_calls.total() == 102 and execution.output["counts"]["ok"] == 102
    # and the stop request is one botocore's model takes
    client = boto3.client("bedrock", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("stop_model_invocation_job", {}, {"jobIdentifier": job_arn})
        client.stop_model_invocation_job(jobIdentifier=job_arn)


def _inference_map_failing_after_a_look(definition: Any) -> str:
    """The state machine with each RunInferenceJobs iteration failing right after its first GetModelInvocationJob
    (CountInferencePoll is a Fail state): the Map fails while its job still runs, and its Catch hands the join an error
    object instead of the jobs' statuses."""
    asl = json.loads(definition())
    states = asl["States"]["RunInferenceJobs"]["ItemProcessor"]["States"]
    states["CountInferencePoll"] = {"Type": "Fail", "Error": "Injected.MapFailure", "Cause": "a fault of the test"}
    return json.dumps(asl)


@pytest.mark.slow
def test_a_job_still_running_when_the_jobs_map_fails_is_stopped_and_no_task_is_bought_twice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fanout import runtime as local_runtime

    # Given a tier-batch run whose RunInferenceJobs Map fails while its batch job runs (held InProgress), a job that
    # has processed half of its records when it is stopped
    failing = _inference_map_failing_after_a_look(local_runtime.definition)
    monkeypatch.setattr(local_runtime, "definition", lambda: failing)
    monkeypatch.setenv(local_batch_jobs.STATUS_SETTING, "InProgress")
    monkeypatch.setenv(local_batch_jobs.STOPPED_SHARE_SETTING, "0.5")
    body = job("map-fails", "batch", items=34)
    with local_aws() as runtime:
        execution = runtime.wait(runtime.start(body, "map-fails-1"))
        assert runtime.batch_jobs is not None
        (arn,) = runtime.batch_jobs.jobs
        stopped, listed = list(runtime.batch_jobs.stopped), list(runtime.batch_jobs.listed)
        # When Bedrock runs on whatever was not stopped: the job is looked at once more, the hold gone
        monkeypatch.delenv(local_batch_jobs.STATUS_SETTING)
        runtime.batch_jobs.get(arn)
        status, calls = runtime.batch_jobs.jobs[arn].status, runtime.model_calls.total()
        plan = _plan_of("map-fails")

    # Then the join stopped the job before it fell back, and joined the half the job had answered
    assert execution.status == "SUCCEEDED" and execution.output is not None
    joined = plan["tier"]["batch_inference"]
    assert "Map failed" in joined["jobs"]
    assert stopped == [arn] and status == "Stopped" and joined["stopped_jobs"] == {"stopped": [arn]}
    assert joined["answered"] == 51 and joined["fallback"] == 51
    # and each of the 102 tasks was bought once: 51 in the stopped job, 51 on-demand, none by both
    assert calls == 102
    by_model = execution.output["usage"]["by_model"]
    assert by_model["sim@batch"]["model_calls"] == 51 and by_model["sim"]["model_calls"] == 51
    assert execution.output["counts"] == {"items": 34, "tasks": 102, "ok": 102, "invalid": 0, "failed": 0}
    # and the join found, stopped and looked at the job with requests botocore's model takes
    (request,) = listed
    assert request == {"nameContains": runtime_job_name(plan)}
    client = boto3.client("bedrock", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_response("list_model_invocation_jobs", {"invocationJobSummaries": []}, request)
        stub.add_response("stop_model_invocation_job", {}, {"jobIdentifier": arn})
        stub.add_response("get_model_invocation_job", _job_status(arn), {"jobIdentifier": arn})
        client.list_model_invocation_jobs(**request)
        client.stop_model_invocation_job(jobIdentifier=arn)
        client.get_model_invocation_job(jobIdentifier=arn)


def runtime_job_name(plan: dict[str, Any]) -> str:
    (entry,) = plan["inference_jobs"]
    return str(entry["job_name"])
