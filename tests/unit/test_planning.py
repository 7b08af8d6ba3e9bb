"""Tasks and batches: stable ids, item-major order, concurrency never over the limit, every task in one batch."""

from __future__ import annotations

from typing import Any

import pytest

from fanout_core.errors import InvalidJob
from fanout_core.job import Job, parse_job
from fanout_core.planning import (
    MAX_ROUNDS_PER_BATCH,
    MAX_THREADS_PER_BATCH,
    batch_ranges,
    choose_batching,
    expand_tasks,
    fingerprint,
)

DEFAULT_MODEL = "sim"
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}


def voting_job(**changes: Any) -> Job:
    data: dict[str, Any] = {
        "job_id": "j1",
        "pattern": "voting",
        "votes": 3,
        "prompt": "Is this spam? {text}",
        "items": [{"id": "a", "text": "one"}, {"id": "b/2", "text": "two"}],
    }
    data.update(changes)
    return parse_job(data)


def sectioning_job(**changes: Any) -> Job:
    data: dict[str, Any] = {
        "job_id": "j2",
        "pattern": "sectioning",
        "sections": [{"name": "risks", "prompt": "Risks: {text}"}, {"name": "market size", "prompt": "Market: {text}"}],
        "items": [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}, {"id": "c", "text": "three"}],
    }
    data.update(changes)
    return parse_job(data)


def test_voting_task_ids_are_item_hash_vote_in_item_major_order() -> None:
    job = voting_job()

    tasks = expand_tasks(job, job.items or [], DEFAULT_MODEL)

    assert [t["task_id"] for t in tasks] == ["a#v1", "a#v2", "a#v3", "b/2#v1", "b/2#v2", "b/2#v3"]
    assert [t["slot"] for t in tasks[:3]] == ["v1", "v2", "v3"]
    assert {t["kind"] for t in tasks} == {"vote"}
    assert tasks[3]["prompt"] == "Is this spam? two"
    assert tasks[3]["item_index"] == 1


def test_sectioning_task_ids_are_item_hash_section_in_item_major_order() -> None:
    job = sectioning_job()

    tasks = expand_tasks(job, job.items or [], DEFAULT_MODEL)

    assert [t["task_id"] for t in tasks] == [
        "a#risks",
        "a#market size",
        "b#risks",
        "b#market size",
        "c#risks",
        "c#market size",
    ]
    assert tasks[1]["prompt"] == "Market: one"
    assert {t["kind"] for t in tasks} == {"section"}


def test_task_ids_are_distinct_and_split_back_into_item_and_slot() -> None:
    # Given item ids that themselves contain '#'
    job = sectioning_job(items=[{"id": "x#risks", "text": "1"}, {"id": "x", "text": "2"}])

    # When the tasks are expanded
    tasks = expand_tasks(job, job.items or [], DEFAULT_MODEL)

    # Then every id is distinct and its last '#' separates item from section
    ids = [t["task_id"] for t in tasks]
    assert len(set(ids)) == len(ids) == 4
    assert all(t["task_id"].rpartition("#")[::2] == (t["item_id"], t["slot"]) for t in tasks)


def test_task_ids_are_stable_across_expansions() -> None:
    job = voting_job()

    first = expand_tasks(job, job.items or [], DEFAULT_MODEL)
    second = expand_tasks(voting_job(), voting_job().items or [], DEFAULT_MODEL)

    assert first == second


def test_expected_answers_travel_with_the_task() -> None:
    job = voting_job(items=[{"id": "a", "text": "x", "expected": "yes"}, {"id": "b", "text": "y"}])

    tasks = expand_tasks(job, job.items or [], DEFAULT_MODEL)

    assert [t["expected"] for t in tasks] == ["yes"] * 3 + [None] * 3


def test_models_rotate_across_votes() -> None:
    job = voting_job(votes=5, models=["sim:seed=1", "bedrock:amazon.nova-lite-v1:0"])

    tasks = expand_tasks(job, job.items or [], DEFAULT_MODEL)

    first_item = [t["model"] for t in tasks if t["item_id"] == "a"]
    assert first_item == ["sim:seed=1", "bedrock:amazon.nova-lite-v1:0"] * 2 + ["sim:seed=1"]


def test_models_without_votes_give_one_vote_per_model() -> None:
    job = voting_job(votes=None, models=["sim:seed=1", "sim:seed=2", "sim:seed=3"])

    tasks = expand_tasks(job, job.items or [], DEFAULT_MODEL)

    assert [t["model"] for t in tasks if t["item_id"] == "a"] == ["sim:seed=1", "sim:seed=2", "sim:seed=3"]


def test_job_model_or_default_model_answers_every_task() -> None:
    named = voting_job(model="sim:seed=9")
    unnamed = voting_job()

    assert {t["model"] for t in expand_tasks(named, named.items or [], DEFAULT_MODEL)} == {"sim:seed=9"}
    assert {t["model"] for t in expand_tasks(unnamed, unnamed.items or [], "sim:seed=4")} == {"sim:seed=4"}


