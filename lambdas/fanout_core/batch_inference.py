"""Bedrock batch inference for a job at tier batch: the input JSONL, the job list, and the outputs joined back.

What each part follows in the Bedrock User Guide:

- "Format and upload your batch inference data" (batch-inference-data.html):
  one JSON object a line, ``{"recordId": ..., "modelInput": {...}}``, in a
  file ending ``.jsonl``; with ``modelInvocationType`` ``Converse`` the
  model input is a Converse request body (without ``modelId``, which the job
  names). The stored copies differ on the output's order (one says it
  matches the input's, batch-inference-data.html in en_us); outputs are
  joined to tasks by ``recordId``, never by position, which holds either way.
- "View the results of a batch inference job" (batch-inference-results.html):
  Bedrock writes, under the job's output S3 URI, a folder named by the job
  id holding ``<input file>.jsonl.out`` (one line per record: ``recordId``,
  ``modelInput``, and ``modelOutput`` or, for a record that failed,
  ``error`` with ``errorCode`` and ``errorMessage``) and
  ``manifest.json.out`` (``totalRecordCount``, ``processedRecordCount``,
  ``successRecordCount``, ``errorRecordCount``, ``inputTokenCount``,
  ``outputTokenCount``). With Converse jobs ``modelOutput`` is a Converse
  response body. Each job's output URI ends in its own name
  (``job_output_uri``), so two runs' jobs of one folder write apart.
- The batch inference quotas: batch-inference-data.html names them
  ("Minimum number of records per batch inference job", "Records per input
  file per batch inference job", "Records per batch inference job", and the
  input file and job sizes) and sends the reader to the Amazon Bedrock
  service quotas for their values ("Amazon Bedrock endpoints and quotas",
  general/latest/gr/bedrock.html, is not among the pages checked). The
  figures used here, 100 minimum records, 50,000 records per job and per
  file, 1 GB a file and 5 GB a job, are the commonly cited defaults, not
  figures read on an AWS page; an account's may differ (Service Quotas).
  The code example (batch-inference-example.html) says the minimum is per
  model ("Minimum number of records per batch inference job for ${Model}"),
  as models.json's ``min_records`` is; no page read gives a figure for the
  jobs in progress at once either (the state machine's RunInferenceJobs
  creates at most 10 at a time and retries ServiceQuotaExceededException).
  Each job here has one input file, so a job holds at most 50,000 records
  and 1 GB; a model's tasks are split into as many even jobs as that needs.
- CreateModelInvocationJob (API reference): ``jobName`` and
  ``clientRequestToken`` patterns; ``timeoutDurationInHours`` 24 to 168.

A job's records are the tasks' requests exactly as RunBatch sends them
(fanout_core.providers.bedrock.converse_request), with no ``cachePoint``:
prompt caching is an on-demand saving. A task with a document attached
(its file as a Converse document block) is not put in a batch job: it is
called on-demand with the records that fail.

Joining writes the same task records RunBatch writes, under the batch
that holds the task (``records/b<n>/``), so a fallback RunBatch skips them
and Aggregate, resume and reports read them as any other record. A record
that failed, was cut off, or misses the schema is written as failed or
invalid (its tokens were billed) and called again on-demand; so are the
tasks of a job that failed, stopped or expired with no output for them.

With ``limits.max_cost_usd`` (:class:`BatchBudget`), a task goes into a job
only while the most every record taken so far can cost, at the batch price,
fits the budget: a record is billed once the job runs it, so it is held at
its full ``maxTokens`` of output and one input token per byte of its line (a
token is never shorter than a byte). A task the budget leaves out gets a
``failed`` record with ``stopped: budget`` (a re-run with a larger budget
asks it); a model left with fewer tasks than a job's minimum records gets no
job, its tasks are called on-demand. The jobs' part of the budget is kept in
``pacing/inference.json`` next to the batches' (fanout_core.pacing reads
both): at first what the records can cost at most, after the join what they
cost; the on-demand fallback gets what is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import re
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from fanout_core import layout
from fanout_core.catalog import Rates, info
from fanout_core.contracts import Record, Status, new_record, pending_tasks
from fanout_core.observability import logger
from fanout_core.providers.base import ModelRequest, schema_in_system
from fanout_core.providers.bedrock import converse_request, output_of
from fanout_core.store import RunStore, parse_s3_uri
from fanout_core.validation import SchemaCheck, SchemaUnusable

# the batch inference quotas' usual defaults (batch-inference-data.html names the quotas but gives no figures: see
# the module's docstring)
MAX_RECORDS_PER_JOB = 50_000
MAX_INPUT_FILE_BYTES = 1_000_000_000
# "Avoid reaching the history quota" (Step Functions Developer Guide, bp-history-limit.html): a hard quota of 25,000
# entries in an execution's event history. Each job's poll loop costs about 11 a round (Wait, GetInferenceJob,
# CountInferencePoll and CheckInferenceJob: the ASL's RunInferenceJobs), so at most this many jobs, each polled for
# at most INFERENCE_MAX_HOURS, fit with room; the polls of a run get at most POLL_HISTORY_EVENTS of the 25,000, the
# rest is for Plan, the join, the on-demand Map, the second pass and Aggregate
HISTORY_EVENTS = 25_000
EVENTS_PER_POLL = 11
POLL_HISTORY_EVENTS = 20_000
MAX_JOBS = 20
INFERENCE_MAX_HOURS = 30
# one poll every half hour keeps a job's loop at 60 rounds over its 24 h (FANOUT_BATCH_POLL_SECONDS overrides)
DEFAULT_POLL_SECONDS = 1800
# the statuses after which a job writes nothing more (GetModelInvocationJob, ModelInvocationJobStatus)
ENDED = ("Completed", "PartiallyCompleted", "Failed", "Stopped", "Expired")
INPUT_NAME = layout.INFERENCE_INPUT
TASKS_NAME = layout.INFERENCE_TASKS


def folder(index: int) -> str:
    """The run's folder for inference job ``index``: its input, its tasks, and the output Bedrock writes."""
    return layout.inference_dir(index)


