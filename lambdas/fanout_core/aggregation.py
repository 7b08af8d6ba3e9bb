"""Turn task records into the job's answer: validate, align to items, vote or merge, count, evaluate.

Aggregate makes no model call: the judge's verdicts, escalated votes and
syntheses are records of the second pass (``fanout_core.second_pass``),
read here with the first pass's. Every input item appears in the result, in
input order, whatever happened to its tasks: a task with no record is ``failed`` with the reason of its
batch (or ``no result``), an output that misses the schema is ``invalid``
and excluded from votes, and a task recorded twice counts once.

``aggregate_stream`` does the same in memory bounded by a part of the job:
records are spread over spill files by item position (a part holds a run of
consecutive items), each part is aggregated on its own, and each finished
item goes to the caller as it is built; only running totals and what
evaluation needs of each item (its expected answer, its outcome and votes)
are kept.
"""

from __future__ import annotations

import marshal
import statistics
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

from fanout_core.answers import answer_at, normalise
from fanout_core.calibration import by_model, calibration
from fanout_core.contracts import Record
from fanout_core.job import Job
from fanout_core.memory import collector_paused
from fanout_core.planning import slots
from fanout_core.pricing import rates_of, usage_cost
from fanout_core.second_pass import (
    JOB_LEVEL,
    Material,
    decisive,
    escalation_slot,
    first_pass_confidence,
    is_second_pass,
    judge_request,
    judge_slot,
    needs_escalation,
    synthesis_block,
    synthesis_prompt,
    synthesis_slot,
)
from fanout_core.tiers import usage_key
from fanout_core.validation import SchemaCheck, canonical
from fanout_core.voting import TIE_BREAK_RULE, JudgeVerdict, Vote, candidates, decide, plurality, valid_votes

_STATUS_RANK = {"ok": 4, "skipped": 3, "invalid": 2, "failed": 1}
_SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


# a part of a streamed aggregation: about this many tasks' records in memory at once
PART_TASKS = 50_000


def aggregate(
    job: Job,
    items: list[dict[str, Any]],
    records: Iterable[Record],
    *,
    batch_errors: dict[str, str] | None = None,
    on_votes: OnVotes | None = None,
) -> dict[str, Any]:
    """The result.json document for a job (cost is added by the caller)."""
    job_level: dict[str, Any] = {}
    with collector_paused():
        part = _aggregate_part(job, items, _divert(records, job_level), batch_errors, on_votes)
        totals = _Totals(job, len(items))
        totals.add(items, part)
        material = _job_material(job, part.items)
        totals.finish(job_level, material)
        return totals.result(part.items)


