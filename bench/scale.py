"""``make bench`` rows (i), (j) and (k): how a local run grows with N, how it compares with plain Python, and
what Plan and Aggregate need in memory at a million tasks.

(i) the growth curve: the same voting job (5 votes per item, 0 ms simulated
    calls) at growing sizes, its items inline in the job file and as an
    ``items_uri`` JSONL file: ms per task of the execution (run.json's
    wall_seconds), the peak memory of the whole CLI process, and the
    exponent b of a least-squares fit wall = a * N^b over the sizes.
(j) the same simulated calls through a plain ThreadPoolExecutor and an
    asyncio loop in the same run, and fanout's wall time as a ratio to each.
(k) Plan and Aggregate of a 1,000,000-task job, each in a clean process of
    its own as in Lambda, over a stand-in S3 that keeps objects in files (so
    the figure is the function's, not the store's): the peak memory of the
    process (``VmHWM``, imports included) next to the function's memory in
    infra/functions.py, and the seconds it took.

Every figure is a median over ``--repeats`` runs, each its own process,
started clean: its peak memory is the ``VmHWM`` of that process (the
high-water mark of its own address space, which a fresh exec starts from
zero; ``ru_maxrss`` can carry the parent's).

Run: ``.venv/bin/python -m bench.scale`` (1k, 10k and 50k tasks, and (k); a
few minutes) or ``--full`` (1k to 1M tasks, and (j) at 500k too: the better
part of an hour on a shared 2-core machine; run it rarely). ``--sizes`` and
``--rows`` run a part, e.g. ``--sizes 100000 --rows i``.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
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


def median(values: list[float]) -> float:
    return statistics.median(values)


def growth_row(sizes: tuple[int, ...], forms: tuple[str, ...], repeats: int, work: Path) -> None:
    """(i): each size and form run ``repeats`` times, interleaved; prints the medians and the fitted exponents."""
    curve: dict[str, list[tuple[int, float]]] = {form: [] for form in forms}
    print(f"(i) growth curve: voting, 5 votes, 0 ms simulated calls; each run its own process; medians of {repeats}")
    print(f"{'tasks':>9}  {'form':<9}  {'ms/task':>8}  {'wall s':>8}  {'peak MB':>8}  {'same result':>11}")
    for tasks in sizes:
        runs: dict[str, list[dict[str, Any]]] = {form: [] for form in forms}
        for _ in range(repeats):
            for form in forms:
                runs[form].append(run_cli(tasks, form, work))
        same = len({repr(r[0]["result_items"]) for r in runs.values()}) == 1
        for form, done in runs.items():
            wall = median([r["wall_seconds"] for r in done])
            peak = median([r["peak_mb"] for r in done])
            curve[form].append((tasks, wall))
            print(
                f"{tasks:>9,}  {form:<9}  {wall / tasks * 1000:>8.4f}  {wall:>8.2f}  {peak:>8.0f}  "
                f"{('yes' if same else 'NO') if len(forms) > 1 else '-':>11}"
            )
    for form, points in curve.items():
        if len(points) > 1:
            print(f"(i) fitted exponent, {form}: {exponent(points):.3f}  (target <= 1.05; <= 0.1 ms per task)")


def side_by_side_row(sizes: tuple[int, ...], repeats: int, work: Path) -> None:
    """(j): fanout (items_uri), then a thread pool and an asyncio loop making the same calls, back to back each time.

    Each repeat runs the three one after the other, so the ratios compare runs minutes apart at most: on a shared
    machine the load changes over the time a growth curve takes, and (i)'s runs are not reused here.
    """
    print(f"(j) the same calls side by side, back to back: fanout (items_uri) / plain Python; medians of {repeats}")
    for tasks in sizes:
        walls, pool, loop = [], [], []
        for _ in range(repeats):
            walls.append(run_cli(tasks, "items_uri", work)["wall_seconds"])
            base = baselines(tasks)
            pool.append(base["thread_pool"])
            loop.append(base["asyncio"])
        wall, pool_s, loop_s = median(walls), median(pool), median(loop)
        ratios = median([w / p for w, p in zip(walls, pool, strict=True)])
        print(
            f"    {tasks:>9,} tasks: fanout {wall:.2f} s, thread pool {pool_s:.2f} s, asyncio {loop_s:.2f} s; "
            f"fanout / thread pool x{ratios:.2f}, / asyncio x{median([w / a for w, a in zip(walls, loop, strict=True)]):.2f}"
            "  (target <= 2x the thread pool)"
        )


_STEP_CHILD = """
import json, sys, time
sys.path.insert(0, {root!r}); sys.path.insert(0, {lambdas!r})
from bench.disk_s3 import DiskS3
from fanout_core.handlers import {handler}  # noqa: F401 - the function's imports, as its process has them
from fanout_core import steps
from fanout_core.providers.registry import ProviderRegistry
from fanout_core.settings import Settings

