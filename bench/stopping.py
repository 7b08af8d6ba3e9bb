"""``make bench`` row (h): fixed voting next to window and adaptive stopping, on items that differ in difficulty.

Each mix is 2,000 items over 3 labels on the simulator with
``difficulty=4`` (each item's accuracy drawn from Beta(4a, 4(1-a))), asked
through ``run_batch`` (0 ms calls, records in memory) and aggregated by
``aggregate``: the same code a job runs. Run: ``.venv/bin/python -m bench.stopping``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402,F401 - puts lambdas/ on the path
from fanout_core.aggregation import aggregate  # noqa: E402
from fanout_core.job import Job, parse_job  # noqa: E402
from fanout_core.planning import expand_tasks  # noqa: E402
from fanout_core.providers.simulator import Simulator  # noqa: E402
from fanout_core.runner import run_batch  # noqa: E402
from fanout_core.stopping import rule_for, vote_weights  # noqa: E402

LABELS = ["positive", "neutral", "negative"]
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}}
MAX_VOTES = 8
METHODS: dict[str, dict[str, Any] | None] = {
    "fixed 8": None,
    "window 3": {"method": "window", "window": 3},
    "adaptive 0.95": {"method": "adaptive", "threshold": 0.95},
}
MIXES = [(0.7, 4.0), (0.8, 4.0), (0.9, 4.0)]


class _Records:
    """What run_batch needs of a store, in memory: no earlier records, and a sink."""

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


def job_for(stop: dict[str, Any] | None, items: list[dict[str, Any]]) -> Job:
    aggregate_options: dict[str, Any] = {"field": "label", **({"stop": stop} if stop else {})}
    return parse_job(
        {
            "job_id": "bench-stopping",
            "pattern": "voting",
            "votes": MAX_VOTES,
            "prompt": "{text}",
            "output_schema": SCHEMA,
            "aggregate": aggregate_options,
            "items": items,
        }
    )


def measure(stop: dict[str, Any] | None, accuracy: float, difficulty: float, items_n: int) -> tuple[float, float]:
    """(model calls per item, aggregated accuracy) of one method on one mix."""
    items = [{"id": f"i{n}", "text": "t", "expected": LABELS[n % 3]} for n in range(items_n)]
    job = job_for(stop, items)
    rule = rule_for(job)
    batch = {
        "index": 0,
        "job_id": job.job_id,
        "system": None,
        "inference": {"max_tokens": 8},
        "output_schema": SCHEMA,
        "answer_field": "label",
        **({"stop": rule.to_batch(), "vote_weights": vote_weights(job, "sim")} if rule else {}),
        "tasks": expand_tasks(job, items, "sim"),
    }
    sim = Simulator({"latency_ms": 0, "jitter_ms": 0, "accuracy": accuracy, "difficulty": difficulty, "seed": 11})
    store = _Records()
    run_batch(batch, store=store, provider_for=lambda _: sim, threads=8)
    result = aggregate(job, items, store.records)
    return result["usage"]["model_calls"] / items_n, result["evaluation"]["accuracy"]


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stopping")
    parser.add_argument("--items", type=int, default=2000)
    args = parser.parse_args()
    started = time.monotonic()
    print(f"(h) stopping, {args.items:,} items x up to {MAX_VOTES} votes, 3 labels, sim difficulty=4 (Beta(4a, 4(1-a))):")
    print(f"{'mix':<14}  {'method':<14}  {'calls/item':>10}  {'saved':>6}  {'accuracy':>8}  {'vs fixed':>8}")
    verdicts = []
    for accuracy, difficulty in MIXES:
        fixed_calls, fixed_accuracy = 0.0, 0.0
        for name, stop in METHODS.items():
            calls, acc = measure(stop, accuracy, difficulty, args.items)
            if stop is None:
                fixed_calls, fixed_accuracy = calls, acc
            saved = 1 - calls / fixed_calls
            print(
                f"{f'accuracy={accuracy}':<14}  {name:<14}  {calls:>10.2f}  {saved:>6.1%}  {acc:>8.1%}  "
                f"{(acc - fixed_accuracy) * 100:>+7.2f}p"
            )
            if name.startswith("adaptive") and accuracy == 0.7:
                ok = saved >= 0.30 and fixed_accuracy - acc <= 0.01
                verdicts.append(
                    f"target at accuracy=0.7: adaptive within 1 point of fixed-8 with >= 30% fewer calls: "
                    f"{'met' if ok else 'NOT met'} ({saved:.1%} fewer, {(acc - fixed_accuracy) * 100:+.2f} points)"
                )
    print("\n".join(verdicts))
    print(f"({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
