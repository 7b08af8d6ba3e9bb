"""``make bench`` rows (i) and (j): how the local run grows with N, and how it compares with plain Python.

(i) the growth curve: the same voting job (5 votes per item, 0 ms simulated
    calls) at growing sizes, its items inline in the job file and as an
    ``items_uri`` JSONL file: ms per task of the execution (run.json's
    wall_seconds), the peak memory of the whole CLI process, and the
    exponent b of a least-squares fit wall = a * N^b over the sizes.
(j) the same simulated calls through a plain ThreadPoolExecutor and an
    asyncio loop in the same run, and fanout's wall time as a ratio to each.

Every run is its own process, started clean: its peak memory is the
``VmHWM`` of that process (the high-water mark of its own address space,
which a fresh exec starts from zero; ``ru_maxrss`` can carry the parent's).

Run: ``.venv/bin/python -m bench.scale`` (1k, 10k and 50k tasks; a few
minutes) or ``--full`` (1k to 1M tasks, and (j) at 500k too: the better
part of an hour on a shared 2-core machine; run it rarely).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VOTES = 5
SHORT_SIZES = (1_000, 10_000, 50_000)
FULL_SIZES = (1_000, 10_000, 100_000, 500_000, 1_000_000)
MODEL = "sim:latency_ms=0,jitter_ms=0"
CONCURRENCY = 64

# runs the CLI in this (clean) process and prints its own peak memory last
_CLI_CHILD = """
import sys
sys.path.insert(0, {root!r})
from fanout.cli import main
code = main({argv!r})
peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("__peak_kb__", peak_kb, code)
"""

# the same simulated calls without fanout: a thread pool, then an asyncio loop
_BASELINE_CHILD = """
import asyncio, json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {lambdas!r})
from concurrent.futures import ThreadPoolExecutor
from fanout_core.providers.base import ModelRequest
from fanout_core.providers.simulator import Simulator
sim = Simulator({{"latency_ms": 0, "jitter_ms": 0}})
schema = {{"type": "object", "required": ["label"], "properties": {{"label": {{"enum": ["positive", "neutral", "negative"]}}}}}}
requests = [ModelRequest(task_id=f"item-{{n // {votes}}}#v{{n % {votes} + 1}}", prompt=f"ticket {{n}}",
                         output_schema=schema, answer_field="label") for n in range({tasks})]
started = time.perf_counter()
with ThreadPoolExecutor(max_workers={concurrency}) as pool:
    replies = list(pool.map(lambda r: sim.invoke(r, 1), requests))
pool_seconds = time.perf_counter() - started
assert len(replies) == {tasks}

async def main():
    gate = asyncio.Semaphore({concurrency})
    async def one(request):
        async with gate:
            return sim.invoke(request, 1)
    return await asyncio.gather(*(one(r) for r in requests))

