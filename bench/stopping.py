"""``make bench`` row (h): fixed voting next to window and adaptive stopping, on items that differ in difficulty;
and escalation: a cheap model for every item and a strong one for the doubtful, next to either model alone.

Each mix is 2,000 items over 3 labels on the simulator with
``difficulty=4`` (each item's accuracy drawn from Beta(4a, 4(1-a))), asked
through ``run_batch`` (0 ms calls, records in memory) and aggregated by
``aggregate``: the same code a job runs. Escalation's second pass is
planned by the same functions a job's second pass uses (``needs_escalation``,
``escalation_tasks``) and run by ``run_batch`` too. The simulator is free;
the row prices its two models as two Bedrock models of the catalog (printed
with the row), through the job's ``prices``. Run: ``.venv/bin/python -m bench.stopping``.
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
from fanout_core.aggregation import ItemVotes, aggregate  # noqa: E402
from fanout_core.job import Job, parse_job  # noqa: E402
from fanout_core.planning import expand_tasks  # noqa: E402
from fanout_core.pricing import estimate_cost, rates_of  # noqa: E402
from fanout_core.providers.simulator import Simulator  # noqa: E402
from fanout_core.providers.spec import parse_model_spec  # noqa: E402
from fanout_core.runner import run_batch  # noqa: E402
from fanout_core.second_pass import escalation_tasks, needs_escalation  # noqa: E402
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


# escalation: what the two simulated models stand for, priced at these Bedrock models' list prices (models.json)
CHEAP_PRICE_AS, STRONG_PRICE_AS = "bedrock:amazon.nova-lite-v1:0", "bedrock:amazon.nova-pro-v1:0"
CHEAP = "sim:accuracy=0.7,difficulty=4,seed=11"
STRONG = "sim:accuracy=0.9,difficulty=4,seed=11"
ESCALATE = {"below": 0.7, "votes": 1, "model": STRONG}
FIRST_VOTES = 3


def escalation_job(model: str, items: list[dict[str, Any]], escalate: dict[str, Any] | None) -> Job:
    prices = {}
    for spec, like in ((CHEAP, CHEAP_PRICE_AS), (STRONG, STRONG_PRICE_AS)):
        rates = rates_of(like)
        assert rates is not None, f"no list price for {like} in models.json"
        prices[spec] = {"input_per_million": rates.input, "output_per_million": rates.output}
    aggregate_options: dict[str, Any] = {"field": "label", **({"escalate": escalate} if escalate else {})}
    return parse_job(
        {
            "job_id": "bench-escalation",
            "pattern": "voting",
            "votes": FIRST_VOTES,
            "model": model,
            "prompt": "Classify the sentiment of this support ticket: {text}",
            "output_schema": SCHEMA,
            "aggregate": aggregate_options,
            "items": items,
            "prices": prices,
        }
    )


def _simulators() -> dict[str, Simulator]:
    out = {}
    for spec in (CHEAP, STRONG):
        options = parse_model_spec(spec).options
        out[spec] = Simulator({**options, "latency_ms": 0, "jitter_ms": 0})
    return out


def measure_escalation(model: str, escalate: dict[str, Any] | None, items_n: int) -> dict[str, Any]:
    """Accuracy, calls and cost of voting with ``model`` for every item, escalating the doubtful when asked."""
    items = [{"id": f"i{n}", "text": f"ticket {n}", "expected": LABELS[n % 3]} for n in range(items_n)]
    job = escalation_job(model, items, escalate)
    sims = _simulators()
    shared = {"job_id": job.job_id, "system": None, "inference": {"max_tokens": 8}, "output_schema": SCHEMA}
    store = _Records()
    first = {**shared, "index": 0, "answer_field": "label", "tasks": expand_tasks(job, items, "sim")}
    run_batch(first, store=store, provider_for=sims.__getitem__, threads=8)
    if escalate is not None:
        # the second pass: what a job's escalation stage asks for the items still doubtful after the first votes
        second: list[dict[str, Any]] = []

        def plan(seen: ItemVotes) -> None:
            if needs_escalation(job, seen.first):
                second.extend(escalation_tasks(job, seen.item, "sim", set()))

        aggregate(job, items, store.records, on_votes=plan)
        batch = {**shared, "index": 1_000_000, "answer_field": "label", "tasks": second}
        run_batch(batch, store=store, provider_for=sims.__getitem__, threads=8)
    result = aggregate(job, items, store.records)
    usage = result["usage"]
    prices = {name: price.model_dump() for name, price in (job.prices or {}).items()}
    return {
        "accuracy": result["evaluation"]["accuracy"],
        "calls": usage["model_calls"] / items_n,
        "cost": estimate_cost(usage["by_model"], prices) or 0.0,
        "escalated": (usage.get("escalation") or {}).get("items", 0) / items_n,
    }


def escalation_rows(items_n: int) -> dict[str, dict[str, Any]]:
    return {
        "cheap only": measure_escalation(CHEAP, None, items_n),
        "strong only": measure_escalation(STRONG, None, items_n),
        "cheap + strong for the doubtful": measure_escalation(CHEAP, ESCALATE, items_n),
    }


def print_escalation(items_n: int) -> str:
    rows = escalation_rows(items_n)
    cheap, strong, cascade = rows["cheap only"], rows["strong only"], rows["cheap + strong for the doubtful"]
    print(
        f"\n(h) escalation, {items_n:,} items x {FIRST_VOTES} votes, 3 labels; cheap {CHEAP}, strong {STRONG}; "
        f"doubtful: confidence below {ESCALATE['below']} after the cheap votes, then {ESCALATE['votes']} strong vote(s) "
        "that decide"
    )
    lite, pro = rates_of(CHEAP_PRICE_AS), rates_of(STRONG_PRICE_AS)
    assert lite is not None and pro is not None
    print(
        f"price assumption (the simulator is free): cheap priced as {CHEAP_PRICE_AS} (${lite.input}/${lite.output} per M "
        f"tokens in/out), strong as {STRONG_PRICE_AS} (${pro.input}/${pro.output})"
    )
    print(f"{'method':<32}  {'calls/item':>10}  {'escalated':>9}  {'accuracy':>8}  {'cost':>10}  {'vs strong':>9}")
    for name, row in rows.items():
        print(
            f"{name:<32}  {row['calls']:>10.2f}  {row['escalated']:>9.1%}  {row['accuracy']:>8.1%}  "
            f"${row['cost']:>9.5f}  {row['cost'] / strong['cost']:>9.1%}"
        )
    ok = cascade["accuracy"] > cheap["accuracy"] and cascade["cost"] <= 0.5 * strong["cost"]
    return (
        "target for escalation: higher accuracy than cheap-only at <= 50% of all-strong's cost: "
        f"{'met' if ok else 'NOT met'} ({(cascade['accuracy'] - cheap['accuracy']) * 100:+.2f} points over cheap-only, "
        f"{cascade['cost'] / strong['cost']:.1%} of all-strong's cost)"
    )


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
    verdicts.append(print_escalation(args.items))
    print("\n".join(verdicts))
    print(f"({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