def record_id(position: int) -> str:
    """An 11-character alphanumeric recordId (the form the data page shows), unique within the job."""
    return f"R{position:010d}"


@dataclass(frozen=True)
class InferenceJob:
    index: int
    model: str  # the task's model spec
    job_name: str
    model_id: str
    input_uri: str
    output_uri: str
    records: int

    def as_state(self) -> dict[str, Any]:
        """What the state machine's RunInferenceJobs Map reads of a job (small: no records)."""
        return {
            "index": self.index,
            "job_name": self.job_name,
            "model_id": self.model_id,
            "input_uri": self.input_uri,
            "output_uri": self.output_uri,
            "records": self.records,
        }


def job_output_uri(bucket: str, where: str, name: str) -> str:
    """A job's output URI: its folder's output/, then the job's own name. Bedrock writes <job id>/ in it; a job of an
    earlier run in the same folder, stopped but still writing, writes under its own name, never joined here."""
    return f"s3://{bucket}/{where}output/{name}/"


def model_id_of(spec: str) -> str:
    """The ``modelId`` a job names: the Bedrock model or inference profile id; the simulator's spec as it is."""
    return spec.removeprefix("bedrock:")


def job_name(job_id: str, execution: str, index: int) -> str:
    """A name unique to this execution, also valid as ``clientRequestToken``: letters, digits and '-', at most 63."""
    safe = re.sub(r"[^A-Za-z0-9]+", "-", job_id).strip("-")[:36] or "job"
    digest = hashlib.sha256(execution.encode()).hexdigest()[:10]
    return f"fanout-{safe}-{digest}-{index:03d}"


def model_input(task: dict[str, Any], batch: dict[str, Any]) -> dict[str, Any]:
    """The Converse request body of one task (RunBatch's request without modelId, cachePoint or documents)."""
    inference = batch.get("inference") or {}
    schema = batch.get("output_schema")
    found = info(task["model"])
    # the simulator (answered by the local runtime's batch jobs) reads Converse's JSON-schema output format
    native = (found is not None and found.structured_output == "json_schema") or not task["model"].startswith("bedrock:")
    system = batch.get("system")
    if schema is not None and not native:
        # a batch job of the Converse invocation type refuses a record with toolConfig (400), while structured output
        # is supported ("Process multiple prompts with batch inference", batch-inference.html; an older stored copy
        # says batch inference supports neither tool calling nor structured output, so a model whose JSON-schema
        # output format is not confirmed gets no outputConfig here either): a model without
        # Converse's JSON-schema output format is asked for the schema in its system prompt, its answer read as JSON
        system, schema = schema_in_system(system, schema), None
    request = ModelRequest(
        task_id=task["task_id"],
        prompt=task["prompt"],
        system=system,
        output_schema=schema,
        max_tokens=inference.get("max_tokens", 512),
        temperature=inference.get("temperature"),
        top_p=inference.get("top_p"),
    )
    body = converse_request(model_id_of(task["model"]), request, json_schema_output=native)
    body.pop("modelId")
    return _without_cache_points(body)


def _without_cache_points(body: dict[str, Any]) -> dict[str, Any]:
    for message in body.get("messages", []):
        message["content"] = [block for block in message["content"] if "cachePoint" not in block]
    if "system" in body:
        body["system"] = [block for block in body["system"] if "cachePoint" not in block]
    return body


def batchable(task: dict[str, Any]) -> bool:
    """Whether a task goes into a batch job: a task with a document block is called on-demand."""
    return "document" not in task


@dataclass
class BatchBudget:
    """limits.max_cost_usd at tier batch: which tasks go into the jobs (in task order, each while it fits)."""

    limit_usd: float
    # a model's rates at tier batch (pricing.rates_of of its usage key); None: not known, nothing admitted
    rates_for: Callable[[str], Rates | None]
    max_tokens: int
    held_usd: float = 0.0
    held_by_model: dict[str, float] = field(default_factory=dict)
    refused: list[int] = field(default_factory=list)  # positions of the tasks left out
    rates: dict[str, list[float]] = field(default_factory=dict)  # what each admitted model was held at

    def most(self, model: str, line_bytes: int) -> float | None:
        """The most one record of ``line_bytes`` can cost at the batch price (None: its price is not known)."""
        rates = self.rates_for(model)
        if rates is None:
            return None
        self.rates.setdefault(model, [rates.input, rates.output])
        return (line_bytes * rates.input + self.max_tokens * rates.output) / 1e6

    def admit(self, position: int, model: str, line_bytes: int) -> bool:
        most = self.most(model, line_bytes)
        if most is None or self.held_usd + most > self.limit_usd + 1e-12:
            self.refused.append(position)
            return False
        self.held_usd += most
        self.held_by_model[model] = self.held_by_model.get(model, 0.0) + most
        return True

    def release(self, model: str) -> None:
        """A model that gets no job after all: what its records held goes back (its tasks are called on-demand)."""
        self.held_usd -= self.held_by_model.pop(model, 0.0)