def aggregate_stream(
    job: Job,
    items: list[dict[str, Any]],
    records: Iterable[Record],
    on_item: Callable[[dict[str, Any]], None],
    *,
    batch_errors: dict[str, str] | None = None,
    on_votes: OnVotes | None = None,
    part_tasks: int = PART_TASKS,
    spill_dir: str | None = None,
) -> dict[str, Any]:
    """As ``aggregate``, but each result item goes to ``on_item`` in input order; returns result.json without ``items``.

    A job of more than ``part_tasks`` tasks is aggregated a part at a time:
    its records are first written to spill files in ``spill_dir`` (a
    temporary folder by default), one per run of consecutive items.
    """
    per_item = max(1, len(slots(job)))
    part_items = max(1, part_tasks // per_item)
    totals = _Totals(job, len(items))
    job_level: dict[str, Any] = {}
    material = _job_material(job, [])
    records = _divert(records, job_level)

    def emit(out: dict[str, Any]) -> None:
        if material is not None:
            material.add(out)
        on_item(out)

    with collector_paused():
        if len(items) <= part_items:
            part = _aggregate_part(job, items, records, batch_errors, on_votes)
            totals.add(items, part)
            for out in part.items:
                emit(out)
        else:
            with tempfile.TemporaryDirectory(dir=spill_dir, prefix="fanout-aggregate-") as folder:
                first, paths = _spill(records, items, part_items, Path(folder))
                for number, path in enumerate(paths):
                    chunk = items[number * part_items : (number + 1) * part_items]
                    held = first if path is None else _read_spill(path)
                    first = []
                    part = _aggregate_part(job, chunk, held, batch_errors, on_votes)
                    del held
                    if path is not None:
                        path.unlink(missing_ok=True)
                    totals.add(chunk, part)
                    for out in part.items:
                        emit(out)
                    del part
    totals.finish(job_level, material)
    return totals.result(None)


def _divert(records: Iterable[Record], job_level: dict[str, Any]) -> Iterable[Record]:
    """The records, less the second-pass ones of the whole job (its synthesis), which go to ``job_level`` by slot."""
    rank = _STATUS_RANK.get
    for record in records:
        if record.get("item_id") == JOB_LEVEL and is_second_pass(str(record.get("slot", ""))):
            slot = str(record["slot"])
            current = job_level.get(slot)
            if current is None or rank(record.get("status", ""), 0) > rank(current.get("status", ""), 0):
                job_level[slot] = record
            job_level.setdefault("\x00all", {"records": []})["records"].append(record)
            continue
        yield record


def _job_material(job: Job, out_items: list[dict[str, Any]]) -> Material | None:
    """The input of the job's one synthesis, from its items (None without one, or with one per item)."""
    if job.synthesis is None or job.synthesis.per_item:
        return None
    material = Material(job.synthesis.max_input_chars)
    for out in out_items:
        material.add(out)
    return material


def _spill(
    records: Iterable[Record], items: list[dict[str, Any]], part_items: int, folder: Path
) -> tuple[list[Record], list[Path | None]]:
    """The first part's records, kept as they come, and every other record appended to the spill file of its item's
    part (None stands for the first part's); records of unknown items are left out.

    The first part's records are held in memory while the rest are read: no more than aggregating a part holds
    anyway (each of its tasks' records), so the memory stays bounded by a part. The spill files are this
    aggregation's own scratch, read back once by ``_read_spill``: each record is marshalled (a record holds JSON
    values only), several times faster to write and read than JSON, after its length in 4 bytes.
    """
    position = {item["id"]: n for n, item in enumerate(items)}
    count = (len(items) + part_items - 1) // part_items
    paths: list[Path | None] = [None] + [folder / f"part-{n:05d}.bin" for n in range(1, count)]
    files = [None] + [path.open("wb") for path in paths[1:] if path is not None]
    first: list[Record] = []
    keep = first.append
    dumps = marshal.dumps
    try:
        for record in records:
            where = position.get(record.get("item_id", ""))
            if where is None:
                continue
            part = where // part_items
            if part == 0:
                keep(record)
                continue
            blob = dumps(record)  # type: ignore[arg-type]  # a record holds JSON values only
            files[part].write(len(blob).to_bytes(4, "little") + blob)  # type: ignore[union-attr]
    finally:
        for file in files:
            if file is not None:
                file.close()
    return first, paths


def _read_spill(path: Path) -> Iterable[Record]:
    """The records of one spill file, in the order they were spilled (the file is one part: read whole)."""
    body = memoryview(path.read_bytes())
    loads = marshal.loads
    at, end = 0, len(body)
    while at < end:
        size = int.from_bytes(body[at : at + 4], "little")
        yield loads(body[at + 4 : at + 4 + size])
        at += 4 + size


@dataclass
class _Part:
    """What aggregating some consecutive items gives: their result items and what the totals add up."""

    items: list[dict[str, Any]]
    votes: list[list[Vote]]
    counts: dict[str, int]
    by_model: dict[str, list[int]]
    synthetic: bool
    escalation: list[int] = field(default_factory=lambda: [0, 0, 0, 0])  # items, calls, input and output tokens
    escalation_cost: float | None = 0.0


@dataclass
class _Totals:
    """The running totals of a job's parts, and what evaluation needs of each item that has an expected answer."""

    job: Job
    item_count: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("ok", "invalid", "failed", "skipped"), 0))
    by_model: dict[str, list[int]] = field(default_factory=dict)
    synthetic: bool = False
    escalation: list[int] = field(default_factory=lambda: [0, 0, 0, 0])
    escalation_cost: float | None = 0.0
    synthesis: dict[str, Any] | None = None
    scored_items: list[dict[str, Any]] = field(default_factory=list)
    scored_outs: list[dict[str, Any]] = field(default_factory=list)
    scored_votes: list[list[Vote]] = field(default_factory=list)

    def add(self, items: list[dict[str, Any]], part: _Part) -> None:
        for key, value in part.counts.items():
            self.counts[key] = self.counts.get(key, 0) + value
        for name, spent in part.by_model.items():
            mine = self.by_model.setdefault(name, [0] * len(spent))
            for n, value in enumerate(spent):
                mine[n] += value
        self.synthetic = self.synthetic or part.synthetic
        for n, value in enumerate(part.escalation):
            self.escalation[n] += value
        if self.escalation_cost is not None:
            self.escalation_cost = None if part.escalation_cost is None else self.escalation_cost + part.escalation_cost
        if self.job.pattern == "voting":
            votes = part.votes or [[] for _ in items]
            for item, out, mine_votes in zip(items, part.items, votes, strict=True):
                if "expected" in item:
                    self.scored_items.append({"id": item["id"], "expected": item["expected"]})
                    self.scored_outs.append(out)
                    self.scored_votes.append(mine_votes)

    def finish(self, job_level: dict[str, Any], material: Material | None) -> None:
        """The job's synthesis from its record (its usage counted with the rest), when the job has one."""
        for record in job_level.pop("\x00all", {"records": []})["records"]:
            _count_usage(self.by_model, record)
        if material is None:
            return
        record = job_level.get(synthesis_slot(synthesis_prompt(self.job, material.text())))
        self.synthesis = synthesis_block(self.job, record, material)
        self.synthetic = self.synthetic or bool(record and record.get("synthetic"))

    def result(self, out_items: list[dict[str, Any]] | None) -> dict[str, Any]:
        """result.json; without ``items`` when ``out_items`` is None (they were streamed)."""
        job, counts, by_model = self.job, self.counts, self.by_model
        tasks = self.item_count * len(slots(job))
        # votes not asked because the first ones agreed (stop_when_agree) are neither missing nor failed
        ok_tasks = counts["ok"]
        answered = ok_tasks + counts["skipped"]
        status = "complete" if answered == tasks else ("failed" if ok_tasks == 0 else "partial")
        result: dict[str, Any] = {
            "job_id": job.job_id,
            "pattern": job.pattern,
            "status": status,
            "strategy": job.strategy,
            "counts": {"items": self.item_count, "tasks": tasks, **{k: counts[k] for k in ("ok", "invalid", "failed")}},
        }
        if out_items is not None:
            result["items"] = out_items
        result["usage"] = {
            "model_calls": sum(m[0] for m in by_model.values()),
            "input_tokens": sum(m[1] for m in by_model.values()),
            "output_tokens": sum(m[2] for m in by_model.values()),
            "estimated_cost_usd": None,
            "calls_saved": counts["skipped"],
            "by_model": {name: _model_usage(m) for name, m in sorted(by_model.items())},
        }
        if counts["skipped"]:
            result["counts"]["skipped"] = counts["skipped"]
        if job.aggregate.escalate is not None:
            items_n, calls, tokens_in, tokens_out = self.escalation
            cost = None if self.escalation_cost is None else round(self.escalation_cost, 6)
            result["usage"]["escalation"] = {
                "items": items_n,
                "model_calls": calls,
                "input_tokens": tokens_in,
                "output_tokens": tokens_out,
                "estimated_cost_usd": cost,
            }
        if self.synthesis is not None:
            result["synthesis"] = self.synthesis
        if job.pattern == "voting":
            result["tie_break"] = TIE_BREAK_RULE
        if self.synthetic:
            result["synthetic"] = True
        evaluation = evaluate(job, self.scored_items, self.scored_outs, self.scored_votes)
        if evaluation is not None:
            result["evaluation"] = evaluation
        return result


