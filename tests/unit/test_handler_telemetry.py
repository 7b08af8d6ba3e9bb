"""The handlers' logs and metrics: job id and execution as correlation keys, the model-call metrics (calls,
throttles, retries, tokens, latency), and no prompt or output in any log line unless FANOUT_LOG_CONTENT says so."""

from __future__ import annotations

import contextlib
import json
import sys
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fanout_core.handlers import _clients, plan, subtask
from fanout_core.observability import TASKS_FAILED, TASKS_INVALID, TASKS_OK, ModelCalls, count, logger, metrics
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest

RESULTS = "fanout-results"
SECRET = "ITEM-TEXT-NOBODY-SHOULD-READ-IN-LOGS"
JOB = {
    "job_id": "triage-1",
    "pattern": "voting",
    "votes": 3,
    # the simulator throttles some attempts (deterministic for the seed); the runner retries them in the batch
    "model": "sim:latency_ms=1,jitter_ms=0,throttle_rate=0.3,seed=11",
    "prompt": "Classify this ticket: {text}",
    "items": [{"id": f"t-{n}", "text": f"{SECRET} #{n}"} for n in range(4)],
    "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}},
    "aggregate": {"strategy": "majority", "field": "label"},
}


@dataclass
class FakeContext:
    function_name: str = "fanout-test"
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = "arn:aws:lambda:us-east-1:123456789012:function:fanout-test"
    aws_request_id: str = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 900_000


@pytest.fixture(autouse=True)
def powertools(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # metrics on (the local runtime turns them off), logs at INFO whatever an earlier test set
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    monkeypatch.setenv("POWERTOOLS_DEV", "false")
    level = logger.log_level
    stream = logger.registered_handler.stream  # type: ignore[attr-defined]
    logger.setLevel("INFO")
    metrics.clear_metrics()
    yield
    metrics.clear_metrics()
    logger.setLevel(level)
    # assigned, not setStream(): that would flush the captured stream, closed by now
    logger.registered_handler.stream = stream  # type: ignore[attr-defined]


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name, value in {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "FANOUT_RESULTS_BUCKET": RESULTS,
        "FANOUT_LOG_CONTENT": "false",
    }.items():
        monkeypatch.setenv(name, value)
    with mock_aws():
        _clients.s3.cache_clear()
        boto3.client("s3").create_bucket(Bucket=RESULTS)
        yield
    _clients.s3.cache_clear()


def _run_job(capsys: pytest.CaptureFixture[str]) -> tuple[list[dict[str, Any]], dict[str, list[float]], str]:
    """Plan the job and run its first batch through the handlers; (log lines, metric values by name, raw output)."""
    # the log handler keeps the stream it was given: give it the one captured now
    logger.registered_handler.stream = sys.stdout  # type: ignore[attr-defined]
    planned = plan.lambda_handler({"input": JOB, "execution": "exec-42"}, FakeContext())
    batch = planned["batches"][0]
    event = {"job_id": planned["job_id"], "run_uri": planned["run_uri"], "threads": 4, "batch": batch, "retry": 0}
    subtask.lambda_handler(event, FakeContext())
    output = capsys.readouterr().out
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    values: dict[str, list[float]] = defaultdict(list)
    for emf in (line for line in lines if "_aws" in line):
        for definition in emf["_aws"]["CloudWatchMetrics"][0]["Metrics"]:
            value = emf[definition["Name"]]
            values[definition["Name"]].extend(value if isinstance(value, list) else [value])
    return [line for line in lines if "level" in line], values, output


def test_logs_carry_the_job_and_execution_and_never_the_items_or_outputs(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    # When a job is planned and a batch is run
    logs, _, output = _run_job(capsys)

    # Then every line after the plan names the job, the plan's also the execution, the batch's its index
    planned = next(line for line in logs if line["message"] == "planned")
    assert (planned["job_id"], planned["execution"]) == ("triage-1", "exec-42")
    done = next(line for line in logs if line["message"] == "batch done")
    assert (done["job_id"], done["batch"]) == ("triage-1", 0)

    # and no item text (so no prompt, no output) appears anywhere, logs and metrics alike
    assert SECRET not in output


def test_the_debug_setting_logs_prompts_and_outputs(
    aws: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FANOUT_LOG_CONTENT", "true")
    logs, _, _ = _run_job(capsys)
    content = [line for line in logs if line["message"] == "model call content"]
    assert content and all(SECRET in line["prompt"] for line in content)
    assert any(line.get("output") for line in content)


def test_a_batch_publishes_task_outcomes_and_model_call_metrics(aws: None, capsys: pytest.CaptureFixture[str]) -> None:
    _, values, _ = _run_job(capsys)
    total = {name: sum(v) for name, v in values.items()}

    # the batch's tasks, by outcome
    assert total["tasks_planned"] == 12
    assert total["tasks_ok"] + total["tasks_invalid"] + total["tasks_failed"] == len(_first_batch_tasks())
    # every call, the throttled ones among them, each retried within the budget
    assert total["throttles"] >= 1, "the seed should make the simulator throttle at least once"
    assert total["retries"] == total["throttles"]
    assert total["model_calls"] >= len(_first_batch_tasks()) + total["throttles"]
    # one latency value per call, in milliseconds; tokens both ways
    assert len(values["call_latency"]) == total["model_calls"]
    assert total["input_tokens"] > 0 and total["output_tokens"] > 0


def test_model_calls_tell_retries_from_second_calls_after_a_success() -> None:
    # Given a provider that throttles task a twice, then answers; and answers task b twice (a repair request)
    class Scripted:
        name = "scripted"

        def __init__(self) -> None:
            self.errors = {"a": 2}

        def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
            if self.errors.get(request.task_id, 0):
                self.errors[request.task_id] -= 1
                raise ModelError("ThrottlingException", "slow down", "throttled")
            return ModelReply(output={"label": "yes"}, input_tokens=7, output_tokens=2, model="m")

    calls = ModelCalls()
    provider = calls.observe(lambda spec: Scripted())("scripted")

    # When the runner's calls are made
    for attempt in (1, 2, 3):
        with contextlib.suppress(ModelError):
            provider.invoke(ModelRequest(task_id="a", prompt="p"), attempt)
    for attempt in (1, 2):
        provider.invoke(ModelRequest(task_id="b", prompt="p"), attempt)

    # Then all five are counted and timed, two throttled, two retries (b's second call follows a success)
    assert (calls.calls, calls.throttles, calls.retries) == (5, 2, 2)
    assert (calls.input_tokens, calls.output_tokens) == (21, 6)
    assert len(calls.latencies_ms) == 5


def test_metrics_stay_off_where_the_local_runtime_turns_them_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")
    calls = ModelCalls()
    calls.calls = 1
    calls.publish()
    assert metrics.metric_set == {}


def test_disabled_metrics_never_reach_stdout_however_many_batches_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given metrics off, as in a local run
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")

    # When 150 batches each count their outcomes (Powertools prints a metric set once it holds 100 values)
    for _ in range(150):
        for name in (TASKS_OK, TASKS_INVALID, TASKS_FAILED):
            count(name, 1)

    # Then nothing was printed and nothing piled up
    assert capsys.readouterr().out == ""
    assert metrics.metric_set == {}


def _first_batch_tasks() -> list[str]:
    # 4 items x 3 votes in one batch (a small job is one batch)
    return [f"t-{n}#v{v}" for n in range(4) for v in range(3)]
