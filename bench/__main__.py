"""``make bench``: fanout's local runtime next to a plain thread pool doing the same simulated calls.

Every figure is measured side by side in one run and reported as a median
over repeats (these machines are shared and noisy: compare ratios, not
seconds). Run: ``.venv/bin/python -m bench [--repeats N] [--quick]``.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402,F401 - puts lambdas/ on the path
from fanout.cli import main as fanout_main  # noqa: E402
from fanout_core.providers.base import ModelRequest  # noqa: E402
from fanout_core.providers.simulator import Simulator  # noqa: E402

# AWS list prices (us-east-1) used for (e)
STANDARD_TRANSITION_USD = 0.000025
LAMBDA_GB_SECOND_USD = 0.0000166667
LAMBDA_REQUEST_USD = 0.20 / 1e6
# as infra/functions.py sets them (PLAN_MEMORY_MB, 1,024 MB for Subtask, AGGREGATE_MEMORY_MB)
FUNCTION_MEMORY_GB = {"fanout-plan": 1.5, "fanout-subtask": 1.0, "fanout-aggregate": 1.0}
SMALL_MODEL = ("amazon.nova-lite-v1:0", 0.06, 0.24)


def voting_job(job_id: str, tasks: int, concurrency: int, votes: int = 5) -> dict[str, Any]:
    items = [
        {"id": f"item-{n}", "text": f"ticket {n}: the refund took three weeks", "expected": "negative"}
        for n in range(tasks // votes)
    ]
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": votes,
        "prompt": "Classify the sentiment of this ticket: {text}",
        "inference": {"max_tokens": 16},
        "output_schema": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": {"enum": ["positive", "neutral", "negative"]}},
        },
        "aggregate": {"strategy": "majority", "field": "label"},
        "limits": {"max_concurrency": concurrency},
        "items": items,
    }


def run_fanout(job: dict[str, Any], model: str, workdir: Path) -> dict[str, Any]:
    """One local run through the CLI; returns run.json plus result usage."""
    path = workdir / f"{job['job_id']}.json"
    path.write_text(json.dumps(job))
    out = workdir / "out"
    with contextlib.redirect_stdout(io.StringIO()):
        code = fanout_main(["run", str(path), "--out", str(out), "--model", model, "--fresh", "--quiet"])
    if code != 0:
        raise SystemExit(f"bench run of {job['job_id']} exited {code}")
    run = json.loads((out / job["job_id"] / "run.json").read_text())
    result = json.loads((out / job["job_id"] / "result.json").read_text())
    run["usage"] = result["usage"]
    return run


def run_thread_pool(tasks: int, concurrency: int, model_options: dict[str, Any]) -> float:
    """The hand-rolled baseline: the same simulated calls in a ThreadPoolExecutor; returns seconds."""
    sim = Simulator(model_options)
    schema = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["positive", "neutral", "negative"]}}}
    requests = [
        ModelRequest(
            task_id=f"item-{n // 5}#v{n % 5 + 1}",
            prompt=f"ticket {n}",
            output_schema=schema,
            expected="negative",
            answer_field="label",
        )
        for n in range(tasks)
    ]
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(lambda r: sim.invoke(r, 1), requests))
    return time.perf_counter() - started


def aggregation_figures(records: int) -> dict[str, float]:
    """(d) in a fresh process, so peak memory is the aggregation's own."""
    code = f"""
import json, sys, time
sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / "lambdas")!r})
from fanout_core.aggregation import aggregate
from fanout_core.job import parse_job
votes = 5
items = [{{"id": f"item-{{n}}", "text": "t", "expected": "negative"}} for n in range({records} // votes)]
job = parse_job({{"job_id": "agg", "pattern": "voting", "votes": votes, "prompt": "{{text}}",
    "output_schema": {{"type": "object", "required": ["label"],
                      "properties": {{"label": {{"enum": ["positive", "neutral", "negative"]}}}}}},
    "aggregate": {{"strategy": "majority", "field": "label"}}, "items": [{{"id": "x", "text": "t"}}],
    "limits": {{"max_items": 10**6}}}})
labels = ["positive", "neutral", "negative"]
from fanout_core.validation import SchemaCheck
checked = SchemaCheck(job.output_schema).digest  # as the batch runner marks the outputs it validated
def stream():
    for n, item in enumerate(items):
        for v in range(votes):
            yield {{"task_id": item["id"] + f"#v{{v+1}}", "item_id": item["id"], "slot": f"v{{v+1}}", "vote": v + 1,
                   "status": "ok", "output": {{"label": labels[(n + v) % 3 if v < 2 else 2]}}, "error": None,
                   "model": "sim", "usage": {{"input_tokens": 40, "output_tokens": 4}}, "latency_ms": 100.0,
                   "attempts": 1, "checked": checked}}
def high_water_kb():
    # this address space's own peak (a fresh exec starts it at zero); ru_maxrss can carry the parent's
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
before = high_water_kb()
started = time.perf_counter()
result = aggregate(job, items, stream())
seconds = time.perf_counter() - started
peak = high_water_kb()
assert result["counts"]["tasks"] == {records}
print(json.dumps({{"seconds": seconds, "peak_mb": peak / 1024, "baseline_mb": before / 1024}}))
"""
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    figures: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return figures


