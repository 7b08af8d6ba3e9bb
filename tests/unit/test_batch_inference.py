"""Bedrock batch inference input and output: split by the per-job quotas, names Bedrock accepts, outputs joined by
recordId (never by order) into the records RunBatch writes."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import boto3
import botocore.session
import pytest
from moto import mock_aws

from fanout_core import batch_inference as bi
from fanout_core.contracts import expand
from fanout_core.store import RunStore
from tests.factories import batch_for

SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}
BUCKET = "results"
MODEL = "bedrock:us.anthropic.claude-haiku-4-5-20251001-v1:0"


def task(n: int, model: str = MODEL) -> dict[str, Any]:
    return {"task_id": f"i{n}#v1", "item_id": f"i{n}", "slot": "v1", "kind": "vote", "model": model, "prompt": f"ticket {n}?"}


@pytest.fixture
def store() -> Iterator[RunStore]:
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield RunStore(s3, BUCKET, "job-1")


def test_a_models_tasks_split_into_the_fewest_even_jobs_within_the_record_and_size_quotas() -> None:
    sizes = [148] * 250
    by_records = bi._split(sizes, max_records=100, max_bytes=10**9)
    assert [len(c) for c in by_records] == [84, 84, 82]
    by_bytes = bi._split(sizes, max_records=10_000, max_bytes=148 * 60)
    assert all(sum(148 for _ in c) <= 148 * 60 for c in by_bytes) and len(by_bytes) == 5
    assert sorted(i for c in by_bytes for i in c) == list(range(250))
    uneven = bi._split([10] * 9 + [500], max_records=100, max_bytes=520)
    assert all(sum(([10] * 9 + [500])[i] for i in c) <= 520 for c in uneven)


def test_record_ids_job_names_and_tokens_take_the_forms_bedrock_accepts() -> None:
    model = botocore.session.get_session().get_service_model("bedrock")
    shape = model.operation_model("CreateModelInvocationJob").input_shape.members
    name = bi.job_name("weird job_id.with/every*thing" * 3, "arn:aws:states:...:execution:fanout:x", 7)
    assert len(name) <= 63 and re.fullmatch(shape["jobName"].metadata["pattern"], name)
    assert re.fullmatch(shape["clientRequestToken"].metadata["pattern"], name)
    # and Plan finds an earlier run's job by that name (ListModelInvocationJobs nameContains)
    contains = model.operation_model("ListModelInvocationJobs").input_shape.members["nameContains"].metadata
    assert re.fullmatch(contains["pattern"], name) and len(name) <= contains["max"]
    assert bi.job_name("a", "one", 0) != bi.job_name("a", "two", 0)
    assert bi.record_id(12).isalnum() and len(bi.record_id(12)) == 11


def test_each_task_is_one_record_with_a_converse_body_and_no_cache_point(store: RunStore) -> None:
    # Given tasks of two models (one of them with a document: it stays on-demand)
    tasks = [task(n) for n in range(3)] + [task(9, "sim")] + [{**task(5), "document": {"uri": "s3://x/y.pdf"}}]
    shared = {"system": "Be brief.", "inference": {"max_tokens": 50}, "output_schema": SCHEMA, "answer_field": "label"}
    # When the inputs are written
    jobs = bi.write_inference_jobs(store, tasks, [0, 0, 1, 1, 1], shared, "exec-1")
    # Then there is one job per model, each record a recordId and a Converse request body
    assert [(j.model, j.records) for j in jobs] == [(MODEL, 3), ("sim", 1)]
    body = store.s3.get_object(Bucket=BUCKET, Key=f"runs/job-1/{bi.folder(0)}input.jsonl")["Body"].read().decode()
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["recordId"] for line in lines] == [bi.record_id(n) for n in range(3)]
    first = lines[0]["modelInput"]
    assert "modelId" not in first and first["inferenceConfig"] == {"maxTokens": 50}
    assert first["system"] == [{"text": "Be brief."}]
    assert "cachePoint" not in json.dumps(first)
    # Claude Haiku 4.5 takes Converse's JSON-schema output format (models.json)
    assert first["outputConfig"]["textFormat"]["type"] == "json_schema"
    listed = store.get_json(bi.folder(0) + "tasks.json")["records"]
    assert [(e["record_id"], e["batch"], e["task"]["task_id"]) for e in listed] == [
        (bi.record_id(0), 0, "i0#v1"),
        (bi.record_id(1), 0, "i1#v1"),
        (bi.record_id(2), 1, "i2#v1"),
    ]


def test_a_model_without_json_schema_output_gets_the_schema_in_its_system_prompt_never_a_tool(store: RunStore) -> None:
    # Given a task of a model whose structured output is a forced tool on-demand (models.json: "tool")
    tool_model = "bedrock:us.anthropic.claude-haiku-5-5"
    shared = {"system": "Be brief.", "inference": {"max_tokens": 50}, "output_schema": SCHEMA, "answer_field": "label"}
    # When its batch record is written
    body = bi.model_input(task(0, tool_model), shared)
    # Then it carries no toolConfig (a Converse batch job fails such a record with a 400) and no output format,
    # and its system prompt names the schema, so the JSON answer it returns is read and checked as on-demand
    assert "toolConfig" not in body and "outputConfig" not in body
    assert body["system"][0]["text"].startswith("Be brief.\n\n")
    assert json.dumps(SCHEMA) in body["system"][0]["text"]
    assert bi.record_from_output(task(0, tool_model), {"modelOutput": converse_reply('{"label": "yes"}')}, None)["status"] == "ok"


def planned(store: RunStore, tasks: list[dict[str, Any]], ranges: list[dict[str, int]], shared: dict[str, Any]) -> list[Any]:
    """The batch files Plan would write for ``tasks`` cut at ``ranges``; the tasks as RunBatch expands them."""
    expanded = []
    for r in ranges:
        batch = batch_for(tasks[r["start"] : r["end"]], index=r["index"], **shared)
        store.put_json(store.batch_name(r["index"]), batch)
        expanded.extend(expand(batch))
    return expanded


def converse_reply(text: str, stop: str = "end_turn", tokens: tuple[int, int] = (30, 4)) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": stop,
        "usage": {"inputTokens": tokens[0], "outputTokens": tokens[1], "totalTokens": sum(tokens)},
    }


def output_key(job: bi.InferenceJob, bedrock_job_id: str) -> str:
    """Where Bedrock writes a job's output lines: <output URI><job id>/<input file>.out."""
    return job.output_uri.removeprefix(f"s3://{BUCKET}/") + f"{bedrock_job_id}/input.jsonl.out"


