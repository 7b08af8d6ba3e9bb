"""Run one batch: call the model for each task concurrently, record every outcome, return counts only.

Retries follow one table (see README "Model errors"): throttling and
transient service errors are retried here with exponential backoff and full
jitter inside a per-task budget; a timeout is retried once; anything else
fails the task at once. When throttling outlasts the budget the finished
records stay in S3 and the batch raises ``ModelThrottled``, so the state
machine retries the batch and only unfinished tasks call the model again.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from jsonschema import Draft202012Validator

from fanout_core.errors import ModelThrottled
from fanout_core.providers.base import ModelError, ModelRequest, Provider
from fanout_core.store import RunStore


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 6
    base_seconds: float = 0.5
    cap_seconds: float = 8.0
    timeout_retries: int = 1

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2^attempt)]."""
        return rng.uniform(0.0, min(self.cap_seconds, self.base_seconds * 2 ** (attempt - 1)))


@dataclass
class BatchOutcome:
    index: int
    counts: dict[str, int]

    def as_event(self) -> dict[str, Any]:
        return {"batch": self.index, "status": "done", "counts": self.counts}


class _Unfinished(Exception):
    """A task still throttled when its budget ran out: no record, the batch is retried."""


def run_batch(
    batch: dict[str, Any],
    *,
    store: RunStore,
    provider_for: Callable[[str], Provider],
    threads: int,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
) -> BatchOutcome:
    """Run every task of a batch file; raise ModelThrottled if some tasks could not finish."""
    tasks: list[dict[str, Any]] = batch["tasks"]
    schema = batch.get("output_schema")
    validator = Draft202012Validator(schema) if schema else None
    counts: Counter[str] = Counter()
    lock = threading.Lock()

    def run_one(task: dict[str, Any]) -> None:
        existing = store.get_record(task["item_id"], task["slot"])
        if existing is not None and existing.get("status") == "ok":
            with lock:
                counts["skipped"] += 1
            return
        try:
            record, calls = _call(task, batch, provider_for(task["model"]), validator, policy, sleep)
        except _Unfinished as exc:
            with lock:
                counts["unfinished"] += 1
                counts["model_calls"] += exc.args[0]
            return
        store.put_record(record)
        with lock:
            counts[record["status"]] += 1
            counts["model_calls"] += calls
            counts["input_tokens"] += record["usage"]["input_tokens"]
            counts["output_tokens"] += record["usage"]["output_tokens"]

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(tasks) or 1))) as pool:
        list(pool.map(run_one, tasks))

    result = {
        key: counts.get(key, 0) for key in ("ok", "invalid", "failed", "skipped", "model_calls", "input_tokens", "output_tokens")
    }
    result["tasks"] = len(tasks)
    if counts["unfinished"]:
        raise ModelThrottled(
            f"{counts['unfinished']} of {len(tasks)} tasks of batch {batch['index']} were still throttled after "
            f"{policy.max_attempts} attempts each; finished tasks are recorded and will not be called again"
        )
    return BatchOutcome(index=batch["index"], counts=result)


def _call(
    task: dict[str, Any],
    batch: dict[str, Any],
    provider: Provider,
    validator: Draft202012Validator | None,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
) -> tuple[dict[str, Any], int]:
    inference = batch.get("inference") or {}
    request = ModelRequest(
        task_id=task["task_id"],
        prompt=task["prompt"],
        system=batch.get("system"),
        output_schema=batch.get("output_schema"),
        max_tokens=inference.get("max_tokens", 512),
        temperature=inference.get("temperature"),
        top_p=inference.get("top_p"),
        expected=task.get("expected"),
        answer_field=batch.get("answer_field"),
    )
    jitter = random.Random()
    timeouts = 0
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            reply = provider.invoke(request, attempt)
        except ModelError as exc:
            retry = (exc.kind in ("throttled", "transient") and attempt < policy.max_attempts) or (
                exc.kind == "timeout" and timeouts < policy.timeout_retries
            )
            if exc.kind == "timeout":
                timeouts += 1
            if retry:
                sleep(policy.delay(attempt, jitter))
                continue
            if exc.kind == "throttled":
                raise _Unfinished(attempt) from exc
            return _record(task, "failed", None, f"{exc.code}: {exc.message}", attempt, started, model=task["model"]), attempt
        status, error = "ok", None
        if validator is not None:
            problem = (
                next(iter(validator.iter_errors(reply.output)), None)
                if isinstance(reply.output, dict)
                else "output is not a JSON object"
            )
            if problem is not None:
                status = "invalid"
                error = problem if isinstance(problem, str) else _schema_error(problem)
        record = _record(
            task,
            status,
            reply.output,
            error,
            attempt,
            started,
            model=reply.model,
            usage=(reply.input_tokens, reply.output_tokens),
            synthetic=reply.synthetic,
        )
        return record, attempt


def _schema_error(error: Any) -> str:
    path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return f"output{path}: {error.message}"


def _record(
    task: dict[str, Any],
    status: str,
    output: Any,
    error: str | None,
    attempts: int,
    started: float,
    *,
    model: str,
    usage: tuple[int, int] = (0, 0),
    synthetic: bool = False,
) -> dict[str, Any]:
    record: dict[str, Any] = {
        "task_id": task["task_id"],
        "item_id": task["item_id"],
        "slot": task["slot"],
        "status": status,
        "output": output,
        "error": error,
        "model": model,
        "usage": {"input_tokens": usage[0], "output_tokens": usage[1]},
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
        "attempts": attempts,
    }
    if task["kind"] == "vote":
        record["vote"] = int(task["slot"][1:])
    else:
        record["section"] = task["slot"]
    if synthetic:
        record["synthetic"] = True
    return record
