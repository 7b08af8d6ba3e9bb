"""Synthesis: one final call over the merged results, or one per item, with its input cut to the budget."""

from __future__ import annotations

from typing import Any

from fanout_core.aggregation import aggregate
from fanout_core.job import parse_job
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest
from fanout_core.steps import _synthesise


class Recorder:
    name = "recorder"

    def __init__(self, fail: bool = False) -> None:
        self.prompts: list[str] = []
        self.fail = fail

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        self.prompts.append(request.prompt)
        if self.fail:
            raise ModelError("AccessDeniedException", "no access to the model", "permanent")
        return ModelReply(output=f"summary of {request.task_id}", input_tokens=100, output_tokens=20, model="x")


def sectioning_job(**synthesis: Any) -> Any:
    return parse_job(
        {
            "job_id": "syn",
            "pattern": "sectioning",
            "model": "bedrock:us.amazon.nova-lite-v1:0",
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
            "model": "bedrock:us.amazon.nova-lite-v1:0",
            "attempts": 1,
            "usage": {"input_tokens": 5, "output_tokens": 5},
        }
        for i in job.items
        for s in ("a", "b")
    ]


def test_one_call_over_the_whole_job_with_its_usage_counted() -> None:
    job = sectioning_job()
    result = aggregate(job, job.items, records(job))
    provider = Recorder()

    _synthesise(job, result, provider, "bedrock:us.amazon.nova-lite-v1:0")

    assert len(provider.prompts) == 1 and provider.prompts[0].startswith("Combine.\n\n<results>\n")
    assert result["synthesis"]["text"] == "summary of synthesis#*"
    assert result["synthesis"]["input_truncated"] is False
    assert result["usage"]["model_calls"] == 4 + 1
    assert result["usage"]["by_model"]["bedrock:us.amazon.nova-lite-v1:0"]["input_tokens"] == 4 * 5 + 100


def test_per_item_synthesis_fits_each_input_to_the_budget() -> None:
    job = sectioning_job(per_item=True, max_input_chars=1000)
    result = aggregate(job, job.items, records(job))
    provider = Recorder()

    _synthesise(job, result, provider, "bedrock:us.amazon.nova-lite-v1:0")

    assert [i["synthesis"]["text"] for i in result["items"]] == ["summary of synthesis#one", "summary of synthesis#two"]
    assert all(i["synthesis"]["input_truncated"] and i["synthesis"]["input_chars"] == 1000 for i in result["items"])
    assert all(len(p) < 1000 + 100 for p in provider.prompts)
    assert "synthesis" not in result


def test_a_failed_synthesis_is_reported_not_raised() -> None:
    job = sectioning_job()
    result = aggregate(job, job.items, records(job))

    _synthesise(job, result, Recorder(fail=True), "bedrock:x")

    assert result["synthesis"] == {"text": None, "model": "bedrock:x", "error": "AccessDeniedException: no access to the model"}
    assert result["usage"]["model_calls"] == 4