def _aggregate_part(
    job: Job,
    items: list[dict[str, Any]],
    records: Iterable[Record],
    batch_errors: dict[str, str] | None,
    on_votes: OnVotes | None = None,
) -> _Part:
    item_slots = slots(job)
    wanted = {item["id"] for item in items}
    known_slots = set(item_slots)
    by_task: dict[tuple[str, str], Record] = {}
    # the second pass's records (escalated votes, judge verdicts, per-item syntheses), by item then slot
    second: dict[str, dict[str, Record]] = {}
    # usage counts every record read, a task's duplicates included: those calls were made and paid for
    by_model: dict[str, list[int]] = {}
    synthetic = False
    rank = _STATUS_RANK.get
    for record in records:  # the hot loop of a large job: locals and direct lookups on purpose
        key = (record.get("item_id", ""), record.get("slot", ""))
        if key[0] not in wanted:
            continue
        if key[1] not in known_slots:
            if not is_second_pass(key[1]):
                continue
            mine = second.setdefault(key[0], {})
            held = mine.get(key[1])
            if held is None or rank(record.get("status", ""), 0) > rank(held["status"], 0):
                mine[key[1]] = record
        # a call bought at another tier than on-demand is counted, and priced, apart (fanout_core.tiers)
        name = record.get("model") or "unknown"
        if "tier" in record:
            name = usage_key(name, record["tier"])
        model = by_model.get(name)
        if model is None:
            model = by_model[str(name)] = [0, 0, 0, 0, 0]
        model[0] += record.get("attempts") or 0
        spent = record.get("usage")
        if spent:
            model[1] += spent.get("input_tokens") or 0
            model[2] += spent.get("output_tokens") or 0
            model[3] += spent.get("cache_read_input_tokens") or 0
            model[4] += spent.get("cache_write_input_tokens") or 0
        if not synthetic and record.get("synthetic"):
            synthetic = True
        if key[1] not in known_slots:
            continue
        current = by_task.get(key)
        # a task recorded twice (a retried batch) counts once, by its best outcome
        if current is None or rank(record.get("status", ""), 0) > rank(current["status"], 0):
            by_task[key] = record

    check = SchemaCheck(job.output_schema) if job.output_schema else None
    counts = dict.fromkeys(("ok", "invalid", "failed", "skipped"), 0)
    per_item: list[list[Record]] = []
    digest = check.digest if check is not None else None
    find = by_task.get
    for item in items:
        item_id = item["id"]
        outcomes = []
        for slot in item_slots:
            outcome = find((item_id, slot))
            if outcome is None:
                reason = (batch_errors or {}).get(f"{item_id}#{slot}", "no result")
                outcome = {"item_id": item_id, "slot": slot, "status": "failed", "output": None, "error": reason}
            elif check is not None and outcome["status"] == "ok" and outcome.get("checked") != digest:
                problem = check(outcome["output"])
                if problem is not None:
                    outcome = {**outcome, "status": "invalid", "error": problem}
            counts[outcome["status"]] += 1
            outcomes.append(outcome)
        per_item.append(outcomes)
    del by_task

    part = _Part([], [], counts, by_model, synthetic)
    if job.pattern == "voting":
        for item, outcomes in zip(items, per_item, strict=True):
            first = valid_votes(job, outcomes)
            part.votes.append(first)
            mine = second.get(item["id"], {})
            part.items.append(_voting_item(job, item, outcomes, first, mine, check, part, on_votes, batch_errors or {}))
    else:
        part.items = [section_item(job, i, o) for i, o in zip(items, per_item, strict=True)]
    if job.synthesis is not None and job.synthesis.per_item:
        for out in part.items:
            _attach_synthesis(job, out, second.get(out["id"], {}))
    return part


