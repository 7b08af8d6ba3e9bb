"""A job against a quota-enforcing Converse endpoint through the real state machine: paced to a given quota it is
never refused, a learned one is found with few refusals, every task is answered once; and a budget stops the calls
with every item still accounted for."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import main
from tests.quota_endpoint import quota_endpoint

MODEL = "bedrock:amazon.nova-lite-v1:0"
WINDOW = 3.0


def job(job_id: str, items: int, **limits: Any) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": 2,
        "model": MODEL,
        "prompt": "Sentiment of ticket {id}: {text}",
        "inference": {"max_tokens": 64},
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}},
        "aggregate": {"strategy": "majority", "field": "label"},
        "limits": {"max_concurrency": 20, **limits},
        "items": [{"id": f"t-{n}", "text": "the refund took three weeks"} for n in range(items)],
    }


@pytest.fixture
def quota_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("FANOUT_QUOTA_WINDOW_SECONDS", str(WINDOW))
    return monkeypatch


def run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any], url: str
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)
    path = tmp_path / f"{spec['job_id']}.json"
    path.write_text(json.dumps(spec))
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    target = tmp_path / "out" / spec["job_id"]
    return code, json.loads((target / "result.json").read_text()), json.loads((target / "run.json").read_text())


@pytest.mark.parametrize("given", [True, False], ids=["given", "learned"])
def test_a_job_paced_to_the_quota_is_answered_once_per_task_with_few_refusals(
    tmp_path: Path, quota_env: pytest.MonkeyPatch, given: bool
) -> None:
    # Given an endpoint with 1,500 tokens per 3 s window and a job of 80 tasks that needs about 4 windows of it
    limits = {"tokens_per_minute": 1500} if given else {}
    with quota_endpoint(1500, WINDOW, latency_s=0.2) as (url, stats):
        # When it runs with the quota given, or with nothing said of it
        code, result, figures = run(tmp_path, quota_env, job(f"paced-{given}", 40, **limits), url)
    # Then every task is answered exactly once
    assert code == 0 and result["counts"]["ok"] == 80
    assert stats.answered == 80
    assert len(stats.answered_prompts) == 40 and set(stats.answered_prompts.values()) == {2}  # an item's 2 votes
    # and the endpoint refused no request when the quota was given, few when it was learned (on a job this small the
    # first window, before the pace is found, weighs most: make bench row (f) has the figures at scale)
    assert stats.refused == 0 if given else stats.refused_share <= 0.25, (stats.refused, stats.requests)
    # and result.json and run.json say what pacing did
    pacing = result["pacing"]
    assert pacing["throttled_requests"] == stats.refused
    assert pacing["by_model"][MODEL]["quota"] == ("given" if given else "learned")
    assert pacing["tokens_per_minute"] > 0
    assert figures["throttled_requests"] == stats.refused
    assert figures["quota_wait_seconds"] == pacing["quota_wait_seconds"]
    if given:
        assert pacing["quota_wait_seconds"] > 0  # the bucket made calls wait instead of the service refusing them


def test_without_pacing_the_same_job_is_refused_so_the_pacing_is_what_keeps_it_clean(
    tmp_path: Path, quota_env: pytest.MonkeyPatch
) -> None:
    quota_env.setenv("FANOUT_PACING", "off")
    with quota_endpoint(1500, WINDOW, latency_s=0.2) as (url, stats):
        run(tmp_path, quota_env, job("unpaced", 40), url)
    assert stats.refused > 0


def test_a_budget_stops_the_calls_and_every_item_is_still_accounted_for(tmp_path: Path, quota_env: pytest.MonkeyPatch) -> None:
    # Given a budget for about a third of the job's calls (nova-lite's list price)
    with quota_endpoint(10**7, WINDOW, latency_s=0.01) as (url, stats):
        code, result, _ = run(tmp_path, quota_env, job("budgeted", 40, max_cost_usd=0.0002), url)
        answered_first = stats.answered
        # (and a re-run with a larger budget asks exactly the tasks the budget stopped, without --retry-failed)
        again_code, again, _ = run(tmp_path, quota_env, job("budgeted", 40, max_cost_usd=1.0), url)
    # Then the job is partial for the budget, and spent no more than it
    assert code == 3 and result["status"] == "partial" and result["reason"] == "budget"
    budget = result["budget"]
    assert budget["spent_usd"] <= 0.0002
    assert result["usage"]["estimated_cost_usd"] <= 0.0002
    # and every item is there; the tasks not called say why, and the model answered only the others
    assert [i["id"] for i in result["items"]] == [f"t-{n}" for n in range(40)]
    stopped = [e for i in result["items"] for e in i.get("errors", []) if "limits.max_cost_usd" in (e["error"] or "")]
    assert len(stopped) == budget["tasks_not_called"] > 0
    assert answered_first == result["counts"]["ok"] == 80 - len(stopped)
    assert again_code == 0 and again["status"] == "complete" and again["counts"]["ok"] == 80
    assert stats.answered - answered_first == len(stopped)
