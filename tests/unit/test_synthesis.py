"""Synthesis: a second-pass task over the merged results (or one per item), its input cut to the budget; Aggregate
only reads its record."""

from __future__ import annotations

from typing import Any

from fanout_core.aggregation import aggregate
from fanout_core.job import parse_job
from fanout_core.second_pass import JOB_LEVEL, Material, synthesis_task

MODEL = "bedrock:us.amazon.nova-lite-v1:0"


def sectioning_job(**synthesis: Any) -> Any:
    return parse_job(
        {
            "job_id": "syn",
            "pattern": "sectioning",
            "model": MODEL,
            "sections": [{"name": "a", "prompt": "{text}"}, {"name": "b", "prompt": "{text}"}],
            "items": [{"id": "one", "text": "x"}, {"id": "two", "text": "y"}],
            "synthesis": {"prompt": "Combine.", **synthesis},
        }
    )


def records(job: Any) -> list[dict[str, Any]]:
    return [
        {
            "task_id": f"{i['id']}#{s}",
            "item_id": i["id"],
            "slot": s,
            "status": "ok",
            "output": "finding " * 200,
            "model": MODEL,
            "attempts": 1,
            "usage": {"input_tokens": 5, "output_tokens": 5},
        }
        for i in job.items
        for s in ("a", "b")
    ]


def answered(task: dict[str, Any], status: str = "ok") -> dict[str, Any]:
    """The record RunBatch writes for a synthesis task."""
    return {
        "task_id": task["task_id"],
        "item_id": task["item_id"],
        "slot": task["slot"],
        "kind": "synthesis",
        "status": status,
        "output": f"summary of {task['item_id'] or 'the job'}" if status == "ok" else None,
        "error": None if status == "ok" else "AccessDeniedException: no access to the model",
        "model": task["model"],
        "attempts": 1,
        "usage": {"input_tokens": 100, "output_tokens": 20},
    }


def job_material(job: Any) -> Material:
    material = Material(job.synthesis.max_input_chars)
    for item in aggregate(job, job.items, records(job))["items"]:
        material.add(item)
    return material


def test_one_call_over_the_whole_job_with_its_usage_counted() -> None:
    # Given the job's synthesis task built from its first-pass results, and the record of its call
    job = sectioning_job()
    task = synthesis_task(job, JOB_LEVEL, job_material(job), "sim")

    # When the job is aggregated with that record
    result = aggregate(job, job.items, [*records(job), answered(task)])

    # Then the synthesis is the record's text, its input is what the items gave, and its call is counted
    assert task["prompt"].startswith("Combine.\n\n<results>\n[{")
    assert result["synthesis"]["text"] == "summary of the job"
    assert result["synthesis"]["input_truncated"] is False
    assert result["usage"]["model_calls"] == 4 + 1
    assert result["usage"]["by_model"][MODEL]["input_tokens"] == 4 * 5 + 100


def test_per_item_synthesis_fits_each_input_to_the_budget() -> None:
    job = sectioning_job(per_item=True, max_input_chars=1000)
    tasks = []
    for item in aggregate(job, job.items, records(job))["items"]:
        material = Material(1000)
        material.add(item)
        tasks.append(synthesis_task(job, item["id"], material, "sim"))

    result = aggregate(job, job.items, [*records(job), *(answered(t) for t in tasks)])

    assert [i["synthesis"]["text"] for i in result["items"]] == ["summary of one", "summary of two"]
    assert all(i["synthesis"]["input_truncated"] and i["synthesis"]["input_chars"] == 1000 for i in result["items"])
    assert all(len(t["prompt"]) < 1000 + 100 for t in tasks)
    assert "synthesis" not in result


def test_a_failed_synthesis_is_reported_not_raised() -> None:
    job = sectioning_job()
    task = synthesis_task(job, JOB_LEVEL, job_material(job), "sim")

    result = aggregate(job, job.items, [*records(job), answered(task, status="failed")])

    assert result["synthesis"] == {"text": None, "model": MODEL, "error": "AccessDeniedException: no access to the model"}
    assert result["usage"]["model_calls"] == 4 + 1  # the failed call was made and is counted


def test_a_synthesis_of_other_results_is_not_shown() -> None:
    # Given a synthesis recorded by an earlier run whose results differed
    job = sectioning_job()
    earlier = Material(job.synthesis.max_input_chars)
    earlier.add({"id": "one", "sections": {"a": "something else"}})
    stale = answered(synthesis_task(job, JOB_LEVEL, earlier, "sim"))

    # When the job is aggregated with the records it has now
    result = aggregate(job, job.items, [*records(job), stale])

    # Then that synthesis is not passed off as this one
    assert result["synthesis"]["text"] is None and "not recorded" in result["synthesis"]["error"]


def test_the_streamed_material_is_the_json_list_cut_to_the_budget() -> None:
    import json

    digests = [{"id": f"i{n}", "sections": {"a": "x" * n}} for n in range(40)]
    for budget in (5, 100, 1000, 100_000):
        material = Material(budget)
        for item in digests:
            material.add(item)
        whole = json.dumps(digests, ensure_ascii=False)
        assert material.text() == whole[:budget] and material.total() == len(whole)
