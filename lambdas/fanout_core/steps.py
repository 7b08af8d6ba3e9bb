"""The three steps of the state machine as plain functions: plan, run a batch, aggregate.

Each takes its collaborators (an S3 client, settings, a provider factory)
as arguments; the handlers in ``fanout_core.handlers`` only wire them up.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from botocore.exceptions import ClientError

from fanout_core import layout
from fanout_core.aggregation import ItemVotes, aggregate_stream
from fanout_core.batch_inference import (
    BatchBudget,
    Settled,
    adopt_jobs,
    earlier_jobs,
    fallback_budget,
    folder,
    join_outputs,
    poll_plan,
    recover_outputs,
    settle_earlier_jobs,
    write_budget_report,
    write_budget_stopped,
    write_inference_jobs,
)
from fanout_core.catalog import check_job_models
from fanout_core.contracts import (
    ANSWERED,
    FINAL_STATUSES,
    AggregateSummary,
    BatchFile,
    BatchItem,
    Kind,
    PlanSummary,
    Record,
    Result,
    SecondPassStage,
    TaskStub,
    batch_file,
    batch_item,
    expand,
    pending_count,
    pending_task_ids,
    stage_batch,
)
from fanout_core.costs import plan_costs
from fanout_core.documents import attach_documents
from fanout_core.errors import InvalidJob
from fanout_core.job import DEFAULT_MAX_JOB_BYTES, Job, parse_job
from fanout_core.lease import Lease, execution_status
from fanout_core.loading import job_source, key_stem, load_items, read_job_object
from fanout_core.pacing import (
    PacingSettings,
    batch_gates,
    batch_report,
    check_pacing_limits,
    pacing_figures,
    plan_pacing,
)
from fanout_core.planning import (
    INLINE_MAX_BATCHES,
    Batching,
    batch_ranges,
    choose_batching,
    choose_mode,
    expand_tasks,
    item_counts,
    packed_batching,
    request_key,
    rule_digest,
    task_keys,
    templates_of,
)
from fanout_core.pricing import price_usage, rates_of
from fanout_core.providers.base import Provider
from fanout_core.report import Report, results_line
from fanout_core.report_html import report_html
from fanout_core.runner import run_batch
from fanout_core.second_pass import (
    JOB_LEVEL,
    STAGE_BATCH_BASE,
    STAGES,
    Material,
    escalation_tasks,
    escalation_this_run,
    has_second_pass,
    has_stage,
    is_second_pass,
    judge_task,
    needs_escalation,
    noting_earlier_escalation,
    synthesis_task,
)
from fanout_core.settings import Settings
from fanout_core.stopping import record_answer, rule_for, vote_weights
from fanout_core.store import FINISHED, RunStore, put_text
from fanout_core.tiers import TierChoice, choose_tier, for_this_run, min_records, service_tier, usage_key
from fanout_core.validation import strict_json

ProviderFactory = Callable[[str], Provider]


def plan(
    event_input: Any,
    execution_name: str,
    *,
    s3: Any,
    settings: Settings,
    execution_arn: str | None = None,
    sfn: Any = None,
    bedrock: Callable[[], Any] | None = None,
) -> PlanSummary:
    """Check the job, expand and batch its tasks, write the run files; return the small plan the Map reads.

    The run's lease on its job_id names ``execution_arn``; with ``sfn`` (a Step Functions client) a lease whose
    holder no longer runs is taken over at once (fanout_core.lease).
    With ``bedrock`` (a Bedrock control-plane client factory), the batch inference jobs
    an earlier run of the job_id left running are adopted or stopped (batch_inference.settle_earlier_jobs).
    """
    source = job_source(event_input)
    if source is not None:
        bucket, key = source
        with _naming_the_object(f"s3://{bucket}/{key}"):
            document = read_job_object(s3, bucket, key, max_job_bytes=settings.caps.get("max_job_bytes", DEFAULT_MAX_JOB_BYTES))
            job = parse_job(document, job_id_default=key_stem(key), caps=settings.caps)
            items = load_items(s3, job)
            every_task = expand_tasks(job, items, settings.default_model)
    else:
        job = parse_job(event_input, job_id_default=execution_name, caps=settings.caps)
        items = load_items(s3, job)
        every_task = expand_tasks(job, items, settings.default_model)
    assert job.job_id is not None
    # an end-of-life model is refused before any call (InvalidJob names the field); a Legacy one is in the plan
    model_warnings = check_job_models(job, settings.default_model)
    store = RunStore(s3, settings.results_bucket, job.job_id)
    now = time.time()
    holder = _lease(store).take(execution_arn or execution_name, now, describe=execution_status(sfn) if sfn else None)
    if holder is not None:
        raise InvalidJob(holder.refusal(job.job_id, now), "job_id")
    try:
        summary = _plan_run(
            job,
            items,
            every_task,
            store,
            settings,
            execution_arn or execution_name,
            execution_name,
            bedrock=bedrock,
            lease_taken=now,
        )
    except BaseException:
        _lease(store).release(execution_arn or execution_name)  # a plan that did not finish leaves the job_id free
        raise
    if model_warnings:
        summary["warnings"] = model_warnings
        store.put_json(layout.PLAN_FILE, summary)
    return summary


def _plan_run(
    job: Job,
    items: list[dict[str, Any]],
    every_task: list[dict[str, Any]],
    store: RunStore,
    settings: Settings,
    execution: str = "run",
    run: str | None = None,
    *,
    bedrock: Callable[[], Any] | None = None,
    lease_taken: float | None = None,
) -> PlanSummary:
    """Reuse what earlier runs of the job_id answered (by request key), batch the rest by item, write the run files."""
    assert job.job_id is not None
    stopping = _stopping(job, settings.default_model)
    rerun = _earlier_run(store)
    # an earlier run's batch jobs that may still run (its execution stopped or failed while they did), looked up
    # before its plan is rewritten
    earlier = earlier_jobs(store, bedrock) if rerun else []
    if rerun:
        recover_outputs(store)  # an earlier run's batch jobs that finished but were never joined: records now
    reusable = _reusable(store, job, stopping.get("stop")) if rerun else {}
    tasks = [t for t in every_task if t["key"] not in reusable]
    concurrency = min(job.limits.max_concurrency, settings.max_concurrency_cap)
    batching, packed = packed_batching(job, _pending_per_item(every_task, reusable), settings.max_concurrency_cap)
    tier = _tier(job, every_task, tasks)
    check_pacing_limits(job, tasks)

    store.put_json_streamed(
        layout.JOB_FILE,
        {"job": job.model_dump(exclude={"items"}), "items": items, "default_model": settings.default_model},
    )
    mode = choose_mode(job.limits.mode, batching)
    if rerun:
        store.delete_prefix(layout.FAILURES_DIR)  # failures of an earlier run of this job_id describe other batches
        store.delete_prefix(layout.PACING_DIR)  # and so do its batches' pace and spend
    # the service tier of the on-demand calls (a batch job's fallback calls are on-demand)
    make = _batch_maker(
        job,
        settings.default_model,
        tier.tier if tier.tier in ("flex", "priority") else "on_demand",
        pacing=_pacing_plan(job, tier, batching.map_concurrency, len(tasks)),
        lease_taken=lease_taken,
    )

    def write(numbered: tuple[int, list[BatchItem]]) -> dict[str, int]:
        index, batch_items = numbered
        store.put_json(store.batch_name(index), make(index, batch_items))
        return {"index": index, "tasks": sum(1 for i in batch_items for t in i["tasks"] if "done" not in t)}

    batches = list(_batch_items(items, every_task, reusable, packed))
    with ThreadPoolExecutor(max_workers=16) as pool:
        ranges = list(pool.map(write, enumerate(batches)))
    store.put_json(layout.MANIFEST_FILE, ranges)
    shared = make(0, [])
    where = _batch_job_tasks(tier, tasks, batches)
    # the earlier run's running jobs: adopted when this run would ask their very requests in batch jobs (and no budget
    # has to count them), stopped otherwise
    wanted = {key: task["model"] for key, (_, task) in where.items()} if _batch_budget(shared) is None else None
    settled = settle_earlier_jobs(earlier, wanted, bedrock)
    if rerun:
        # an earlier run's batch jobs: their outputs are records already, or they are stopped; an adopted job's
        # folder stays (its input, tasks file and output to come)
        _delete_inference_files(store, keep={folder(int(e.job["index"])) for e in settled.adopted})
    inference = _inference_jobs(store, tier, where, shared, execution, settings, run, job.limits.deadline_hours, settled=settled)
    summary = {
        "job_id": job.job_id,
        "run_uri": store.uri,
        "run_bucket": store.bucket,
        "manifest_key": layout.manifest_key(job.job_id),
        "map_results_prefix": layout.map_results_prefix(job.job_id),
        "mode": mode,
        # the distributed Map reads the batch list from S3; the state stays small however large the job
        "batches": ranges if mode == "inline" else [],
        "tolerated_failure_percentage": job.limits.tolerated_failure_percentage,
        "batch_size": batching.batch_size,
        "threads": batching.threads,
        "map_concurrency": batching.map_concurrency,
        "max_concurrency": concurrency,
        # which tier the calls are bought at and why, with the estimate next to on-demand's
        "tier": {**tier.as_plan(), **_poll_note(inference), **_earlier_note(settled)},
        **inference,
        # escalation, a judge or a synthesis: the state machine plans a second pass after the first Map
        "second_pass": has_second_pass(job),
        "counts": {
            "items": len(items),
            "tasks": len(every_task),
            "pending": len(tasks),
            # requests answered by records of earlier runs of the job_id: not asked again
            "skipped": len(every_task) - len(tasks),
            "reused": len(every_task) - len(tasks),
            "batches": len(ranges),
        },
    }
    store.put_json(layout.PLAN_FILE, summary)
    return cast(PlanSummary, summary)


def _batch_job_tasks(
    tier: TierChoice, tasks: list[dict[str, Any]], batches: list[list[BatchItem]]
) -> dict[str, tuple[int, dict[str, Any]]]:
    """At tier batch: each pending task's request key -> (its batch, the task), in batch order; empty otherwise (a
    task write_inference_jobs does not batch, one with a document, is among them: it is called on-demand)."""
    if tier.tier != "batch":
        return {}
    by_key = {t["key"]: t for t in tasks}
    return {
        stub["key"]: (index, by_key[stub["key"]])
        for index, batch_items in enumerate(batches)
        for entry in batch_items
        for stub in entry["tasks"]
        if "done" not in stub
    }


def _delete_inference_files(store: RunStore, keep: set[str]) -> None:
    """Every job folder under the run's inference/ but the folders in ``keep`` (the jobs this run adopts)."""
    if not keep:
        store.delete_prefix(layout.INFERENCE_DIR)
        return
    start = len(layout.INFERENCE_DIR)
    folders = {name[: name.index("/", start) + 1] for name in store.names(layout.INFERENCE_DIR) if "/" in name[start:]}
    for name in sorted(folders - keep):
        store.delete_prefix(name)


