"""run_batch with a fake store and fake providers: one record per task, the retry table, resuming, bounded concurrency."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

import pytest

from fanout_core.contracts import expand
from fanout_core.errors import ModelThrottled
from fanout_core.job import parse_job
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest
from fanout_core.runner import RetryPolicy, run_batch
from fanout_core.steps import first_run_batches
from tests.fakes import MemoryRunStore

SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}
POLICY = RetryPolicy(max_attempts=3, base_seconds=0.001, cap_seconds=0.002, timeout_retries=1)
RECORD_FIELDS = {"task_id", "item_id", "status", "output", "error", "model", "usage", "latency_ms", "attempts"}


def no_sleep(seconds: float) -> None:
    return None


FakeStore = MemoryRunStore


class ScriptedProvider:
    """Answers each task from a script: a list of outcomes per task id (a ModelError is raised), then `default`."""

    name = "fake"

    def __init__(self, script: dict[str, list[Any]] | None = None, default: Any = None, delay: float = 0.0) -> None:
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.default = {"label": "yes"} if default is None else default
        self.delay = delay
        self.calls: Counter[str] = Counter()
        self.requests: list[ModelRequest] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        with self._lock:
            self.calls[request.task_id] += 1
            self.requests.append(request)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            queue = self.script.get(request.task_id)
            outcome = queue.pop(0) if queue else self.default
        try:
            if self.delay:
                time.sleep(self.delay)
            if isinstance(outcome, ModelError):
                raise outcome
            return ModelReply(output=outcome, input_tokens=10, output_tokens=3, model="fake-model")
        finally:
            with self._lock:
                self.in_flight -= 1


def throttled() -> ModelError:
    return ModelError("ThrottlingException", "slow down", "throttled")


def make_batch(
    item_ids: list[str], votes: int = 2, schema: dict[str, Any] | None = SCHEMA, pattern: str = "voting"
) -> dict[str, Any]:
    data: dict[str, Any] = {
        "job_id": "j",
        "pattern": pattern,
        "items": [{"id": i, "text": f"text {i}"} for i in item_ids],
        "inference": {"max_tokens": 32, "temperature": 0.5},
        "system": "be brief",
    }
    if pattern == "voting":
        data.update(votes=votes, prompt="Label: {text}")
        if schema is not None:
            data.update(output_schema=schema, aggregate={"field": "label"})
    else:
        data.update(sections=[{"name": "risks", "prompt": "Risks: {text}"}, {"name": "upside", "prompt": "Upside: {text}"}])
        if schema is not None:
            data.update(output_schema=schema)
    job = parse_job(data)
    # built as Plan builds them: the items' inputs once, each task a stub its prompt is rendered from
    (batch,) = first_run_batches(job, job.items or [], "fake")
    return dict(batch)


def run(batch: dict[str, Any], store: FakeStore, provider: ScriptedProvider, threads: int = 4) -> dict[str, int]:
    outcome = run_batch(batch, store=store, provider_for=lambda spec: provider, threads=threads, policy=POLICY, sleep=no_sleep)
    return outcome.counts


def test_every_task_gets_exactly_one_record_with_the_contract_fields() -> None:
    # Given a voting batch of 3 items x 2 votes
    batch = make_batch(["a", "b", "c"])
    store, provider = FakeStore(), ScriptedProvider()

    # When it runs
    counts = run(batch, store, provider)

    # Then each task has one record, written once, with every field of the record contract
    assert sorted(store.puts) == sorted((t["item_id"], t["slot"]) for t in expand(batch))
    assert len(store.puts) == len(set(store.puts)) == 6
    for task in expand(batch):
        record = store.records[(task["item_id"], task["slot"])]
        assert set(record) >= RECORD_FIELDS
        assert record["task_id"] == task["task_id"]
        assert record["vote"] == int(task["slot"][1:])
        assert record["status"] == "ok" and record["error"] is None
        assert record["output"] == {"label": "yes"}
        assert record["model"] == task["model"]  # the spec that was asked for
        assert record["usage"] == {"input_tokens": 10, "output_tokens": 3}
        assert record["attempts"] == 1
        assert isinstance(record["latency_ms"], (int, float)) and record["latency_ms"] >= 0
    assert counts["ok"] == counts["tasks"] == counts["model_calls"] == 6
    assert counts["input_tokens"] == 60 and counts["output_tokens"] == 18


def test_sectioning_records_name_their_section() -> None:
    batch = make_batch(["a"], pattern="sectioning", schema=None)
    store = FakeStore()

    run(batch, store, ScriptedProvider(default="some text"))

    assert {r["section"] for r in store.records.values()} == {"risks", "upside"}
    assert all("vote" not in r for r in store.records.values())


def test_the_request_carries_the_batch_settings() -> None:
    batch = make_batch(["a"], votes=2)
    provider = ScriptedProvider()

    run(batch, FakeStore(), provider)

    request = provider.requests[0]
    assert request.prompt == "Label: text a"
    assert request.system == "be brief"
    assert request.output_schema == SCHEMA
    assert request.max_tokens == 32 and request.temperature == 0.5
    assert request.answer_field == "label"


def test_throttled_then_ok_is_retried() -> None:
    batch = make_batch(["a"])
    store = FakeStore()
    provider = ScriptedProvider({"a#v1": [throttled()]})

    counts = run(batch, store, provider)

    record = store.records[("a", "v1")]
    assert record["status"] == "ok"
    assert record["attempts"] == 2
    assert provider.calls["a#v1"] == 2
    assert store.puts.count(("a", "v1")) == 1
    assert counts["model_calls"] == 3  # 2 for a#v1, 1 for a#v2


def test_transient_errors_are_retried_up_to_the_budget_then_fail() -> None:
    transient = ModelError("ServiceUnavailableException", "try later", "transient")
    batch = make_batch(["a"])
    store = FakeStore()
    provider = ScriptedProvider({"a#v1": [transient] * 10})

    run(batch, store, provider)

    record = store.records[("a", "v1")]
    assert record["status"] == "failed"
    assert record["attempts"] == POLICY.max_attempts
    assert record["error"].startswith("ServiceUnavailableException")


def test_permanent_throttling_raises_and_keeps_finished_records() -> None:
    # Given a batch where one task is throttled on every attempt
    batch = make_batch(["a", "b"])
    store = FakeStore()
    provider = ScriptedProvider({"b#v2": [throttled()] * 100})

    # When it runs
    with pytest.raises(ModelThrottled) as caught:
        run(batch, store, provider)

    # Then the batch is reported throttled, the other tasks are recorded, the throttled one is not
    assert "1 of 4 tasks" in str(caught.value)
    assert set(store.records) == {("a", "v1"), ("a", "v2"), ("b", "v1")}
    assert all(r["status"] == "ok" for r in store.records.values())
    assert provider.calls["b#v2"] == POLICY.max_attempts


def test_a_second_run_calls_the_model_only_for_tasks_without_an_ok_record() -> None:
    # Given a first run that ended throttled on one task
    batch = make_batch(["a", "b"])
    store = FakeStore()
    with pytest.raises(ModelThrottled):
        run(batch, store, ScriptedProvider({"b#v2": [throttled()] * 100}))

    # When the batch is run again with a healthy model
    second = ScriptedProvider()
    counts = run(batch, store, second)

    # Then only the unfinished task is called, and every task now has an ok record
    assert dict(second.calls) == {"b#v2": 1}
    assert counts["skipped"] == 3 and counts["ok"] == 1 and counts["model_calls"] == 1
    assert len(store.records) == 4 and all(r["status"] == "ok" for r in store.records.values())


def test_a_batch_retry_does_not_ask_a_failed_task_again() -> None:
    # a failed record is final (it had its own retries): a retry of the batch, whatever its cause, leaves it
    batch = make_batch(["a", "b"])
    store = FakeStore()
    with pytest.raises(ModelThrottled):
        run(
            batch,
            store,
            ScriptedProvider({"a#v1": [ModelError("ValidationException", "bad", "permanent")], "b#v1": [throttled()] * 100}),
        )
    assert store.records[("a", "v1")]["status"] == "failed"

    second = ScriptedProvider()
    run(batch, store, second)

    assert dict(second.calls) == {"b#v1": 1}  # only the task without a final record
    assert store.records[("a", "v1")]["status"] == "failed"


def test_a_permanent_error_fails_the_task_at_once() -> None:
    batch = make_batch(["a"])
    store = FakeStore()
    provider = ScriptedProvider({"a#v1": [ModelError("ValidationException", "max_tokens too large", "permanent")]})

    counts = run(batch, store, provider)

    record = store.records[("a", "v1")]
    assert record["status"] == "failed"
    assert record["attempts"] == 1
    assert record["output"] is None
    assert "ValidationException" in record["error"]
    assert provider.calls["a#v1"] == 1
    assert counts["failed"] == 1 and counts["ok"] == 1


def test_a_timeout_is_retried_exactly_once() -> None:
    timeout = ModelError("ReadTimeout", "no answer in 60 s", "timeout")
    batch = make_batch(["a"])
    store = FakeStore()
    provider = ScriptedProvider({"a#v1": [timeout, timeout, timeout], "a#v2": [timeout]})

    run(batch, store, provider)

    # a#v1 timed out twice: one retry, then failed
    assert provider.calls["a#v1"] == 2
    assert store.records[("a", "v1")]["status"] == "failed"
    assert store.records[("a", "v1")]["error"].startswith("ReadTimeout")
    # a#v2 timed out once: the retry answered
    assert provider.calls["a#v2"] == 2
    assert store.records[("a", "v2")]["status"] == "ok"
    assert store.records[("a", "v2")]["attempts"] == 2


def test_an_output_missing_the_schema_is_invalid_with_the_error_path() -> None:
    batch = make_batch(["a"])
    store = FakeStore()
    provider = ScriptedProvider(default={"label": "maybe"})

    counts = run(batch, store, provider)

    record = store.records[("a", "v1")]
    assert record["status"] == "invalid"
    assert record["error"].startswith("output.label:")
    assert "maybe" in record["error"]
    assert record["output"] == {"label": "maybe"}
    assert counts["invalid"] == 2 and counts["ok"] == 0
    # every call made for the task is counted in its attempts
    assert record["attempts"] == provider.calls["a#v1"]


def test_an_output_that_is_not_an_object_is_invalid() -> None:
    batch = make_batch(["a"], votes=2)
    store = FakeStore()

    run(batch, store, ScriptedProvider(default="yes"))

    assert store.records[("a", "v1")]["status"] == "invalid"
    assert "not a JSON object" in store.records[("a", "v1")]["error"]


def test_without_a_schema_any_output_is_ok() -> None:
    batch = make_batch(["a"], schema=None)
    store = FakeStore()

    run(batch, store, ScriptedProvider(default="free text answer"))

    assert {r["status"] for r in store.records.values()} == {"ok"}
    assert store.records[("a", "v1")]["output"] == "free text answer"


def test_never_more_than_threads_calls_in_flight() -> None:
    # Given 24 tasks and a model that takes a moment per call
    batch = make_batch([f"i{n}" for n in range(12)], votes=2)
    provider = ScriptedProvider(delay=0.01)

    # When the batch runs with 3 threads
    run(batch, FakeStore(), provider, threads=3)

    # Then calls overlapped, but never more than 3 at once
    assert provider.max_in_flight <= 3
    assert provider.max_in_flight >= 2
    assert sum(provider.calls.values()) == 24


def test_outcome_counts_add_up_for_a_mixed_batch() -> None:
    batch = make_batch(["a", "b"])
    provider = ScriptedProvider(
        {
            "a#v2": [{"label": "nope"}, {"label": "nope"}],
            "b#v1": [ModelError("AccessDeniedException", "no access", "permanent")],
        }
    )

    counts = run(batch, FakeStore(), provider)

    assert counts["tasks"] == 4
    assert (counts["ok"], counts["invalid"], counts["failed"]) == (2, 1, 1)
    assert counts["model_calls"] == sum(provider.calls.values())