def test_outputs_are_joined_by_record_id_and_whatever_is_not_ok_falls_back(store: RunStore) -> None:
    # Given a planned run of 6 tasks in 2 batches, one inference job over all of them
    shared = {"inference": {"max_tokens": 20}, "output_schema": SCHEMA, "answer_field": "label"}
    ranges = [{"index": 0, "start": 0, "end": 3}, {"index": 1, "start": 3, "end": 6}]
    tasks = planned(store, [task(n) for n in range(6)], ranges, shared)
    store.put_json("batches.json", ranges)
    (job,) = bi.write_inference_jobs(store, tasks, [0, 0, 0, 1, 1, 1], shared, "exec")
    store.put_json("plan.json", {"mode": "inline", "counts": {"batches": 2}, "tier": {"tier": "batch"},
                                 "inference_jobs": [job.as_state()]})  # fmt: skip
    # and Bedrock's output in its own order: an answer, an error, a cut-off answer, one missing the schema, an id
    # no task has, two answers; task 5 has no line at all
    out = [
        {"recordId": bi.record_id(4), "modelOutput": converse_reply('{"label": "no"}')},
        {"recordId": bi.record_id(1), "error": {"errorCode": 400, "errorMessage": "bad request"}},
        {"recordId": bi.record_id(2), "modelOutput": converse_reply('{"label": "y', stop="max_tokens")},
        {"recordId": bi.record_id(3), "modelOutput": converse_reply('{"label": "maybe"}')},
        {"recordId": "R9999999999", "modelOutput": converse_reply('{"label": "yes"}')},
        {"recordId": bi.record_id(0), "modelOutput": converse_reply('{"label": "yes"}')},
    ]
    key = output_key(job, "abc123")
    store.s3.put_object(Bucket=BUCKET, Key=key, Body="".join(json.dumps(line) + "\n" for line in out).encode())

    # When the outputs are joined
    joined = bi.join_outputs(store, [{"index": 0, "status": "PartiallyCompleted"}])

    # Then each record belongs to the task its recordId names, written under that task's batch
    records = {r["task_id"]: r for r in store.iter_records()}
    assert records["i0#v1"]["output"] == {"label": "yes"} and records["i0#v1"]["status"] == "ok"
    assert records["i4#v1"]["output"] == {"label": "no"} and records["i4#v1"]["tier"] == "batch"
    assert records["i0#v1"]["usage"] == {"input_tokens": 30, "output_tokens": 4}
    assert records["i1#v1"]["status"] == "failed" and "bad request" in records["i1#v1"]["error"]
    assert records["i2#v1"]["status"] == "invalid" and records["i2#v1"]["truncated"] is True
    assert records["i3#v1"]["status"] == "invalid" and "i5#v1" not in records
    assert store.completed(0) == {"i0#v1"} and store.completed(1) == {"i4#v1"}
    # and the batches with tasks left are what the on-demand Map runs
    assert joined["pending"] == 4 and joined["batches"] == ranges
    summary = joined["batch_inference"]
    assert (summary["answered"], summary["failed_records"], summary["unknown_records"]) == (2, 3, 1)
    assert store.get_json("plan.json")["tier"]["batch_inference"] == summary