def _earlier_note(settled: Settled) -> dict[str, Any]:
    """What became of an earlier run's batch jobs that still ran, for the tier block result.json shows."""
    if not (settled.adopted or settled.stopped or settled.not_stopped):
        return {}
    return {"earlier_jobs": settled.as_plan()}


def _inference_jobs(
    store: RunStore,
    tier: TierChoice,
    where: Mapping[str, tuple[int, dict[str, Any]]],
    shared: Mapping[str, Any],
    execution: str,
    settings: Settings,
    run: str | None = None,
    deadline_hours: float | None = None,
    *,
    settled: Settled | None = None,
) -> dict[str, Any]:
    """At tier batch: the Bedrock batch inference jobs' input written, and what the state machine needs to run them.
    An adopted job of an earlier run is listed with its ARN and its tasks are in no new job."""
    if tier.tier != "batch":
        return {}
    adopted = settled.adopted if settled is not None else []
    entries = adopt_jobs(store, adopted, where, run or execution)
    taken = {key for job in adopted for key in job.keys}
    # the pending tasks in batch order, each with its batch: a record joined from a job's output goes under its batch
    ordered = [(index, task) for key, (index, task) in where.items() if key not in taken]
    pending, batch_of = [t for _, t in ordered], [i for i, _ in ordered]
    budget = _batch_budget(shared)
    first = 1 + max((int(job.job["index"]) for job in adopted), default=-1)
    jobs = write_inference_jobs(
        store, pending, batch_of, dict(shared), execution, run=run, budget=budget, least=min_records, first_index=first
    )
    if budget is not None:
        # the tasks the budget leaves out are accounted for now; the fallback batches get what the jobs leave
        write_budget_stopped(store, pending, batch_of, budget, run or execution)
        write_budget_report(store, budget, batch_of)
    # the jobs' poll loops kept within the execution history quota (a too short interval is raised, with a note)
    polls = poll_plan(settings.batch_poll_seconds, settings.batch_max_polls, len(entries) + len(jobs), deadline_hours)
    return {"inference_jobs": [*entries, *(job.as_state() for job in jobs)], **polls.as_plan()}