s3 = DiskS3({store!r})
job_id = {job_id!r}
run = {{"run_uri": f"s3://results/runs/{{job_id}}/", "job_id": job_id}}
started = time.perf_counter()
if {step!r} == "plan":
    out = steps.plan({job!r}, job_id, s3=s3, settings=Settings(results_bucket="results", max_concurrency_cap=1000))
    summary = {{"batches": out["counts"]["batches"], "tasks": out["counts"]["tasks"]}}
elif {step!r} == "batches":
    registry = ProviderRegistry()
    manifest = json.loads(s3.get_object(Bucket="results", Key=f"runs/{{job_id}}/batches.json")["Body"].read())
    for batch in manifest:
        steps.run_subtask({{**run, "batch": batch, "threads": 1}}, s3=s3, provider_for=registry.provider_for)
    summary = {{"batches": len(manifest)}}
else:
    out = steps.run_aggregate(run, s3=s3, scratch_dir={scratch!r})
    summary = {{"status": out["status"], "tasks": out["counts"]["tasks"], "ok": out["counts"]["ok"]}}
seconds = time.perf_counter() - started
peak_kb = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print("__step__", json.dumps({{**summary, "seconds": seconds, "peak_mb": peak_kb / 1024}}))
"""


def function_memory_mb() -> dict[str, int]:
    """Each function's memory as infra/functions.py sets it (what the measured peak is compared with)."""
    import re

    text = (ROOT / "infra" / "functions.py").read_text()
    found = re.findall(r'_build_function\(\s*"(\w+)",\s*"\w+",\s*memory_mb=(\w+)', text)
    values = {name: int(value) if value.isdigit() else int(_infra_constant(text, value)) for name, value in found}
    return values


def _infra_constant(text: str, name: str) -> str:
    import re

    match = re.search(rf"^{name}\s*=\s*([\d_]+)", text, re.MULTILINE)
    if match is None:
        raise SystemExit(f"infra/functions.py: no value for {name}")
    return match.group(1).replace("_", "")