started = time.perf_counter()
assert len(asyncio.run(main())) == {tasks}
print(json.dumps({{"thread_pool": pool_seconds, "asyncio": time.perf_counter() - started}}))
"""


def job(tasks: int) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    items = [{"id": f"item-{n}", "text": f"ticket {n}: the refund took three weeks"} for n in range(tasks // VOTES)]
    spec = {
        "pattern": "voting",
        "votes": VOTES,
        "prompt": "Classify the sentiment of this ticket: {text}",
        "inference": {"max_tokens": 16},
        "output_schema": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": {"enum": ["positive", "neutral", "negative"]}},
        },
        "aggregate": {"strategy": "majority", "field": "label"},
        "limits": {"max_concurrency": CONCURRENCY, "max_items": 10**6, "max_tasks": 10**7},
    }
    return spec, items


def run_cli(tasks: int, form: str, work: Path) -> dict[str, Any]:
    """One local run of the job in a fresh process; run.json's figures plus that process's peak memory."""
    spec, items = job(tasks)
    job_id = f"scale-{form}-{tasks}"
    folder = work / job_id
    folder.mkdir(parents=True, exist_ok=True)
    if form == "inline":
        document = {**spec, "job_id": job_id, "items": items}
    else:
        (folder / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
        document = {**spec, "job_id": job_id, "items_uri": "items.jsonl"}
    path = folder / "job.json"
    path.write_text(json.dumps(document))
    out = work / "out"
    argv = ["run", str(path), "--out", str(out), "--model", MODEL, "--fresh", "--quiet"]
    done = subprocess.run(
        [sys.executable, "-c", _CLI_CHILD.format(root=str(ROOT), argv=argv)], capture_output=True, text=True, check=False
    )
    last = [line for line in done.stdout.splitlines() if line.startswith("__peak_kb__")]
    if done.returncode != 0 or not last or last[0].split()[2] != "0":
        raise SystemExit(f"bench run {job_id} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    figures: dict[str, Any] = json.loads((out / job_id / "run.json").read_text())
    figures["peak_mb"] = int(last[0].split()[1]) / 1024
    result = json.loads((out / job_id / "result.json").read_text())
    figures["result_items"] = [(i["id"], i["answer"], i["votes"]) for i in result["items"]]
    return figures


def baselines(tasks: int) -> dict[str, float]:
    code = _BASELINE_CHILD.format(
        root=str(ROOT), lambdas=str(ROOT / "lambdas"), votes=VOTES, tasks=tasks, concurrency=CONCURRENCY
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def exponent(points: list[tuple[int, float]]) -> float:
    """b of the least-squares fit log(wall) = log(a) + b log(N)."""
    xs = [math.log(n) for n, _ in points]
    ys = [math.log(max(seconds, 1e-6)) for _, seconds in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum((x - mx) ** 2 for x in xs)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale")
    parser.add_argument("--full", action="store_true", help="1k to 1M tasks, and (j) at 500k: long; run it rarely")
    args = parser.parse_args()
    sizes = FULL_SIZES if args.full else SHORT_SIZES
    side_by_side = (10_000, 500_000) if args.full else (10_000,)
    curve: dict[str, list[tuple[int, float]]] = {"inline": [], "items_uri": []}
    walls: dict[int, float] = {}
    print("(i) growth curve: voting, 5 votes, 0 ms simulated calls; each run its own process")
    print(f"{'tasks':>9}  {'form':<9}  {'ms/task':>8}  {'wall s':>8}  {'peak MB':>8}  {'same result':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for tasks in sizes:
            runs = {form: run_cli(tasks, form, work) for form in ("inline", "items_uri")}
            same = runs["inline"]["result_items"] == runs["items_uri"]["result_items"]
            for form, run in runs.items():
                curve[form].append((tasks, run["wall_seconds"]))
                print(
                    f"{tasks:>9,}  {form:<9}  {run['wall_seconds'] / tasks * 1000:>8.4f}  {run['wall_seconds']:>8.2f}  "
                    f"{run['peak_mb']:>8.0f}  {'yes' if same else 'NO':>11}"
                )
            walls[tasks] = runs["items_uri"]["wall_seconds"]
        for form, points in curve.items():
            print(f"(i) fitted exponent, {form}: {exponent(points):.3f}  (target <= 1.05; <= 0.1 ms per task)")
        print("(j) the same calls side by side in this run: fanout (items_uri) / plain Python")
        for tasks in side_by_side:
            wall = walls.get(tasks)
            if wall is None:
                wall = run_cli(tasks, "items_uri", work)["wall_seconds"]
            base = baselines(tasks)
            print(
                f"    {tasks:>9,} tasks: fanout {wall:.2f} s, thread pool {base['thread_pool']:.2f} s "
                f"(x{wall / base['thread_pool']:.2f}), asyncio {base['asyncio']:.2f} s (x{wall / base['asyncio']:.2f})"
                "  (target <= 2x the thread pool)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