def _poll_note(inference: Mapping[str, Any]) -> dict[str, str]:
    """Why the batch jobs' polling differs from the settings, for the tier block result.json shows."""
    note = inference.get("inference_poll_note")
    return {"poll_note": str(note)} if note else {}


def _batch_budget(shared: Mapping[str, Any]) -> BatchBudget | None:
    """limits.max_cost_usd at tier batch, counted at each model's batch price; None without a budget."""
    pacing = shared.get("pacing") or {}
    if pacing.get("max_cost_usd") is None:
        return None
    prices = pacing.get("prices")
    return BatchBudget(
        float(pacing["max_cost_usd"]),
        lambda model: rates_of(usage_key(model, "batch"), prices),
        int((shared.get("inference") or {}).get("max_tokens", 512)),
    )


def _batch_maker(
    job: Job,
    default_model: str,
    tier: str = "on_demand",
    pacing: dict[str, Any] | None = None,
    lease_taken: float | None = None,
) -> Callable[[int, list[BatchItem]], BatchFile]:
    """Builds the job's batch files: what every task shares, once, and each batch's items (``pacing``: the quota,
    budget and planned share its calls are paced to, fanout_core.pacing; ``lease_taken``: when Plan took the lease)."""
    shared = {
        **({"pacing": pacing} if pacing is not None else {}),
        **({"lease_taken": lease_taken} if lease_taken is not None else {}),
        "system": job.system,
        "inference": job.inference.model_dump(),
        "output_schema": job.output_schema,
        "answer_field": job.aggregate.field,
        "tier": tier,
        **_stopping(job, default_model),
    }
    kind: Kind = "section" if job.pattern == "sectioning" else "vote"
    templates = templates_of(job)
    return lambda index, batch_items: batch_file(
        index, batch_items, job_id=job.job_id or "", kind=kind, templates=templates, shared=shared
    )


def first_run_batches(job: Job, items: list[dict[str, Any]], default_model: str, concurrency_cap: int = 50) -> list[BatchFile]:
    """The batch files Plan writes for a first run of ``job``, in memory: the one factory tests build batches with."""
    every_task = expand_tasks(job, items, default_model)
    _, packed = packed_batching(job, item_counts(every_task), concurrency_cap)
    make = _batch_maker(job, default_model)
    return [make(index, batch_items) for index, batch_items in enumerate(_batch_items(items, every_task, {}, packed))]


def _reusable(store: RunStore, job: Job, stop: dict[str, Any] | None) -> dict[str, TaskStub]:
    """The requests earlier runs answered for good, by key, as the stub a batch carries for them.

    ok and invalid/failed records are final (the last two asked again only with ``retry_failed``); a vote
    skipped by early stopping is reused only under the same stopping rule.
    """
    final = ANSWERED if job.retry_failed else FINAL_STATUSES
    digest = rule_digest(stop)
    field = job.aggregate.field
    found: dict[str, TaskStub] = {}
    for record in store.iter_records():
        key, status = record.get("key"), record.get("status")
        if not isinstance(key, str) or status not in final or record.get("fallback"):
            continue
        if record.get("stopped") == "budget":
            continue  # never asked: a re-run (with a larger budget) asks it
        if status == "skipped" and (digest is None or record.get("stop") != digest):
            continue
        held = found.get(key)
        if held is not None and _STATUS_RANK[held["done"]] >= _STATUS_RANK[status]:
            continue
        stub: TaskStub = {"done": status}
        if stop is not None and status == "ok":
            stub["answer"] = record_answer(record, field)
        found[key] = stub
    return found


_STATUS_RANK = {"ok": 4, "skipped": 3, "invalid": 2, "failed": 1}


