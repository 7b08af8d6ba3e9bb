"""Expand a checked job into tasks with stable ids and pack them into batches.

A task is one model call: item x section (sectioning) or item x vote
(voting). Its id is ``<item_id>#<section>`` or ``<item_id>#v<n>``; section
names cannot contain '#', so the id splits back unambiguously. Its request
key (``request_key``) is the fingerprint of what it asks: records are
reused by that key, never by the id alone.

Batches hold whole items (``pack_items``): an item's tasks are run, retried
and early-stopped together, on a first run and on a re-run alike.

Batching keeps Map iterations few while using all allowed concurrency:
``map_concurrency`` batches run at once with ``threads`` calls each, and
``map_concurrency * threads <= limits.max_concurrency``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, cast

from fanout_core.contracts import Kind, Task, vote_slot
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


def request_key(
    item_id: str,
    slot: str,
    model: str,
    system: str | None,
    prompt: str,
    inference: Mapping[str, Any],
    output_schema: Mapping[str, Any] | None,
) -> str:
    """The fingerprint of one request: what was asked (model spec, system, rendered prompt, inference settings,
    schema, the vote or section), of which item. A record made for the same key answers the same request, so a
    re-run, or a changed job under the same job_id, reuses it; any change to one of these asks again."""
    return keyed(item_id, slot, model, _key_json(prompt), key_settings(system, inference, output_schema))


# one encoder for every key part: json.dumps with options builds a new encoder on each call
_KEY_ENCODER = json.JSONEncoder(sort_keys=True, ensure_ascii=False, separators=(",", ":"), default=str)
# what that encoder does with a string (JSONEncoder.encode's own shortcut for one), called directly
_encode_string = json.encoder.encode_basestring


def _key_json(value: Any) -> str:
    if type(value) is str:
        return _encode_string(value)
    return _KEY_ENCODER.encode(value)


def key_settings(system: str | None, inference: Mapping[str, Any], output_schema: Mapping[str, Any] | None) -> tuple[str, str]:
    """The parts of a request key that a job's tasks share (system; inference and schema), encoded once for all."""
    return _key_json(system), f"{_key_json(dict(inference))},{_key_json(output_schema)}"


def keyed(item_id: str, slot: str, model: str, prompt_json: str, settings: tuple[str, str]) -> str:
    """``request_key`` from its shared parts already encoded (``key_settings``, the prompt's ``_key_json``).

    The same bytes as the JSON list ``[item_id, slot, model, system, prompt, inference, schema]`` encoded whole:
    a list is its elements' encodings joined by the separator, so the key of every record ever written holds.
    """
    body = f"[{_key_json(item_id)},{_key_json(slot)},{_key_json(model)},{settings[0]},{prompt_json},{settings[1]}]"
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def rule_digest(stop: Mapping[str, Any] | None) -> str | None:
    """A stopping rule's identity: a vote skipped under one rule is not reused under another."""
    if not stop:
        return None
    return hashlib.sha256(json.dumps(dict(stop), sort_keys=True).encode()).hexdigest()[:16]


def templates_of(job: Job) -> dict[str, str]:
    """The prompt template of each slot kind: a section's own by name, the one voting prompt as 'vote'."""
    if job.pattern == "sectioning":
        return {s.name: s.prompt for s in job.sections or []}
    return {"vote": job.prompt or ""}


def expand_tasks(job: Job, items: list[dict[str, Any]], default_model: str) -> list[dict[str, Any]]:
    """Every task of the job (``contracts.Task``), in item order then slot order, with its rendered prompt and
    request key.

    An item's votes share one rendered prompt (one string, not one copy per vote).
    """
    tasks: list[Task] = []
    make = _task_maker(job, default_model)
    for index, item in enumerate(items):
        tasks.extend(make(index, item))
        if len(tasks) > job.limits.max_tasks:
            break
    if len(tasks) > job.limits.max_tasks:
        total = len(items) * len(slots(job))
        raise InvalidJob(
            f"limits.max_tasks: the job expands to {total} tasks, over limits.max_tasks ({job.limits.max_tasks})",
            "limits.max_tasks",
        )
    return cast(list[dict[str, Any]], tasks)


def task_keys(job: Job, items: list[dict[str, Any]], default_model: str) -> set[str]:
    """The request key of every task of the job (their prompts rendered one item at a time, none kept)."""
    make = _task_maker(job, default_model)
    return {task["key"] for index, item in enumerate(items) for task in make(index, item)}


