"""contracts.new_record, the one constructor of a task record: what each writer's records hold, and that every field
they write is declared in contracts.Record (what a reader and mypy take a record's shape from)."""

from __future__ import annotations

from typing import Any

import pytest

from fanout_core.batch_inference import record_from_output
from fanout_core.contracts import Record, expand, new_record, pending_count, pending_task_ids
from fanout_core.job import parse_job
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest
from fanout_core.runner import RetryPolicy, run_batch
from fanout_core.steps import first_run_batches
from fanout_core.validation import SchemaCheck
from tests.factories import batch_for
from tests.fakes import MemoryRunStore

DECLARED = Record.__required_keys__ | Record.__optional_keys__
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}


def _task(kind: str, slot: str) -> dict[str, Any]:
    return {"task_id": f"i1#{slot}", "item_id": "i1", "slot": slot, "kind": kind, "model": "sim", "prompt": "p"}


@pytest.mark.parametrize(
    ("kind", "slot", "named"),
    [("vote", "v3", {"vote": 3}), ("section", "risks", {"section": "risks"}), ("judge", "judge:ab12", {"kind": "judge"})],
)
def test_a_record_names_its_vote_section_or_second_pass_kind(kind: str, slot: str, named: dict[str, Any]) -> None:
    # Given a task of each kind
    task = _task(kind, slot)

    # When its record is built
    record = new_record(task, "ok", {"label": "yes"}, None, model="sim", attempts=1, latency_ms=12.5)

    # Then it holds the task's identity and outcome, and the one field that says what the task was
    assert record == {
        "task_id": task["task_id"],
        "item_id": "i1",
        "slot": slot,
        "status": "ok",
        "output": {"label": "yes"},
        "error": None,
        "model": "sim",
        "usage": {"input_tokens": 0, "output_tokens": 0},
        "latency_ms": 12.5,
        "attempts": 1,
        **named,
    }


def test_tier_usage_and_flags_appear_only_when_given() -> None:
    # Given a vote bought at tier batch, cut off, from the simulator
    task = _task("vote", "v1")

    # When its record is built with and without those
    plain = new_record(task, "failed", None, "boom", model="sim", attempts=0)
    bought = new_record(
        task,
        "invalid",
        None,
        "cut off",
        model="sim",
        attempts=1,
        usage={"input_tokens": 7, "output_tokens": 2, "cache_read_input_tokens": 5},
        tier="batch",
        synthetic=True,
        truncated=True,
    )

    # Then the plain one has none of them, the other each, and usage keeps input and output tokens
    assert not {"tier", "synthetic", "truncated"} & set(plain)
    assert plain["usage"] == {"input_tokens": 0, "output_tokens": 0} and plain["latency_ms"] == 0.0
    assert bought["tier"] == "batch" and bought["synthetic"] is True and bought["truncated"] is True
    assert bought["usage"] == {"input_tokens": 7, "output_tokens": 2}


class _Provider:
    """ok for v1, an out-of-schema answer for v2 (repaired), a cut-off answer for v3, a refusal for v4."""

    name = "fake"

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        slot = request.task_id.split("#")[1]
        if slot == "v4":
            raise ModelError("ValidationException", "no", "client")
        if slot == "v3":
            return ModelReply(output="cut", input_tokens=3, output_tokens=3, model="m", truncated=True)
        if slot == "v2" and "previous answer" not in request.prompt.lower():
            return ModelReply(output={"label": "maybe"}, input_tokens=3, output_tokens=3, model="m")
        return ModelReply(output={"label": "yes"}, input_tokens=3, output_tokens=3, model="m", synthetic=True)