@dataclass(frozen=True)
class ItemVotes:
    """What the second pass's planning needs of one voting item once its records are read."""

    item: dict[str, Any]
    first: list[Vote]  # the first pass's valid votes
    votes: list[Vote]  # every valid vote the answer is decided from (the escalated ones included)
    out: dict[str, Any]  # the result item
    done: set[str]  # the item's second-pass slots that have a finished record


OnVotes = Callable[[ItemVotes], None]


def _voting_item(
    job: Job,
    item: dict[str, Any],
    outcomes: list[Record],
    first: list[Vote],
    second: dict[str, Record],
    check: SchemaCheck | None,
    part: _Part,
    on_votes: OnVotes | None,
    batch_errors: dict[str, str],
) -> dict[str, Any]:
    """One voting item from its first votes and its second-pass records (escalated votes, the judge's verdict)."""
    escalated = needs_escalation(job, first)
    votes, weigh, extra = first, None, []
    if escalated:
        extra = _escalated_outcomes(job, item["id"], second, check, batch_errors)
        votes = valid_votes(job, outcomes + extra)
        if decisive(job):
            # a named (stronger) model's votes decide: each outweighs all the first votes together,
            # so the first votes only break a tie among them
            heavy = float(len(outcomes) + 1)
            weigh = lambda vote: heavy if vote.position >= len(outcomes) else 1.0  # noqa: E731
    verdict = _verdict(job, item, votes, second, batch_errors) if job.strategy == "judge" else None
    out = vote_item(job, item, outcomes, verdict, votes, weigh)
    if escalated:
        out["escalated"] = True
        out["escalation"] = _escalation_summary(job, first, votes[len(first) :], extra, part)
    if on_votes is not None:
        done = {slot for slot, r in second.items() if r.get("status") in ("ok", "skipped")}
        on_votes(ItemVotes(item, first, votes, out, done))
    return out


