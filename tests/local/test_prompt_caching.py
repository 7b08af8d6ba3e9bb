"""Prompt caching end to end: a sectioning job over long documents against a Converse endpoint that caches."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fanout.cli import main
from tests.fakes import Script, fake_server

MODEL = "bedrock:us.anthropic.claude-haiku-5-5"
SECTIONS = ("competitors", "customers", "regions", "risks")


def document(n: int) -> str:
    # about 6,000 tokens: over Claude Haiku's minimum of 4,096 tokens per cache checkpoint
    return f"Brief {n}. " + "The product tracks stock for small shops and is sold monthly to owners. " * 330


@pytest.fixture
def dummy_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


@pytest.mark.slow
def test_sections_share_one_cached_document_per_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dummy_aws: None) -> None:
    # Given 3 items x 4 sections over ~6,000-token documents, and an endpoint that caches what a reply wrote
    job = {
        "job_id": "cached-sections",
        "pattern": "sectioning",
        "model": MODEL,
        "system": "You are a market analyst.",
        "items": [{"id": f"q{n}", "text": document(n)} for n in range(3)],
        "sections": [{"name": name, "prompt": f"Analyse the {name} for: {{text}}"} for name in SECTIONS],
        "inference": {"max_tokens": 64},
        "limits": {"max_concurrency": 12},
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    with fake_server(Script(answer=lambda body: "findings", latency_s=0.2, cache=True), "bedrock") as (url, served):
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)

        # When it runs locally
        assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0

    # Then every request sent the system prompt, the item's document, a cachePoint, then the section's question
    assert len(served.requests) == 12
    for request in served.requests:
        content = request["body"]["messages"][0]["content"]
        assert content[0]["text"].startswith("Brief ") and content[1] == {"cachePoint": {"type": "default"}}
        assert content[2]["text"].startswith("Analyse the ") and content[2]["text"].endswith(" for: ")
    # and each item's first section wrote the cache before its three siblings asked: one write, three reads per item
    per_item = len(json.dumps([{"text": "You are a market analyst."}, {"text": document(0)}])) // 4
    assert served.cache_writes == pytest.approx(3 * per_item, rel=0.01)
    assert served.cache_reads == pytest.approx(9 * per_item, rel=0.01)

    # and result.json prices the cache tokens at their rates and shows the saving
    usage = json.loads((tmp_path / "out" / "cached-sections" / "result.json").read_text())["usage"]
    assert (usage["cache_read_input_tokens"], usage["cache_write_input_tokens"]) == (served.cache_reads, served.cache_writes)
    rates = (0.11, 0.55, 0.011, 0.1375)  # us. profile: 10% above the global list price
    expected = (
        usage["input_tokens"] * rates[0] + usage["output_tokens"] * rates[1]
        + served.cache_reads * rates[2] + served.cache_writes * rates[3]
    ) / 1e6  # fmt: skip
    assert usage["estimated_cost_usd"] == pytest.approx(expected, rel=1e-3)
    without_cache = (served.cache_reads + served.cache_writes) * rates[0] / 1e6
    assert usage["cache_savings_usd"] == pytest.approx(
        without_cache - (served.cache_reads * rates[2] + served.cache_writes * rates[3]) / 1e6, rel=1e-3
    )
    # the document's input costs at least 50% less than without the cache
    assert usage["cache_savings_usd"] / without_cache > 0.5
