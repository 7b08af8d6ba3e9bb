"""The fault matrix: one job through the local runtime under each fault, with what it did to the result.

Run: ``.venv/bin/python -m bench.faults [--seeds N]``. For every scenario it
prints the job's status, the task counts (which must add up), the model
calls made, the records per task (1 each: nothing answered twice), and the
wall time: the median over N runs (3 by default), each with the retry
jitter seeded (1..N). Both kinds of retry wait are random by design, the
runner's full-jitter backoff and the state machine's ``JitterStrategy:
FULL`` (moto draws it from ``random``), and with them unseeded one
scenario's wall time moved by a second between two runs of one build; the
seeds give two builds the same draws (in an order the threads' timing
still varies), so the waits are comparable. The same scenarios are asserted by
tests/local/test_fault_matrix.py.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import fanout  # noqa: E402,F401 - puts lambdas/ on the path
from fanout.cli import main as fanout_main  # noqa: E402

LABELS = ["positive", "neutral", "negative"]


def matrix_job(job_id: str, items: int = 40, votes: int = 3) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": votes,
        "prompt": "Classify:\n<ticket>\n{text}\n</ticket>",
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}},
        "aggregate": {"strategy": "majority", "field": "label"},
        "limits": {"max_concurrency": 8, "batch_size": 30},
        "items": [{"id": f"t-{n}", "text": f"ticket {n}", "expected": LABELS[n % 3]} for n in range(items)],
    }


@dataclass(frozen=True)
class Scenario:
    name: str
    model: str
    # patches the in-process handlers for the fault (a crash, a second aggregation); returns an undo
    inject: Callable[[], Callable[[], None]] | None = None
    aggregate_twice: bool = False


def crash_first_attempt_after_half() -> Callable[[], None]:
    """Every batch's first run dies (as a lost container would) after half its tasks finished."""
    from fanout_core import runner

    real = runner.run_batch
    seen: set[int] = set()

    def crashing(batch: dict[str, Any], **kwargs: Any) -> Any:
        if batch["index"] in seen:
            return real(batch, **kwargs)
        seen.add(batch["index"])
        half = {**batch, "tasks": batch["tasks"][: len(batch["tasks"]) // 2]}
        real(half, **kwargs)
        raise RuntimeError(f"container lost after {len(half['tasks'])} tasks of batch {batch['index']}")

    from fanout_core import steps

    steps.run_batch = crashing  # type: ignore[assignment]

    def undo() -> None:
        steps.run_batch = real  # type: ignore[assignment]

    return undo


SCENARIOS = [
    Scenario("healthy", "sim:latency_ms=2,jitter_ms=2,seed=1"),
    Scenario("throttling on 30% of calls", "sim:latency_ms=2,jitter_ms=2,throttle_rate=0.3,seed=2"),
    Scenario("5xx on 10% of calls", "sim:latency_ms=2,jitter_ms=2,error_rate=0.1,seed=3"),
    Scenario("out-of-schema output on 10%", "sim:latency_ms=2,jitter_ms=2,invalid_rate=0.1,seed=4"),
    Scenario("timeouts on 10% of calls", "sim:latency_ms=2,jitter_ms=2,timeout_rate=0.1,seed=5"),
    Scenario(
        "all of the above",
        "sim:latency_ms=2,jitter_ms=2,throttle_rate=0.3,error_rate=0.1,invalid_rate=0.1,timeout_rate=0.1,seed=6",
    ),
    Scenario(
        "subtask crashes after half its batch", "sim:latency_ms=2,jitter_ms=2,seed=7", inject=crash_first_attempt_after_half
    ),
    Scenario("aggregator invoked twice", "sim:latency_ms=2,jitter_ms=2,seed=8", aggregate_twice=True),
]


def seed_jitter(seed: int) -> None:
    """Make the run's retry waits the same draws in every build: the runner's backoff and the state machine's."""
    from fanout_core import runner

    random.seed(seed)  # moto's Step Functions interpreter draws JitterStrategy FULL from the random module
    runner._JITTER.seed(seed)


def run_scenario(scenario: Scenario, workdir: Path, seed: int | None = None) -> dict[str, Any]:
    """Run the matrix job under one fault; the figures a reader needs to trust the result."""
    if seed is not None:
        seed_jitter(seed)
    job_id = "faults-" + "".join(c if c.isalnum() else "-" for c in scenario.name.lower())[:40].strip("-")
    path = workdir / f"{job_id}.json"
    path.write_text(json.dumps(matrix_job(job_id)))
    out = workdir / "out"
    undo = scenario.inject() if scenario.inject else None
    started = time.perf_counter()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            code = fanout_main(["run", str(path), "--out", str(out), "--model", scenario.model, "--fresh", "--quiet"])
    finally:
        if undo:
            undo()
    wall = time.perf_counter() - started
    target = out / job_id
    result = json.loads((target / "result.json").read_text())
    run = json.loads((target / "run.json").read_text())
    if scenario.aggregate_twice:
        result = _aggregate_again(job_id, target, result)
    records = [json.loads(line) for p in (target / "records").rglob("*.jsonl") for line in p.read_text().splitlines()]
    per_task = Counter(r["task_id"] for r in records)
    counts = result["counts"]
    return {
        "scenario": scenario.name,
        "exit": code,
        "status": result["status"],
        "tasks": counts["tasks"],
        "ok": counts["ok"],
        "invalid": counts["invalid"],
        "failed": counts["failed"],
        "adds_up": counts["ok"] + counts["invalid"] + counts["failed"] == counts["tasks"],
        "model_calls": run["model_calls"],
        "records_per_task": max(per_task.values()) if per_task else 0,
        "tasks_with_a_record": len(per_task),
        "items_present": len(result["items"]) == 40,
        "wall_seconds": round(wall, 2),
        "result": result,
    }


def _aggregate_again(job_id: str, target: Path, first: dict[str, Any]) -> dict[str, Any]:
    """Run the aggregator a second time over the same records (a retried Aggregate state) and return its result."""
    from fanout.runtime import RESULTS_BUCKET, local_aws

    with local_aws():
        import boto3

        from fanout_core import layout, steps

        s3 = boto3.client("s3")
        for path in (target / "records").rglob("*"):
            if path.is_file():
                name = path.relative_to(target / "records").as_posix()
                key = f"runs/{job_id}/{'job.json' if name == '_job.json' else 'records/' + name}"
                s3.put_object(Bucket=RESULTS_BUCKET, Key=key, Body=path.read_bytes())
        # Plan's plan.json stays in the run's store (the local --out folder keeps records only); it carries the tier
        plan = {"tier": first["tier"]} if "tier" in first else {}
        s3.put_object(Bucket=RESULTS_BUCKET, Key=layout.plan_key(job_id), Body=json.dumps(plan).encode())
        event = {"job_id": job_id, "run_uri": f"s3://{RESULTS_BUCKET}/runs/{job_id}/"}
        outputs = [steps.run_aggregate(event, s3=s3) for _ in range(2)]
        second = json.loads(s3.get_object(Bucket=RESULTS_BUCKET, Key=f"results/{job_id}/result.json")["Body"].read())
    assert outputs[0] == outputs[1], "aggregating twice must give the same summary"
    # the pacing figures come from the batches' runs/<job_id>/pacing/ files, which the --out folder does not keep
    assert {k: v for k, v in second.items() if k != "pacing"} == {k: v for k, v in first.items() if k != "pacing"}, (
        "aggregating again must give the same result.json"
    )
    return second


@contextlib.contextmanager
def workspace() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="runs per scenario, jitter seeded 1..N (default 3)")
    args = parser.parse_args(argv)
    seeds = range(1, max(1, args.seeds) + 1)
    columns = (
        "scenario",
        "status",
        "tasks",
        "ok",
        "invalid",
        "failed",
        "adds_up",
        "model_calls",
        "records_per_task",
        "wall_seconds",
        "wall_range",
    )
    with workspace() as work:
        runs = [[run_scenario(s, work, seed) for s in SCENARIOS] for seed in seeds]
    rows = []
    for column in zip(*runs, strict=True):
        # the simulator's faults are seeded by its own seed: every run of a scenario makes the same calls
        outcomes = {(r["status"], r["tasks"], r["ok"], r["invalid"], r["failed"], r["model_calls"]) for r in column}
        assert len(outcomes) == 1, f"{column[0]['scenario']}: the runs differ beyond their wall time: {outcomes}"
        walls = [run["wall_seconds"] for run in column]
        rows.append({**column[0], "wall_seconds": round(statistics.median(walls), 2), "wall_range": f"{min(walls)}-{max(walls)}"})
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in columns}
    print("fault matrix: 40 items x 3 votes (120 tasks) on the local runtime, simulator faults as named")
    print(f"wall_seconds: the median of {len(seeds)} runs, retry jitter seeded 1..{len(seeds)}; wall_range: all of them")
    print("(the first scenario's first run pays the process's start)")
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row[c]).ljust(widths[c]) for c in columns))
    return 0


if __name__ == "__main__":
    sys.exit(main())