def write_inference_jobs(
    store: RunStore,
    tasks: list[dict[str, Any]],
    batch_of: list[int],
    shared: dict[str, Any],
    execution: str,
    *,
    max_records: int = MAX_RECORDS_PER_JOB,
    max_bytes: int = MAX_INPUT_FILE_BYTES,
    run: str | None = None,
    budget: BatchBudget | None = None,
    least: Callable[[str], int] | None = None,
    first_index: int = 0,
) -> list[InferenceJob]:
    """Write each job's input JSONL and task list; return the jobs. ``batch_of[i]`` is task i's batch index.
    ``run`` (the execution's name) is what the joined records say made their calls. The jobs' folders are numbered
    from ``first_index`` (the folders below it hold jobs of an earlier run this one adopts).

    A model's tasks are split into the fewest even jobs that keep every job within the record and size quotas.
    With ``budget``, only the tasks it admits go into jobs (the others are in ``budget.refused``); with
    ``least`` (a model's minimum records per job), a model with fewer tasks than that gets no job: its tasks are
    called on-demand.
    """
    assert store.job_id
    by_model: dict[str, list[int]] = {}
    # sizes first, the lines later as they are uploaded: a model input is never held for the whole job
    sizes: dict[int, int] = {}
    for position, task in enumerate(tasks):
        if not batchable(task):
            continue
        size = len(_line(task, shared, "R0000000000"))
        if budget is not None and not budget.admit(position, task["model"], size):
            continue
        sizes[position] = size
        by_model.setdefault(task["model"], []).append(position)
    if least is not None:
        for model in [m for m, positions in by_model.items() if len(positions) < least(m)]:
            del by_model[model]
            if budget is not None:
                budget.release(model)
    jobs: list[InferenceJob] = []
    for model in sorted(by_model):
        positions = by_model[model]
        for chunk in _split([sizes[p] for p in positions], max_records, max_bytes):
            index = first_index + len(jobs)
            where = store.prefix + folder(index)
            picked = [positions[at] for at in chunk]
            lines = (_line(tasks[p], shared, record_id(n)) for n, p in enumerate(picked))
            store.s3.upload_fileobj(
                _Lines(lines), store.bucket, where + INPUT_NAME, ExtraArgs={"ContentType": "application/jsonl"}
            )
            listed = [{"record_id": record_id(n), "batch": batch_of[p], "task": _stub(tasks[p])} for n, p in enumerate(picked)]
            # the answer field and schema go with the records, for the local runtime's simulated batch jobs; the run
            # that made the calls goes with the records joined from the outputs
            hints = {"answer_field": shared.get("answer_field"), "output_schema": shared.get("output_schema")}
            store.put_json(folder(index) + TASKS_NAME, {**hints, "run": run or execution, "records": listed})
            name = job_name(store.job_id, execution, index)
            jobs.append(
                InferenceJob(
                    index=index,
                    model=model,
                    job_name=name,
                    model_id=model_id_of(model),
                    input_uri=f"s3://{store.bucket}/{where}{INPUT_NAME}",
                    output_uri=job_output_uri(store.bucket, where, name),
                    records=len(chunk),
                )
            )
    return jobs


def write_budget_stopped(store: RunStore, tasks: list[dict[str, Any]], batch_of: list[int], budget: BatchBudget, run: str) -> int:
    """A ``failed`` record with ``stopped: budget`` for every task the budget left out of the jobs, under its batch:
    the fallback batches skip it, Aggregate accounts for its item, a re-run asks it (fanout_core.steps._reusable)."""
    message = (
        f"BudgetExceeded: not called: limits.max_cost_usd ({budget.limit_usd:g} USD) would be passed by the batch "
        "inference jobs' records, each held at its full max_tokens; raise the budget and run again to finish it"
    )
    writers: dict[int, Any] = {}
    try:
        for position in budget.refused:
            task = tasks[position]
            record = new_record(task, "failed", None, message, model=task["model"], attempts=0)  # bought at no tier
            record["stopped"] = "budget"
            if task.get("key"):
                record["key"] = task["key"]
            record["run"] = run
            index = batch_of[position]
            writer = writers.get(index)
            if writer is None:
                writer = writers[index] = store.writer(index)
            writer.add(record)
    finally:
        for writer in writers.values():
            writer.close()
    return len(budget.refused)


def write_budget_report(store: RunStore, budget: BatchBudget, batch_of: list[int]) -> None:
    """The jobs' part of the budget before they run (``pacing/inference.json``): what their records can cost at most,
    and what the on-demand calls have left meanwhile (every task not left out may fall back to them)."""
    refused = set(budget.refused)
    per_batch: dict[int, int] = {}
    for position, index in enumerate(batch_of):
        if position not in refused:
            per_batch[index] = per_batch.get(index, 0) + 1
    now = time.time()
    report = {
        "started": now,
        "ended": now,
        "models": {},
        "budget": {"limit_usd": budget.limit_usd, "spent_usd": budget.held_usd, "tasks_stopped": len(refused)},
        "batch_jobs": {"settled": False, "rates": budget.rates},
        "fallback": _fallback(budget.limit_usd - budget.held_usd, per_batch),
    }
    store.put_json(layout.INFERENCE_BUDGET, report)