def _pending_per_item(every_task: list[dict[str, Any]], reusable: dict[str, TaskStub]) -> list[tuple[int, int]]:
    """(item position, tasks to ask) for each item with any, in item order."""
    pending: dict[int, int] = {}
    for task in every_task:
        if task["key"] not in reusable:
            pending[task["item_index"]] = pending.get(task["item_index"], 0) + 1
    return sorted(pending.items())


def _batch_items(
    items: list[dict[str, Any]],
    every_task: list[dict[str, Any]],
    reusable: dict[str, TaskStub],
    packed: list[list[tuple[int, int, int]]],
) -> Iterator[list[BatchItem]]:
    """Each batch's items: the item's inputs once, every task of the item as a stub (done ones marked), so early
    stopping sees all of an item's votes; an item cut over batches lists its other batches' tasks as not its own."""
    by_item: dict[int, list[dict[str, Any]]] = {}
    for task in every_task:
        by_item.setdefault(task["item_index"], []).append(task)
    for batch in packed:
        out = []
        for position, start, end in batch:
            own = [t for t in by_item[position] if t["key"] not in reusable][start:end]
            mine = {t["key"] for t in own}
            stubs = []
            for task in by_item[position]:
                stub: TaskStub = {"slot": task["slot"], "model": task["model"], "key": task["key"]}
                if task["key"] in reusable:
                    stub.update(reusable[task["key"]])
                elif task["key"] not in mine:
                    continue  # asked by another batch of this item
                stubs.append(stub)
            out.append(batch_item(position, items[position], stubs))
        yield out


def _pacing_plan(job: Job, tier: TierChoice, map_concurrency: int, tasks: int) -> dict[str, Any]:
    """What every batch is paced and budgeted to; at tier batch with a budget, the on-demand batches are the jobs'
    fallback and take the budget the jobs leave (batch_inference.fallback_budget)."""
    plan = plan_pacing(job, map_concurrency, tasks, run=uuid.uuid4().hex)
    if tier.tier == "batch" and plan.get("max_cost_usd") is not None:
        plan["after_batch_jobs"] = True
    return plan


def _tier(job: Job, every_task: list[dict[str, Any]], pending: list[dict[str, Any]]) -> TierChoice:
    """The job's tier (an unsupported one refused), then what this run buys its pending tasks at."""
    choice = choose_tier(job, every_task)
    return for_this_run(choice, pending, lambda tier: plan_costs(job, pending, tier=tier).estimated_cost)


def _stopping(job: Job, default_model: str) -> dict[str, Any]:
    """What a batch needs to stop an item's votes early: the rule and, for weighted, each vote's weight."""
    rule = rule_for(job)
    if rule is None:
        return {}
    return {"stop": rule.to_batch(), "vote_weights": vote_weights(job, default_model)}


def _lease(store: RunStore) -> Lease:
    return Lease(store.s3, store.bucket, store.prefix)


@contextmanager
def _naming_the_object(where: str) -> Iterator[None]:
    """A job read from S3 that is refused says which object it came from, as well as which field is wrong."""
    try:
        yield
    except InvalidJob as exc:
        if str(exc).startswith(where):
            raise
        raise InvalidJob(f"{where}: {exc}", exc.field) from None


def _earlier_run(store: RunStore) -> bool:
    """Whether this job_id ran before (its records may answer some of this run's requests)."""
    try:
        store.get_json(layout.JOB_FILE)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return False
        raise
    return True


def run_subtask(
    event: dict[str, Any],
    *,
    s3: Any,
    provider_for: ProviderFactory,
    deadline: float | None = None,
    flush_seconds: float = 1.0,
    pacing: PacingSettings | None = None,
) -> dict[str, Any]:
    """Run one batch of the Map and return its counts (never model output).

    Every call passes its model's gate (fanout_core.pacing): the quota's pace and the job's budget. What the
    batch learned of the quota and spent goes to ``pacing/<n>.json``, also when it hands back a throttled or
    unfinished batch, so its retry starts from that pace instead of full speed.
    """
    store = RunStore.from_uri(s3, event["run_uri"], event["job_id"], flush_seconds=flush_seconds)
    index = int(event["batch"]["index"])
    batch = store.get_json(store.batch_name(index))
    if event.get("execution_arn"):
        # a long job keeps its lease fresh; a batch that starts soon after Plan took it has nothing to write
        _lease(store).refresh(event["execution_arn"], time.time(), written=batch.get("lease_taken"))
    # a first-pass batch holds items (its prompts are rendered from their inputs); a second pass's, its tasks
    tasks = list(batch["tasks"]) if "tasks" in batch else cast(list[dict[str, Any]], expand(batch))
    attach_documents(tasks, s3)
    saved = _saved_pacing(store, index)
    prices = (batch.get("pacing") or {}).get("prices")
    # the batch's part of the budget is by the tasks it will ask (not the done stubs it carries)
    asking = pending_count(batch)
    batch, asking = _after_batch_jobs(store, batch, index, asking)
    # the budget prices a call as its usage is priced: at the service tier it is bought at (flex, priority)
    tier = service_tier(batch)
    gate_for = batch_gates(
        batch, asking, pacing or PacingSettings(), saved, lambda model: rates_of(usage_key(model, tier), prices)
    )
    started = time.time()
    try:
        outcome = run_batch(
            batch,
            store=store,
            provider_for=provider_for,
            threads=int(event.get("threads", 8)),
            deadline=deadline,
            tasks=tasks,
            run=_run_name(event),
            gate_for=gate_for,
        )
    finally:
        report = batch_report(gate_for.gates, saved, started, time.time())  # type: ignore[attr-defined]
        store.put_json(layout.pacing_name(index), report)
    return outcome.as_event()