def _escalated_outcomes(
    job: Job, item_id: str, second: dict[str, Record], check: SchemaCheck | None, batch_errors: dict[str, str]
) -> list[Record]:
    """The item's escalated votes as outcomes (checked against the schema as first votes are); a missing one failed,
    with its batch's error when the batch failed for good."""
    assert job.aggregate.escalate is not None
    outcomes = []
    for n in range(1, job.aggregate.escalate.votes + 1):
        slot = escalation_slot(n)
        outcome = second.get(slot)
        if outcome is None:
            reason = batch_errors.get(f"{item_id}#{slot}", "no result")
            outcome = {"item_id": item_id, "slot": slot, "status": "failed", "output": None, "error": reason}
        elif check is not None and outcome["status"] == "ok" and outcome.get("checked") != check.digest:
            problem = check(outcome["output"])
            if problem is not None:
                outcome = {**outcome, "status": "invalid", "error": problem}
        outcomes.append(outcome)
    return outcomes


def _escalation_summary(job: Job, first: list[Vote], added: list[Vote], extra: list[Record], part: _Part) -> dict[str, Any]:
    """What result.json says of an escalated item: its first-pass answer, the escalated votes, what they cost."""
    assert job.aggregate.escalate is not None
    # the answer the first votes gave (under judge, their majority: the judge is asked after escalation)
    before = decide(job, first) if job.strategy != "judge" else plurality(first)
    calls = sum(int(r.get("attempts") or 0) for r in extra)
    tokens_in = sum(int((r.get("usage") or {}).get("input_tokens") or 0) for r in extra)
    tokens_out = sum(int((r.get("usage") or {}).get("output_tokens") or 0) for r in extra)
    cost: float | None = 0.0
    prices = {name: price.model_dump() for name, price in (job.prices or {}).items()}
    for record in extra:
        if not record.get("usage"):
            continue
        rates = rates_of(str(record.get("model") or ""), prices)
        if rates is None:
            cost = None
        elif cost is not None:
            cost += usage_cost(record["usage"], rates)[0]
    tally: dict[str, int] = {}
    for vote in added:
        shown = vote.value if isinstance(vote.value, str) else canonical(vote.value)
        tally[shown] = tally.get(shown, 0) + 1
    part.escalation[0] += 1
    part.escalation[1] += calls
    part.escalation[2] += tokens_in
    part.escalation[3] += tokens_out
    if part.escalation_cost is not None:
        part.escalation_cost = None if cost is None else part.escalation_cost + cost
    summary: dict[str, Any] = {
        "below": job.aggregate.escalate.below,
        "first_pass": {"answer": before.get("answer"), "confidence": round(first_pass_confidence(job, first), 4)},
        "model": job.aggregate.escalate.model,
        "decisive": decisive(job),
        "votes": tally,
        "valid_votes": len(added),
        "model_calls": calls,
        "input_tokens": tokens_in,
        "output_tokens": tokens_out,
        "estimated_cost_usd": None if cost is None else round(cost, 6),
    }
    errors = [{"slot": r["slot"], "status": r["status"], "error": r.get("error")} for r in extra if r["status"] != "ok"]
    if errors:
        summary["errors"] = errors
    return summary


