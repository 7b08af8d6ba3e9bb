"""Turn task records into the job's answer: validate, align to items, vote or merge, count, evaluate.

Every input item appears in the result, in input order, whatever happened
to its tasks: a task with no record is ``failed`` with the reason of its
batch (or ``no result``), an output that misses the schema is ``invalid``
and excluded from votes, and a task recorded twice counts once.
"""

from __future__ import annotations

import functools
import statistics
import string
import unicodedata
from collections.abc import Iterable
from typing import Any

from rapidfuzz import fuzz

from fanout_core.job import Job
from fanout_core.planning import slots
from fanout_core.validation import SchemaCheck, canonical

_STATUS_RANK = {"ok": 3, "invalid": 2, "failed": 1}
_SEVERITY_RANK = {"info": 0, "low": 1, "medium": 2, "high": 3, "critical": 4}
_STRIP = string.whitespace + string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u3002\uff0c"
TIE_BREAK_RULE = "earliest vote: among tied answers, the one given by the lowest-numbered vote wins"


def aggregate(
    job: Job,
    items: list[dict[str, Any]],
    records: Iterable[dict[str, Any]],
    *,
    batch_errors: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The result.json document for a job (synthesis and cost are added by the caller)."""
    item_slots = slots(job)
    wanted = {item["id"] for item in items}
    known_slots = set(item_slots)
    by_task: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        key = (record.get("item_id", ""), record.get("slot", ""))
        if key[0] not in wanted or key[1] not in known_slots:
            continue
        current = by_task.get(key)
        # a task recorded twice (a retried batch) counts once, by its best outcome
        if current is None or _STATUS_RANK.get(record.get("status", ""), 0) > _STATUS_RANK.get(current["status"], 0):
            by_task[key] = record

    check = SchemaCheck(job.output_schema) if job.output_schema else None
    counts = dict.fromkeys(("ok", "invalid", "failed"), 0)
    counts.update(items=len(items), tasks=len(items) * len(item_slots))
    by_model: dict[str, list[int]] = {}
    synthetic = False
    out_items = []
    for item in items:
        outcomes = []
        for slot in item_slots:
            found = by_task.get((item["id"], slot))
            if found is None:
                reason = (batch_errors or {}).get(f"{item['id']}#{slot}", "no result")
                record = {"item_id": item["id"], "slot": slot, "status": "failed", "output": None, "error": reason}
            else:
                record = found
            if found is not None and record["status"] == "ok" and check is not None:
                problem = check(record["output"])
                if problem is not None:
                    record = {**record, "status": "invalid", "error": problem}
            counts[record["status"]] += 1
            spent = record.get("usage")
            model = by_model.get(record.get("model") or "unknown")
            if model is None:
                model = by_model[str(record.get("model") or "unknown")] = [0, 0, 0]
            model[0] += record.get("attempts") or 0
            if spent:
                model[1] += spent.get("input_tokens") or 0
                model[2] += spent.get("output_tokens") or 0
            synthetic = synthetic or bool(record.get("synthetic"))
            outcomes.append(record)
        out = vote_item(job, item, outcomes) if job.pattern == "voting" else section_item(job, item, outcomes)
        out_items.append(out)

    ok_tasks = counts["ok"]
    status = "complete" if ok_tasks == counts["tasks"] else ("failed" if ok_tasks == 0 else "partial")
    result: dict[str, Any] = {
        "job_id": job.job_id,
        "pattern": job.pattern,
        "status": status,
        "strategy": job.strategy,
        "counts": {k: counts.get(k, 0) for k in ("items", "tasks", "ok", "invalid", "failed")},
        "items": out_items,
        "usage": {
            "model_calls": sum(m[0] for m in by_model.values()),
            "input_tokens": sum(m[1] for m in by_model.values()),
            "output_tokens": sum(m[2] for m in by_model.values()),
            "estimated_cost_usd": None,
            "by_model": {
                name: {"model_calls": m[0], "input_tokens": m[1], "output_tokens": m[2]} for name, m in sorted(by_model.items())
            },
        },
    }
    if job.pattern == "voting":
        result["tie_break"] = TIE_BREAK_RULE
    if synthetic:
        result["synthetic"] = True
    evaluation = evaluate(job, items, out_items)
    if evaluation is not None:
        result["evaluation"] = evaluation
    return result


def normalise(value: Any) -> str:
    """The form answers are compared in: Unicode NFKC, case-folded, outer whitespace and punctuation removed."""
    return _normalise_text(value if isinstance(value, str) else canonical(value))


@functools.lru_cache(maxsize=65_536)
def _normalise_text(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold().strip(_STRIP)


def answer_of(job: Job, output: Any) -> Any:
    """The part of an output that is voted on: ``aggregate.field`` of a structured output, or the text."""
    if job.aggregate.field is None:
        return output
    node = output
    for part in job.aggregate.field.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def vote_item(job: Job, item: dict[str, Any], outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Majority vote over an item's valid votes; confidence is the winner's share of them."""
    tallies: dict[str, int] = {}
    forms: dict[str, dict[str, int]] = {}
    # votes are keyed by text; the answer keeps the value a model gave (true stays a boolean, 3 a number)
    values: dict[str, Any] = {}
    first_vote: dict[str, int] = {}
    for position, record in enumerate(outcomes):
        if record["status"] != "ok":
            continue
        value = answer_of(job, record["output"])
        if value is None:
            continue
        key = normalise(value)
        tallies[key] = tallies.get(key, 0) + 1
        form = value if isinstance(value, str) else canonical(value)
        seen = forms.setdefault(key, {})
        seen[form] = seen.get(form, 0) + 1
        values.setdefault(form, value)
        first_vote.setdefault(key, position)
    valid = sum(tallies.values())
    out: dict[str, Any] = {"id": item["id"]}
    if valid == 0:
        out.update(answer=None, confidence=0.0, votes={}, valid_votes=0, tie=False)
    else:
        top = max(tallies.values())
        tied = sorted((k for k, n in tallies.items() if n == top), key=lambda k: first_vote[k])
        winner = tied[0]
        # each answer is shown in its most common original form (the first seen wins a tie)
        display = {k: max(forms[k], key=forms[k].__getitem__) for k in tallies}
        out.update(
            answer=values[display[winner]],
            confidence=round(top / valid, 4),
            votes={display[k]: n for k, n in sorted(tallies.items(), key=lambda kv: -kv[1])},
            valid_votes=valid,
            tie=len(tied) > 1,
        )
        if len(tied) > 1:
            out["tied"] = [values[display[k]] for k in tied]
    _attach_status(out, outcomes)
    if "expected" in item:
        out["expected"] = item["expected"]
        out["correct"] = out["answer"] is not None and normalise(out["answer"]) == normalise(item["expected"])
    return out


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


def answer_at(output: Any, path: str) -> Any:
    node = output
    for part in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


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
    out["status"] = "ok" if ok == len(outcomes) else ("failed" if ok == 0 else "partial")
    errors = [{"slot": r["slot"], "status": r["status"], "error": r.get("error")} for r in outcomes if r["status"] != "ok"]
    if errors:
        out["errors"] = errors


def evaluate(job: Job, items: list[dict[str, Any]], out_items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Aggregated accuracy next to mean single-call accuracy (the voting uplift), over items with ``expected``."""
    if job.pattern != "voting":
        return None
    scored = [(item, out) for item, out in zip(items, out_items, strict=True) if "expected" in item]
    if not scored:
        return None
    correct = sum(1 for _, out in scored if out.get("correct"))
    singles: list[float] = []
    for item, out in scored:
        votes = out.get("votes") or {}
        total = sum(votes.values())
        if total:
            right = sum(n for answer, n in votes.items() if normalise(answer) == normalise(item["expected"]))
            singles.append(right / total)
    accuracy = correct / len(scored)
    single = statistics.fmean(singles) if singles else 0.0
    return {
        "items_with_expected": len(scored),
        "accuracy": round(accuracy, 4),
        "single_call_accuracy": round(single, 4),
        "uplift": round(accuracy - single, 4),
    }