def _after_batch_jobs(store: RunStore, batch: dict[str, Any], index: int, asking: int) -> tuple[dict[str, Any], int]:
    """A fallback batch of a tier-batch run with a budget: the budget is what the batch inference jobs left, shared
    by the tasks they left (the batch's part by its own); other batches as they are."""
    plan = batch.get("pacing") or {}
    if not plan.get("after_batch_jobs"):
        return batch, asking
    left = fallback_budget(store)
    if left is None:
        return batch, asking
    pacing = {**plan, "max_cost_usd": float(left["left_usd"]), "tasks": max(1, int(left["tasks"]))}
    return {**batch, "pacing": pacing}, int(left["batches"].get(str(index), 0))


def _saved_pacing(store: RunStore, index: int) -> dict[str, Any] | None:
    """What an earlier run of this batch learned of the quota and spent; None on its first run."""
    try:
        saved: dict[str, Any] = store.get_json(layout.pacing_name(index))
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    return saved


def aggregate_step(
    event: dict[str, Any], *, s3: Any, settings: Settings, scratch_dir: str | None = None
) -> AggregateSummary | SecondPassStage:
    """What the state machine's Aggregate state asks of the aggregate function: the next second-pass stage, or the result.

    One kind of work per invocation, since planning a stage and aggregating
    each read every record (the function's 900 s are for one of them): while
    the job has a second pass (``event["second_pass"]``, the plan's) with a
    stage after ``event["stage"]`` (the last one run: 0 after the first Map),
    that stage is planned (``plan_second_pass``, status ``second_pass``);
    once none is left, the records are aggregated (``run_aggregate``, the
    summary that is the execution's output). A job without a second pass is
    aggregated at once, without reading job.json twice.
    """
    if event.get("step") == "second_pass":
        # an execution started under the earlier definition, whose PlanSecondPass state asked for the stages
        return plan_second_pass(event, s3=s3, settings=settings)
    if not event.get("second_pass"):
        return run_aggregate(event, s3=s3, scratch_dir=scratch_dir)
    store = RunStore.from_uri(s3, event["run_uri"], event["job_id"])
    saved = store.get_json(layout.JOB_FILE)
    job = Job.model_validate(saved["job"])
    after = int(event.get("stage") or 0)
    if any(has_stage(job, stage) for stage in STAGES[after:]):
        return _plan_stage(job, saved, store, after, settings)
    # the last stage the job has ran (or none had calls): aggregate, the stages' calls being records now
    return run_aggregate(event, s3=s3, scratch_dir=scratch_dir, saved=saved)


def plan_second_pass(event: dict[str, Any], *, s3: Any, settings: Settings) -> SecondPassStage:
    """Which second-pass tasks the job needs next, written as batches like Plan's; returns counts, never outputs.

    ``event["stage"]`` is the last stage run (0 after the first Map). The
    stages after it are looked at in order (escalate, judge, synthesis);
    the first that has tasks without a finished record is written as batch
    files numbered ``stage * STAGE_BATCH_BASE + n``, and its Map runs them
    through RunBatch. ``done`` once no stage is left: Aggregate comes next.
    """
    store = RunStore.from_uri(s3, event["run_uri"], event["job_id"])
    saved = store.get_json(layout.JOB_FILE)
    return _plan_stage(Job.model_validate(saved["job"]), saved, store, int(event.get("stage") or 0), settings)


def _plan_stage(job: Job, saved: dict[str, Any], store: RunStore, after: int, settings: Settings) -> SecondPassStage:
    """The first stage after ``after`` that has calls to make, written as batch files; done if none has."""
    items: list[dict[str, Any]] = saved["items"]
    for number, stage in enumerate(STAGES, start=1):
        if number <= after or not has_stage(job, stage):
            continue
        with tempfile.TemporaryDirectory(prefix="fanout-second-pass-") as folder:
            tasks = _stage_tasks(job, items, store, stage, saved["default_model"], Path(folder))
            if tasks.count:
                return _write_stage(job, store, number, tasks, settings.max_concurrency_cap)
    return {
        "status": "second_pass",
        "job_id": job.job_id,
        "stage": len(STAGES),
        "done": True,
        "counts": {"tasks": 0, "batches": 0},
    }