def _fallback(left_usd: float, per_batch: dict[int, int]) -> dict[str, Any]:
    return {
        "left_usd": max(0.0, left_usd),
        "tasks": sum(per_batch.values()),
        "batches": {str(index): count for index, count in sorted(per_batch.items())},
    }


def fallback_budget(store: RunStore) -> dict[str, Any] | None:
    """What the on-demand calls of a tier-batch run have left of limits.max_cost_usd (``left_usd``, ``tasks``, and
    the tasks of each batch, ``batches``), once the jobs' part is taken; None when the run wrote no such part."""
    try:
        report: dict[str, Any] = store.get_json(layout.INFERENCE_BUDGET)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return None
        raise
    fallback = report.get("fallback")
    return fallback if isinstance(fallback, dict) else None


def _settle_budget(store: RunStore, outcome: JoinOutcome, pending: list[tuple[int, int]]) -> None:
    """After the join: the jobs' part of the budget is what their records cost; the fallback has the rest."""
    try:
        report = store.get_json(layout.INFERENCE_BUDGET)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
            return  # no limits.max_cost_usd
        raise
    rates = report["batch_jobs"]["rates"]
    cost = 0.0
    for model, (tokens_in, tokens_out) in outcome.tokens.items():
        rate_in, rate_out = rates.get(model) or (0.0, 0.0)  # every model of a job was held at its rates
        cost += (tokens_in * rate_in + tokens_out * rate_out) / 1e6
    limit = float(report["budget"]["limit_usd"])
    now = time.time()
    report.update(started=now, ended=now)
    report["budget"]["spent_usd"] = cost
    report["batch_jobs"]["settled"] = True
    report["fallback"] = _fallback(limit - cost, dict(pending))
    store.put_json(layout.INFERENCE_BUDGET, report)


def _line(task: dict[str, Any], shared: dict[str, Any], rid: str) -> bytes:
    body = json.dumps(model_input(task, shared), ensure_ascii=False, separators=(",", ":"))
    return f'{{"recordId":"{rid}","modelInput":{body}}}\n'.encode()


def _stub(task: dict[str, Any]) -> dict[str, Any]:
    """What the join needs of a task to write its record (and the simulator of its hints): not its prompt."""
    return {k: task[k] for k in ("task_id", "item_id", "slot", "kind", "model", "expected", "key") if k in task}


class _Lines(io.RawIOBase):
    """The lines of a job's input as a file S3's multipart upload reads part by part."""

    def __init__(self, lines: Iterator[bytes]) -> None:
        self._lines = lines
        self._left = b""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._left:
            nxt = next(self._lines, None)
            if nxt is None:
                return 0
            self._left = nxt
        size = min(len(buffer), len(self._left))
        buffer[:size] = self._left[:size]
        self._left = self._left[size:]
        return size


def _split(sizes: list[int], max_records: int, max_bytes: int) -> list[list[int]]:
    """Indexes of lines of these sizes in the fewest even chunks within ``max_records`` lines and ``max_bytes`` each."""
    count = max(1, math.ceil(len(sizes) / max_records), math.ceil(sum(sizes) / max_bytes))
    while True:
        step = math.ceil(len(sizes) / count)
        chunks = [list(range(start, min(start + step, len(sizes)))) for start in range(0, len(sizes), step)]
        if all(sum(sizes[i] for i in chunk) <= max_bytes for chunk in chunks) or step == 1:
            return chunks
        count += 1


def max_polls(poll_seconds: int, hours: float = INFERENCE_MAX_HOURS) -> int:
    """Polls of a job before it is stopped and its tasks called on-demand: ``hours`` of them (INFERENCE_MAX_HOURS)."""
    return max(1, math.ceil(hours * 3600 / max(poll_seconds, 60)))


@dataclass(frozen=True)
class PollPlan:
    """How the state machine watches a run's batch inference jobs: the interval, the looks, and why they changed."""

    poll_seconds: int
    max_polls: int
    note: str | None = None  # set when the settings would have passed the execution history quota

    def as_plan(self) -> dict[str, Any]:
        out: dict[str, Any] = {"inference_poll_seconds": self.poll_seconds, "inference_max_polls": self.max_polls}
        if self.note:
            out["inference_poll_note"] = self.note
        return out