def run_step(step: str, handler: str, store: Path, job_id: str, job_input: dict[str, Any], scratch: Path) -> dict[str, Any]:
    code = _STEP_CHILD.format(
        root=str(ROOT),
        lambdas=str(ROOT / "lambdas"),
        handler=handler,
        store=str(store),
        job_id=job_id,
        step=step,
        job=job_input,
        scratch=str(scratch),
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    last = [line for line in done.stdout.splitlines() if line.startswith("__step__")]
    if done.returncode != 0 or not last:
        raise SystemExit(f"bench step {step} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(last[0].split(" ", 1)[1])
    return figures


def big_items(item_bytes: int, job_bytes: int) -> list[dict[str, Any]]:
    """Items of ``item_bytes`` each (as limits.max_item_bytes counts them), their file at most ``job_bytes``."""
    shell = len(json.dumps({"id": "item-0000000", "text": ""}).encode())
    return [
        {"id": f"item-{n:07d}", "text": f"ticket {n} " + "x" * (item_bytes - shell - len(f"ticket {n} "))}
        for n in range(job_bytes // (item_bytes + 1))  # + 1: the JSON Lines file counts each newline too
    ]


def functions_row(
    tasks: int, repeats: int, work: Path, *, item_bytes: int | None = None, job_bytes: int | None = None
) -> dict[str, dict[str, float]]:
    """(k): Plan and Aggregate of one job at ``tasks`` tasks, each in a clean process over the file-backed S3.

    With ``item_bytes`` the items are that big instead, as many as add up to ``job_bytes`` (the caps'
    max_item_bytes and max_job_bytes): what Plan holds at the deployment's byte caps.
    """
    spec, items = job(tasks)
    if item_bytes is not None:
        items = big_items(item_bytes, job_bytes or item_bytes)
        tasks = len(items) * VOTES
        spec = {**spec, "limits": {**spec["limits"], "max_item_bytes": item_bytes, "max_job_bytes": job_bytes or item_bytes}}
    store = work / f"k-store-{tasks}"
    (store / "input").mkdir(parents=True, exist_ok=True)
    with (store / "input" / "items.jsonl").open("w") as out:
        out.writelines(json.dumps(i) + "\n" for i in items)
    del items
    job_id = f"functions-{tasks}"
    job_input = {**spec, "job_id": job_id, "items_uri": "s3://input/items.jsonl", "model": MODEL}
    memory = function_memory_mb()
    size = f" of {item_bytes:,} bytes, {tasks // VOTES * item_bytes:,} bytes in all" if item_bytes else ""
    print(
        f"(k) Plan and Aggregate at {tasks:,} tasks ({tasks // VOTES:,} items{size}), each in a clean process over a "
        f"file-backed S3; medians of {repeats}"
    )
    plans, aggregates = [], []
    for _ in range(repeats):
        shutil.rmtree(store / "results", ignore_errors=True)
        plans.append(run_step("plan", "plan", store, job_id, job_input, work))
    run_step("batches", "subtask", store, job_id, job_input, work)  # the records Aggregate reads (not measured)
    for _ in range(repeats):
        shutil.rmtree(store / "results" / "results", ignore_errors=True)
        aggregates.append(run_step("aggregate", "aggregate", store, job_id, job_input, work))
        assert aggregates[-1]["ok"] == tasks, aggregates[-1]
    figures: dict[str, dict[str, float]] = {}
    for name, runs in (("Plan", plans), ("Aggregate", aggregates)):
        peak, seconds = median([r["peak_mb"] for r in runs]), median([r["seconds"] for r in runs])
        limit = memory[name]
        figures[name] = {"peak_mb": peak, "seconds": seconds, "memory_mb": limit}
        print(
            f"    {name:<9}  peak {peak:>6.0f} MB = {peak / limit:.0%} of its {limit:,} MB, {seconds:.1f} s  "
            "(target: Aggregate <= 1,024 MB; Plan < 70%)"
        )
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--full", action="store_true", help="1k to 1M tasks, and (j) at 500k: long; run it rarely")
    parser.add_argument(
        "--sizes", type=lambda text: tuple(int(n) for n in text.split(",")), help="task counts for (i), e.g. 10000,100000"
    )
    parser.add_argument("--side-by-side", type=lambda text: tuple(int(n) for n in text.split(",")), help="task counts for (j)")
    parser.add_argument("--forms", default="inline,items_uri", help="(i)'s job forms: inline, items_uri or both")
    parser.add_argument("--rows", default="ijk", help="which rows to run, e.g. ij or k")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure; the median is printed (default 3)")
    parser.add_argument("--functions-tasks", type=int, default=1_000_000, help="(k)'s job size (default 1,000,000)")
    parser.add_argument("--item-bytes", type=int, help="(k) with items of this many bytes (e.g. the max_item_bytes cap)")
    parser.add_argument("--job-bytes", type=int, help="with --item-bytes: the items' bytes in all (e.g. the max_job_bytes cap)")
    args = parser.parse_args()
    sizes = args.sizes or (FULL_SIZES if args.full else SHORT_SIZES)
    side_by_side = args.side_by_side or ((10_000, 500_000) if args.full else (10_000,))
    forms = tuple(f for f in args.forms.split(",") if f in ("inline", "items_uri"))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "i" in args.rows:
            growth_row(sizes, forms, args.repeats, work)
        if "j" in args.rows:
            side_by_side_row(side_by_side, args.repeats, work)
        if "k" in args.rows:
            functions_row(args.functions_tasks, args.repeats, work, item_bytes=args.item_bytes, job_bytes=args.job_bytes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