class _StageTasks:
    """A stage's tasks, spilled to a JSON Lines file as they are found: memory stays bounded however many there are.

    ``count`` and ``read`` leave out the tasks a finished record answers (``finished``, known once every record was read).
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / "tasks.jsonl"
        self._file = self.path.open("w", encoding="utf-8")
        self.finished: set[str] = set()  # request keys of finished records (task ids, of records without a key)
        self.keys: set[str] = set()  # every task's request key, finished or not: what Aggregate reads
        self.count = 0

    def add(self, task: dict[str, Any]) -> None:
        # keyed by its request like a first-pass task: a changed item, vote or material asks again
        task["key"] = request_key(
            str(task.get("item_id", "")),
            str(task.get("slot", "")),
            str(task.get("model", "")),
            task.get("system"),
            str(task.get("prompt", "")),
            {"max_tokens": task.get("max_tokens"), "temperature": task.get("temperature")},
            task.get("output_schema"),
        )
        self.keys.add(task["key"])
        self._file.write(json.dumps(task, ensure_ascii=False) + "\n")

    def close(self) -> None:
        self._file.close()
        self.count = sum(1 for _ in self.read())

    def read(self) -> Iterator[dict[str, Any]]:
        with self.path.open(encoding="utf-8") as lines:
            for line in lines:
                task = json.loads(line)
                if task["key"] not in self.finished and task["task_id"] not in self.finished:
                    yield task


def _stage_tasks(
    job: Job, items: list[dict[str, Any]], store: RunStore, stage: str, default_model: str, folder: Path
) -> _StageTasks:
    """The stage's tasks, from the items as aggregated so far, less those a finished record answers already."""
    tasks = _StageTasks(folder)

    def noting(records: Iterator[Record]) -> Iterator[Record]:
        for record in records:
            # a task the budget stopped was never asked: a re-run (with a larger budget) asks it
            if (
                is_second_pass(str(record.get("slot", "")))
                and record.get("status") in FINISHED
                and record.get("stopped") != "budget"
            ):
                tasks.finished.add(str(record.get("key") or record["task_id"]))  # (a key is never a task id)
            yield record

    def on_votes(seen: ItemVotes) -> None:
        if stage == "escalate" and needs_escalation(job, seen.first):
            for task in escalation_tasks(job, seen.item, default_model, set()):
                tasks.add(task)
        elif stage == "judge":
            judged = judge_task(job, seen.item, seen.votes, default_model)
            if judged is not None:
                tasks.add(judged)

    material = Material(job.synthesis.max_input_chars) if job.synthesis is not None else None

    def on_item(out: dict[str, Any]) -> None:
        if stage != "synthesis" or job.synthesis is None or material is None:
            return
        if job.synthesis.per_item:
            own = Material(job.synthesis.max_input_chars)
            own.add(out)
            tasks.add(synthesis_task(job, out["id"], own, default_model))
        else:
            material.add(out)

    # the first pass's records of this job's requests only (those of a changed request answer nothing)
    current = _current_records(store.iter_records(), task_keys(job, items, default_model), None)
    aggregate_stream(job, items, noting(current), on_item, on_votes=on_votes, spill_dir=str(folder))
    if stage == "synthesis" and job.synthesis is not None and not job.synthesis.per_item and material is not None:
        tasks.add(synthesis_task(job, JOB_LEVEL, material, default_model))
    tasks.close()
    store.put_json(layout.second_pass_keys(stage), sorted(tasks.keys))
    return tasks


def _write_stage(job: Job, store: RunStore, number: int, tasks: _StageTasks, cap: int) -> SecondPassStage:
    """A stage's batch files and batch list (numbered apart from the first pass's), and what its Map needs."""
    assert job.job_id is not None
    stage = STAGES[number - 1]
    batching = choose_batching(tasks.count, min(job.limits.max_concurrency, cap), job.limits.batch_size)
    base = number * STAGE_BATCH_BASE
    ranges = [{**r, "index": base + r["index"]} for r in batch_ranges(tasks.count, batching.batch_size)]
    shared = {
        "job_id": job.job_id,
        "system": job.system,
        "inference": job.inference.model_dump(),
        "output_schema": job.output_schema,
        "answer_field": job.aggregate.field,
        "stage": stage,
        # paced to the model's quota as the first pass's batches are, within the budget the run has left
        "pacing": _stage_pacing(job, store, batching.map_concurrency, tasks.count),
    }
    reading = tasks.read()
    with ThreadPoolExecutor(max_workers=16) as pool:
        pending: list[Any] = []
        for r in ranges:
            chunk = [task for _, task in zip(range(r["end"] - r["start"]), reading, strict=False)]
            pending.append(pool.submit(store.put_json, store.batch_name(r["index"]), stage_batch(r["index"], chunk, shared)))
            if len(pending) >= 32:  # a bounded number of batch files in memory at once
                pending.pop(0).result()
        for future in pending:
            future.result()
    manifest = layout.second_pass_manifest(stage)
    store.put_json(manifest, ranges)
    mode = _second_pass_mode(job, batching)
    return {
        "status": "second_pass",
        "job_id": job.job_id,
        "stage": number,
        "name": stage,
        "done": False,
        "run_uri": store.uri,
        "run_bucket": store.bucket,
        "mode": mode,
        "batches": ranges if mode == "inline" else [],
        "manifest_key": layout.run_key(job.job_id, manifest),
        "map_results_prefix": layout.second_pass_map_results_prefix(job.job_id, stage),
        "tolerated_failure_percentage": job.limits.tolerated_failure_percentage,
        "threads": batching.threads,
        "map_concurrency": batching.map_concurrency,
        "counts": {"tasks": tasks.count, "batches": len(ranges)},
    }


def _stage_pacing(job: Job, store: RunStore, map_concurrency: int, tasks: int) -> dict[str, Any]:
    """A second-pass stage's pacing plan: the job's quota split over the stage's parallel batches and, with
    limits.max_cost_usd, the budget less what this run spent so far (the first pass's batches and batch inference
    jobs, and the stages before), so a second-pass call starts only while it fits."""
    plan = plan_pacing(job, map_concurrency, tasks, run=uuid.uuid4().hex)
    if plan.get("max_cost_usd") is not None:
        # Plan removed every earlier run's pacing reports: those left are this run's (fanout_core.pacing)
        reports = [store.get_json(name) for name in store.names(layout.PACING_DIR)]
        spent = float(pacing_figures(reports).get("budget", {}).get("spent_usd", 0.0))
        plan["max_cost_usd"] = max(0.0, float(plan["max_cost_usd"]) - spent)
    return plan


def _second_pass_mode(job: Job, batching: Batching) -> str:
    """The job's mode when the stage fits it (an inline job's second pass may need more batches), else auto's pick."""
    if job.limits.mode == "inline" and batching.batch_count > INLINE_MAX_BATCHES:
        return choose_mode("auto", batching)
    return choose_mode(job.limits.mode, batching)


