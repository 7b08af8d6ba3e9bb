"""The batch runner's pool, and the ThreadPoolExecutor make bench row (l) puts in its place: the same behaviour
(results in task order, a failure stops the rest), so the row compares their cost alone."""

from __future__ import annotations

import threading
import time

import pytest

from bench.workers import ExecutorWorkers, pool
from fanout_core import runner
from fanout_core.runner import _Workers

POOLS = pytest.mark.parametrize("workers", [_Workers, ExecutorWorkers], ids=["runner", "executor"])


@POOLS
def test_results_come_in_task_order_whatever_order_the_tasks_finish_in(workers: type[_Workers]) -> None:
    # Given tasks that finish in reverse order
    def slow_first(n: int) -> int:
        time.sleep((5 - n) * 0.01)
        return n * n

    # When they run four at a time
    with workers(4) as threads:
        results = threads.map(slow_first, list(range(5)))

    # Then each result is at its task's place
    assert results == [0, 1, 4, 9, 16]


@POOLS
def test_a_failure_is_raised_after_the_started_tasks_finish_and_the_rest_never_start(workers: type[_Workers]) -> None:
    # Given one thread and a task that fails second of ten
    started: list[int] = []
    lock = threading.Lock()

    def task(n: int) -> int:
        with lock:
            started.append(n)
        if n == 1:
            raise ValueError("task 1 failed")
        time.sleep(0.01)
        return n

    # When they run
    with pytest.raises(ValueError, match="task 1 failed"), workers(1) as threads:
        threads.map(task, list(range(10)))

    # Then the failure came out, and the tasks queued behind it were cancelled, not run (no calls thrown away)
    assert started[:2] == [0, 1]
    assert len(started) < 10


def test_the_bench_swaps_the_runners_pool_for_the_block_only() -> None:
    own = runner._Workers
    with pool("executor"):
        assert runner._Workers is ExecutorWorkers
    assert runner._Workers is own