def test_a_distributed_run_rewrites_its_batch_list_to_the_batches_left(store: RunStore) -> None:
    ranges = [{"index": 0, "start": 0, "end": 2}, {"index": 1, "start": 2, "end": 4}]
    tasks = planned(store, [task(n) for n in range(4)], ranges, {})
    store.put_json("batches.json", ranges)
    (job,) = bi.write_inference_jobs(store, tasks, [0, 0, 1, 1], {}, "exec")
    store.put_json("plan.json", {"mode": "distributed", "counts": {"batches": 2}, "inference_jobs": [job.as_state()]})
    out = [{"recordId": bi.record_id(n), "modelOutput": converse_reply("fine")} for n in (0, 1)]
    key = output_key(job, "j")
    store.s3.put_object(Bucket=BUCKET, Key=key, Body="".join(json.dumps(line) + "\n" for line in out).encode())

    joined = bi.join_outputs(store, {"Error": "States.Runtime"})

    assert joined["batches"] == [] and joined["pending"] == 2
    assert store.get_json("batches.json") == [ranges[1]]
    assert "Map failed" in joined["batch_inference"]["jobs"]


def test_outputs_an_earlier_run_never_joined_are_recovered_once(store: RunStore) -> None:
    # Given an earlier run whose batch job wrote its output but whose execution stopped before the join
    tasks = planned(store, [task(n) for n in range(3)], [{"index": 0, "start": 0, "end": 3}], {})
    (job,) = bi.write_inference_jobs(store, tasks, [0, 0, 0], {}, "exec")
    plan = {"mode": "inline", "counts": {"batches": 1}, "tier": {"tier": "batch"}, "inference_jobs": [job.as_state()]}
    store.put_json("plan.json", plan)
    out = [{"recordId": bi.record_id(n), "modelOutput": converse_reply("fine")} for n in (2, 0)]
    key = output_key(job, "j")
    store.s3.put_object(Bucket=BUCKET, Key=key, Body="".join(json.dumps(line) + "\n" for line in out).encode())

    # When the re-run's Plan looks for them, twice
    first, second = bi.recover_outputs(store), bi.recover_outputs(store)

    # Then the answered tasks have their records (the re-run does not pay for them again), written once
    assert (first, second) == (2, 0)
    assert sorted(r["task_id"] for r in store.iter_records()) == ["i0#v1", "i2#v1"]


def test_nothing_is_recovered_after_a_join_or_without_batch_jobs(store: RunStore) -> None:
    assert bi.recover_outputs(store) == 0  # no earlier plan
    store.put_json("plan.json", {"tier": {"tier": "on_demand"}, "counts": {"batches": 0}})
    assert bi.recover_outputs(store) == 0
    store.put_json("plan.json", {"tier": {"tier": "batch", "batch_inference": {}}, "inference_jobs": [{"index": 0}]})
    assert bi.recover_outputs(store) == 0


