"""Turn task records into the job's answer: validate, align to items, vote or merge, count, evaluate.

Every input item appears in the result, in input order, whatever happened
to its tasks: a task with no record is ``failed`` with the reason of its
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
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rapidfuzz import fuzz

from fanout_core.answers import answer_at, normalise
from fanout_core.calibration import by_model, calibration
from fanout_core.job import Job
from fanout_core.memory import collector_paused
from fanout_core.planning import slots
from fanout_core.tiers import usage_key
from fanout_core.validation import SchemaCheck
from fanout_core.voting import TIE_BREAK_RULE, JudgeVerdict, Vote, candidates, decide, valid_votes

_STATUS_RANK = {"ok": 4, "skipped": 3, "invalid": 2, "failed": 1}
_SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}


# a part of a streamed aggregation: about this many tasks' records in memory at once
PART_TASKS = 50_000


def aggregate(
    job: Job,
    items: list[dict[str, Any]],
    records: Iterable[dict[str, Any]],
    *,
    batch_errors: dict[str, str] | None = None,
    judge: Judge | None = None,
    judge_threads: int = 8,
) -> dict[str, Any]:
    """The result.json document for a job (synthesis and cost are added by the caller).

    ``judge`` makes the extra call per item of the ``judge`` strategy; the
    calls run ``judge_threads`` at a time.
    """
    with collector_paused():
        part = _aggregate_part(job, items, records, batch_errors, judge, judge_threads)
        totals = _Totals(job, len(items))
        totals.add(items, part)
        return totals.result(part.items)


def aggregate_stream(
    job: Job,
    items: list[dict[str, Any]],
    records: Iterable[dict[str, Any]],
    on_item: Callable[[dict[str, Any]], None],
    *,
    batch_errors: dict[str, str] | None = None,
    judge: Judge | None = None,
    judge_threads: int = 8,
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
    with collector_paused():
        if len(items) <= part_items:
            part = _aggregate_part(job, items, records, batch_errors, judge, judge_threads)
            totals.add(items, part)
            for out in part.items:
                on_item(out)
            return totals.result(None)
        with tempfile.TemporaryDirectory(dir=spill_dir, prefix="fanout-aggregate-") as folder:
            paths = _spill(records, items, part_items, Path(folder))
            for number, path in enumerate(paths):
                chunk = items[number * part_items : (number + 1) * part_items]
                part = _aggregate_part(job, chunk, _read_spill(path), batch_errors, judge, judge_threads)
                path.unlink(missing_ok=True)
                totals.add(chunk, part)
                for out in part.items:
                    on_item(out)
                del part
    return totals.result(None)


def _spill(records: Iterable[dict[str, Any]], items: list[dict[str, Any]], part_items: int, folder: Path) -> list[Path]:
    """Each record appended to the spill file of its item's part; records of unknown items are left out.

    The spill files are this aggregation's own scratch, read back once by ``_read_spill``: each record is
    marshalled (a record holds JSON values only), several times faster to write and read than JSON, after
    its length in 4 bytes.
    """
    position = {item["id"]: n for n, item in enumerate(items)}
    count = (len(items) + part_items - 1) // part_items
    paths = [folder / f"part-{n:05d}.bin" for n in range(count)]
    files = [path.open("wb") for path in paths]
    dumps = marshal.dumps
    try:
        for record in records:
            where = position.get(record.get("item_id", ""))
            if where is not None:
                blob = dumps(record)
                files[where // part_items].write(len(blob).to_bytes(4, "little") + blob)
    finally:
        for file in files:
            file.close()
    return paths


def _read_spill(path: Path) -> Iterable[dict[str, Any]]:
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


@dataclass
class _Totals:
    """The running totals of a job's parts, and what evaluation needs of each item that has an expected answer."""

    job: Job
    item_count: int
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(("ok", "invalid", "failed", "skipped"), 0))
    by_model: dict[str, list[int]] = field(default_factory=dict)
    synthetic: bool = False
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
        if self.job.pattern == "voting":
            votes = part.votes or [[] for _ in items]
            for item, out, mine_votes in zip(items, part.items, votes, strict=True):
                if "expected" in item:
                    self.scored_items.append({"id": item["id"], "expected": item["expected"]})
                    self.scored_outs.append(out)
                    self.scored_votes.append(mine_votes)

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
    records: Iterable[dict[str, Any]],
    batch_errors: dict[str, str] | None,
    judge: Judge | None,
    judge_threads: int,
) -> _Part:
    item_slots = slots(job)
    wanted = {item["id"] for item in items}
    known_slots = set(item_slots)
    by_task: dict[tuple[str, str], dict[str, Any]] = {}
    # usage counts every record read, a task's duplicates included: those calls were made and paid for
    by_model: dict[str, list[int]] = {}
    synthetic = False
    rank = _STATUS_RANK.get
    for record in records:  # the hot loop of a large job: locals and direct lookups on purpose
        key = (record.get("item_id", ""), record.get("slot", ""))
        if key[0] not in wanted or key[1] not in known_slots:
            continue
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
        current = by_task.get(key)
        # a task recorded twice (a retried batch) counts once, by its best outcome
        if current is None or rank(record.get("status", ""), 0) > rank(current["status"], 0):
            by_task[key] = record

    check = SchemaCheck(job.output_schema) if job.output_schema else None
    counts = dict.fromkeys(("ok", "invalid", "failed", "skipped"), 0)
    per_item: list[list[dict[str, Any]]] = []
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

    verdicts: list[JudgeVerdict | None] = [None] * len(items)
    votes = [valid_votes(job, o) for o in per_item] if job.pattern == "voting" else []
    if job.pattern == "voting" and job.strategy == "judge" and judge is not None:
        verdicts = _judge_all(items, votes, judge, judge_threads)
        for verdict in verdicts:
            if verdict is not None and verdict.usage[0]:
                spent_by_judge = by_model.setdefault(verdict.model, [0, 0, 0, 0, 0])
                for n in range(3):
                    spent_by_judge[n] += verdict.usage[n]
    if job.pattern == "voting":
        out_items = [vote_item(job, i, o, v, w) for i, o, v, w in zip(items, per_item, verdicts, votes, strict=True)]
    else:
        out_items = [section_item(job, i, o) for i, o in zip(items, per_item, strict=True)]
    return _Part(out_items, votes, counts, by_model, synthetic)


