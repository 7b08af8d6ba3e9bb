"""Run one batch: call the model for each task concurrently, record every outcome, return counts only.

Retries follow one table (see README "Model errors"): throttling and
transient service errors are retried here with exponential backoff and full
jitter inside a per-task budget; a timeout is retried once; anything else
fails the task at once. When throttling outlasts the budget the finished
records stay in S3 and the batch raises ``ModelThrottled``, so the state
machine retries the batch and only unfinished tasks call the model again.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from fanout_core.catalog import cache_plan, info
from fanout_core.contracts import ANSWERED, Record, Status, Usage, done_stubs, expand, new_record
from fanout_core.documents import converse_documents
from fanout_core.errors import BatchIncomplete, ModelThrottled
from fanout_core.pacing import BudgetSpent, Gate, NoTimeLeft
from fanout_core.planning import rule_digest
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest, Provider
from fanout_core.sharing import first_of_each_item, spans_by_task
from fanout_core.stopping import StopRule, next_step, record_answer, vote_position
from fanout_core.validation import SchemaCheck, SchemaUnusable

# a cut-off answer (stopReason max_tokens) is asked once more with this many times the budget, up to the cap
TRUNCATED_BUDGET_FACTOR = 2
MAX_OUTPUT_TOKENS = 64_000


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_seconds: float = 0.25
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


_JITTER = random.Random()


class RecordSink(Protocol):
    def add(self, record: Record) -> None: ...

    def close(self) -> None: ...


class BatchStore(Protocol):
    """Where a batch finds what earlier runs of it finished, and writes its records."""

    def completed(self, batch_index: int) -> set[str]: ...

    def finished_records(self, batch_index: int) -> list[Record]: ...

    def writer(self, batch_index: int) -> RecordSink: ...


class _Unfinished(Exception):
    """A task still throttled when its budget ran out: no record, the batch is retried."""


class _OutOfTime(Exception):
    """The batch's deadline came before a task could make (or wait for) its next attempt: no record, the batch is
    handed back (BatchIncomplete) and its retry continues the task."""


@dataclass(frozen=True)
class Budget:
    """When a batch must stop calling: no attempt starts, and no backoff sleep ends, after ``deadline``.

    ``deadline`` is a ``clock()`` value that already leaves room for the last attempt to finish and the records to be
    written (the subtask handler takes the model timeout and a flush allowance off the Lambda's remaining time).
    """

    deadline: float | None = None
    clock: Callable[[], float] = time.monotonic

    def can_start(self) -> bool:
        return self.deadline is None or self.clock() <= self.deadline

    def can_sleep(self, seconds: float) -> bool:
        return self.deadline is None or self.clock() + seconds <= self.deadline


def run_batch(
    batch: dict[str, Any],
    *,
    store: BatchStore,
    provider_for: Callable[[str], Provider],
    threads: int,
    policy: RetryPolicy = RetryPolicy(),
    sleep: Callable[[float], None] = time.sleep,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    tasks: list[dict[str, Any]] | None = None,
    run: str | None = None,
    gate_for: Callable[[str], Gate] | None = None,
) -> BatchOutcome:
    """Run every task of a batch file (``tasks``: its tasks already expanded, ``contracts.expand``).

    A task is asked only when its request has no final record: neither one
    an earlier run left (the batch file marks it ``done``) nor one an earlier
    invocation of this batch wrote (a retry, whatever its cause): ``ok`` and
    a skipped vote, ``invalid`` after its repair and ``failed`` after its own
    retries are all final. Records are matched by request key, so records of
    another job under this batch's index are never taken for this one's.
    Each record carries its request key and ``run``, the execution that
    made its calls.

    Raises ModelThrottled if some tasks were throttled past their budget,
    and BatchIncomplete if ``deadline`` (a ``clock()`` value, by default
    ``time.monotonic()``) came before every task had finished: no attempt
    of any task starts after it, and no retry's backoff sleeps past it.
    Either way the finished records are kept.
    """
    budget = Budget(deadline, clock)
    if tasks is None:
        tasks = list(batch["tasks"]) if "tasks" in batch else list(expand(batch))  # type: ignore[arg-type]
    schema = batch.get("output_schema")
    validator = SchemaCheck(schema) if schema else None
    # a second-pass task (a judge's) may carry a schema of its own: checked by its own validator, built once
    validators = {json.dumps(t["output_schema"], sort_keys=True) for t in tasks if t.get("output_schema")}
    own_checks = {key: SchemaCheck(json.loads(key)) for key in validators}

    def check_of(task: dict[str, Any]) -> SchemaCheck | None:
        if "output_schema" not in task:
            return validator
        own = task["output_schema"]
        return own_checks[json.dumps(own, sort_keys=True)] if own else None

    rule = StopRule.from_batch(batch)
    mine = {_ident(t) for t in tasks}
    # another run's invalid or failed record is the plan's to reuse or not (a re-run with retry_failed asks again)
    earlier = [
        r
        for r in store.finished_records(batch["index"])
        if _ident(r) in mine
        and not r.get("fallback")  # a batch inference answer the on-demand calls replace
        and (run is None or r.get("run") in (None, run) or r["status"] in ANSWERED)
    ]
    reused = done_stubs(batch) if "items" in batch else {}
    done = {_ident(r) for r in earlier} | set(reused)
    stop_digest = rule_digest(batch.get("stop"))

    def stamp(record: Record, task: dict[str, Any]) -> Record:
        if task.get("key"):
            record["key"] = task["key"]
        if run:
            record["run"] = run
        if record["status"] == "skipped" and stop_digest:
            record["stop"] = stop_digest
        return record

    writer = _StampingSink(store.writer(batch["index"]), stamp)
    unrecorded: dict[str, int] = {}  # calls of tasks that end here without a record, by model
    providers = {model: provider_for(model) for model in {t["model"] for t in tasks}}
    # each call waits at its model's gate (quota pacing, the cost budget) before it goes: fanout_core.pacing
    gates = {model: gate_for(model) for model in providers} if gate_for is not None else {}
    sharing = _cached_spans(tasks, batch.get("system"))
    tier = _service_tier(batch)

    def run_one(task: dict[str, Any]) -> tuple[str, int, int, int, Record | None]:
        """(outcome, model calls, input tokens, output tokens, record) of one task."""
        if _ident(task) in done:
            return ("skipped", 0, 0, 0, None)
        if not budget.can_start():
            return ("deferred", 0, 0, 0, None)
        try:
            record, calls = _call(
                task,
                batch,
                providers[task["model"]],
                check_of(task),
                policy,
                sleep,
                sharing.get(task["task_id"]),
                budget,
                gates.get(task["model"]),
            )
        except _Unfinished as exc:
            _note(unrecorded, task["model"], exc.args[0])
            return ("unfinished", exc.args[0], 0, 0, None)
        except _OutOfTime as exc:
            _note(unrecorded, task["model"], exc.args[0])
            return ("deferred", exc.args[0], 0, 0, None)
        if tier is not None:
            record["tier"] = tier  # priced at the tier's rates (fanout_core.tiers)
        writer.add(record, task)
        return (record["status"], calls, record["usage"]["input_tokens"], record["usage"]["output_tokens"], record)

    counts: Counter[str] = Counter()

    def tally(results: Iterable[tuple[str, int, int, int, Record | None]]) -> list[Record]:
        records = []
        for outcome, calls, tokens_in, tokens_out, record in results:
            counts[outcome] += 1
            counts["model_calls"] += calls
            counts["input_tokens"] += tokens_in
            counts["output_tokens"] += tokens_out
            if record is not None:
                records.append(record)
                counts["truncated"] += 1 if record.get("truncated") else 0
        return records

    try:
        with _Workers(threads) as pool:
            if rule is None:
                # an item's first task goes before its siblings, so they read the prompt cache it writes
                first, rest = first_of_each_item(tasks, sharing)
                tally(pool.map(run_one, first))
                tally(pool.map(run_one, rest))
            else:
                known = _known_votes(batch, tasks, earlier, reused)
                _run_stopping(rule, batch, tasks, known, done, lambda wave: pool.map(run_one, wave), tally, writer, counts)
    finally:
        writer.close()  # what finished is kept, even when the batch fails
        note_spent = getattr(store, "note_spent", None)
        if note_spent is not None:
            note_spent(batch["index"], run, unrecorded)  # every call is counted, with a record or not

    result = {
        key: counts.get(key, 0)
        for key in (
            "ok", "invalid", "failed", "skipped", "stopped_early", "truncated", "model_calls", "input_tokens", "output_tokens"
        )
    }  # fmt: skip
    result["tasks"] = len(tasks)
    if counts["deferred"]:
        raise BatchIncomplete(
            f"batch {batch['index']} ran short of Lambda time with {counts['deferred']} of {len(tasks)} tasks not finished; "
            "finished tasks are recorded and the retry continues with the rest"
        )
    if counts["unfinished"]:
        raise ModelThrottled(
            f"{counts['unfinished']} of {len(tasks)} tasks of batch {batch['index']} were still throttled after "
            f"{policy.max_attempts} attempts each; finished tasks are recorded and will not be called again"
        )
    return BatchOutcome(index=batch["index"], counts=result)


class _Workers:
    """Up to ``threads`` threads pulling tasks from one queue: no Future per task, results in task order.

    A failure in any task is raised from ``map`` after the other threads
    have finished the tasks they already started (they take no new ones).
    """

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)

    def __enter__(self) -> _Workers:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        results: list[Any] = [None] * len(items)
        indexes = iter(range(len(items)))
        lock = threading.Lock()
        failures: list[BaseException] = []

        def work() -> None:
            while not failures:
                with lock:
                    index = next(indexes, None)
                if index is None:
                    return
                try:
                    results[index] = fn(items[index])
                except BaseException as exc:
                    failures.append(exc)

        workers = [threading.Thread(target=work, daemon=True) for _ in range(min(self.threads, len(items)))]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        if failures:
            raise failures[0]
        return results


_Result = tuple[str, int, int, int, "Record | None"]


_NOTE_LOCK = threading.Lock()


def _note(spent: dict[str, int], model: str, calls: int) -> None:
    with _NOTE_LOCK:
        spent[model] = spent.get(model, 0) + calls


def _ident(task_or_record: Mapping[str, Any]) -> str:
    """What matches a record to its task: the request key; the task id for tasks built without one."""
    return str(task_or_record.get("key") or task_or_record["task_id"])


class _StampingSink:
    """The batch's writer, each record stamped with its request key and run first."""

    def __init__(self, sink: RecordSink, stamp: Callable[[Record, dict[str, Any]], Record]) -> None:
        self.sink, self.stamp = sink, stamp

    def add(self, record: Record, task: dict[str, Any]) -> None:
        self.sink.add(self.stamp(record, task))

    def close(self) -> None:
        self.sink.close()


def _known_votes(
    batch: Mapping[str, Any], tasks: list[dict[str, Any]], earlier: Iterable[Record], reused: Mapping[str, Any]
) -> dict[str, dict[int, str | None]]:
    """Each item's answered votes, whichever invocation answered them: this batch's earlier invocations (a retry)
    and earlier runs of the job (the batch file's done stubs)."""
    field = batch.get("answer_field")
    known: dict[str, dict[int, str | None]] = {}
    for record in earlier:
        if record["status"] == "ok":
            known.setdefault(record["item_id"], {})[vote_position(record)] = record_answer(record, field)
    for task in tasks:
        stub = reused.get(task.get("key") or "")
        if stub is not None and stub.get("done") == "ok":
            known.setdefault(task["item_id"], {})[vote_position(task)] = stub.get("answer")
    return known


def _run_stopping(
    rule: StopRule,
    batch: dict[str, Any],
    tasks: list[dict[str, Any]],
    known: dict[str, dict[int, str | None]],
    done: set[str],
    run: Callable[[list[dict[str, Any]]], list[_Result]],
    tally: Callable[[Iterable[_Result]], list[Record]],
    writer: _StampingSink,
    counts: Counter[str],
) -> None:
    """Votes in waves: each item asks what its stopping rule needs next, decided from every vote it has.

    What an item has counts whichever invocation recorded it (``known``:
    earlier runs' and this batch's earlier invocations'), then each wave's;
    the votes an item no longer needs are recorded as skipped. An item with
    a vote left unfinished (throttled past its budget, out of time) asks nothing more here: the batch's retry
    continues it.
    """
    field = batch.get("answer_field")
    weights = batch.get("vote_weights")
    waiting: dict[str, list[dict[str, Any]]] = {}
    for task in sorted(tasks, key=vote_position):
        if _ident(task) not in done:
            waiting.setdefault(task["item_id"], []).append(task)
    while waiting:
        wave: list[dict[str, Any]] = []
        for item_id in list(waiting):
            step = next_step(rule, known.get(item_id, {}), weights)
            left = waiting[item_id]
            if step.stop:
                for task in left:
                    note = f"not asked: the votes already given settle the answer ({rule.method} stopping)"
                    writer.add(new_record(task, "skipped", None, note, model=task["model"], attempts=0), task)
                    counts["stopped_early"] += 1
                del waiting[item_id]
                continue
            wanted = set(step.ask)
            # votes the rule wants that this batch does not hold: the item's rest is asked as fixed voting
            chosen = [t for t in left if vote_position(t) in wanted] or left
            wave += chosen
            asked = {id(t) for t in chosen}
            waiting[item_id] = [t for t in left if id(t) not in asked]
        if not wave:
            break
        results = run(wave)
        tally(results)
        for task, (_, _, _, _, written) in zip(wave, results, strict=True):
            if written is None:
                waiting.pop(task["item_id"], None)  # unfinished: the retry of the batch continues this item
            else:
                known.setdefault(task["item_id"], {})[vote_position(task)] = record_answer(written, field)
        waiting = {item: left for item, left in waiting.items() if left}


def reask_budget(model: str, max_tokens: int) -> int | None:
    """The budget of the one re-ask of a cut-off answer: twice max_tokens within the model's output limit; None if no larger."""
    found = info(model)
    ceiling = min(MAX_OUTPUT_TOKENS, (found.max_output_tokens if found else None) or MAX_OUTPUT_TOKENS)
    budget = min(max_tokens * TRUNCATED_BUDGET_FACTOR, ceiling)
    return budget if budget > max_tokens else None


def _cut_off(extra: Record, max_tokens: int) -> str:
    reasked = extra.get("reasked_truncated")
    return f"twice (last budget {reasked})" if reasked else f"({max_tokens}, the model's output limit)"


def _cached_spans(tasks: list[dict[str, Any]], system: str | None) -> dict[str, tuple[int, int]]:
    """The shared span of each task whose model will cache it (the span reaches the model's minimum)."""
    spans = spans_by_task(tasks)
    out = {}
    for task in tasks:
        span = spans.get(task["task_id"])
        if span is None:
            continue
        prompt = task["prompt"]
        shared = prompt[: span[0]] if span[0] else prompt[len(prompt) - span[1] :]
        if cache_plan(task["model"], system, shared)[0]:
            out[task["task_id"]] = span
    return out


def _call(
    task: dict[str, Any],
    batch: dict[str, Any],
    provider: Provider,
    validator: SchemaCheck | None,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    span: tuple[int, int] | None = None,
    budget: Budget = Budget(),
    gate: Gate | None = None,
) -> tuple[Record, int]:
    """One task: the call with its retries, validation, and one repair request when the output misses the schema.

    A cut-off answer (the model stopped at max_tokens) is asked again once,
    the same prompt with twice the budget; it is never shown back to the
    model as a repair. The repair is asked at most once, at the job's own
    max_tokens, so a task spends at most max_tokens + 2 x max_tokens +
    max_tokens of output (``bound_calls``). Out of time (``budget``) before
    an answer, the task raises _OutOfTime with the calls it made; out of
    time before its repair, it is recorded with the answer it has.
    """
    if validator is not None and validator.unusable is not None:
        # a schema that cannot check outputs fails its tasks before any call is paid for
        return new_record(task, "failed", None, validator.unusable, model=task["model"], attempts=0), 0
    inference = batch.get("inference") or {}
    # a second-pass task (a judge's, a synthesis) may set its own schema, max_tokens and temperature
    own_schema = "output_schema" in task
    request = ModelRequest(
        task_id=task["task_id"],
        prompt=task["prompt"],
        system=batch.get("system"),
        output_schema=task["output_schema"] if own_schema else batch.get("output_schema"),
        max_tokens=task.get("max_tokens", inference.get("max_tokens", 512)),
        temperature=task["temperature"] if "temperature" in task else inference.get("temperature"),
        top_p=inference.get("top_p"),
        expected=task.get("expected"),
        answer_field=None if own_schema else batch.get("answer_field"),
        shared_prefix=span[0] if span else 0,
        shared_suffix=span[1] if span else 0,
        documents=converse_documents(task),
        service_tier=_service_tier(batch),
    )
    started = time.monotonic()
    calls = _Calls(gate=gate)
    extra: Record = {}
    try:
        reply = _invoke(provider, request, policy, sleep, calls, budget)
        larger = reask_budget(task["model"], request.max_tokens) if reply.truncated else None
        if larger is not None:
            calls.add_usage(reply)
            extra["reasked_truncated"] = larger
            reply = _invoke(provider, replace(request, max_tokens=larger), policy, sleep, calls, budget)
    except _OutOfTime:
        raise _OutOfTime(calls.attempts) from None
    except ModelError as exc:
        record = _asked(task, "failed", None, f"{exc.code}: {exc.message}", calls, started)
        if isinstance(exc, BudgetSpent):
            record["stopped"] = "budget"  # not called: the job's budget would have been passed
        return record, calls.attempts
    if reply.truncated:
        calls.add_usage(reply)
        record = _asked(
            task,
            "invalid",
            None,
            f"truncated: the answer was cut off at max_tokens {_cut_off(extra, request.max_tokens)}; "
            "raise inference.max_tokens or ask for a shorter answer",
            calls,
            started,
            synthetic=reply.synthetic,
        )
        record.update(extra)
        record["truncated"] = True
        return record, calls.attempts
    try:
        error = _problem(validator, reply.output)
    except SchemaUnusable as exc:
        return _unusable(task, reply, calls, started, exc, extra), calls.attempts
    if error is not None:
        # the repair keeps the shared beginning (it appends to the prompt), not a shared end
        repair = replace(
            request,
            prompt=_repair_prompt(request.prompt, reply.output, error),
            shared_suffix=0,
            max_tokens=request.max_tokens,
        )
        try:
            repaired = _invoke(provider, repair, policy, sleep, calls, budget)
        except _OutOfTime:
            extra["repair_error"] = "not asked: the batch ran short of Lambda time"
        except (ModelError, _Unfinished) as exc:
            extra["repair_error"] = str(exc)
        else:
            calls.add_usage(reply)
            try:
                second = None if repaired.truncated else _problem(validator, repaired.output)
            except SchemaUnusable as exc:
                return _unusable(task, repaired, calls, started, exc, extra), calls.attempts
            if repaired.truncated:
                second = f"truncated: the repaired answer was cut off at max_tokens ({request.max_tokens})"
            extra["repaired"] = second is None
            reply, error = repaired, second
    calls.add_usage(reply)
    record = _asked(
        task,
        "ok" if error is None else "invalid",
        reply.output,
        error,
        calls,
        started,
        synthetic=reply.synthetic,
    )
    record.update(extra)
    if validator is not None:
        record["checked"] = validator.digest
    return record, calls.attempts


def _service_tier(batch: dict[str, Any]) -> str | None:
    tier = batch.get("tier")
    return tier if tier in ("flex", "priority") else None


def _unusable(
    task: dict[str, Any], reply: ModelReply, calls: _Calls, started: float, exc: SchemaUnusable, extra: Record
) -> Record:
    """The record of a task whose output the schema could not check: failed, with what its calls cost."""
    calls.add_usage(reply)
    record = _asked(task, "failed", None, str(exc), calls, started, synthetic=reply.synthetic)
    record.update(extra)
    return record


@dataclass
class _Calls:
    attempts: int = 0
    throttled: int = 0  # attempts the model refused with a throttling error
    waited: float = 0.0  # seconds the task's calls waited for the model's quota (not attempts)
    gate: Gate | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read: int = 0
    cache_write: int = 0

    def add_usage(self, reply: ModelReply) -> None:
        self.input_tokens += reply.input_tokens
        self.output_tokens += reply.output_tokens
        self.cache_read += reply.cache_read_tokens
        self.cache_write += reply.cache_write_tokens

    def usage(self) -> Usage:
        """A record's usage: tokens of every billed call of the task; cache tokens only when there were any."""
        spent: Usage = {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens}
        if self.cache_read or self.cache_write:
            spent["cache_read_input_tokens"] = self.cache_read
            spent["cache_write_input_tokens"] = self.cache_write
        return spent


def _spent(record: Record, calls: _Calls) -> None:
    """What the task's calls cost: tokens, and how many were throttled (progress shows them while a run goes)."""
    record["usage"] = calls.usage()
    if calls.throttled:
        record["throttled"] = calls.throttled
    if calls.waited >= 0.0005:
        record["quota_wait_ms"] = round(calls.waited * 1000, 1)


def _invoke(
    provider: Provider,
    request: ModelRequest,
    policy: RetryPolicy,
    sleep: Callable[[float], None],
    calls: _Calls,
    budget: Budget = Budget(),
) -> ModelReply:
    """One model call with the retry table applied; raises _Unfinished (throttled past the budget), _OutOfTime (no
    attempt may start, or no backoff end, before the deadline) or ModelError.

    With a gate, each attempt first waits for the model's quota (the wait is
    not an attempt) and a refusal is retried when the gate admits it again,
    not after a backoff of its own: the gate's bucket is the backoff.
    """
    jitter = _JITTER
    timeouts = 0
    tries = 0
    gate = calls.gate
    while True:
        if not budget.can_start():
            raise _OutOfTime(calls.attempts)
        try:  # BudgetSpent: the call is not made
            entry = gate.enter(request, budget.can_start) if gate is not None else None
        except NoTimeLeft:  # the deadline came while the call waited for the quota
            raise _OutOfTime(calls.attempts) from None
        if entry is not None and entry.ticket is not None:
            calls.waited += entry.ticket.waited
        tries += 1
        calls.attempts += 1
        try:
            reply = provider.invoke(request, calls.attempts)
        except ModelError as exc:
            if gate is not None and entry is not None:
                gate.failed(entry, exc)
            if exc.kind == "timeout":
                timeouts += 1
            elif exc.kind == "throttled":
                calls.throttled += 1
            retry = (exc.kind in ("throttled", "transient") and tries < policy.max_attempts) or (
                exc.kind == "timeout" and timeouts <= policy.timeout_retries
            )
            if retry:
                # the gate's bucket is the backoff, unless its pacer judged the refusals random (fanout_core.pacing)
                paced = gate is not None and gate.pacer is not None and gate.pacer.holds_refusals and exc.kind == "throttled"
                if not paced:
                    pause = policy.delay(tries, jitter)
                    if not budget.can_sleep(pause):
                        # the retry would start past the deadline: hand the task to the batch's retry instead
                        raise _OutOfTime(calls.attempts) from exc
                    sleep(pause)
                continue
            if exc.kind == "throttled":
                raise _Unfinished(calls.attempts) from exc
            raise
        except BaseException as exc:
            # not the model's answer (a reply stream cut, a bug): the call's quota and budget hold go back
            if gate is not None and entry is not None:
                gate.failed(entry, ModelError(type(exc).__name__, str(exc), "permanent"))
            raise
        if gate is not None and entry is not None:
            gate.done(entry, reply)
        return reply


def _problem(check: SchemaCheck | None, output: Any) -> str | None:
    """The first way an output misses the schema, with its path; None when it fits (or there is no schema)."""
    return None if check is None else check(output)


def _repair_prompt(prompt: str, output: Any, error: str) -> str:
    shown = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    return (
        f"{prompt}\n\nYour previous answer did not match the required schema: {error}\n"
        f"Previous answer: {shown[:2000]}\nAnswer again, following the schema exactly."
    )


def _asked(
    task: dict[str, Any],
    status: Status,
    output: Any,
    error: str | None,
    calls: _Calls,
    started: float,
    *,
    synthetic: bool = False,
) -> Record:
    """The record of a task that was asked (contracts.new_record), with its calls' attempts, time and tokens."""
    record = new_record(
        task,
        status,
        output,
        error,
        model=task["model"],  # the spec asked for: what weights and prices are keyed by
        attempts=calls.attempts,
        latency_ms=round((time.monotonic() - started) * 1000, 1),
        synthetic=synthetic,
    )
    _spent(record, calls)
    return record