def test_an_input_larger_than_an_upload_part_is_streamed_whole(store: RunStore) -> None:
    # Given tasks whose input file is over the 8 MB of one multipart upload part
    tasks = [{**task(n), "prompt": f"ticket {n} " + "x" * 90_000} for n in range(100)]
    (job,) = bi.write_inference_jobs(store, tasks, [0] * 100, {"inference": {"max_tokens": 20}}, "exec")
    body = store.s3.get_object(Bucket=BUCKET, Key=f"runs/job-1/{bi.folder(0)}input.jsonl")["Body"].read()
    # Then every record arrived, in order, each line whole
    assert len(body) > 8 * 1024 * 1024 and job.records == 100
    lines = [json.loads(line) for line in body.splitlines()]
    assert [line["recordId"] for line in lines] == [bi.record_id(n) for n in range(100)]
    assert all(line["modelInput"]["messages"][0]["content"][0]["text"].startswith(f"ticket {n} ") for n, line in enumerate(lines))
    # and the task list the join reads holds no prompt
    assert all("prompt" not in e["task"] for e in store.get_json(bi.folder(0) + "tasks.json")["records"])


def test_a_budget_admits_tasks_in_order_and_a_model_under_the_minimum_records_gets_no_job(store: RunStore) -> None:
    from fanout_core.catalog import Rates

    # Given two models' tasks, the second model's dearer, and a budget for about six records of the first
    tasks = [task(n) for n in range(8)] + [task(n, "sim") for n in range(8, 12)]
    shared = {"inference": {"max_tokens": 40}}
    rates = {MODEL: Rates(1.0, 2.0, 1.0, 1.0), "sim": Rates(50.0, 50.0, 50.0, 50.0)}
    line = len(bi._line(task(0), shared, "R0000000000"))
    budget = bi.BatchBudget(6.5 * (line * 1.0 + 40 * 2.0) / 1e6, rates.get, 40)
    # When the inputs are written with a minimum of 3 records a job
    jobs = bi.write_inference_jobs(store, tasks, [0] * 12, shared, "exec", budget=budget, least=lambda model: 3)
    # Then the first six tasks go into the first model's job, in order, and everything after is left out
    assert [(j.model, j.records) for j in jobs] == [(MODEL, 6)]
    assert budget.refused == list(range(6, 12))
    assert budget.held_usd <= budget.limit_usd
    # and with a budget that lets only two of the first model's in, that model gets no job and its hold goes back
    small = bi.BatchBudget(2.5 * (line * 1.0 + 40 * 2.0) / 1e6, rates.get, 40)
    assert bi.write_inference_jobs(store, tasks, [0] * 12, shared, "exec", budget=small, least=lambda model: 3) == []
    assert small.refused == list(range(2, 12)) and small.held_usd == 0.0


def test_the_tasks_a_budget_left_out_are_failed_records_that_say_why(store: RunStore) -> None:
    from fanout_core.catalog import Rates

    tasks = [{**task(n), "key": f"k{n}"} for n in range(4)]
    budget = bi.BatchBudget(0.0, lambda model: Rates(1.0, 1.0, 1.0, 1.0), 10)
    assert bi.write_inference_jobs(store, tasks, [0, 0, 1, 1], {}, "exec", budget=budget) == []
    assert bi.write_budget_stopped(store, tasks, [0, 0, 1, 1], budget, "run-1") == 4
    records = store.finished_records(0) + store.finished_records(1)
    assert sorted(r["key"] for r in records) == ["k0", "k1", "k2", "k3"]
    assert all(r["status"] == "failed" and r["stopped"] == "budget" and r["run"] == "run-1" for r in records)
    assert all("limits.max_cost_usd" in r["error"] and r["attempts"] == 0 and "tier" not in r for r in records)