def _verdict(
    job: Job, item: dict[str, Any], votes: list[Vote], second: dict[str, Record], batch_errors: dict[str, str]
) -> JudgeVerdict | None:
    """The judge's verdict from its record: the one asked about exactly these candidates."""
    offered = candidates(votes)
    if not offered:
        return None
    if len(offered) == 1:
        return JudgeVerdict(choice=0, reason="every valid vote gave the same answer", model="")
    slot = judge_slot(judge_request(job, item, offered))
    record = second.get(slot)
    if record is None:
        reason = batch_errors.get(f"{item['id']}#{slot}", "no result: the judge's call was not recorded")
        return JudgeVerdict(None, "", "", error=reason)
    spec = str(record.get("model") or "")
    if record.get("status") != "ok":
        return JudgeVerdict(None, "", spec, error=str(record.get("error") or record.get("status")))
    output = record.get("output")
    if not isinstance(output, dict):
        return JudgeVerdict(None, "", spec, error=f"the judge answered {str(output)[:200]}")
    best = output.get("best")
    if not isinstance(best, int) or isinstance(best, bool) or not 1 <= best <= len(offered):
        return JudgeVerdict(None, "", spec, error=f"the judge answered {str(output)[:200]}")
    return JudgeVerdict(best - 1, str(output.get("reason", "")), spec)


def _attach_synthesis(job: Job, out: dict[str, Any], second: dict[str, Record]) -> None:
    assert job.synthesis is not None
    material = Material(job.synthesis.max_input_chars)
    material.add(out)
    out["synthesis"] = synthesis_block(job, second.get(synthesis_slot(synthesis_prompt(job, material.text()))), material)


def _count_usage(by_model: dict[str, list[int]], record: Mapping[str, Any]) -> None:
    name = str(record.get("model") or "unknown")
    if "tier" in record:
        name = usage_key(name, record["tier"])
    model = by_model.setdefault(name, [0, 0, 0, 0, 0])
    model[0] += record.get("attempts") or 0
    spent = record.get("usage") or {}
    model[1] += spent.get("input_tokens") or 0
    model[2] += spent.get("output_tokens") or 0
    model[3] += spent.get("cache_read_input_tokens") or 0
    model[4] += spent.get("cache_write_input_tokens") or 0


def _model_usage(m: list[int]) -> dict[str, int]:
    """One model's usage in result.json; the prompt cache's tokens only when it was used."""
    usage = {"model_calls": m[0], "input_tokens": m[1], "output_tokens": m[2]}
    if m[3] or m[4]:
        usage.update(cache_read_input_tokens=m[3], cache_write_input_tokens=m[4])
    return usage


def vote_item(
    job: Job,
    item: dict[str, Any],
    outcomes: list[Record],
    verdict: JudgeVerdict | None = None,
    votes: list[Vote] | None = None,
    weigh: Callable[[Vote], float] | None = None,
) -> dict[str, Any]:
    """One voting item: the strategy's answer over its valid votes, its status and errors, and evaluation marks."""
    votes = valid_votes(job, outcomes) if votes is None else votes
    out: dict[str, Any] = {"id": item["id"], **decide(job, votes, verdict, weigh)}
    _attach_status(out, outcomes)
    if "expected" in item:
        out["expected"] = item["expected"]
        out["correct"] = _matches(out["answer"], item["expected"])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _matches(answer: Any, expected: Any) -> bool:
    if answer is None:
        return False
    numbers = (int, float)
    if (
        isinstance(answer, numbers)
        and isinstance(expected, numbers)
        and not isinstance(answer, bool)
        and not isinstance(expected, bool)
    ):
        return abs(answer - expected) <= 1e-9 * max(1.0, abs(expected))
    return normalise(answer) == normalise(expected)


def section_item(job: Job, item: dict[str, Any], outcomes: list[Record]) -> dict[str, Any]:
    """Per-section outputs for an item, plus the deduplicated list when ``aggregate.dedupe`` asks for it."""
    out: dict[str, Any] = {"id": item["id"], "sections": {}}
    for record in outcomes:
        out["sections"][record["slot"]] = record["output"] if record["status"] == "ok" else None
    if job.aggregate.dedupe is not None:
        field = job.aggregate.dedupe.field
        sources = [(r["slot"], answer_at(r["output"], field)) for r in outcomes if r["status"] == "ok"]
        out["merged"] = {
            field: merge_findings(
                sources, job.aggregate.dedupe.key, job.aggregate.dedupe.threshold, job.aggregate.dedupe.block_by
            )
        }
    _attach_status(out, outcomes)
    return out


