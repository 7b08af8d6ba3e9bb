"""Records keyed by request: Plan, RunBatch and Aggregate in-process on moto, run after run of one job_id.

A re-run, or a changed job under the same job_id, asks the model only for the requests that changed; early
stopping decides from every vote an item has, whichever run answered it; a retry (of a batch or of the job)
never asks again a request whose record is final, and every call is counted in result.json's usage.
"""

from __future__ import annotations

import copy
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from typing import Any

import pytest
from moto import mock_aws

from fanout_core import layout, runner, steps
from fanout_core.errors import BatchIncomplete, ModelThrottled
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest
from fanout_core.providers.simulator import Simulator
from fanout_core.settings import Settings

BUCKET = "fanout-reuse-results"
SETTINGS = Settings(results_bucket=BUCKET)
SIM = {"latency_ms": 0, "jitter_ms": 0, "accuracy": 0.75, "difficulty": 4, "seed": 5}
LABELS = ["positive", "neutral", "negative"]
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}}


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in credentials.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    # the retry table's backoff is not what these tests are about: no sleeping between attempts
    monkeypatch.setattr(steps, "run_batch", partial(runner.run_batch, sleep=lambda _: None))
    with mock_aws():
        import boto3

        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket=BUCKET)
        yield client


class Counting:
    """A provider that counts every call by task id; ``fault(request, attempt)`` may answer for the simulator."""

    name = "sim"

    def __init__(self, fault: Callable[[ModelRequest, int], ModelReply | None] | None = None) -> None:
        self.inner = Simulator(SIM)
        self.fault = fault
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        with self._lock:
            self.calls[request.task_id] += 1
        faulted = self.fault(request, attempt) if self.fault else None
        return faulted if faulted is not None else self.inner.invoke(request, attempt)


def run_job(s3: Any, job: dict[str, Any], execution: str, provider: Counting, batch_attempts: int = 5) -> dict[str, Any]:
    """One execution as the state machine runs it: Plan, each batch with its retries, Aggregate; result.json."""
    plan = steps.plan(copy.deepcopy(job), execution, s3=s3, settings=SETTINGS)
    manifest = json.loads(s3.get_object(Bucket=BUCKET, Key=plan["manifest_key"])["Body"].read())
    for entry in manifest:
        event = {"job_id": plan["job_id"], "run_uri": plan["run_uri"], "batch": entry, "threads": 4, "execution": execution}
        for _ in range(batch_attempts):
            try:
                steps.run_subtask(event, s3=s3, provider_for=lambda _: provider)
                break
            except (ModelThrottled, BatchIncomplete):
                continue
    # Aggregate, as the state machine loops on it: each second-pass stage it plans runs, then it aggregates
    aggregate = {"job_id": plan["job_id"], "run_uri": plan["run_uri"], "execution": execution}
    step: dict[str, Any] = {"stage": 0}
    while True:
        step = dict(
            steps.aggregate_step(
                {**aggregate, "second_pass": plan["second_pass"], "stage": step["stage"]}, s3=s3, settings=SETTINGS
            )
        )
        if step["status"] != "second_pass":
            break
        for entry in step.get("batches") or []:
            event = {"job_id": plan["job_id"], "run_uri": plan["run_uri"], "batch": entry, "threads": 4, "execution": execution}
            steps.run_subtask(event, s3=s3, provider_for=lambda _: provider)
    result: dict[str, Any] = json.loads(
        s3.get_object(Bucket=BUCKET, Key=layout.result_key(plan["job_id"], "result.json"))["Body"].read()
    )
    return result


def sectioning(prompt_of_regions: str = "Regions for: {text}") -> dict[str, Any]:
    return {
        "job_id": "reuse-sections",
        "pattern": "sectioning",
        "model": "sim",
        "sections": [
            {"name": "competitors", "prompt": "Competitors for: {text}"},
            {"name": "customers", "prompt": "Customers for: {text}"},
            {"name": "regions", "prompt": prompt_of_regions},
        ],
        "items": [{"id": f"brief-{n}", "text": f"product {n}"} for n in range(4)],
        "limits": {"batch_size": 3},  # several batches, an item's three sections in one
    }