def test_the_default_polling_of_the_most_jobs_fits_the_execution_history() -> None:
    plan = bi.poll_plan(bi.DEFAULT_POLL_SECONDS, None, bi.MAX_JOBS)
    assert plan.note is None and plan.poll_seconds == bi.DEFAULT_POLL_SECONDS
    assert plan.max_polls * bi.EVENTS_PER_POLL * bi.MAX_JOBS <= bi.POLL_HISTORY_EVENTS < bi.HISTORY_EVENTS
    assert plan.max_polls * plan.poll_seconds >= bi.INFERENCE_MAX_HOURS * 3600


def test_a_poll_interval_too_short_for_the_history_is_raised_to_cover_the_window_and_says_why() -> None:
    # Given an interval of a minute for the most jobs a run polls: 1,800 looks each, far past the history quota
    assert bi.max_polls(60) * bi.EVENTS_PER_POLL * bi.MAX_JOBS > bi.HISTORY_EVENTS
    plan = bi.poll_plan(60, None, bi.MAX_JOBS)
    # Then the interval is raised to the least whose looks fit, and they still cover the window
    assert plan.poll_seconds > 60
    assert plan.max_polls * bi.EVENTS_PER_POLL * bi.MAX_JOBS <= bi.POLL_HISTORY_EVENTS
    assert plan.max_polls * plan.poll_seconds >= bi.INFERENCE_MAX_HOURS * 3600
    assert bi.poll_plan(plan.poll_seconds - 1, None, bi.MAX_JOBS).poll_seconds == plan.poll_seconds  # the least
    assert plan.note is not None and "FANOUT_BATCH_POLL_SECONDS 60 is raised" in plan.note and "25,000" in plan.note
    # and with limits.deadline_hours the looks cover the deadline
    assert bi.poll_plan(bi.DEFAULT_POLL_SECONDS, None, 1, deadline_hours=24).max_polls == 24 * 3600 // 1800


def test_looks_given_or_at_a_local_interval_keep_the_interval_and_are_cut_to_fit() -> None:
    local = bi.poll_plan(0, None, 3)
    assert local.poll_seconds == 0 and local.max_polls * bi.EVENTS_PER_POLL * 3 <= bi.POLL_HISTORY_EVENTS
    given = bi.poll_plan(1800, 5_000, 2)
    assert given.poll_seconds == 1800 and given.max_polls * bi.EVENTS_PER_POLL * 2 <= bi.POLL_HISTORY_EVENTS
    assert given.note is not None and "FANOUT_BATCH_MAX_POLLS is cut" in given.note
    assert bi.poll_plan(0, 3, 1) == bi.PollPlan(0, 3)


def test_a_fallback_batch_in_its_own_lambda_has_its_share_of_what_the_jobs_left(store: RunStore) -> None:
    from fanout_core import steps
    from fanout_core.catalog import Rates
    from fanout_core.pacing import PacingSettings, batch_gates

    # Given a run whose jobs left 0.6 USD of a 1 USD budget, for 30 tasks, 10 of them in batch 2
    budget = bi.BatchBudget(1.0, lambda model: Rates(1.0, 1.0, 1.0, 1.0), 10)
    assert budget.admit(0, "sim", 100)  # the rates the jobs are held at: 1 USD per 1M tokens
    bi.write_budget_report(store, budget, [0] * 20 + [2] * 10)
    bi._settle_budget(store, bi.JoinOutcome(tokens={"sim": [400_000, 0]}), [(0, 20), (2, 10)])
    batch = {"index": 2, "pacing": {"run": "r", "max_cost_usd": 1.0, "tasks": 300, "after_batch_jobs": True}}

    # When the fallback batch 2 builds its gates in its own Lambda (nothing shared)
    shaped, asking = steps._after_batch_jobs(store, batch, 2, asking=99)
    gate = batch_gates(shaped, asking, PacingSettings(shared=False), None, lambda model: None)("sim")

    # Then its budget is its tasks' share of what the jobs left
    assert asking == 10
    assert gate.budget is not None and gate.budget.limit == pytest.approx(0.6 * 10 / 30)
    # and a batch of a run without batch jobs keeps its plan
    plain = {"index": 2, "pacing": {"run": "r", "max_cost_usd": 1.0, "tasks": 300}}
    assert steps._after_batch_jobs(store, plain, 2, asking=99) == (plain, 99)