def test_a_prompt_over_max_prompt_bytes_is_refused_naming_the_item() -> None:
    # Given a prompt template that fits for one item and not for the second
    job = voting_job(
        limits={"max_prompt_bytes": 100},
        items=[{"id": "short", "text": "ok"}, {"id": "long-one", "text": "é" * 60}],
    )

    # When the tasks are expanded
    with pytest.raises(InvalidJob) as caught:
        expand_tasks(job, job.items or [], DEFAULT_MODEL)

    # Then the message names the item, its position and the limit
    message = str(caught.value)
    assert message.startswith("items[1]:")
    assert "'long-one'" in message
    assert "limits.max_prompt_bytes (100)" in message


def test_a_job_expanding_past_max_tasks_is_refused() -> None:
    with pytest.raises(InvalidJob) as caught:
        job = voting_job(votes=3, limits={"max_tasks": 5})  # refused on the count, before expanding
        expand_tasks(job, job.items or [], DEFAULT_MODEL)

    assert str(caught.value).startswith("limits.max_tasks:")


TASK_COUNTS = [*range(1, 70), 97, 100, 127, 128, 129, 255, 256, 257, 511, 512, 513, 999, 1000, 1001, 2047, 3333, 4096, 4999, 5000]


@pytest.mark.parametrize("task_count", TASK_COUNTS)
def test_batching_never_exceeds_max_concurrency_and_covers_every_task(task_count: int) -> None:
    for max_concurrency in range(1, 201):
        b = choose_batching(task_count, max_concurrency)
        where = f"tasks={task_count} max_concurrency={max_concurrency}: {b}"

        assert b.threads * b.map_concurrency <= max_concurrency, where
        assert b.threads >= 1 and b.map_concurrency >= 1, where
        assert b.map_concurrency <= b.batch_count, where
        # a batch is at most MAX_ROUNDS_PER_BATCH rounds of calls, so it ends inside the Lambda timeout
        assert b.batch_size <= b.threads * MAX_ROUNDS_PER_BATCH, where

        ranges = batch_ranges(task_count, b.batch_size)
        assert len(ranges) == b.batch_count, where
        assert [r["index"] for r in ranges] == list(range(len(ranges))), where
        covered = [n for r in ranges for n in range(r["start"], r["end"])]
        assert covered == list(range(task_count)), where
        assert all(0 < r["end"] - r["start"] <= b.batch_size for r in ranges), where


def test_batching_uses_the_allowed_concurrency_when_there_is_work_for_it() -> None:
    # a plan that runs one call at a time would satisfy the limit and still be wrong
    b = choose_batching(5000, 200)

    assert b.threads * b.map_concurrency >= 180
    assert b.threads <= MAX_THREADS_PER_BATCH


@pytest.mark.parametrize(("task_count", "batch_size"), [(10, 3), (100, 100), (100, 250), (5000, 7), (1, 1)])
def test_an_explicit_batch_size_is_honoured(task_count: int, batch_size: int) -> None:
    b = choose_batching(task_count, 40, batch_size)

    assert b.batch_size == batch_size
    ranges = batch_ranges(task_count, b.batch_size)
    assert len(ranges) == b.batch_count == -(-task_count // batch_size)
    assert ranges[-1]["end"] == task_count
    assert b.threads * b.map_concurrency <= 40
    assert b.threads <= batch_size


def test_batch_ranges_of_no_tasks_is_empty() -> None:
    assert batch_ranges(0, 10) == []


def _print(job: Job, items: list[dict[str, Any]] | None = None, model: str = DEFAULT_MODEL) -> str:
    return fingerprint(job, items if items is not None else (job.items or []), model)


def test_fingerprint_is_stable_for_the_same_job() -> None:
    assert _print(voting_job()) == _print(voting_job())


def labelled(**changes: Any) -> Job:
    return voting_job(**{"output_schema": SCHEMA, "aggregate": {"field": "label"}, **changes})


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("prompt", "Is this ham? {text}"),
        ("model", "sim:seed=3"),
        ("votes", 4),
        ("system", "You are strict."),
        ("inference", {"temperature": 0.2}),
        ("output_schema", {**SCHEMA, "properties": {"label": {"enum": ["yes", "no", "maybe"]}}}),
    ],
)
def test_fingerprint_changes_when_what_decides_the_answers_changes(change: str, value: Any) -> None:
    assert _print(labelled(**{change: value})) != _print(labelled())


def test_fingerprint_changes_when_a_schema_is_added() -> None:
    assert _print(labelled()) != _print(voting_job())


def test_fingerprint_changes_when_the_items_or_default_model_change() -> None:
    job = voting_job()
    items = list(job.items or [])

    edited = [{**items[0], "text": "one!"}, items[1]]
    assert _print(job, edited) != _print(job, items)
    assert _print(job, items[:1]) != _print(job, items)
    assert _print(job, model="sim:seed=2") != _print(job)


@pytest.mark.parametrize(
    "changes",
    [
        {"job_id": "another-id"},
        {"limits": {"max_concurrency": 3, "batch_size": 7}},
        {"description": "same job, new words"},
    ],
    ids=["job_id", "limits", "description"],
)
def test_fingerprint_ignores_what_does_not_change_the_answers(changes: dict[str, Any]) -> None:
    assert _print(voting_job(**changes)) == _print(voting_job())
