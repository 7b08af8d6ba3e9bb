"""The data that crosses a step, as typed models: task, batch file, record, plan summary, result head.

Plan writes batch files; RunBatch reads one, renders its tasks' prompts and
writes records; Aggregate reads the records. Each shape is defined once
here (TypedDicts: they cost nothing at run time and the files stay plain
JSON), with the functions that build them, so a test builds a batch file
with ``batch_file`` exactly as Plan does.

A batch holds whole items: each item's template inputs once, with one stub
per task (its slot, model and request key). A stub whose request already
has a final record from an earlier run carries that record's ``done``
status, and for a vote its ``answer``, so early stopping decides from all of
an item's votes; RunBatch asks the model only for the others.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal, Required, TypedDict

from fanout_core.templating import render

Status = Literal["ok", "invalid", "failed", "skipped"]
# a record's status that ends its request: asked again only by a job re-run with retry_failed
FINAL_STATUSES: tuple[Status, ...] = ("ok", "skipped", "invalid", "failed")
# ... and those a re-run reuses even with retry_failed
ANSWERED: tuple[Status, ...] = ("ok", "skipped")
Kind = Literal["section", "vote"]


class Task(TypedDict, total=False):
    """One model call, as RunBatch runs it (``expand`` builds it from a batch file)."""

    task_id: str
    item_id: str
    item_index: int
    slot: str
    kind: Kind
    model: str
    prompt: str
    key: str  # the request's fingerprint (planning.request_key)
    expected: Any
    document: dict[str, Any]  # a PDF or office item: Bedrock is sent the file itself as well
    document_bytes: bytes


class TaskStub(TypedDict, total=False):
    """A task in a batch file: no prompt (RunBatch renders it from the item)."""

    slot: str
    model: str
    key: str
    done: Status  # the request's final record from an earlier run: not asked again
    answer: str | None  # that record's normalised answer (a vote under a stopping rule)


class BatchItem(TypedDict):
    index: int  # the item's position in the job
    item: dict[str, Any]  # its template inputs, once for all its tasks
    tasks: list[TaskStub]


class BatchFile(TypedDict, total=False):
    """``runs/<job_id>/batches/<n>.json``: a first-pass batch holds ``items`` (``batch_file``), a second-pass batch
    (fanout_core.second_pass) its ``stage`` and ``tasks``, each prompt rendered from first-pass answers
    (``stage_batch``)."""

    job_id: str
    index: int
    kind: Kind
    templates: dict[str, str]  # slot -> prompt template (a vote's slot maps to the one voting prompt)
    system: str | None
    inference: dict[str, Any]
    output_schema: dict[str, Any] | None
    answer_field: str | None
    tier: str
    stop: dict[str, Any]
    vote_weights: list[float]
    pacing: dict[str, Any]  # the quota, budget and planned share the batch's calls are paced to (fanout_core.pacing)
    # when Plan took the run's lease (epoch seconds): the lease was written then or later, so a batch that starts
    # within lease.REFRESH_SECONDS of it has nothing to refresh and need not read it
    lease_taken: float
    items: list[BatchItem]
    stage: str
    # a second-pass task: as Task, with a kind of its own (escalation, judge, synthesis) and, for a judge or a
    # synthesis, its own output_schema, max_tokens and temperature
    tasks: list[dict[str, Any]]


class Usage(TypedDict, total=False):
    input_tokens: int
    output_tokens: int
    cache_read_input_tokens: int
    cache_write_input_tokens: int


class Record(TypedDict, total=False):
    """One task's outcome, a JSON line under ``runs/<job_id>/records/``."""

    task_id: str
    item_id: str
    slot: str
    key: str  # the request's fingerprint: a later run reuses the record when it asks the same
    run: str  # the execution that made the calls
    status: Status
    output: Any
    error: str | None
    model: str
    usage: Usage
    latency_ms: float
    attempts: int
    vote: int
    section: str
    synthetic: bool
    checked: str
    stop: str  # a skipped vote: the stopping rule that skipped it (planning.rule_digest)
    truncated: bool
    throttled: int  # attempts the model refused with a throttling error
    quota_wait_ms: float  # how long the task's calls waited for the model's quota (fanout_core.pacing)
    tier: str  # the service tier the calls were priced at (fanout_core.tiers), when not the default
    stopped: str  # "budget": not called, limits.max_cost_usd would have been passed
    fallback: bool  # a tier-batch answer the on-demand fallback asks again (not a final record)
    kind: str  # a second-pass task's kind: escalation, judge or synthesis
    reasked_truncated: int  # a truncated answer was asked again with this max_tokens
    repaired: bool  # an answer that missed the schema was asked once more: whether the repair fits
    repair_error: str  # why that repair has no answer