def test_every_field_runbatch_and_tier_batch_write_is_declared_in_the_record_contract() -> None:
    # Given a batch whose votes end ok, repaired, cut off and failed at tier flex, and one whose votes stop early
    def batch_of(votes: int, aggregate: dict[str, Any]) -> dict[str, Any]:
        data = {"job_id": "j", "pattern": "voting", "votes": votes, "prompt": "Label: {text}", "output_schema": SCHEMA}
        job = parse_job({**data, "aggregate": aggregate, "items": [{"id": "i1", "text": "t"}]})
        (batch,) = first_run_batches(job, job.items or [], "sim")
        return {**batch, "tier": "flex"}

    batch = batch_of(4, {"field": "label"})
    stopping = batch_of(5, {"field": "label", "stop_when_agree": 2})
    store, stopped = MemoryRunStore(), MemoryRunStore()

    # When RunBatch runs them, and tier batch turns output lines into records
    for each, into in ((batch, store), (stopping, stopped)):
        run_batch(
            each,
            store=into,
            provider_for=lambda spec: _Provider(),
            threads=1,
            policy=RetryPolicy(max_attempts=1, base_seconds=0, cap_seconds=0),
            sleep=lambda s: None,
            run="exec-1",
        )
    task = expand(batch)[0]
    check = SchemaCheck(SCHEMA)
    lines = [
        {"modelOutput": {"output": {"message": {"content": [{"text": '{"label": "yes"}'}]}}, "usage": {"inputTokens": 1}}},
        {"modelOutput": {"stopReason": "max_tokens", "usage": {"inputTokens": 1}}},
        {"error": {"errorCode": 400, "errorMessage": "bad"}},
    ]
    bought = [record_from_output(dict(task), line, check) for line in lines]

    # Then the records are of every outcome, and no field of any of them is missing from contracts.Record
    written = [*store.records.values(), *stopped.records.values()]
    assert {r["status"] for r in written} == {"ok", "invalid", "failed", "skipped"}
    assert any("stop" in r for r in written) and all(r["tier"] == "flex" for r in written if r["attempts"])
    assert any("repaired" in r for r in written) and any(r.get("truncated") for r in written)
    assert {r["status"] for r in bought} == {"ok", "invalid", "failed"}
    for record in [*written, *bought]:
        assert set(record) <= DECLARED, set(record) - DECLARED


@pytest.mark.parametrize("pattern", ["voting", "sectioning"])
def test_the_test_batch_factory_builds_the_batch_plan_writes(pattern: str) -> None:
    # Given a job's batch as Plan writes it, and its tasks without their request keys
    data: dict[str, Any] = {"job_id": "j", "pattern": pattern, "system": "be brief", "inference": {"max_tokens": 9}}
    if pattern == "voting":
        data.update(votes=3, prompt="Label: {text}", output_schema=SCHEMA, aggregate={"field": "label"})
    else:
        data.update(sections=[{"name": "risks", "prompt": "Risks: {text}"}, {"name": "upside", "prompt": "Up: {text}"}])
    job = parse_job({**data, "items": [{"id": f"i{n}", "text": f"t{n}", "expected": "yes"} for n in range(3)]})
    (planned,) = first_run_batches(job, job.items or [], "sim")
    tasks = [{k: v for k, v in t.items() if k != "key"} for t in expand(planned)]
    shared = {k: v for k, v in planned.items() if k not in ("job_id", "index", "kind", "templates", "items")}

    # When tests.factories builds a batch of those tasks
    built = batch_for(tasks, **shared)

    # Then RunBatch expands it to the same tasks, with the same prompts and request keys
    assert expand(built) == expand(planned)


def test_pending_count_counts_the_tasks_a_batch_file_asks_for() -> None:
    # Given a batch of items whose stubs include some an earlier run answered, and a second pass's batch of tasks
    slots = [(f"i{n // 3}", f"v{n % 3 + 1}") for n in range(9)]
    tasks = [_task("vote", slot) | {"task_id": f"{item}#{slot}", "item_id": item} for item, slot in slots]
    batch = batch_for(tasks)
    for entry in batch["items"]:
        entry["tasks"][0]["done"] = "ok"  # type: ignore[typeddict-unknown-key]
    second = {"index": 200, "tasks": [_task("judge", "judge:ab12")]}

    # Then the count is the number of ids pending_task_ids lists, the answered stubs left out
    assert pending_count(batch) == len(pending_task_ids(batch)) == 6
    assert pending_count(second) == len(pending_task_ids(second)) == 1
