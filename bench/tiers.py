"""``make bench`` row (g): what the tiers and the prompt cache do to the model cost, at list prices (models.json).

Each job's tasks are run by ``run_batch`` through the real Bedrock provider
(the Converse requests it builds, cachePoint placement, an item's first
task before its siblings) against an in-process Converse endpoint that
caches as Bedrock does: a request's prefix up to its ``cachePoint`` is
written on its first sight and read after, and the usage says so
(``inputTokens`` / ``cacheReadInputTokens`` / ``cacheWriteInputTokens``,
at about four characters a token). The measured tokens are priced by
``fanout_core.pricing``:

- on-demand: every input token at the input price (no cache);
- batch: the same tokens at the batch price factor (batch records carry no
  cachePoint);
- cached: on-demand with the cache's reads and writes at their own prices.

(g1) both examples (examples/*.json) on the deployment's default model
(``fanout:defaultModel`` in cdk.json), per 1,000 tasks; (g2) a sectioning
job over ~3,000-token documents with 4 sections on Claude Sonnet 4.5 (its
minimum of 1,024 tokens per checkpoint is under the document): input cost
with and without the cache (target: at least 50% lower).

Run: ``.venv/bin/python -m bench.tiers``.
"""

from __future__ import annotations

import json
import random
import sys
import threading
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402,F401 - puts lambdas/ on the path
from fanout_core.catalog import CHARS_PER_TOKEN  # noqa: E402
from fanout_core.job import parse_job  # noqa: E402
from fanout_core.planning import expand_tasks  # noqa: E402
from fanout_core.pricing import rates_of  # noqa: E402
from fanout_core.providers.bedrock import TOOL_NAME, BedrockProvider  # noqa: E402
from fanout_core.providers.simulator import fill  # noqa: E402
from fanout_core.runner import run_batch  # noqa: E402
from fanout_core.tiers import tier_factor  # noqa: E402

SECTIONING_MODEL = "bedrock:global.anthropic.claude-sonnet-4-5-20250929-v1:0"
SECTIONS = ("competitors", "customers", "regions", "risks")