class PlanCounts(TypedDict):
    items: int
    tasks: int
    pending: int  # tasks this run asks the model for
    skipped: int  # tasks answered by records of earlier runs (reused): tasks - pending
    reused: int
    batches: int


class PlanSummary(TypedDict, total=False):
    """What Plan returns to the state machine (and writes as plan.json)."""

    job_id: str
    run_uri: str
    run_bucket: str
    manifest_key: str
    map_results_prefix: str
    mode: str
    batches: list[dict[str, int]]
    tolerated_failure_percentage: float
    batch_size: int
    threads: int
    map_concurrency: int
    max_concurrency: int
    tier: dict[str, Any]
    inference_jobs: list[dict[str, Any]]  # tier batch: the Bedrock batch inference jobs to run first
    inference_poll_seconds: float
    inference_max_polls: int
    second_pass: bool  # escalation, a judge or a synthesis follows the first Map
    counts: PlanCounts
    warnings: list[str]


ResultStatus = Literal["complete", "partial", "failed"]


class ResultCounts(TypedDict, total=False):
    items: int
    tasks: int
    ok: int
    invalid: int
    failed: int
    skipped: int  # votes not asked because the first ones settled the answer (only when there are some)


class EscalationUsage(TypedDict, total=False):
    items: int
    model_calls: int
    input_tokens: int
    output_tokens: int
    estimated_cost_usd: float | None


class ResultUsage(TypedDict, total=False):
    """What this run's calls were (records reused from earlier runs cost nothing again)."""

    model_calls: int
    input_tokens: int
    output_tokens: int
    estimated_cost_usd: float | None
    calls_saved: int
    requests_reused: int
    by_model: dict[str, dict[str, Any]]
    escalation: EscalationUsage


class Result(TypedDict, total=False):
    """``results/<job_id>/result.json`` (Aggregate writes it; the CLI, ``serve`` and ``fanout results`` read it)."""

    job_id: str
    pattern: str
    status: ResultStatus
    strategy: str | None
    counts: ResultCounts
    items: list[dict[str, Any]]  # one per item, in input order (also results.jsonl, one a line)
    usage: ResultUsage
    synthesis: dict[str, Any]
    tie_break: str
    synthetic: bool  # some outputs came from the simulator
    evaluation: dict[str, Any]  # accuracy against the items' expected answers
    tier: dict[str, Any]  # the tier the calls were bought at and why (plan.json's)
    pacing: dict[str, Any]  # the quota's pace: throttled requests, tokens per minute, the quota wait
    budget: dict[str, Any]  # limits.max_cost_usd: the budget, what was spent, the tasks it left uncalled
    reason: str  # "budget": limits.max_cost_usd stopped some calls


class AggregateSummary(TypedDict):
    """What Aggregate returns to the state machine: the execution's output."""

    job_id: str | None
    status: ResultStatus
    counts: ResultCounts
    tasks_skipped: int
    usage: ResultUsage
    result_uri: str
    results_uri: str
    report_uri: str
    message: str


class SecondPassStage(TypedDict, total=False):
    """What the aggregate function returns when it planned the second pass instead of aggregating.

    ``status`` is always ``second_pass`` (an AggregateSummary's never is), and ``stage`` the last stage planned:
    the state machine's CheckStatus runs the stage's batches, inline or distributed by ``mode``, and hands
    ``stage`` back to the next invocation. ``done``: no stage after the last one run had calls left, so the next
    invocation aggregates (it then carries only ``job_id``, ``stage`` and ``counts``).
    """

    status: Required[Literal["second_pass"]]
    job_id: Required[str | None]
    stage: Required[int]
    done: Required[bool]
    counts: Required[dict[str, int]]  # the stage's tasks and batches
    name: str  # escalate, judge or synthesis
    run_uri: str
    run_bucket: str
    mode: str  # inline | distributed
    batches: list[dict[str, int]]  # an inline stage's batch list; a distributed Map reads manifest_key
    manifest_key: str
    map_results_prefix: str
    tolerated_failure_percentage: float
    threads: int
    map_concurrency: int


