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
    pack_items,
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


def _keys(job: Job, items: list[dict[str, Any]] | None = None, model: str = DEFAULT_MODEL) -> list[str]:
    return [t["key"] for t in expand_tasks(job, items if items is not None else (job.items or []), model)]


def test_request_keys_are_stable_for_the_same_job_and_distinct_per_task() -> None:
    keys = _keys(voting_job())

    assert keys == _keys(voting_job())
    assert len(set(keys)) == len(keys) == 6  # each vote is its own request


def labelled(**changes: Any) -> Job:
    return voting_job(**{"output_schema": SCHEMA, "aggregate": {"field": "label"}, **changes})


@pytest.mark.parametrize(
    ("change", "value"),
    [
        ("prompt", "Is this ham? {text}"),
        ("model", "sim:seed=3"),
        ("system", "You are strict."),
        ("inference", {"temperature": 0.2}),
        ("output_schema", {**SCHEMA, "properties": {"label": {"enum": ["yes", "no", "maybe"]}}}),
    ],
)
def test_every_request_key_changes_when_what_decides_the_answers_changes(change: str, value: Any) -> None:
    assert not set(_keys(labelled(**{change: value}))) & set(_keys(labelled()))


def test_a_schema_added_changes_every_request_key() -> None:
    assert not set(_keys(labelled())) & set(_keys(voting_job()))


def test_more_votes_keep_the_keys_of_the_votes_already_asked() -> None:
    # Given a job that goes from 3 votes to 4
    three, four = _keys(voting_job()), _keys(voting_job(votes=4))

    # Then the 3 votes of each item are the same requests, and only the new vote of each item is new
    assert set(three) < set(four)
    assert len(set(four) - set(three)) == 2


def test_an_edited_item_or_default_model_changes_only_its_own_keys() -> None:
    job = voting_job()
    items = list(job.items or [])

    edited = [{**items[0], "text": "one!"}, items[1]]
    before, after = _keys(job, items), _keys(job, edited)
    assert before[:3] != after[:3] and not set(before[:3]) & set(after[:3])
    assert before[3:] == after[3:]  # item b did not change
    assert not set(_keys(job, model="sim:seed=2")) & set(before)


def test_a_changed_section_prompt_changes_only_that_sections_keys() -> None:
    job = sectioning_job()
    sections = [s.model_dump() for s in job.sections or []]
    changed = sectioning_job(sections=[sections[0], {**sections[1], "prompt": "Market, again: {text}"}])

    old = {t["task_id"]: t["key"] for t in expand_tasks(job, job.items or [], DEFAULT_MODEL)}
    new = {t["task_id"]: t["key"] for t in expand_tasks(changed, changed.items or [], DEFAULT_MODEL)}

    assert {t for t in old if old[t] != new[t]} == {"a#market size", "b#market size", "c#market size"}


def test_two_items_with_the_same_text_are_two_requests() -> None:
    job = voting_job(items=[{"id": "a", "text": "same"}, {"id": "b", "text": "same"}])

    assert len(set(_keys(job))) == 6


@pytest.mark.parametrize(
    "changes",
    [
        {"job_id": "another-id"},
        {"limits": {"max_concurrency": 3, "batch_size": 7}},
        {"description": "same job, new words"},
    ],
    ids=["job_id", "limits", "description"],
)
def test_request_keys_ignore_what_does_not_change_the_answers(changes: dict[str, Any]) -> None:
    assert _keys(voting_job(**changes)) == _keys(voting_job())


def test_an_items_votes_share_one_rendered_prompt() -> None:
    tasks = expand_tasks(voting_job(), voting_job().items or [], DEFAULT_MODEL)

    assert tasks[0]["prompt"] is tasks[1]["prompt"] is tasks[2]["prompt"]


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 5, 7, 10, 100])
def test_batches_hold_whole_items_unless_one_item_alone_is_over_a_batch(batch_size: int) -> None:
    # Given items with 0 to 9 pending tasks each (as a re-run leaves them)
    pending = [(n, (n * 7) % 10) for n in range(40)]

    # When they are packed
    batches = pack_items(pending, batch_size)

    # Then every pending task is in exactly one batch, in item order, no batch over the size
    covered = [(position, t) for batch in batches for position, start, end in batch for t in range(start, end)]
    assert covered == [(position, t) for position, count in pending for t in range(count)]
    for batch in batches:
        assert sum(end - start for _, start, end in batch) <= batch_size
        # and an item is cut only when it alone has more pending tasks than a batch holds
        for position, start, end in batch:
            whole = (start, end) == (0, dict(pending)[position])
            assert whole or (dict(pending)[position] > batch_size and len(batch) == 1)