def join_inference(event: dict[str, Any], *, s3: Any, bedrock: Callable[[], Any] | None = None) -> dict[str, Any]:
    """After the batch inference jobs: their outputs written as task records; the batches left for on-demand.
    With ``bedrock`` (a Bedrock control-plane client factory), a job the state machine did not see end is stopped
    first, so it bills nothing for the tasks that fall back (batch_inference.stop_unfinished_jobs)."""
    store = RunStore.from_uri(s3, event["run_uri"], event["job_id"])
    return join_outputs(store, event.get("statuses"), bedrock)


def _run_name(event: Mapping[str, Any]) -> str | None:
    """The execution a batch or Aggregate belongs to: records say which run made their calls."""
    name = event.get("execution") or event.get("execution_arn")
    return str(name) if name else None


def run_aggregate(
    event: dict[str, Any], *, s3: Any, scratch_dir: str | None = None, saved: dict[str, Any] | None = None
) -> AggregateSummary:
    """Aggregate every record of the run into result.json, results.jsonl, report.md and report.html; return a summary.

    Aggregate calls no model: judge verdicts, escalated votes and syntheses
    are records of the second pass. The items are streamed: each goes to
    results.jsonl, result.json's item list and report.md as it is built,
    through files in ``scratch_dir`` (a temporary folder: /tmp in Lambda),
    so the records in memory are bounded by a part of the job whatever its
    size (report.html, which lists every item, reads the items back).
    """
    store = RunStore.from_uri(s3, event["run_uri"], event["job_id"])
    if saved is None:  # (job.json as aggregate_step read it already)
        saved = store.get_json(layout.JOB_FILE)
    job = Job.model_validate(saved["job"])
    items: list[dict[str, Any]] = saved["items"]
    errors = _batch_errors(store)
    assert job.job_id is not None
    prefix = layout.result_prefix(job.job_id)
    bucket = store.bucket
    prices = {name: price.model_dump() for name, price in (job.prices or {}).items()}
    figures = pacing_figures([store.get_json(n) for n in store.names(layout.PACING_DIR)], job.limits.max_cost_usd)
    tier = _planned_tier(store)
    reused = _tasks_skipped(store)
    spent = store.spent(_run_name(event))  # this run's calls that left no record
    # the records that answer this job's requests: a record of a changed request (another prompt, model, ...) is not
    earlier: dict[str, list[int]] = {}  # what the reused records of earlier runs had cost, by usage key
    keys = task_keys(job, items, saved["default_model"])
    records = _current_records(store.iter_records(), keys, _run_name(event), earlier, store.second_pass_keys())
    escalated_before: dict[str, list[int]] = {}  # the escalated votes earlier runs made, by model
    records = noting_earlier_escalation(records, _run_name(event), escalated_before)
    with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="fanout-results-") as folder:
        result = _aggregate_to_files(
            job,
            items,
            records,
            errors,
            Path(folder),
            prices,
            tier,
            reused=reused,
            spent=spent,
            earlier=earlier,
            escalated_before=escalated_before,
            figures=figures,
        )
        for name, content_type in (("result.json", "application/json"), ("results.jsonl", "application/x-ndjson")):
            s3.upload_file(str(Path(folder) / name), bucket, prefix + name, ExtraArgs={"ContentType": content_type})
        put_text(s3, bucket, prefix + "report.md", (Path(folder) / "report.md").read_text("utf-8"), "text/markdown")
        with (Path(folder) / "results.jsonl").open(encoding="utf-8") as lines:
            # streamed from the file: the page keeps its figures and a bounded table, never every item
            page = report_html(result, (json.loads(line) for line in lines))
        put_text(s3, bucket, prefix + "report.html", page, "text/html; charset=utf-8")
    # only while this run holds it: a lease another run has taken over since stays with that run
    _lease(store).release(str(event.get("execution") or ""))
    counts = result["counts"]
    skipped = reused
    resumed = f"; {skipped} tasks finished by an earlier run were not asked again" if skipped else ""
    message = (
        f"{result['status']}: {counts['ok']} of {counts['tasks']} tasks ok, {counts['invalid']} invalid, "
        f"{counts['failed']} failed{resumed}; report s3://{bucket}/{prefix}report.md"
    )
    return {
        "job_id": job.job_id,
        "status": result["status"],
        "counts": counts,
        # a resumed run (a re-run, or a start after a run that was stopped) calls the model only for the rest
        "tasks_skipped": skipped,
        "usage": result["usage"],
        "result_uri": f"s3://{bucket}/{prefix}result.json",
        "results_uri": f"s3://{bucket}/{prefix}results.jsonl",
        "report_uri": f"s3://{bucket}/{prefix}report.md",
        "message": message,
    }


def _planned_tier(store: RunStore) -> dict[str, Any] | None:
    """The tier the run's calls were bought at and why (plan.json), for result.json."""
    try:
        tier = store.get_json(layout.PLAN_FILE).get("tier")
    except (ClientError, AttributeError, ValueError):
        return None
    return tier if isinstance(tier, dict) else None


def _tasks_skipped(store: RunStore) -> int:
    """How many tasks this run found finished when it was planned (plan.json)."""
    try:
        return int(store.get_json(layout.PLAN_FILE)["counts"].get("skipped", 0))
    except (ClientError, KeyError, TypeError, ValueError):
        return 0