def median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller jobs, one repeat (a smoke test)")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    scale = 10 if args.quick else 1
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

    latency_tasks, concurrency, latency_ms = 1000 // scale, 50, 100
    overhead_tasks = 5000 // scale
    ratio_fanout, ratio_pool, per_task_fanout, per_task_pool = [], [], [], []
    transitions, lambda_seconds, invocations = [], [], []
    ideal = math.ceil(latency_tasks / concurrency) * latency_ms / 1000
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for _ in range(repeats):
            # (a) latency-bound: 100 ms calls, concurrency 50
            run = run_fanout(
                voting_job("bench-latency", latency_tasks, concurrency), f"sim:latency_ms={latency_ms},jitter_ms=0", work
            )
            ratio_fanout.append(run["wall_seconds"] / ideal)
            ratio_pool.append(run_thread_pool(latency_tasks, concurrency, {"latency_ms": latency_ms, "jitter_ms": 0}) / ideal)
            transitions.append(run["state_transitions"] * 1000 / latency_tasks)
            lambda_seconds.append(run["lambda_seconds"])
            invocations.append(sum(run["lambda_invocations"].values()))
            # (b) orchestration-bound: 0 ms calls
            run = run_fanout(voting_job("bench-overhead", overhead_tasks, concurrency), "sim:latency_ms=0,jitter_ms=0", work)
            per_task_fanout.append(run["wall_seconds"] / overhead_tasks * 1000)
            per_task_pool.append(
                run_thread_pool(overhead_tasks, concurrency, {"latency_ms": 0, "jitter_ms": 0}) / overhead_tasks * 1000
            )
    aggregated = [aggregation_figures(100_000 // scale) for _ in range(repeats)]
    agg_rate = median([100_000 // scale / a["seconds"] for a in aggregated])
    agg_peak = median([a["peak_mb"] for a in aggregated])
    # the process's peak less its high-water mark before the aggregation: what aggregating takes, without the
    # modules the aggregation imports (they grow and shrink with what else the package holds)
    agg_own = median([a["peak_mb"] - a["baseline_mb"] for a in aggregated])

    # (e) orchestration cost per 1,000 tasks in the cloud, from (c) and the measured handler durations
    per_1000 = 1000 / latency_tasks
    gb_seconds = median([sum(FUNCTION_MEMORY_GB[f] * s for f, s in ls.items()) for ls in lambda_seconds]) * per_1000
    cost_transitions = median(transitions) * STANDARD_TRANSITION_USD
    cost_lambda = gb_seconds * LAMBDA_GB_SECOND_USD + median(invocations) * per_1000 * LAMBDA_REQUEST_USD
    tokens_in, tokens_out = 60, 8  # a short classification prompt and a one-word structured answer
    token_cost = 1000 * (tokens_in * SMALL_MODEL[1] + tokens_out * SMALL_MODEL[2]) / 1e6

    rows = [
        (
            "(a) wall / ideal, 1,000 x 100 ms at concurrency 50",
            f"{median(ratio_fanout):.3f}",
            f"{median(ratio_pool):.3f}",
            "<= 1.15",
        ),
        (
            "(b) orchestration ms per task, 5,000 x 0 ms",
            f"{median(per_task_fanout):.3f}",
            f"{median(per_task_pool):.3f}",
            "<= 0.5",
        ),
        ("(c) state transitions per 1,000 tasks", f"{median(transitions):.0f}", "-", "<= 50"),
        ("(d) aggregation records/s, 100,000 records", f"{agg_rate:,.0f}", "-", ">= 50,000"),
        ("(d) aggregation peak memory MB", f"{agg_peak:.0f}", "-", "<= 500"),
        ("(d) of which the aggregation's own MB", f"{agg_own:.0f}", "-", "-"),
        (
            "(e) orchestration USD per 1,000 tasks",
            f"{cost_transitions + cost_lambda:.5f}",
            "-",
            f"tokens ({SMALL_MODEL[0]}): {token_cost:.5f}",
        ),
    ]
    if args.quick:
        print("quick mode: jobs are 10x smaller; figures are a smoke test, not the targets' scale")
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}; medians of {repeats} runs, measured side by side"
    )
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'fanout':>10}  {'thread pool':>11}  target")
    for name, ours, pool, target in rows:
        print(f"{name:<{width}}  {ours:>10}  {pool:>11}  {target}")
    print(
        f"(e) detail: transitions {cost_transitions:.5f} + Lambda {cost_lambda:.5f} "
        f"({gb_seconds:.1f} GB-s) per 1,000 tasks, at 1,000 tasks per job"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