def test_a_changed_section_asks_the_synthesis_again_and_an_unchanged_job_asks_nothing(s3: Any) -> None:
    # Given a sectioning job with a synthesis over its sections, run once
    job = {**sectioning(), "synthesis": {"prompt": "Combine these findings."}, "limits": {"mode": "inline"}}
    run_job(s3, job, "run-1", Counting())

    # When one section's prompt changes: that section's tasks and the synthesis over them are asked, nothing else
    changed = {**sectioning("Market potential across regions for: {text}"), "synthesis": job["synthesis"]}

    def new_regions(request: ModelRequest, attempt: int) -> ModelReply | None:
        # the edited prompt gets another answer (the simulator's depends on the task only)
        if request.task_id.endswith("#regions"):
            return ModelReply(output="regions, seen again", input_tokens=5, output_tokens=3, model="sim", synthetic=True)
        return None

    second = Counting(new_regions)
    result = run_job(s3, {**changed, "limits": {"mode": "inline"}}, "run-2", second)
    regions = {f"brief-{n}#regions" for n in range(4)}
    assert set(second.calls) - regions and all("synthesis" in t for t in set(second.calls) - regions)
    assert regions <= set(second.calls) and sum(second.calls.values()) == 5
    assert result["synthesis"]["text"]

    # and the same job again asks nothing, its synthesis the one run 2 made
    third = Counting()
    again = run_job(s3, {**changed, "limits": {"mode": "inline"}}, "run-3", third)
    assert not third.calls and again["synthesis"] == result["synthesis"]


def voting(votes: int = 3, **changes: Any) -> dict[str, Any]:
    job = {
        "job_id": "reuse-votes",
        "pattern": "voting",
        "model": "sim",
        "votes": votes,
        "prompt": "Classify: {text}",
        "inference": {"max_tokens": 8},
        "output_schema": SCHEMA,
        "aggregate": {"strategy": "majority", "field": "label"},
        "items": [{"id": f"i{n}", "text": "t", "expected": LABELS[n % 3]} for n in range(12)],
    }
    job.update(changes)
    return job


def test_a_job_re_run_with_one_section_prompt_changed_asks_only_that_section(s3: Any) -> None:
    # Given a sectioning job that ran once
    first = Counting()
    before = run_job(s3, sectioning(), "run-1", first)
    assert sum(first.calls.values()) == 12 and before["usage"]["model_calls"] == 12

    # When it runs again under the same job_id with the regions prompt edited
    second = Counting()
    after = run_job(s3, sectioning("Market potential across regions for: {text}"), "run-2", second)

    # Then only the regions tasks call the model; every other request is reused, and result.json says so
    assert set(second.calls) == {f"brief-{n}#regions" for n in range(4)}
    assert after["usage"]["model_calls"] == 4 and after["usage"]["requests_reused"] == 8
    assert after["status"] == "complete" and after["counts"]["ok"] == 12

    # and an unchanged job run a third time asks nothing
    third = Counting()
    again = run_job(s3, sectioning("Market potential across regions for: {text}"), "run-3", third)
    assert not third.calls and again["usage"]["model_calls"] == 0 and again["usage"]["requests_reused"] == 12


def test_more_votes_ask_only_the_new_votes_and_changed_inference_asks_all(s3: Any) -> None:
    run_job(s3, voting(3), "run-1", Counting())

    more = Counting()
    result = run_job(s3, voting(5), "run-2", more)
    assert {task.rpartition("#")[2] for task in more.calls} == {"v4", "v5"} and len(more.calls) == 24
    assert result["usage"]["requests_reused"] == 36

    hotter = Counting()
    run_job(s3, voting(5, inference={"max_tokens": 8, "temperature": 0.9}), "run-3", hotter)
    assert len(hotter.calls) == 60  # another inference setting is another request, for every vote


def stopping_job() -> dict[str, Any]:
    items = [{"id": f"i{n}", "text": "t", "expected": LABELS[n % 3]} for n in range(60)]
    return {**voting(5), "job_id": "reuse-stopping", "items": items, "aggregate": {**voting()["aggregate"], "stop_when_agree": 3}}


