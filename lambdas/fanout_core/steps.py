"""The three steps of the state machine as plain functions: plan, run a batch, aggregate.

Each takes its collaborators (an S3 client, settings, a provider factory)
as arguments; the handlers in ``fanout_core.handlers`` only wire them up.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from fanout_core import layout
from fanout_core.aggregation import Judge, aggregate, aggregate_stream
from fanout_core.catalog import check_job_models
from fanout_core.costs import plan_costs
from fanout_core.documents import attach_documents
from fanout_core.errors import InvalidJob
from fanout_core.job import DEFAULT_JUDGE_PROMPT, Job, parse_job
from fanout_core.lease import Lease, execution_status
from fanout_core.loading import job_source, key_stem, load_items, read_job_object
from fanout_core.planning import batch_ranges, batching_for, choose_mode, expand_tasks, fingerprint
from fanout_core.pricing import price_usage
from fanout_core.providers.base import ModelError, ModelRequest, Provider
from fanout_core.report import Report, report_markdown, results_jsonl, results_line
from fanout_core.report_html import report_html
from fanout_core.runner import call_with_retries, run_batch
from fanout_core.settings import Settings
from fanout_core.stopping import rule_for, vote_weights
from fanout_core.store import FINISHED, RunStore, put_text
from fanout_core.templating import render
from fanout_core.tiers import TierChoice, choose_tier, for_this_run
from fanout_core.validation import strict_json
from fanout_core.voting import JudgeVerdict, judge_prompt, judge_schema

ProviderFactory = Callable[[str], Provider]


def plan(
    event_input: Any,
    execution_name: str,
    *,
    s3: Any,
    settings: Settings,
    execution_arn: str | None = None,
    sfn: Any = None,
) -> dict[str, Any]:
    """Check the job, expand and batch its tasks, write the run files; return the small plan the Map reads.

    The run's lease on its job_id names ``execution_arn``; with ``sfn`` (a Step Functions client) a lease whose
    holder no longer runs is taken over at once (fanout_core.lease).
    """
    source = job_source(event_input)
    if source is not None:
        bucket, key = source
        with _naming_the_object(f"s3://{bucket}/{key}"):
            job = parse_job(read_job_object(s3, bucket, key), job_id_default=key_stem(key), caps=settings.caps)
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
    print_ = fingerprint(job, items, settings.default_model)
    now = time.time()
    holder = _lease(store).take(execution_arn or execution_name, now, describe=execution_status(sfn) if sfn else None)
    if holder is not None:
        raise InvalidJob(holder.refusal(job.job_id, now), "job_id")
    try:
        summary = _plan_run(job, items, every_task, print_, store, settings)
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
    print_: str,
    store: RunStore,
    settings: Settings,
) -> dict[str, Any]:
    assert job.job_id is not None
    rerun = _earlier_run(store, job.job_id, print_)
    tasks = every_task
    if rerun and store.has_records():
        # a re-run (or a resumed one): tasks with an ok record are not called again
        # an early-stopped vote ("skipped") is as finished as an answered one
        finished = {r["task_id"] for r in store.iter_records() if r.get("status") in FINISHED}
        tasks = [t for t in every_task if t["task_id"] not in finished]
    concurrency = min(job.limits.max_concurrency, settings.max_concurrency_cap)
    batching = batching_for(job, len(tasks), settings.max_concurrency_cap)
    tier = _tier(job, every_task, tasks)

    store.put_json(
        layout.JOB_FILE,
        {
            "job": job.model_dump(exclude={"items"}),
            "items": items,
            "fingerprint": print_,
            "default_model": settings.default_model,
        },
    )
    ranges = batch_ranges(len(tasks), batching.batch_size)
    mode = choose_mode(job.limits.mode, batching)
    if rerun:
        store.delete_prefix(layout.FAILURES_DIR)  # failures of an earlier run of this job_id describe other batches
    shared = {
        "job_id": job.job_id,
        "system": job.system,
        "inference": job.inference.model_dump(),
        "output_schema": job.output_schema,
        "answer_field": job.aggregate.field,
        # the service tier of the on-demand calls (a batch job's fallback calls are on-demand)
        "tier": tier.tier if tier.tier in ("flex", "priority") else "on_demand",
        **_stopping(job, settings.default_model),
    }
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(
            pool.map(
                lambda r: store.put_json(
                    store.batch_name(r["index"]), {**shared, "index": r["index"], "tasks": tasks[r["start"] : r["end"]]}
                ),
                ranges,
            )
        )
    store.put_json(layout.MANIFEST_FILE, ranges)
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
        "tier": tier.as_plan(),
        "counts": {
            "items": len(items),
            "tasks": len(every_task),
            "pending": len(tasks),
            "skipped": len(every_task) - len(tasks),
            "batches": len(ranges),
        },
    }
    store.put_json(layout.PLAN_FILE, summary)
    return summary


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


def _earlier_run(store: RunStore, job_id: str, print_: str) -> bool:
    """Whether this job_id ran before; refuses a changed job whose earlier records would be reused."""
    try:
        previous = store.get_json(layout.JOB_FILE)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return False
        raise
    if previous.get("fingerprint") != print_ and next(iter(store.record_keys()), None) is not None:
        raise InvalidJob(
            f"job_id: '{job_id}' already has records from a different job (prompt, model, schema or items changed); "
            "use a new job_id, or start fresh (CLI: --fresh)",
            "job_id",
        )
    return True


def run_subtask(
    event: dict[str, Any], *, s3: Any, provider_for: ProviderFactory, deadline: float | None = None
) -> dict[str, Any]:
    """Run one batch of the Map and return its counts (never model output)."""
    store = RunStore.from_uri(s3, event["run_uri"], event["job_id"])
    batch = store.get_json(store.batch_name(int(event["batch"]["index"])))
    if event.get("execution_arn"):
        _lease(store).refresh(event["execution_arn"], time.time())  # a long job keeps its lease fresh
    attach_documents(batch["tasks"], s3)
    outcome = run_batch(batch, store=store, provider_for=provider_for, threads=int(event.get("threads", 8)), deadline=deadline)
    return outcome.as_event()


def run_aggregate(
    event: dict[str, Any], *, s3: Any, provider_for: ProviderFactory, scratch_dir: str | None = None
) -> dict[str, Any]:
    """Aggregate every record of the run into result.json, results.jsonl, report.md and report.html; return a summary.

    The items are streamed: each goes to results.jsonl, result.json's item
    list and report.md as it is built, through files in ``scratch_dir`` (a
    temporary folder: /tmp in Lambda), so the records in memory are bounded
    by a part of the job whatever its size (report.html reads the items back
    from results.jsonl one at a time, and lists at most its MAX_ROWS). A job with a synthesis is aggregated in
    memory: its synthesis call reads every item.
    """
    store = RunStore.from_uri(s3, event["run_uri"], event["job_id"])
    saved = store.get_json(layout.JOB_FILE)
    job = Job.model_validate(saved["job"])
    items: list[dict[str, Any]] = saved["items"]
    errors = _batch_errors(store)
    judge = _judge(job, provider_for, saved["default_model"]) if job.strategy == "judge" else None
    judge_threads = min(job.limits.max_concurrency, 32)
    prefix = layout.result_prefix(job.job_id)
    bucket = store.bucket
    prices = {name: price.model_dump() for name, price in (job.prices or {}).items()}
    tier = _planned_tier(store)
    if job.synthesis is not None:
        result = aggregate(job, items, store.iter_records(), batch_errors=errors, judge=judge, judge_threads=judge_threads)
        spec = job.model or saved["default_model"]
        _synthesise(job, result, provider_for(spec), spec)
        price_usage(result["usage"], prices)
        if tier is not None:
            result["tier"] = tier
        put_text(s3, bucket, prefix + "result.json", strict_json(result, ensure_ascii=False, indent=1), "application/json")
        put_text(s3, bucket, prefix + "results.jsonl", results_jsonl(result), "application/x-ndjson")
        put_text(s3, bucket, prefix + "report.md", report_markdown(result), "text/markdown")
        put_text(s3, bucket, prefix + "report.html", report_html(result), "text/html; charset=utf-8")
    else:
        with tempfile.TemporaryDirectory(dir=scratch_dir, prefix="fanout-results-") as folder:
            result = _aggregate_to_files(job, items, store, errors, judge, judge_threads, Path(folder), prices, tier)
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
    skipped = _tasks_skipped(store)
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
        tier = store.get_json("plan.json").get("tier")
    except (ClientError, AttributeError, ValueError):
        return None
    return tier if isinstance(tier, dict) else None


def _tasks_skipped(store: RunStore) -> int:
    """How many tasks this run found finished when it was planned (plan.json)."""
    try:
        return int(store.get_json(layout.PLAN_FILE)["counts"].get("skipped", 0))
    except (ClientError, KeyError, TypeError, ValueError):
        return 0


def _aggregate_to_files(
    job: Job,
    items: list[dict[str, Any]],
    store: RunStore,
    errors: dict[str, str],
    judge: Judge | None,
    judge_threads: int,
    folder: Path,
    prices: dict[str, Any],
    tier: dict[str, Any] | None = None,
) -> dict[str, Any]:
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
            store.iter_records(),
            on_item,
            batch_errors=errors,
            judge=judge,
            judge_threads=judge_threads,
            spill_dir=str(folder),
        )
    price_usage(head["usage"], prices)
    if tier is not None:
        head["tier"] = tier
    _write_result(folder / "result.json", head, listed)
    listed.unlink()
    (folder / "report.md").write_text(report.markdown(head), encoding="utf-8")
    return head


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


def _judge(job: Job, provider_for: ProviderFactory, default_model: str) -> Judge:
    """The judge strategy's extra call per item: the candidates numbered, the best one picked with a reason."""
    spec = (job.aggregate.judge.model if job.aggregate.judge else None) or job.model or default_model
    instruction = job.aggregate.judge.prompt if job.aggregate.judge else DEFAULT_JUDGE_PROMPT
    provider = provider_for(spec)

    def judge(item: dict[str, Any], offered: list[tuple[Any, int]]) -> JudgeVerdict:
        request = ModelRequest(
            task_id=f"{item['id']}#judge",
            prompt=judge_prompt(instruction, render(job.prompt or "", item), offered),
            system=job.system,
            output_schema=judge_schema(len(offered)),
            max_tokens=max(256, job.inference.max_tokens),
            temperature=0.0,
        )
        try:
            reply, calls = call_with_retries(provider, request)
        except ModelError as exc:
            return JudgeVerdict(choice=None, reason="", model=spec, error=f"{exc.code}: {exc.message}")
        spent = (calls, reply.input_tokens, reply.output_tokens)
        best = reply.output.get("best") if isinstance(reply.output, dict) else None
        if not isinstance(best, int) or not 1 <= best <= len(offered):
            return JudgeVerdict(None, "", spec, error=f"the judge answered {str(reply.output)[:200]}", usage=spent)
        return JudgeVerdict(best - 1, str(reply.output.get("reason", "")), spec, usage=spent)

    return judge