Judge = Callable[[dict[str, Any], list[tuple[Any, int]]], JudgeVerdict]


def _model_usage(m: list[int]) -> dict[str, int]:
    """One model's usage in result.json; the prompt cache's tokens only when it was used."""
    usage = {"model_calls": m[0], "input_tokens": m[1], "output_tokens": m[2]}
    if m[3] or m[4]:
        usage.update(cache_read_input_tokens=m[3], cache_write_input_tokens=m[4])
    return usage


def vote_item(
    job: Job,
    item: dict[str, Any],
    outcomes: list[dict[str, Any]],
    verdict: JudgeVerdict | None = None,
    votes: list[Vote] | None = None,
) -> dict[str, Any]:
    """One voting item: the strategy's answer over its valid votes, its status and errors, and evaluation marks."""
    votes = valid_votes(job, outcomes) if votes is None else votes
    out: dict[str, Any] = {"id": item["id"], **decide(job, votes, verdict)}
    _attach_status(out, outcomes)
    if "expected" in item:
        out["expected"] = item["expected"]
        out["correct"] = _matches(out["answer"], item["expected"])
    return out


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _judge_all(items: list[dict[str, Any]], votes: list[list[Vote]], judge: Judge, threads: int) -> list[JudgeVerdict | None]:
    """The judge's verdict for every item with at least two distinct candidates (one needs no judging)."""

    def one(pair: tuple[dict[str, Any], list[Vote]]) -> JudgeVerdict | None:
        item, item_votes = pair
        offered = candidates(item_votes)
        if len(offered) == 1:
            return JudgeVerdict(choice=0, reason="every valid vote gave the same answer", model="")
        return judge(item, offered) if offered else None

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(one, zip(items, votes, strict=True)))


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


def section_item(job: Job, item: dict[str, Any], outcomes: list[dict[str, Any]]) -> dict[str, Any]:
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


def _attach_status(out: dict[str, Any], outcomes: list[dict[str, Any]]) -> None:
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