def test_early_stopping_decides_from_the_votes_an_earlier_run_answered(s3: Any) -> None:
    # Given the job run without faults, under another job_id: the calls it saves
    clean = Counting()
    baseline = run_job(s3, {**stopping_job(), "job_id": "reuse-stopping-clean"}, "clean-1", clean)
    assert baseline["usage"]["calls_saved"] > 0

    # When a first run has its first votes throttled past every retry (the run ends partial), and a second
    # run of the job_id finishes it with a healthy model
    def throttle_first_votes(request: ModelRequest, attempt: int) -> ModelReply | None:
        item, _, slot = request.task_id.rpartition("#")
        if slot == "v1" and int(item[1:]) % 2 == 0:
            raise ModelError("ThrottlingException", "slow down", "throttled")
        return None

    faulty = Counting(throttle_first_votes)
    partial_run = run_job(s3, stopping_job(), "run-1", faulty, batch_attempts=2)
    assert partial_run["status"] == "partial"
    healthy = Counting()
    finished = run_job(s3, stopping_job(), "run-2", healthy)

    # Then the votes run 1 answered count for run 2's decisions: the same calls saved as without faults, and no
    # vote was answered twice over the two runs
    assert finished["status"] == "complete"
    assert finished["usage"]["calls_saved"] == baseline["usage"]["calls_saved"]
    answered_first = {t for t in faulty.calls if not (t.endswith("#v1") and int(t[1:].split("#")[0]) % 2 == 0)}
    assert not answered_first & set(healthy.calls)
    assert len(answered_first) + len(healthy.calls) == sum(clean.calls.values())
    assert [i["answer"] for i in finished["items"]] == [i["answer"] for i in baseline["items"]]


def invalid_for(ids: set[str]) -> Callable[[ModelRequest, int], ModelReply | None]:
    """Outputs that miss the schema for the given tasks (their repair misses it too)."""

    def fault(request: ModelRequest, attempt: int) -> ModelReply | None:
        if request.task_id in ids:
            return ModelReply(output={"label": "maybe"}, input_tokens=5, output_tokens=2, model="sim", synthetic=True)
        return None

    return fault


def test_a_throttled_job_bills_its_invalid_outputs_exactly_twice(s3: Any) -> None:
    # Given invalid answers for two tasks, and a third task throttled past its budget in the batch's first invocation
    invalid = {"i0#v1", "i1#v2"}
    throttled_once: Counter[str] = Counter()

    def fault(request: ModelRequest, attempt: int) -> ModelReply | None:
        if request.task_id == "i2#v3" and throttled_once[request.task_id] < runner.RetryPolicy().max_attempts:
            throttled_once[request.task_id] += 1
            raise ModelError("ThrottlingException", "slow down", "throttled")
        return invalid_for(invalid)(request, attempt)

    provider = Counting(fault)

    # When the job runs: the batch raises ModelThrottled and its retry finishes it
    result = run_job(s3, voting(3), "run-1", provider)

    # Then each invalid task was asked twice (its call and one repair), not again by the retry
    assert {task: provider.calls[task] for task in invalid} == {"i0#v1": 2, "i1#v2": 2}
    assert provider.calls["i2#v3"] == runner.RetryPolicy().max_attempts + 1
    assert result["counts"]["invalid"] == 2 and result["counts"]["ok"] == 34
    # and every call is counted, the throttled attempts that left no record included
    assert result["usage"]["model_calls"] == sum(provider.calls.values())


def test_a_job_re_run_asks_failed_and_invalid_requests_again_only_with_retry_failed(s3: Any) -> None:
    def fault(request: ModelRequest, attempt: int) -> ModelReply | None:
        if request.task_id == "i3#v1":
            raise ModelError("ValidationException", "bad request", "permanent")
        return invalid_for({"i0#v1"})(request, attempt)

    run_job(s3, voting(3), "run-1", Counting(fault))

    # a plain re-run keeps the failed and invalid records: nothing is asked
    again = Counting()
    kept = run_job(s3, voting(3), "run-2", again)
    assert not again.calls and kept["counts"]["invalid"] == 1 and kept["counts"]["failed"] == 1

    # with retry_failed, exactly those two are asked again
    retried = Counting()
    result = run_job(s3, voting(3, retry_failed=True), "run-3", retried)
    assert dict(retried.calls) == {"i0#v1": 1, "i3#v1": 1}
    assert result["status"] == "complete" and result["usage"]["model_calls"] == 2