ARN = "arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/"


def bedrock_client() -> Any:
    return boto3.client("bedrock", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")


def summary(name: str, job_id: str, status: str) -> dict[str, Any]:
    """A ListModelInvocationJobs summary with the members botocore's model requires."""
    import datetime as dt

    return {
        "jobArn": ARN + job_id,
        "jobName": name,
        "modelId": "m",
        "roleArn": "arn:aws:iam::123456789012:role/r",
        "status": status,
        "submitTime": dt.datetime(2026, 1, 1),
        "inputDataConfig": {"s3InputDataConfig": {"s3Uri": "s3://b/k.jsonl"}},
        "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": "s3://b/o/"}},
    }


def test_an_earlier_runs_jobs_are_looked_up_by_name_with_requests_botocores_model_takes(store: RunStore) -> None:
    from botocore.stub import Stubber

    # Given an earlier plan of two jobs (their tasks files list the request keys of their records)
    tasks = [{**task(n), "key": f"k{n}"} for n in range(4)]
    jobs = bi.write_inference_jobs(store, tasks, [0] * 4, {}, "exec-1", max_records=2)
    store.put_json("plan.json", {"tier": {"tier": "batch"}, "inference_jobs": [j.as_state() for j in jobs]})
    client = bedrock_client()
    # When Bedrock lists one still running (and a job whose name only contains the first's), the other not at all
    with Stubber(client) as stub:
        other = summary(jobs[0].job_name + "-x", "bbbbbbbbbbbb", "Completed")
        listed = {"invocationJobSummaries": [other, summary(jobs[0].job_name, "aaaaaaaaaaaa", "InProgress")]}
        stub.add_response("list_model_invocation_jobs", listed, {"nameContains": jobs[0].job_name})
        stub.add_response("list_model_invocation_jobs", {"invocationJobSummaries": []}, {"nameContains": jobs[1].job_name})
        found = bi.earlier_jobs(store, lambda: client)
        stub.assert_no_pending_responses()
    # Then the job of that very name is found, with its ARN, status and the keys of its records
    assert [(e.arn, e.status, e.keys, e.running) for e in found] == [(ARN + "aaaaaaaaaaaa", "InProgress", ("k0", "k1"), True)]
    assert found[0].job == jobs[0].as_state()
    # and without a client, or when Bedrock refuses the look-up, nothing is found and the run goes on
    assert bi.earlier_jobs(store, None) == []
    with Stubber(client) as stub:
        stub.add_client_error("list_model_invocation_jobs", "AccessDeniedException", http_status_code=403)
        assert bi.earlier_jobs(store, lambda: client) == []


def earlier(job_id: str, keys: tuple[str, ...], status: str = "InProgress", model_id: str = MODEL[8:]) -> bi.EarlierJob:
    return bi.EarlierJob({"index": 0, "job_name": f"fanout-{job_id}", "model_id": model_id}, ARN + job_id, status, keys)


def test_a_running_job_with_this_runs_very_requests_is_adopted_and_any_other_is_stopped() -> None:
    from botocore.stub import Stubber

    wanted = {"k0": MODEL, "k1": MODEL, "k2": MODEL, "k3": "sim"}
    same = earlier("aaaaaaaaaaa1", ("k0", "k1"))
    changed = earlier("aaaaaaaaaaa2", ("k2", "old"))  # one of its requests is not asked any more
    overlapping = earlier("aaaaaaaaaaa3", ("k1", "k2"))  # k1 is the adopted job's
    other_model = earlier("aaaaaaaaaaa4", ("k3",))
    ended = earlier("aaaaaaaaaaa5", ("k2",), status="Completed")
    client = bedrock_client()
    with Stubber(client) as stub:
        for job in (changed, overlapping, other_model):
            stub.add_response("stop_model_invocation_job", {}, {"jobIdentifier": job.arn})
        settled = bi.settle_earlier_jobs([same, changed, overlapping, other_model, ended], wanted, lambda: client)
        stub.assert_no_pending_responses()
    assert settled.adopted == [same]
    assert settled.stopped == [changed.arn, overlapping.arn, other_model.arn] and settled.not_stopped == []
    # and with nothing wanted (a budget, or another tier) every running job is stopped; a refusal is noted, not raised
    with Stubber(client) as stub:
        stub.add_client_error("stop_model_invocation_job", "ValidationException", http_status_code=400)
        refused = bi.settle_earlier_jobs([same], None, lambda: client)
    assert refused.adopted == [] and refused.not_stopped == [same.arn]