def poll_plan(poll_seconds: int, given_polls: int | None, jobs: int, deadline_hours: float | None = None) -> PollPlan:
    """The poll interval and looks for ``jobs`` jobs, kept within the execution history quota.

    The looks cover INFERENCE_MAX_HOURS, or ``deadline_hours`` when it is shorter (limits.deadline_hours: a job
    still running then is stopped and its tasks called on-demand). When every job's looks at about EVENTS_PER_POLL
    events each would pass POLL_HISTORY_EVENTS, an interval of a minute or more (FANOUT_BATCH_POLL_SECONDS) is
    raised to the least that covers the window in the looks that fit; a shorter one (the local runtime's 0: its jobs
    end at once) and a given count of looks (FANOUT_BATCH_MAX_POLLS) keep the interval and get fewer looks.
    """
    hours = min(INFERENCE_MAX_HOURS, deadline_hours) if deadline_hours else INFERENCE_MAX_HOURS
    polls = given_polls or max_polls(poll_seconds, hours)
    fit = max(1, POLL_HISTORY_EVENTS // (EVENTS_PER_POLL * max(1, jobs)))
    if polls <= fit:
        return PollPlan(poll_seconds, polls)
    needed = polls * EVENTS_PER_POLL * jobs
    why = (
        f"{jobs} batch inference job(s) looked at {polls} times each would take about {needed:,} execution history "
        f"events, past the {POLL_HISTORY_EVENTS:,} fanout leaves for them of the {HISTORY_EVENTS:,} an execution may "
        "have (Step Functions, 'Avoid reaching the history quota')"
    )
    if given_polls is None and poll_seconds >= 60:
        raised = math.ceil(hours * 3600 / fit)
        return PollPlan(
            raised,
            max_polls(raised, hours),
            f"{why}: FANOUT_BATCH_POLL_SECONDS {poll_seconds} is raised to {raised} so the looks still cover {hours:g} h",
        )
    setting = "FANOUT_BATCH_MAX_POLLS" if given_polls else "the looks"
    return PollPlan(poll_seconds, fit, f"{why}: {setting} is cut to {fit}; a job still running after them is called on-demand")


# -- joining the outputs ------------------------------------------------------------------------------------


@dataclass
class JoinOutcome:
    answered: int = 0  # ok records written from the jobs' outputs
    fallback: int = 0  # tasks left for on-demand calls
    failed_records: int = 0  # output lines with an error, a cut-off answer or an output that missed the schema
    unknown_records: int = 0  # output lines whose recordId names no task of the job (ignored)
    # the tokens the joined records were billed for, by model spec: [input, output]
    tokens: dict[str, list[int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {k: v for k, v in self.__dict__.items() if isinstance(v, int)}


def join_outputs(
    store: RunStore, statuses: Any, bedrock: Callable[[], Any] | None = None, *, sleep: Callable[[float], None] = time.sleep
) -> dict[str, Any]:
    """Write a record per output line of every job, joined to its task by recordId; return what falls back.

    ``statuses`` is what the state machine learned of each job (a list of {index, status}, or an error object
    when its Map failed); the outputs are read whatever it says, since a stopped or expired job may have
    written some. With ``bedrock`` (a Bedrock control-plane client factory), a job the state machine did not see
    end is stopped first (stop_unfinished_jobs), so none still runs for the tasks that fall back. Returns the
    batches that still have tasks without an ok record (the fallback Map runs only those: batches.json is
    rewritten to them) and the counts.
    """
    plan = store.get_json(layout.PLAN_FILE)
    settled = stop_unfinished_jobs(store, plan, statuses, bedrock, sleep=sleep)
    outcome = JoinOutcome()
    _write_records(store, plan, outcome)
    pending = _pending_batches(store, plan)
    outcome.fallback = sum(count for _, count in pending)
    _settle_budget(store, outcome, pending)
    ranges = [r for r in store.get_json(layout.MANIFEST_FILE) if r["index"] in {index for index, _ in pending}]
    if plan["mode"] == "distributed":
        store.put_json(layout.MANIFEST_FILE, ranges)  # the distributed Map reads its batch list from here
    summary: dict[str, Any] = {**outcome.as_dict(), "jobs": _job_statuses(statuses)}
    if settled.stopped or settled.not_stopped or settled.stopping:
        summary["stopped_jobs"] = {k: v for k, v in settled.as_plan().items() if k != "adopted"}
    plan["tier"] = {**plan.get("tier", {}), "batch_inference": summary}
    store.put_json(layout.PLAN_FILE, plan)
    return {
        "batches": ranges if plan["mode"] == "inline" else [],
        "pending": outcome.fallback,
        "batch_inference": summary,
    }


def _write_records(store: RunStore, plan: dict[str, Any], outcome: JoinOutcome) -> None:
    """A record per output line of the plan's jobs, joined to its task by recordId, under the task's batch."""
    jobs = plan.get("inference_jobs") or []
    batch = store.get_json(store.batch_name(0)) if plan["counts"]["batches"] else {}
    check = SchemaCheck(batch["output_schema"]) if batch.get("output_schema") else None
    writers: dict[int, Any] = {}
    seen: set[str] = set()
    try:
        for job in jobs:
            tasks_file = store.get_json(folder(int(job["index"])) + TASKS_NAME)
            listed = tasks_file["records"]
            by_record = {entry["record_id"]: entry for entry in listed}
            for line in _output_lines(store, job["output_uri"]):
                entry = by_record.get(str(line.get("recordId")))
                if entry is None or entry["task"]["task_id"] in seen:
                    outcome.unknown_records += 1
                    continue
                record = _stamped(record_from_output(entry["task"], line, check), entry["task"], tasks_file.get("run"))
                writer = writers.get(entry["batch"])
                if writer is None:
                    writer = writers[entry["batch"]] = store.writer(entry["batch"])
                writer.add(record)
                seen.add(entry["task"]["task_id"])
                billed = outcome.tokens.setdefault(record["model"], [0, 0])
                billed[0] += record["usage"]["input_tokens"]
                billed[1] += record["usage"]["output_tokens"]
                if record["status"] == "ok":
                    outcome.answered += 1
                else:
                    outcome.failed_records += 1
    finally:
        for writer in writers.values():
            writer.close()


def recover_outputs(store: RunStore) -> int:
    """Before a re-run is planned: the outputs of an earlier run's batch jobs that were never joined (its execution
    stopped while they ran, say), written as records so the re-run does not pay for them again; the ok count."""
    try:
        plan = store.get_json(layout.PLAN_FILE)
    except (ClientError, ValueError):  # no earlier plan, or one that cannot be read: nothing to recover
        return 0
    tier = plan.get("tier") if isinstance(plan, dict) else None
    if not isinstance(tier, dict) or not plan.get("inference_jobs") or "batch_inference" in tier:
        return 0  # no batch jobs, or joined already (their records are there)
    outcome = JoinOutcome()
    # an earlier run's files half gone: what was written stays (once: marked below), the rest is asked again
    with contextlib.suppress(ClientError, KeyError, TypeError, ValueError):
        _write_records(store, plan, outcome)
    plan["tier"] = {**tier, "batch_inference": {**outcome.as_dict(), "jobs": "recovered by the next run's Plan"}}
    store.put_json(layout.PLAN_FILE, plan)
    return outcome.answered


# -- an earlier run's jobs still running ---------------------------------------------------------------------
#
# An execution stopped, failed or timed out while its batch inference jobs ran leaves them running, and billing: Step
# Functions stops no job for it. The next run of the job_id (its Plan) looks each of them up by the name the earlier
# plan gave it (ListModelInvocationJobs, nameContains) and, for a job still running:
#
# - adopts it when every record of it is a request this run puts into a batch job (the same request keys, so the
#   same model input): the run waits for that job instead of creating another, and joins its output. Without
#   limits.max_cost_usd only: what a job bought before this run started is not known to the budget;
# - stops it otherwise (StopModelInvocationJob: "You're only charged for tokens that were already processed", Stop a
#   batch inference job, batch-inference-stop.html): its tasks are asked again, by this run's jobs or on-demand.
#
# A job that ended is not looked up: its output, if any, is joined by recover_outputs before this.

# the statuses of a job that may still run and bill (ModelInvocationJobStatus, GetModelInvocationJob); Stopping is
# on its way to Stopped, so it is neither adopted nor stopped again
RUNNING = ("Submitted", "Validating", "Scheduled", "InProgress")


@dataclass(frozen=True)
class EarlierJob:
    """A batch inference job an earlier run of the job_id created, as its plan listed it, and what Bedrock says of it."""

    job: dict[str, Any]  # InferenceJob.as_state() of the earlier plan
    arn: str
    status: str
    keys: tuple[str, ...]  # the request key of each of its records, from its tasks file

    @property
    def running(self) -> bool:
        return self.status in RUNNING


def earlier_jobs(store: RunStore, bedrock: Callable[[], Any] | None) -> list[EarlierJob]:
    """The batch inference jobs the job_id's earlier plan listed, each with its ARN and status as Bedrock has them.

    Read before the run's files are rewritten. With no ``bedrock`` (a Bedrock control-plane client factory), no
    earlier jobs, or a look-up Bedrock refuses, nothing is found: the run creates its own jobs, as before."""
    try:
        plan = store.get_json(layout.PLAN_FILE)
    except (ClientError, ValueError):
        return []
    jobs = plan.get("inference_jobs") if isinstance(plan, dict) else None
    return find_jobs(store, jobs or [], bedrock)


def find_jobs(store: RunStore, jobs: list[dict[str, Any]], bedrock: Callable[[], Any] | None) -> list[EarlierJob]:
    """Each of these plan entries (InferenceJob.as_state()) that Bedrock has a job of that very name for, with its
    ARN and status (ListModelInvocationJobs, nameContains: the name is all a plan is sure to know of a job whose
    creation the state machine did not report). With no ``bedrock`` (a Bedrock control-plane client factory), or a
    look-up Bedrock refuses, nothing is found."""
    if not jobs or bedrock is None:
        return []
    found: list[EarlierJob] = []
    try:
        client = bedrock()
        paginator = client.get_paginator("list_model_invocation_jobs")
        for job in jobs:
            name = str(job["job_name"])
            summaries = [
                summary
                for page in paginator.paginate(nameContains=name)
                for summary in page.get("invocationJobSummaries", [])
                if summary.get("jobName") == name
            ]
            if not summaries:
                continue
            summary = summaries[0]
            found.append(EarlierJob(dict(job), str(summary["jobArn"]), str(summary.get("status", "")), _job_keys(store, job)))
    except (ClientError, BotoCoreError, KeyError, TypeError, ValueError) as exc:
        logger.warning("batch inference jobs not looked up", extra={"error": type(exc).__name__})
        return []
    return found


def _job_keys(store: RunStore, job: Mapping[str, Any]) -> tuple[str, ...]:
    try:
        listed = store.get_json(folder(int(job["index"])) + TASKS_NAME)["records"]
    except (ClientError, KeyError, TypeError, ValueError):
        return ()  # its tasks file is gone: nothing tells what it answers, so it is never adopted
    return tuple(str(entry["task"].get("key") or "") for entry in listed)


@dataclass
class Settled:
    """What became of an earlier run's jobs that still ran: adopted by this run, or stopped."""

    adopted: list[EarlierJob] = field(default_factory=list)
    stopped: list[str] = field(default_factory=list)  # ARNs
    not_stopped: list[str] = field(default_factory=list)  # ARNs whose StopModelInvocationJob Bedrock refused
    stopping: list[str] = field(default_factory=list)  # ARNs still Stopping when the join stopped waiting for them

    def as_plan(self) -> dict[str, Any]:
        return {
            "adopted": [job.arn for job in self.adopted],
            "stopped": list(self.stopped),
            **({"not_stopped": list(self.not_stopped)} if self.not_stopped else {}),
            **({"stopping": list(self.stopping)} if self.stopping else {}),
        }


def settle_earlier_jobs(
    earlier: list[EarlierJob], wanted: Mapping[str, str] | None, bedrock: Callable[[], Any] | None
) -> Settled:
    """Adopt each running job whose every record is a request of ``wanted`` (request key -> model spec: what this
    run puts into batch jobs; None: adopt none), each key in one job at most; stop the other running jobs."""
    settled = Settled()
    claimed: set[str] = set()
    for job in earlier:
        if not job.running:
            continue
        keys = set(job.keys)
        if wanted is not None and keys and all(k in wanted for k in keys) and not keys & claimed:
            models = {wanted[k] for k in keys}
            if len(models) == 1 and model_id_of(models.pop()) == job.job.get("model_id"):
                settled.adopted.append(job)
                claimed |= keys
                continue
        try:
            assert bedrock is not None  # a job was found, so there is a client
            bedrock().stop_model_invocation_job(jobIdentifier=job.arn)
            settled.stopped.append(job.arn)
        except (ClientError, BotoCoreError) as exc:
            # ended meanwhile (ValidationException / ConflictException), or refused: nothing more to do here
            logger.warning("batch inference job not stopped", extra={"error": type(exc).__name__})
            settled.not_stopped.append(job.arn)
    return settled


def adopt_jobs(
    store: RunStore, adopted: list[EarlierJob], where: Mapping[str, tuple[int, dict[str, Any]]], run: str
) -> list[dict[str, Any]]:
    """The plan entries of the adopted jobs (with their ARNs: the state machine waits for them, creates nothing),
    their tasks files rewritten for this run: each record under the batch this run puts its task in (``where``:
    request key -> (batch index, task)), so the join writes it where the fallback and Aggregate look."""
    entries = []
    for job in adopted:
        index = int(job.job["index"])
        tasks_file = store.get_json(folder(index) + TASKS_NAME)
        records = []
        for entry in tasks_file["records"]:
            batch, task = where[str(entry["task"]["key"])]
            records.append({"record_id": entry["record_id"], "batch": batch, "task": _stub(task)})
        store.put_json(folder(index) + TASKS_NAME, {**tasks_file, "run": run, "records": records})
        entries.append({**job.job, "job_arn": job.arn})
    return entries


# -- this run's jobs the state machine lost sight of -------------------------------------------------------------
#
# The join falls back on-demand for every task its jobs' outputs did not answer. A job the state machine did not see
# end may still run, and bill, for those very tasks: the RunInferenceJobs Map failed (its Catch hands the join an
# error object, with no job ARN), CreateInferenceJob was reported refused (NotCreated) though Bedrock may have made
# the job, or StopInferenceJob, whose refusal is caught, reported Stopped. Before it joins, the join finds each such
# job by its name (find_jobs, as Plan finds an earlier run's), stops it when it is still running (Submitted,
# Validating, Scheduled, InProgress: RUNNING) with StopModelInvocationJob ("You're only charged for tokens that were
# already processed", batch-inference-stop.html), and waits, a bounded time, for a Stopping job to be Stopped
# (ModelInvocationJobStatus: "Stopping – This job is being stopped by a user", GetModelInvocationJob). An InProgress
# job already writes to its output location ("You can start viewing the results in the output S3 location", the
# same status list); no page read says what a Stopped job has written, so the join reads whatever is there once the
# job is Stopped, and only the tasks without an answer are asked on-demand.

# the statuses the state machine reads of a job that writes nothing more (its InferenceJobEnded); Stopped is not
# among them, since the state machine also reports Stopped for a job whose StopModelInvocationJob it sent
SEEN_ENDED = ("Completed", "PartiallyCompleted", "Failed", "Expired")
STOP_WAIT_SECONDS = 300.0  # of the join Lambda's 900 s; a job still Stopping then: what it writes later is not joined
STOP_POLL_SECONDS = 10.0


def stop_unfinished_jobs(
    store: RunStore,
    plan: Mapping[str, Any],
    statuses: Any,
    bedrock: Callable[[], Any] | None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Settled:
    """Stop each job of this run's plan the state machine did not see end (``statuses``: its job statuses, or the
    error object of a failed Map), and wait for the stopped ones to be Stopped; what was stopped, for the summary."""
    ended = _ended_jobs(statuses)
    unseen = [job for job in plan.get("inference_jobs") or [] if int(job["index"]) not in ended]
    found = find_jobs(store, unseen, bedrock)
    settled = settle_earlier_jobs(found, None, bedrock)  # none adopted: every job still running is stopped
    waiting = [*settled.stopped, *(job.arn for job in found if job.status == "Stopping")]
    if waiting and bedrock is not None:
        settled.stopping = _wait_stopped(waiting, bedrock, sleep, clock)
    return settled


def _ended_jobs(statuses: Any) -> set[int]:
    """The indexes of the jobs the state machine saw end; none when its Map failed."""
    if not isinstance(statuses, list):
        return set()
    return {int(s["index"]) for s in statuses if isinstance(s, dict) and s.get("status") in SEEN_ENDED and "index" in s}


def _wait_stopped(
    arns: list[str], bedrock: Callable[[], Any], sleep: Callable[[float], None], clock: Callable[[], float]
) -> list[str]:
    """Look at each job (GetModelInvocationJob) until none is Stopping, or STOP_WAIT_SECONDS have gone; the ARNs
    still Stopping then. A look Bedrock refuses ends the wait for that job."""
    client = bedrock()
    deadline = clock() + STOP_WAIT_SECONDS
    left = list(arns)
    while True:
        still = []
        for arn in left:
            try:
                status = client.get_model_invocation_job(jobIdentifier=arn).get("status")
            except (ClientError, BotoCoreError) as exc:
                logger.warning("stopped batch inference job not looked at", extra={"error": type(exc).__name__})
                continue
            if status == "Stopping":
                still.append(arn)
        if not still or clock() >= deadline:
            if still:
                logger.warning("batch inference jobs still stopping", extra={"jobs": len(still)})
            return still
        left = still
        sleep(STOP_POLL_SECONDS)


def _job_statuses(statuses: Any) -> list[dict[str, Any]] | str:
    if isinstance(statuses, list):
        return [{k: s.get(k) for k in ("index", "status", "error") if k in s} for s in statuses if isinstance(s, dict)]
    if isinstance(statuses, dict):
        return f"the inference jobs' Map failed: {statuses.get('Error', 'error')}"
    return "no job statuses"


def _pending_batches(store: RunStore, plan: dict[str, Any]) -> list[tuple[int, int]]:
    """(batch index, tasks without a final record) of every batch with some."""
    out = []
    for index in range(int(plan["counts"]["batches"])):
        batch = store.get_json(store.batch_name(index))
        done = {_ident(r) for r in store.finished_records(index) if not r.get("fallback")}
        left = sum(1 for task in pending_tasks(batch) if _ident(task) not in done)
        if left:
            out.append((index, left))
    return out


def _ident(task_or_record: Mapping[str, Any]) -> str:
    return str(task_or_record.get("key") or task_or_record["task_id"])


def _output_lines(store: RunStore, output_uri: str) -> Iterator[dict[str, Any]]:
    """Every line of every ``*.jsonl.out`` under a job's output URI (Bedrock's <job id>/ folder within it)."""
    bucket, prefix = parse_s3_uri(output_uri)
    paginator = store.s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith(".jsonl.out"):
                continue
            body = store.s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
            for raw in body.iter_lines():
                if not raw.strip():
                    continue
                try:
                    line = json.loads(raw)
                except json.JSONDecodeError:
                    continue  # a line that is not JSON answers no task: its task falls back
                if isinstance(line, dict):
                    yield line


def _stamped(record: Record, task: dict[str, Any], run: Any) -> Record:
    """A joined record as RunBatch writes one: its request key and run; one the on-demand fallback asks again (an
    error, a cut-off or out-of-schema answer) marked ``fallback``, so it is not taken for a final record."""
    if task.get("key"):
        record["key"] = task["key"]
    if run:
        record["run"] = str(run)
    if record["status"] != "ok":
        record["fallback"] = True
    return record


def record_from_output(task: dict[str, Any], line: dict[str, Any], check: SchemaCheck | None) -> Record:
    """The task record of one output line: ok, or failed / invalid (called again on-demand)."""
    output = line.get("modelOutput")
    if not isinstance(output, dict):
        given = line.get("error")
        error: dict[str, Any] = given if isinstance(given, dict) else {}
        code, message = error.get("errorCode", "error"), str(error.get("errorMessage", "no modelOutput"))[:500]
        return _bought(task, "failed", None, f"batch inference: {code}: {message}; called on-demand", {})
    reported = output.get("usage")
    usage: dict[str, Any] = reported if isinstance(reported, dict) else {}
    spent = {"input_tokens": int(usage.get("inputTokens", 0) or 0), "output_tokens": int(usage.get("outputTokens", 0) or 0)}
    synthetic = bool((output.get("additionalModelResponseFields") or {}).get("synthetic"))
    if output.get("stopReason") == "max_tokens":
        note = "truncated: the batch answer was cut off at max_tokens; called on-demand"
        return _bought(task, "invalid", None, note, spent, synthetic=synthetic, truncated=True)
    answer = output_of(output, check is not None)
    problem: str | None = None
    if check is not None:
        if check.unusable is not None:
            return _bought(task, "failed", None, check.unusable, spent, synthetic=synthetic)
        try:
            problem = check(answer)
        except SchemaUnusable as exc:
            return _bought(task, "failed", None, str(exc), spent, synthetic=synthetic)
    if problem is not None:
        return _bought(task, "invalid", answer, f"{problem}; called on-demand", spent, synthetic=synthetic)
    record = _bought(task, "ok", answer, None, spent, synthetic=synthetic)
    if check is not None:
        record["checked"] = check.digest
    return record


def _bought(
    task: dict[str, Any],
    status: Status,
    output: Any,
    error: str | None,
    usage: dict[str, int],
    *,
    synthetic: bool = False,
    truncated: bool = False,
) -> Record:
    """A record as RunBatch writes one (contracts.new_record), bought at tier batch."""
    return new_record(
        task,
        status,
        output,
        error,
        model=task["model"],
        # a record that came back from the job was one billed call; an error line was not billed
        attempts=1 if usage else 0,
        usage=usage,
        tier="batch",
        synthetic=synthetic,
        truncated=truncated,
    )