def _this_run(usage: dict[str, Any], reused: int, spent: dict[str, int], earlier: dict[str, list[int]]) -> None:
    """result.json's usage says what this run did: its calls, those that left no record included, less what the
    records of earlier runs it reused had cost (``earlier``), and how many requests it did not ask again."""
    names = ("model_calls", "input_tokens", "output_tokens", "cache_read_input_tokens", "cache_write_input_tokens")
    for model, spent_before in earlier.items():
        per_model = usage["by_model"].get(model)
        if per_model is None:
            continue
        for name, value in zip(names, spent_before, strict=True):
            if name in per_model:
                per_model[name] -= value
            if name in usage and name in names[:3]:
                usage[name] -= value
    for model, calls in spent.items():
        usage["model_calls"] += calls
        per_model = usage["by_model"].setdefault(model, {"model_calls": 0, "input_tokens": 0, "output_tokens": 0})
        per_model["model_calls"] += calls
    usage["by_model"] = {m: u for m, u in usage["by_model"].items() if any(u.get(n) for n in names)}
    usage["requests_reused"] = reused


def _current_records(
    records: Iterable[Record],
    keys: set[str],
    run: str | None,
    earlier: dict[str, list[int]] | None = None,
    second: set[str] | None = None,
) -> Iterator[Record]:
    """The records whose request is one of the job's (``keys``; a second pass's, one of ``second``, the requests its
    stages planned this run, when known). What the records
    another run made had cost is added up in ``earlier`` by usage key: this run's usage leaves it out."""
    for record in records:
        key = record.get("key")
        if is_second_pass(str(record.get("slot", ""))):
            if second is not None and key not in second:
                continue  # a judge verdict, escalated vote or synthesis of what this run no longer asks
        elif key not in keys:
            continue  # a record of a changed request answers nothing
        if earlier is not None and run is not None and record.get("run") != run:
            name = str(record.get("model") or "unknown")
            if record.get("tier"):
                name = usage_key(name, record["tier"])
            spent = record.get("usage") or {}
            total = earlier.setdefault(name, [0, 0, 0, 0, 0])
            total[0] += record.get("attempts") or 0
            total[1] += spent.get("input_tokens") or 0
            total[2] += spent.get("output_tokens") or 0
            total[3] += spent.get("cache_read_input_tokens") or 0
            total[4] += spent.get("cache_write_input_tokens") or 0
        yield record


def _aggregate_to_files(
    job: Job,
    items: list[dict[str, Any]],
    records: Iterable[Record],
    errors: dict[str, str],
    folder: Path,
    prices: dict[str, Any],
    tier: dict[str, Any] | None = None,
    *,
    reused: int = 0,
    spent: dict[str, int] | None = None,
    earlier: dict[str, list[int]] | None = None,
    escalated_before: dict[str, list[int]] | None = None,
    figures: dict[str, Any] | None = None,
) -> Result:
    """result.json, results.jsonl and report.md written in ``folder`` as the items are built; returns result.json's head."""
    report = Report(job.pattern, job.strategy)
    listed = folder / "items.part"
    with listed.open("w", encoding="utf-8") as item_list, (folder / "results.jsonl").open("w", encoding="utf-8") as lines:
        separator = ""

        def on_item(item: dict[str, Any]) -> None:
            nonlocal separator
            line = results_line(item)
            lines.write(line)
            item_list.write(separator + line[:-1])
            separator = ",\n"
            report.add(item)

        head = aggregate_stream(
            job,
            items,
            records,
            on_item,
            batch_errors=errors,
            spill_dir=str(folder),
        )
    _this_run(head["usage"], reused, spent or {}, earlier or {})
    escalation_this_run(head["usage"], escalated_before or {}, prices)
    price_usage(head["usage"], prices)
    if tier is not None:
        head["tier"] = tier
    head.update(figures or {})  # the quota's pace and the budget (fanout_core.pacing)
    if head.get("reason") == "budget" and head.get("status") == "complete":
        head["status"] = "partial"  # every task answered, but the budget stopped a second-pass call (a judge's, ...)
    _write_result(folder / "result.json", head, listed)
    listed.unlink()
    (folder / "report.md").write_text(report.markdown(head), encoding="utf-8")
    return cast(Result, head)  # built field by field above (aggregation._Totals.result): the shape contracts.Result names


def _write_result(path: Path, head: dict[str, Any], item_list: Path) -> None:
    """result.json: the head's fields with the item list (one item a line) after ``counts``, copied from its file."""
    fields = list(head.items())
    at = next(n for n, (key, _) in enumerate(fields) if key == "counts") + 1
    with path.open("w", encoding="utf-8") as out:
        out.write("{\n")
        for key, value in fields[:at]:
            out.write(f" {json.dumps(key)}: {strict_json(value, ensure_ascii=False)},\n")
        out.write(' "items": [\n')
        with item_list.open(encoding="utf-8") as listed:
            shutil.copyfileobj(listed, out, 1 << 20)
        out.write("\n ]" + ("," if fields[at:] else "") + "\n")
        for n, (key, value) in enumerate(fields[at:], start=at + 1):
            out.write(f" {json.dumps(key)}: {strict_json(value, ensure_ascii=False)}" + ("," if n < len(fields) else "") + "\n")
        out.write("}\n")


def _batch_errors(store: RunStore) -> dict[str, str]:
    """The error of each task whose batch failed for good, by task id (read from the batch's own file)."""
    errors: dict[str, str] = {}
    for failure in store.failures():
        index = failure["batch"]
        reason = f"batch {index} failed: {failure.get('Error', 'error')}: {_cause(failure.get('Cause'))}"
        for task_id in pending_task_ids(store.get_json(store.batch_name(index))):
            errors[task_id] = reason
    return errors


def _cause(cause: Any) -> str:
    """Lambda's error JSON reduced to its message."""
    if isinstance(cause, str):
        try:
            parsed = json.loads(cause)
            if isinstance(parsed, dict) and "errorMessage" in parsed:
                return str(parsed["errorMessage"])
        except json.JSONDecodeError:
            pass
        return cause[:500]
    return str(cause)[:500]