def test_an_adopted_jobs_records_are_joined_under_this_runs_batches(store: RunStore) -> None:
    # Given an earlier run's job over 3 tasks, all in its batch 0, adopted by a run that puts them in batches 1 and 2
    tasks = [{**task(n), "key": f"k{n}"} for n in range(3)]
    (job,) = bi.write_inference_jobs(store, tasks, [0, 0, 0], {}, "exec-1", run="run-1")
    adopted = bi.EarlierJob(job.as_state(), ARN + "aaaaaaaaaaaa", "InProgress", ("k0", "k1", "k2"))
    where = {"k0": (1, tasks[0]), "k1": (1, tasks[1]), "k2": (2, tasks[2])}
    (entry,) = bi.adopt_jobs(store, [adopted], where, "run-2")
    # Then the plan entry is the earlier job with its ARN, and its records now name this run's batches and run
    assert entry == {**job.as_state(), "job_arn": adopted.arn}
    listed = store.get_json(bi.folder(0) + "tasks.json")
    assert [(e["record_id"], e["batch"]) for e in listed["records"]] == [(bi.record_id(n), b) for n, b in enumerate((1, 1, 2))]
    assert listed["run"] == "run-2"


def test_jobs_of_two_runs_in_one_folder_write_their_outputs_apart(store: RunStore) -> None:
    # a job of an earlier run, stopped but still writing, cannot put lines where this run's job of that folder reads
    first = bi.write_inference_jobs(store, [task(0)], [0], {}, "exec-1")[0]
    second = bi.write_inference_jobs(store, [task(0)], [0], {}, "exec-2")[0]
    assert first.index == second.index and first.input_uri == second.input_uri
    assert not first.output_uri.startswith(second.output_uri) and not second.output_uri.startswith(first.output_uri)


def two_job_run(store: RunStore) -> list[bi.InferenceJob]:
    """A planned run of 4 tasks in one batch, in two batch inference jobs of 2 records each."""
    ranges = [{"index": 0, "start": 0, "end": 4}]
    tasks = planned(store, [task(n) for n in range(4)], ranges, {})
    store.put_json("batches.json", ranges)
    jobs = bi.write_inference_jobs(store, tasks, [0] * 4, {}, "exec", max_records=2)
    store.put_json("plan.json", {"mode": "inline", "counts": {"batches": 1}, "tier": {"tier": "batch"},
                                 "inference_jobs": [j.as_state() for j in jobs]})  # fmt: skip
    return jobs


def write_output(store: RunStore, job: bi.InferenceJob, records: list[int]) -> None:
    out = [{"recordId": bi.record_id(n), "modelOutput": converse_reply("fine")} for n in records]
    store.s3.put_object(Bucket=BUCKET, Key=output_key(job, "j"), Body="".join(json.dumps(x) + "\n" for x in out).encode())


def listed(stub: Any, job: bi.InferenceJob, arn: str, status: str) -> None:
    """ListModelInvocationJobs, asked for the job's name, answers with its job at ``status``."""
    found = {"invocationJobSummaries": [summary(job.job_name, arn.rsplit("/", 1)[1], status)]}
    stub.add_response("list_model_invocation_jobs", found, {"nameContains": job.job_name})


def looked_at(stub: Any, job: bi.InferenceJob, arn: str, status: str) -> None:
    """GetModelInvocationJob, asked for the job's ARN, answers ``status``."""
    stub.add_response("get_model_invocation_job", summary(job.job_name, arn.rsplit("/", 1)[1], status), {"jobIdentifier": arn})