def item_tasks(job: Job, index: int, item: dict[str, Any], default_model: str) -> list[Task]:
    """The tasks of one item, in slot order."""
    return _task_maker(job, default_model)(index, item)


def _task_maker(job: Job, default_model: str) -> Callable[[int, dict[str, Any]], list[Task]]:
    """``item_tasks`` for one job: what every item's tasks share (templates, slots and their models, the encoded
    settings of the request key) worked out once, not once per item."""
    limit = job.limits.max_prompt_bytes
    templates = templates_of(job)
    kind: Kind = "section" if job.pattern == "sectioning" else "vote"
    shared = key_settings(job.system, job.inference.model_dump(), job.output_schema)
    per_slot = [
        (slot, vote_slot(kind, slot), job.vote_model(n, default_model) if job.pattern == "voting" else job.model or default_model)
        for n, slot in enumerate(slots(job))
    ]

    def make(index: int, item: dict[str, Any]) -> list[Task]:
        item_id = item["id"]
        rendered: dict[str, tuple[str, str]] = {}
        tasks: list[Task] = []
        for slot, which, model in per_slot:
            found = rendered.get(which)
            if found is None:
                prompt = render(templates[which], item)
                found = rendered[which] = (prompt, _key_json(prompt))
                size = len(prompt.encode("utf-8", "surrogatepass"))
                if size > limit:
                    raise InvalidJob(
                        f"items[{index}]: the prompt for item '{item_id}' ({slot}) is {size} bytes, "
                        f"over limits.max_prompt_bytes ({limit}); shorten the item or raise the limit",
                        f"items[{index}]",
                    )
            prompt, prompt_json = found
            task: Task = {
                "task_id": f"{item_id}#{slot}",
                "item_id": item_id,
                "item_index": index,
                "slot": slot,
                "kind": kind,
                "model": model,
                "prompt": prompt,
                "key": keyed(item_id, slot, model, prompt_json, shared),
                "expected": item.get("expected"),
            }
            # a PDF or office item (fanout_core.documents): Bedrock is sent the file itself as well
            if isinstance(item.get("document"), dict):
                task["document"] = item["document"]
            tasks.append(task)
        return tasks

    return make


def pack_items(pending_per_item: Iterable[tuple[int, int]], batch_size: int) -> list[list[tuple[int, int, int]]]:
    """Whole items into batches of at most ``batch_size`` pending tasks.

    ``pending_per_item`` is (item position, pending tasks) in item order; an
    item with nothing pending is left out. Each batch is a list of (item
    position, first task, end task) over that item's pending tasks: an item
    stays in one batch unless it alone has more than ``batch_size`` pending
    tasks, when it is cut into batches of its own.
    """
    batches: list[list[tuple[int, int, int]]] = []
    current: list[tuple[int, int, int]] = []
    filled = 0
    for position, pending in pending_per_item:
        if pending <= 0:
            continue
        if current and filled + pending > batch_size:
            batches.append(current)
            current, filled = [], 0
        if pending > batch_size:
            batches.extend([(position, start, min(start + batch_size, pending))] for start in range(0, pending, batch_size))
            continue
        current.append((position, 0, pending))
        filled += pending
    if current:
        batches.append(current)
    return batches


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
    """The batching Plan uses for a job: its concurrency under the deployment's cap, batches a whole number of
    items (an item's tasks are run, retried and early-stopped together)."""
    # a size of the job's own too is rounded up to whole items
    align = max(1, len(slots(job)))
    return choose_batching(task_count, min(job.limits.max_concurrency, concurrency_cap), job.limits.batch_size, align)


def packed_batching(
    job: Job, pending_per_item: list[tuple[int, int]], concurrency_cap: int
) -> tuple[Batching, list[list[tuple[int, int, int]]]]:
    """The batching of a run (its batch count as packed) and its batches of whole items (``pack_items``)."""
    sized = batching_for(job, sum(count for _, count in pending_per_item), concurrency_cap)
    packed = pack_items(pending_per_item, sized.batch_size)
    count = max(1, len(packed))
    return replace(sized, batch_count=len(packed), map_concurrency=max(1, min(sized.map_concurrency, count))), packed


def item_counts(tasks: Iterable[Mapping[str, Any]]) -> list[tuple[int, int]]:
    """(item position, tasks) of a task list, in item order: what a first run packs."""
    counts: dict[int, int] = {}
    for task in tasks:
        counts[task["item_index"]] = counts.get(task["item_index"], 0) + 1
    return sorted(counts.items())


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