class CachingConverse:
    """A Converse endpoint in this process: answers with a valid instance of the schema, and caches prefixes."""

    def __init__(self) -> None:
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        self.rng = random.Random(7)

    def converse(self, **params: Any) -> dict[str, Any]:
        blocks = [{"text": b["text"]} if "text" in b else b for b in params.get("system", [])]
        blocks += list(params["messages"][0]["content"])
        texts = [b.get("text", "") for b in blocks]
        cut = next((n for n, b in enumerate(blocks) if "cachePoint" in b), None)
        prefix = "".join(texts[:cut]) if cut is not None else ""
        total = sum(len(t) for t in texts) // CHARS_PER_TOKEN
        cached = len(prefix) // CHARS_PER_TOKEN
        with self.lock:
            hit = prefix in self.seen
            self.seen.add(prefix)
        schema = (params.get("toolConfig") or {}).get("tools", [{}])[0].get("toolSpec", {}).get("inputSchema", {}).get("json")
        answer = fill(schema, self.rng) if schema else "findings"
        content = [{"toolUse": {"toolUseId": "t", "name": TOOL_NAME, "input": answer}}] if schema else [{"text": answer}]
        usage = {
            "inputTokens": total - cached,
            "outputTokens": max(1, len(json.dumps(answer)) // CHARS_PER_TOKEN),
            "cacheReadInputTokens": cached if cut is not None and hit else 0,
            "cacheWriteInputTokens": cached if cut is not None and not hit else 0,
        }
        usage["totalTokens"] = sum(usage.values())
        return {"output": {"message": {"role": "assistant", "content": content}}, "stopReason": "end_turn", "usage": usage}


class _Records:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def completed(self, batch_index: int) -> set[str]:
        return set()

    def finished_records(self, batch_index: int) -> list[dict[str, Any]]:
        return []

    def writer(self, batch_index: int) -> _Records:
        return self

    def add(self, record: dict[str, Any]) -> None:
        self.records.append(record)

    def close(self) -> None:
        return None


def measured_usage(data: dict[str, Any], model: str) -> tuple[dict[str, int], int]:
    """(summed usage, tasks) of a job's tasks run through run_batch and the Bedrock provider on CachingConverse."""
    job = parse_job({**data, "model": model})
    tasks = expand_tasks(job, job.items or [], model)
    batch = {
        "index": 0,
        "tasks": tasks,
        "system": job.system,
        "inference": job.inference.model_dump(),
        "output_schema": job.output_schema,
        "answer_field": job.aggregate.field,
    }
    provider = BedrockProvider(model.removeprefix("bedrock:"), CachingConverse())
    store = _Records()
    run_batch(batch, store=store, provider_for=lambda _: provider, threads=8)
    usage: dict[str, int] = {}
    for record in store.records:
        for key, value in record["usage"].items():
            usage[key] = usage.get(key, 0) + value
    return usage, len(tasks)


def costs(usage: dict[str, int], model: str) -> dict[str, float]:
    """USD of the measured tokens: on-demand uncached, batch, and on-demand cached; and their input parts."""
    rates = rates_of(model)
    factor = tier_factor(model, "batch")
    assert rates is not None and factor is not None, f"{model} has no list price or no batch price in models.json"
    read, write = usage.get("cache_read_input_tokens", 0), usage.get("cache_write_input_tokens", 0)
    all_input = usage["input_tokens"] + read + write
    uncached_in = all_input * rates.input / 1e6
    cached_in = (usage["input_tokens"] * rates.input + read * rates.cache_read + write * rates.cache_write) / 1e6
    out = usage["output_tokens"] * rates.output / 1e6
    return {
        "on_demand": uncached_in + out,
        "batch": (uncached_in + out) * factor,
        "cached": cached_in + out,
        "input_uncached": uncached_in,
        "input_cached": cached_in,
    }


def document(n: int, tokens: int = 3_000) -> str:
    sentence = f"Brief {n}: the product tracks stock for small shops, sold monthly to owners in many regions. "
    return (sentence * (tokens * CHARS_PER_TOKEN // len(sentence) + 1))[: tokens * CHARS_PER_TOKEN]


def sectioning_job(items: int = 10) -> dict[str, Any]:
    return {
        "job_id": "bench-cache",
        "pattern": "sectioning",
        "system": "You are a market analyst.",
        "items": [{"id": f"doc-{n}", "text": document(n)} for n in range(items)],
        # the document after the question, as in the README's example: the provider sends the shared part first
        "sections": [{"name": name, "prompt": f"Analyse the {name} for: {{text}}"} for name in SECTIONS],
        "inference": {"max_tokens": 256},
    }


def main() -> int:
    default_model = json.loads((ROOT / "cdk.json").read_text())["context"]["fanout:defaultModel"]
    print(f"(g1) model cost per 1,000 tasks at list prices, {default_model} (fanout:defaultModel)")
    print(f"{'example':<24}  {'tasks':>5}  {'on-demand':>10}  {'batch':>10}  {'cached':>10}")
    for path in sorted((ROOT / "examples").glob("*.json")):
        usage, count = measured_usage(json.loads(path.read_text()), default_model)
        figures = {k: v * 1000 / count for k, v in costs(usage, default_model).items()}
        cached_tokens = usage.get("cache_read_input_tokens", 0) + usage.get("cache_write_input_tokens", 0)
        note = "" if cached_tokens else "  (no cache: the shared prefix is under the model's minimum)"
        print(
            f"{path.name:<24}  {count:>5}  ${figures['on_demand']:>9.4f}  ${figures['batch']:>9.4f}  "
            f"${figures['cached']:>9.4f}{note}"
        )
    usage, count = measured_usage(sectioning_job(), SECTIONING_MODEL)
    figures = costs(usage, SECTIONING_MODEL)
    lower = 1 - figures["input_cached"] / figures["input_uncached"]
    print(f"(g2) sectioning, 10 items x 4 sections over ~3,000-token documents, {SECTIONING_MODEL}")
    read, write = usage.get("cache_read_input_tokens", 0), usage.get("cache_write_input_tokens", 0)
    print(f"     input tokens {usage['input_tokens'] + read + write:,} (cache reads {read:,}, writes {write:,})")
    print(
        f"     input cost per 1,000 tasks: ${figures['input_uncached'] * 1000 / count:.4f} without the cache, "
        f"${figures['input_cached'] * 1000 / count:.4f} with it: {lower:.1%} lower (target >= 50%)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