def test_when_the_jobs_map_fails_the_join_stops_the_jobs_still_running_and_joins_what_they_wrote(store: RunStore) -> None:
    from botocore.stub import Stubber

    # Given a run of two jobs whose Map failed: job 0 still running (it answered one of its records), job 1 ended
    first, second = two_job_run(store)
    write_output(store, first, [0])
    write_output(store, second, [0, 1])
    running, ended = ARN + "aaaaaaaaaaa1", ARN + "aaaaaaaaaaa2"
    client, sleeps = bedrock_client(), []
    with Stubber(client) as stub:
        # When the outputs are joined: each job is found by its name, the running one stopped, and looked at until
        # it is Stopped (a poll interval between looks)
        listed(stub, first, running, "InProgress")
        listed(stub, second, ended, "Completed")
        stub.add_response("stop_model_invocation_job", {}, {"jobIdentifier": running})
        looked_at(stub, first, running, "Stopping")
        looked_at(stub, first, running, "Stopped")
        joined = bi.join_outputs(store, {"Error": "States.Runtime"}, lambda: client, sleep=sleeps.append)
        stub.assert_no_pending_responses()

    # Then what the stopped job wrote is joined, and only the task without an answer falls back
    assert sleeps == [bi.STOP_POLL_SECONDS]
    summary_ = joined["batch_inference"]
    assert summary_["stopped_jobs"] == {"stopped": [running]}
    assert summary_["answered"] == 3 and joined["pending"] == 1
    assert store.completed(0) == {"i0#v1", "i2#v1", "i3#v1"}


def test_the_join_looks_up_only_the_jobs_the_state_machine_did_not_see_end(store: RunStore) -> None:
    from botocore.stub import Stubber

    # Given a run whose job 0 ended and whose job 1 the state machine reported Stopped (a stop it sent, maybe refused)
    _, second = two_job_run(store)
    client = bedrock_client()
    statuses = [{"index": 0, "status": "Completed"}, {"index": 1, "status": "Stopped"}]
    with Stubber(client) as stub:
        # When it is joined, Bedrock says job 1 still runs: it is stopped now; job 0 is not asked about
        listed(stub, second, ARN + "aaaaaaaaaaa2", "InProgress")
        stub.add_response("stop_model_invocation_job", {}, {"jobIdentifier": ARN + "aaaaaaaaaaa2"})
        looked_at(stub, second, ARN + "aaaaaaaaaaa2", "Stopped")
        joined = bi.join_outputs(store, statuses, lambda: client, sleep=lambda _: None)
        stub.assert_no_pending_responses()
    assert joined["batch_inference"]["stopped_jobs"] == {"stopped": [ARN + "aaaaaaaaaaa2"]}

    # and when every job ended, or there is no client, Bedrock is asked nothing (the Stubber has no answers)
    with Stubber(client):
        ended = [{"index": 0, "status": "Completed"}, {"index": 1, "status": "Expired"}]
        assert "stopped_jobs" not in bi.join_outputs(store, ended, lambda: client)["batch_inference"]
    assert "stopped_jobs" not in bi.join_outputs(store, {"Error": "States.Runtime"}, None)["batch_inference"]


def test_a_job_still_stopping_when_the_wait_ends_is_named_and_the_join_goes_on(store: RunStore) -> None:
    from botocore.stub import Stubber

    # Given a failed Map's job that Bedrock keeps Stopping past the join's wait
    first, second = two_job_run(store)
    arn = ARN + "aaaaaaaaaaa1"
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds

    client = bedrock_client()
    looks = int(bi.STOP_WAIT_SECONDS // bi.STOP_POLL_SECONDS) + 1
    with Stubber(client) as stub:
        listed(stub, first, arn, "Stopping")
        stub.add_response("list_model_invocation_jobs", {"invocationJobSummaries": []}, {"nameContains": second.job_name})
        for _look in range(looks):
            looked_at(stub, first, arn, "Stopping")
        settled = bi.stop_unfinished_jobs(store, store.get_json("plan.json"), {"Error": "x"}, lambda: client, sleep=sleep,
                                          clock=lambda: now[0])  # fmt: skip
        stub.assert_no_pending_responses()
    # Then it was looked at for the whole wait, no longer, and is named as still stopping (it was not stopped again)
    assert now[0] == bi.STOP_WAIT_SECONDS
    assert settled.stopped == [] and settled.stopping == [arn]
