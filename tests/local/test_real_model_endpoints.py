"""Local runs against model endpoints that throttle and fail: Bedrock Converse and an OpenAI-compatible server.

The rest of AWS stays in-process (moto); the model calls go over HTTP to
fake servers on 127.0.0.1, reached the way a user would reach a real one.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import main
from tests.fakes import Script, fake_server, marker, prompt_of

LABELS = ["positive", "neutral", "negative"]


def scripted_label(body: dict[str, Any]) -> dict[str, str]:
    """Item n's right label is LABELS[n % 3]; vote answers are right except on some votes of odd items."""
    n = marker(prompt_of(body))
    return {"label": LABELS[n % 3]}


def voting_job(model: str, items: int = 40, votes: int = 3, concurrency: int = 8) -> dict[str, Any]:
    return {
        "job_id": "endpoint-job",
        "pattern": "voting",
        "votes": votes,
        "model": model,
        "prompt": "Classify item-{n}: {text}",
        "inference": {"max_tokens": 50, "temperature": 0.5},
        "output_schema": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": {"enum": LABELS}},
        },
        "aggregate": {"strategy": "majority", "field": "label"},
        "limits": {"max_concurrency": concurrency},
        "items": [{"id": f"i{n}", "n": n, "text": "text {n} %s", "expected": LABELS[n % 3]} for n in range(items)],
    }


@pytest.fixture
def dummy_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.mark.slow
def test_bedrock_converse_endpoint_with_throttling_and_503s(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dummy_aws: None
) -> None:
    # Given a Converse endpoint that throttles 30% and fails 10% of requests with 503
    script = Script(answer=scripted_label, throttle_rate=0.3, unavailable_rate=0.1, seed=5)
    with fake_server(script, "bedrock") as (url, served):
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)
        job = voting_job("bedrock:us.anthropic.claude-haiku-5-5")
        path = tmp_path / "job.json"
        path.write_text(json.dumps(job))

        # When the job runs locally, and then once more
        code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
        requests_after_first_run = len(served.requests)
        first = json.loads((tmp_path / "out" / "endpoint-job" / "result.json").read_text())
        assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0

    # Then the second run called the model for no task: every task already had an ok record
    assert len(served.requests) == requests_after_first_run

    # Then it completes with the scripted answers
    assert code == 0
    result = json.loads((tmp_path / "out" / "endpoint-job" / "result.json").read_text())
    assert result["status"] == "complete"
    assert [i["answer"] for i in result["items"]] == [LABELS[n % 3] for n in range(40)]
    assert result["evaluation"]["accuracy"] == 1.0
    # refusals that come whatever the pace are told from a quota's early, so the calls did not wait for a quota
    # that is not there: a first refusal's guess left standing (its first calls' tokens over a minute) held every
    # call for seconds, ~1,600 s of waiting in all across the threads
    assert first["pacing"]["quota_wait_seconds"] < 60, first["pacing"]
    # every request set maxTokens and forced the one tool whose input schema is the job's schema
    for request in served.requests:
        body = request["body"]
        assert body["inferenceConfig"]["maxTokens"] == 50
        assert body["toolConfig"]["toolChoice"] == {"tool": {"name": "record_output"}}
        assert body["toolConfig"]["tools"][0]["toolSpec"]["inputSchema"]["json"] == job["output_schema"]
        assert request["path"].startswith("/model/us.anthropic.claude-haiku-5-5/converse")
    # exactly one successful call per task: nothing billed twice
    per_task = Counter((marker(prompt_of(b)), json.dumps(b["inferenceConfig"])) for b in served.successes)
    assert len(served.successes) == 120
    assert sum(per_task.values()) == 120
    # faults really happened, and calls in flight stayed within the limit
    assert len(served.requests) > 140
    assert served.max_in_flight <= 8
    # token usage equals what the endpoint served (the first run's; the second run spent nothing and says so)
    assert first["usage"]["input_tokens"] == served.input_tokens
    assert result["usage"]["input_tokens"] == result["usage"]["model_calls"] == 0
    assert result["usage"]["requests_reused"] == 120
    assert first["usage"]["output_tokens"] == served.output_tokens
    assert first["usage"]["estimated_cost_usd"] == pytest.approx(
        # Claude Haiku 5.5's list price, 10% above the global profile's for a us. profile
        served.input_tokens * 0.11e-6 + served.output_tokens * 0.55e-6,
        rel=1e-3,
    )


def test_openai_compatible_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an OpenAI-compatible server that throttles some requests
    script = Script(answer=scripted_label, throttle_rate=0.2, unavailable_rate=0.1, seed=9)
    with fake_server(script, "openai") as (url, served):
        job = voting_job(f"openai:{url}/v1#llama3.2", items=12, votes=3, concurrency=4)
        path = tmp_path / "job.json"
        path.write_text(json.dumps(job))

        # When the job runs locally
        code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])

    # Then the answers, usage and response format are right
    assert code == 0
    result = json.loads((tmp_path / "out" / "endpoint-job" / "result.json").read_text())
    assert [i["answer"] for i in result["items"]] == [LABELS[n % 3] for n in range(12)]
    assert len(served.successes) == 36
    assert all(b["response_format"]["type"] == "json_schema" for b in served.successes)
    assert all(b["max_tokens"] == 50 for b in served.successes)
    assert result["usage"]["input_tokens"] == served.input_tokens
    assert result["usage"]["estimated_cost_usd"] is None  # no list price for a self-hosted model
    assert served.max_in_flight <= 4
