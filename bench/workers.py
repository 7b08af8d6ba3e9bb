"""``make bench`` row (l): the batch runner's worker pool, its queue of plain threads next to a ThreadPoolExecutor.

The same local runs as rows (a) and (b) of ``python -m bench`` (a voting
job through the CLI on the local state machine: 1,000 tasks of 100 ms and
5,000 tasks of 0 ms, concurrency 50), once with the runner's pool as it is
(``fanout_core.runner._Workers``: threads pulling task indexes from one
iterator, no Future per task) and once with a ``ThreadPoolExecutor`` in
its place, alternating, each figure the median over ``--repeats``; the
CPU row is the whole process's CPU time (moto and the state machine
included) per task of the 0 ms run. The runner keeps its own pool only
while the executor costs more than 10% (issue 12); the last line says
which way this run's figures point.

Run: ``.venv/bin/python -m bench.workers [--repeats N]``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from bench.__main__ import run_fanout, voting_job
from fanout.cli import quiet_handler_warnings
from fanout_core import runner

CONCURRENCY = 50
LATENCY_TASKS, LATENCY_MS = 1000, 100
OVERHEAD_TASKS = 5000
KEEP_OWN_POOL_ABOVE = 1.10  # the executor is used unless it costs more than 10%


class ExecutorWorkers:
    """``runner._Workers``'s interface over a ThreadPoolExecutor: results in task order, the first failure raised
    once the tasks already started have finished (the ones not started are cancelled)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> ExecutorWorkers:
        self._pool = ThreadPoolExecutor(max_workers=self.threads)
        return self

    def __exit__(self, *_: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        assert self._pool is not None
        futures = [self._pool.submit(fn, item) for item in items]
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f.exception() for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for future in pending:
                future.cancel()
            wait(pending)
            raise failed
        return [f.result() for f in futures]


@contextlib.contextmanager
def pool(kind: str) -> Iterator[None]:
    """The runner as it is ("queue", its own pool) or with a ThreadPoolExecutor ("executor") for the block."""
    own = runner._Workers
    runner._Workers = ExecutorWorkers if kind == "executor" else own  # type: ignore[misc,assignment]
    try:
        yield
    finally:
        runner._Workers = own  # type: ignore[misc]


def measure(repeats: int, scale: int = 1) -> dict[str, dict[str, float]]:
    """Median (a) wall / ideal and (b) ms per task for each pool, the pools alternating run by run."""
    latency_tasks, overhead_tasks = LATENCY_TASKS // scale, OVERHEAD_TASKS // scale
    ideal = math.ceil(latency_tasks / CONCURRENCY) * LATENCY_MS / 1000
    figures: dict[str, dict[str, list[float]]] = {k: {"a": [], "b": [], "cpu": []} for k in ("queue", "executor")}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for repeat in range(repeats):
            # alternate which pool goes first, so a machine that slows down over the run favours neither
            for kind in ("queue", "executor") if repeat % 2 == 0 else ("executor", "queue"):
                with pool(kind):
                    run = run_fanout(
                        voting_job("bench-pool-latency", latency_tasks, CONCURRENCY),
                        f"sim:latency_ms={LATENCY_MS},jitter_ms=0",
                        work,
                    )
                    figures[kind]["a"].append(run["wall_seconds"] / ideal)
                    cpu = time.process_time()
                    run = run_fanout(
                        voting_job("bench-pool-overhead", overhead_tasks, CONCURRENCY), "sim:latency_ms=0,jitter_ms=0", work
                    )
                    figures[kind]["cpu"].append((time.process_time() - cpu) / overhead_tasks * 1000)
                    figures[kind]["b"].append(run["wall_seconds"] / overhead_tasks * 1000)
    return {kind: {row: statistics.median(values) for row, values in rows.items()} for kind, rows in figures.items()}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.workers")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="10x smaller jobs, 2 repeats (a smoke test)")
    args = parser.parse_args()
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    quiet_handler_warnings()
    repeats, scale = (2, 10) if args.quick else (args.repeats, 1)
    medians = measure(repeats, scale)
    queue, executor = medians["queue"], medians["executor"]
    print(
        f"(l) the batch runner's pool: machine {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}; medians of {repeats} runs each, alternating, side by side"
    )
    rows = [
        (f"(l) wall / ideal, {LATENCY_TASKS // scale:,} x {LATENCY_MS} ms at concurrency {CONCURRENCY}", "a", "{:.3f}"),
        (f"(l) orchestration ms per task, {OVERHEAD_TASKS // scale:,} x 0 ms", "b", "{:.3f}"),
        (f"(l) CPU ms per task of the whole run, {OVERHEAD_TASKS // scale:,} x 0 ms", "cpu", "{:.3f}"),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'figure':<{width}}  {'thread queue':>12}  {'ThreadPoolExecutor':>18}  executor / queue")
    worst = 0.0
    for name, key, form in rows:
        ratio = executor[key] / queue[key]
        worst = max(worst, ratio)
        print(f"{name:<{width}}  {form.format(queue[key]):>12}  {form.format(executor[key]):>18}  {ratio:.3f}")
    verdict = "the runner's own pool stays" if worst > KEEP_OWN_POOL_ABOVE else "a ThreadPoolExecutor would do"
    print(f"(l) the executor's worst ratio {worst:.3f} (limit {KEEP_OWN_POOL_ABOVE:.2f}): {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