def merge_findings(sources: list[tuple[str, Any]], key: str, threshold: int, block_by: str | None = None) -> list[dict[str, Any]]:
    """Merge near-duplicate entries reported by several sources (token-set ratio >= threshold within a block).

    Each merged entry keeps the first wording, with ``support`` (how many
    sources reported it), ``sources`` (which) and the highest ``severity``.
    """
    clusters: list[dict[str, Any]] = []
    for source, entries in sources:
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
                continue
            block = entry.get(block_by) if block_by else None
            text = normalise(entry[key])
            match = next(
                (c for c in clusters if c["block"] == block and fuzz.token_set_ratio(text, c["text"]) >= threshold),
                None,
            )
            if match is None:
                clusters.append({"block": block, "text": text, "entry": dict(entry), "sources": [source]})
                continue
            if source not in match["sources"]:
                match["sources"].append(source)
            severity = entry.get("severity")
            if _SEVERITY_RANK.get(str(severity), -1) > _SEVERITY_RANK.get(str(match["entry"].get("severity")), -1):
                match["entry"]["severity"] = severity
    merged = [{**c["entry"], "support": len(c["sources"]), "sources": c["sources"]} for c in clusters]
    merged.sort(key=lambda e: (-e["support"], -_SEVERITY_RANK.get(str(e.get("severity")), -1)))
    return merged


def _attach_status(out: dict[str, Any], outcomes: list[Record]) -> None:
    ok = sum(1 for r in outcomes if r["status"] == "ok")
    done = ok + sum(1 for r in outcomes if r["status"] == "skipped")
    out["status"] = "ok" if done == len(outcomes) else ("failed" if ok == 0 else "partial")
    errors = [
        {"slot": r["slot"], "status": r["status"], "error": r.get("error")}
        for r in outcomes
        if r["status"] not in ("ok", "skipped")
    ]
    if errors:
        out["errors"] = errors


def evaluate(
    job: Job, items: list[dict[str, Any]], out_items: list[dict[str, Any]], votes: list[list[Vote]]
) -> dict[str, Any] | None:
    """Over items with ``expected``: aggregated accuracy next to mean single-call accuracy (the voting uplift), and
    how well confidence is calibrated (see ``fanout_core.calibration``)."""
    if job.pattern != "voting":
        return None
    scored = [(item, out, mine) for item, out, mine in zip(items, out_items, votes, strict=True) if "expected" in item]
    if not scored:
        return None
    correct = sum(1 for _, out, _ in scored if out.get("correct"))
    singles: list[float] = []
    for item, _, mine in scored:
        if mine:
            expected = item["expected"]
            singles.append(sum(1 for v in mine if _vote_right(v, expected)) / len(mine))
    accuracy = correct / len(scored)
    single = statistics.fmean(singles) if singles else 0.0
    out: dict[str, Any] = {
        "items_with_expected": len(scored),
        "accuracy": round(accuracy, 4),
        "single_call_accuracy": round(single, 4),
        "uplift": round(accuracy - single, 4),
    }
    if job.aggregate.escalate is not None:
        # what escalation bought: the accuracy of the answers the first votes gave, next to the final one
        before = 0
        escalated = 0
        for item, o, _ in scored:
            if o.get("escalated"):
                escalated += 1
                before += _matches(o["escalation"]["first_pass"]["answer"], item["expected"])
            else:
                before += bool(o.get("correct"))
        out["escalated_items"] = escalated
        out["first_pass_accuracy"] = round(before / len(scored), 4)
    # mean, median and threshold have no confidence to calibrate
    if all(o.get("confidence") is not None for _, o, _ in scored):
        out.update(calibration([(float(o["confidence"]), bool(o.get("correct"))) for _, o, _ in scored]))
    models = by_model([(item["expected"], mine) for item, _, mine in scored], _vote_right)
    if models is not None:
        out.update(models)
    return out


def _vote_right(vote: Vote, expected: Any) -> bool:
    if _is_number(expected):
        return _matches(vote.value, expected)
    return vote.key == normalise(expected)