def new_record(
    task: Mapping[str, Any],
    status: Status,
    output: Any,
    error: str | None,
    *,
    model: str,
    attempts: int,
    latency_ms: float = 0.0,
    usage: Mapping[str, int] | None = None,
    tier: str | None = None,
    synthetic: bool = False,
    truncated: bool = False,
) -> Record:
    """A task's record, as RunBatch (fanout_core.runner) and tier batch (fanout_core.batch_inference) write one.

    ``model`` is the spec the task asked for (what weights and prices are keyed by); ``attempts`` the calls it
    was billed for. A vote's record says its number, a section's its name, a second-pass task's its kind.
    """
    spent = usage or {}
    record: Record = {
        "task_id": task["task_id"],
        "item_id": task["item_id"],
        "slot": task["slot"],
        "status": status,
        "output": output,
        "error": error,
        "model": model,
        "usage": {"input_tokens": spent.get("input_tokens", 0), "output_tokens": spent.get("output_tokens", 0)},
        "latency_ms": latency_ms,
        "attempts": attempts,
    }
    if tier is not None:
        record["tier"] = tier
    kind = task["kind"]
    if kind == "vote":
        record["vote"] = int(task["slot"][1:])
    elif kind == "section":
        record["section"] = task["slot"]
    else:
        record["kind"] = kind  # a second-pass task: escalation, judge or synthesis
    if synthetic:
        record["synthetic"] = True
    if truncated:
        record["truncated"] = True
    return record


def vote_slot(kind: Kind, slot: str) -> str:
    """The template a slot renders: a section's own, or the one prompt of every vote."""
    return slot if kind == "section" else "vote"


def batch_file(
    index: int,
    items: Iterable[BatchItem],
    *,
    job_id: str,
    kind: Kind,
    templates: Mapping[str, str],
    shared: Mapping[str, Any] | None = None,
) -> BatchFile:
    """A batch file: the fields every task of the job shares, and the batch's items with their task stubs."""
    batch: BatchFile = {"job_id": job_id, "index": index, "kind": kind, "templates": dict(templates)}
    batch.update(shared or {})  # type: ignore[typeddict-item]
    batch["items"] = list(items)
    return batch


def stage_batch(index: int, tasks: Iterable[dict[str, Any]], shared: Mapping[str, Any]) -> BatchFile:
    """A second-pass batch file: the fields its tasks share, and the tasks themselves."""
    batch: BatchFile = {**shared, "index": index}  # type: ignore[typeddict-item]
    batch["tasks"] = list(tasks)
    return batch


def batch_item(index: int, item: dict[str, Any], stubs: Iterable[TaskStub]) -> BatchItem:
    return {"index": index, "item": item, "tasks": list(stubs)}


def expand(batch: Mapping[str, Any]) -> list[Task]:
    """The tasks of a batch file, each with its prompt rendered from its item (an item's votes share one string)."""
    kind: Kind = batch.get("kind", "vote")
    templates: Mapping[str, str] = batch["templates"]
    tasks: list[Task] = []
    for entry in batch["items"]:
        item = entry["item"]
        rendered: dict[str, str] = {}
        for stub in entry["tasks"]:
            slot = stub["slot"]
            which = vote_slot(kind, slot)
            if which not in rendered:
                rendered[which] = render(templates[which], item)
            task: Task = {
                "task_id": f"{item['id']}#{slot}",
                "item_id": item["id"],
                "item_index": entry["index"],
                "slot": slot,
                "kind": kind,
                "model": stub["model"],
                "prompt": rendered[which],
                "key": stub["key"],
                "expected": item.get("expected"),
            }
            if isinstance(item.get("document"), dict):
                task["document"] = item["document"]
            tasks.append(task)
    return tasks


def done_stubs(batch: Mapping[str, Any]) -> dict[str, TaskStub]:
    """The stubs of a batch answered by earlier runs, by request key."""
    return {stub["key"]: stub for entry in batch["items"] for stub in entry["tasks"] if "done" in stub}


def pending_task_ids(batch: Mapping[str, Any]) -> list[str]:
    """The ids of the tasks a batch file asks the model for (not those earlier runs answered)."""
    return [str(t["task_id"]) for t in pending_tasks(batch)]


def pending_count(batch: Mapping[str, Any]) -> int:
    """How many tasks a batch file asks the model for: ``len(pending_task_ids(batch))`` without building the ids."""
    if "items" not in batch:
        return len(batch.get("tasks", []))
    return sum(1 for e in batch["items"] for stub in e["tasks"] if "done" not in stub)


def pending_tasks(batch: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The (task_id, key) of each task a batch file asks the model for, as small dicts."""
    if "items" not in batch:
        return [{"task_id": t["task_id"], "key": t.get("key")} for t in batch.get("tasks", [])]
    return [
        {"task_id": f"{e['item']['id']}#{stub['slot']}", "key": stub["key"]}
        for e in batch["items"]
        for stub in e["tasks"]
        if "done" not in stub
    ]