def _batch_errors(store: RunStore) -> dict[str, str]:
    """The error of each task whose batch failed for good, by task id (read from the batch's own file)."""
    errors: dict[str, str] = {}
    for failure in store.failures():
        index = failure["batch"]
        reason = f"batch {index} failed: {failure.get('Error', 'error')}: {_cause(failure.get('Cause'))}"
        for task in store.get_json(store.batch_name(index))["tasks"]:
            errors[task["task_id"]] = reason
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


def _synthesise(job: Job, result: dict[str, Any], provider: Provider, spec: str) -> None:
    """One final call over the merged results (or one per item, concurrently), its input cut to the stated budget."""
    assert job.synthesis is not None
    synthesis = job.synthesis
    targets = [(item, [item]) for item in result["items"]] if synthesis.per_item else [(None, result["items"])]

    def one(target: tuple[dict[str, Any] | None, list[dict[str, Any]]]) -> tuple[dict[str, Any], tuple[int, int, int]]:
        owner, subjects = target
        material = json.dumps([_digest(i) for i in subjects], ensure_ascii=False)
        budget = synthesis.max_input_chars
        request = ModelRequest(
            task_id=f"synthesis#{owner['id'] if owner else '*'}",
            prompt=f"{synthesis.prompt}\n\n<results>\n{material[:budget]}\n</results>",
            system=job.system,
            max_tokens=max(job.inference.max_tokens, 1024),
            temperature=job.inference.temperature,
        )
        try:
            reply, calls = call_with_retries(provider, request)
        except ModelError as exc:
            return {"text": None, "model": spec, "error": f"{exc.code}: {exc.message}"}, (0, 0, 0)
        text = reply.output if isinstance(reply.output, str) else json.dumps(reply.output, ensure_ascii=False)
        if reply.synthetic:
            text = "[synthetic] " + _synthetic_summary(subjects)
        block = {
            "text": text,
            "model": spec,
            "input_chars": min(len(material), budget),
            "input_truncated": len(material) > budget,
        }
        return block, (calls, reply.input_tokens, reply.output_tokens)

    with ThreadPoolExecutor(max_workers=max(1, min(job.limits.max_concurrency, 16))) as pool:
        done = list(pool.map(one, targets))
    per_model = result["usage"]["by_model"].setdefault(spec, {"model_calls": 0, "input_tokens": 0, "output_tokens": 0})
    for (owner, _), (block, spent) in zip(targets, done, strict=True):
        for key, value in zip(("model_calls", "input_tokens", "output_tokens"), spent, strict=True):
            result["usage"][key] += value
            per_model[key] += value
        if owner is None:
            result["synthesis"] = block
        else:
            owner["synthesis"] = block


def _digest(item: dict[str, Any]) -> dict[str, Any]:
    if "merged" in item:
        return {"id": item["id"], "merged": item["merged"]}
    return {k: v for k, v in item.items() if k in ("id", "sections", "answer", "confidence")}


def _synthetic_summary(items: list[dict[str, Any]]) -> str:
    """What the simulator writes for a synthesis: the best-supported merged entries, plainly listed."""
    lines = []
    for item in items:
        for field, entries in (item.get("merged") or {}).items():
            top = ", ".join(str(next(iter(e.values()))) for e in entries[:3])
            lines.append(f"{item['id']}: top {field}: {top}.")
        if "merged" not in item:
            lines.append(f"{item['id']}: {len(item.get('sections', {}))} sections answered.")
    return " ".join(lines) or "nothing to combine."
