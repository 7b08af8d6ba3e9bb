"""Expand a checked job into tasks with stable ids and pack them into batches.

A task is one model call: item x section (sectioning) or item x vote
(voting). Its id is ``<item_id>#<section>`` or ``<item_id>#v<n>``; section
names cannot contain '#', so the id splits back unambiguously.

Batching keeps Map iterations few while using all allowed concurrency:
``map_concurrency`` batches run at once with ``threads`` calls each, and
``map_concurrency * threads <= limits.max_concurrency``.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from fanout_core.errors import InvalidJob
from fanout_core.job import Job
from fanout_core.templating import render

MAX_THREADS_PER_BATCH = 50
# an inline Map runs at most 40 iterations at once and its events count against the 25,000-event history
INLINE_MAX_BATCHES = 100
INLINE_MAX_PARALLEL = 40
# a batch holds at most this many rounds of calls; a batch that still runs out of Lambda time stops
# starting calls before the end and is continued by the state machine's retry (BatchIncomplete)
MAX_ROUNDS_PER_BATCH = 40


@dataclass(frozen=True)
class Batching:
    batch_size: int
    batch_count: int
    threads: int
    map_concurrency: int


def slots(job: Job) -> list[str]:
    """The per-item slots: section names, or vote labels v1..vN."""
    if job.pattern == "sectioning":
        return [s.name for s in job.sections or []]
    return [f"v{n + 1}" for n in range(job.vote_count)]


def expand_tasks(job: Job, items: list[dict[str, Any]], default_model: str) -> list[dict[str, Any]]:
    """Every task of the job, in item order then slot order, with its rendered prompt."""
    tasks: list[dict[str, Any]] = []
    limit = job.limits.max_prompt_bytes
    sections = {s.name: s.prompt for s in job.sections or []}
    for index, item in enumerate(items):
        for n, slot in enumerate(slots(job)):
            template = sections[slot] if job.pattern == "sectioning" else job.prompt or ""
            prompt = render(template, item)
            size = len(prompt.encode("utf-8"))
            if size > limit:
                raise InvalidJob(
                    f"items[{index}]: the prompt for item '{item['id']}' ({slot}) is {size} bytes, "
                    f"over limits.max_prompt_bytes ({limit}); shorten the item or raise the limit",
                    f"items[{index}]",
                )
            model = job.vote_model(n, default_model) if job.pattern == "voting" else job.model or default_model
            tasks.append(
                {
                    "task_id": f"{item['id']}#{slot}",
                    "item_id": item["id"],
                    "item_index": index,
                    "slot": slot,
                    "kind": "section" if job.pattern == "sectioning" else "vote",
                    "model": model,
                    "prompt": prompt,
                    "expected": item.get("expected"),
                    # a PDF or office item (fanout_core.documents): Bedrock is sent the file itself as well
                    **({"document": item["document"]} if isinstance(item.get("document"), dict) else {}),
                }
            )
    if len(tasks) > job.limits.max_tasks:
        raise InvalidJob(
            f"limits.max_tasks: the job expands to {len(tasks)} tasks, over limits.max_tasks ({job.limits.max_tasks})",
            "limits.max_tasks",
        )
    return tasks


def choose_batching(task_count: int, max_concurrency: int, batch_size: int | None = None, align: int = 1) -> Batching:
    """Batch size, batch count and the two levels of concurrency for ``task_count`` tasks.

    Batches come in whole waves of ``map_concurrency`` so the last wave is
    not a lone batch running while the allowed concurrency sits idle.
    ``align`` keeps batches whole multiples of it (an item's votes in one
    batch, which early stopping needs).
    """
    task_count = max(task_count, 1)
    parallel = math.ceil(max_concurrency / MAX_THREADS_PER_BATCH)
    threads = max_concurrency // parallel
    if batch_size is None:
        needed = math.ceil(task_count / (threads * MAX_ROUNDS_PER_BATCH))
        count = parallel * math.ceil(needed / parallel)
        batch_size = math.ceil(task_count / min(count, task_count))
    batch_size = math.ceil(batch_size / align) * align
    count = math.ceil(task_count / batch_size)
    threads = max(1, min(threads, batch_size))
    return Batching(
        batch_size=batch_size,
        batch_count=count,
        threads=threads,
        map_concurrency=max(1, min(max_concurrency // threads, count)),
    )


def batching_for(job: Job, task_count: int, concurrency_cap: int) -> Batching:
    """The batching Plan uses for a job: its concurrency under the deployment's cap, an item's votes kept
    together when early stopping decides within a batch."""
    align = job.vote_count if job.aggregate.stop_when_agree or job.aggregate.stop else 1
    return choose_batching(task_count, min(job.limits.max_concurrency, concurrency_cap), job.limits.batch_size, align)


def fingerprint(job: Job, items: list[dict[str, Any]], default_model: str) -> str:
    """What decides the tasks' answers: records made under another fingerprint must not be reused."""
    body = {"job": job.fingerprint_fields(), "items": items, "default_model": default_model}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def batch_ranges(task_count: int, batch_size: int) -> list[dict[str, int]]:
    return [
        {"index": n, "start": start, "end": min(start + batch_size, task_count)}
        for n, start in enumerate(range(0, task_count, batch_size))
    ]


def choose_mode(requested: str, batching: Batching) -> str:
    """inline or distributed: what the job asks for, else by the inline Map's limits.

    A job that asks for inline with more batches than an inline Map takes is refused here, before any call,
    rather than failing in the cloud when its batch list or the execution's history outgrows a quota.
    """
    if requested == "inline" and batching.batch_count > INLINE_MAX_BATCHES:
        raise InvalidJob(
            f"limits.mode: 'inline' runs at most {INLINE_MAX_BATCHES} batches and this job has {batching.batch_count} "
            f"(of {batching.batch_size} tasks each); drop limits.mode (auto picks 'distributed' for a job this size), "
            "set it to 'distributed', or raise limits.batch_size",
            "limits.mode",
        )
    if requested != "auto":
        return requested
    if batching.batch_count > INLINE_MAX_BATCHES or batching.map_concurrency > INLINE_MAX_PARALLEL:
        return "distributed"
    return "inline"
