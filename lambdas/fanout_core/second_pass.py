"""The second pass: the calls that depend on the first votes' answers, run as batches like the first ones.

After the first Map, the state machine asks which second-pass tasks a job
needs, stage by stage, and runs each stage's batches through the same
RunBatch path (records, retries, resume, deadline); Aggregate then only
reads records. The stages, in order:

- ``escalate`` (``aggregate.escalate``): an item whose first-pass
  confidence is below ``below`` gets ``votes`` more votes, from ``model``
  when given, else from the job's own model(s).
- ``judge`` (strategy ``judge``): one call per item with two or more
  distinct candidates (after escalation) picks the best one.
- ``synthesis``: one call over the final results (or one per item).

A second-pass task's slot holds a ':' (section names cannot), so it never
meets a first-pass slot. Judge and synthesis slots end with a digest of the
prompt they were asked, so a record answers the question it was asked and
no other: a re-run whose candidates changed asks the judge again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from fanout_core.contracts import Record
from fanout_core.job import DEFAULT_JUDGE_PROMPT, Job
from fanout_core.pricing import rates_of, usage_cost
from fanout_core.templating import render
from fanout_core.voting import Vote, candidates, judge_prompt, judge_schema, plurality

STAGES = ("escalate", "judge", "synthesis")
# a stage's batches are numbered from here (batch n of stage s is s * STAGE_BATCH_BASE + n), apart from the first
# pass's 0, 1, 2 ... so their batch files, records and failures never meet
STAGE_BATCH_BASE = 1_000_000
ESCALATE, JUDGE, SYNTHESIS = "escalate:", "judge:", "synthesis:"
JOB_LEVEL = ""  # the item_id of the one synthesis over the whole job


def has_stage(job: Job, stage: str) -> bool:
    """Whether the job's second pass has ``stage`` at all (whether it has tasks depends on the first answers)."""
    if stage == "escalate":
        return job.pattern == "voting" and job.aggregate.escalate is not None
    if stage == "judge":
        return job.pattern == "voting" and job.strategy == "judge"
    return job.synthesis is not None


def has_second_pass(job: Job) -> bool:
    return any(has_stage(job, stage) for stage in STAGES)


def is_second_pass(slot: str) -> bool:
    return ":" in slot


def stage_number(stage: str) -> int:
    return STAGES.index(stage) + 1


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def escalation_slot(n: int) -> str:
    """The slot of an item's n-th escalated vote (1-based)."""
    return f"{ESCALATE}{n}"


def judge_slot(prompt: str) -> str:
    return JUDGE + _digest(prompt)


def synthesis_slot(prompt: str) -> str:
    return SYNTHESIS + _digest(prompt)


def escalation_model(job: Job, n: int, default_model: str) -> str:
    """The model of the n-th escalated vote (1-based): the escalation's model, or the job's rotation continued."""
    assert job.aggregate.escalate is not None
    return job.aggregate.escalate.model or job.vote_model(job.vote_count + n - 1, default_model)


def decisive(job: Job) -> bool:
    """Escalated votes decide when they come from a model the escalation names (a stronger one)."""
    return job.aggregate.escalate is not None and job.aggregate.escalate.model is not None


def first_pass_confidence(job: Job, votes: list[Vote]) -> float:
    """The vote share of the first votes' leader (weighted by the job's weights under strategy weighted)."""
    weights = job.aggregate.weights if job.strategy == "weighted" else None
    return float(plurality(votes, weights)["confidence"] or 0.0)


def needs_escalation(job: Job, first_votes: list[Vote]) -> bool:
    escalate = job.aggregate.escalate
    return escalate is not None and first_pass_confidence(job, first_votes) < escalate.below


def escalation_tasks(job: Job, item: dict[str, Any], default_model: str, done: set[str]) -> list[dict[str, Any]]:
    """The escalated votes of an item not yet recorded as finished: the job's prompt, the escalation's model."""
    assert job.aggregate.escalate is not None
    prompt = render(job.prompt or "", item)
    tasks = []
    for n in range(1, job.aggregate.escalate.votes + 1):
        slot = escalation_slot(n)
        if slot in done:
            continue
        tasks.append(
            {
                "task_id": f"{item['id']}#{slot}",
                "item_id": item["id"],
                "slot": slot,
                "kind": "escalation",
                "model": escalation_model(job, n, default_model),
                "prompt": prompt,
                "expected": item.get("expected"),
                **({"document": item["document"]} if isinstance(item.get("document"), dict) else {}),
            }
        )
    return tasks


def judge_request(job: Job, item: dict[str, Any], offered: list[tuple[Any, int]]) -> str:
    instruction = job.aggregate.judge.prompt if job.aggregate.judge else DEFAULT_JUDGE_PROMPT
    return judge_prompt(instruction, render(job.prompt or "", item), offered)


def judge_model(job: Job, default_model: str) -> str:
    return (job.aggregate.judge.model if job.aggregate.judge else None) or job.model or default_model


def judge_task(job: Job, item: dict[str, Any], votes: list[Vote], default_model: str) -> dict[str, Any] | None:
    """The judge's task for an item with two or more distinct candidates; None when there is nothing to judge."""
    offered = candidates(votes)
    if len(offered) < 2:
        return None
    prompt = judge_request(job, item, offered)
    slot = judge_slot(prompt)
    return {
        "task_id": f"{item['id']}#{slot}",
        "item_id": item["id"],
        "slot": slot,
        "kind": "judge",
        "model": judge_model(job, default_model),
        "prompt": prompt,
        # the judge picks a number among the candidates; it answers deterministically
        "output_schema": judge_schema(len(offered)),
        "max_tokens": max(256, job.inference.max_tokens),
        "temperature": 0.0,
    }


def item_digest(item: dict[str, Any]) -> dict[str, Any]:
    """What a synthesis is shown of an item."""
    if "merged" in item:
        return {"id": item["id"], "merged": item["merged"]}
    return {k: v for k, v in item.items() if k in ("id", "sections", "answer", "confidence")}


@dataclass
class Material:
    """A synthesis input built from items as they stream past: the JSON list of their digests, cut to ``budget``.

    Only the first ``budget`` characters are kept, and the total length, so the whole job's material costs bounded
    memory; ``text`` is what ``json.dumps(digests, ensure_ascii=False)[:budget]`` gives.
    """

    budget: int
    parts: list[str] | None = None
    kept: int = 0
    length: int = 0
    count: int = 0

    def add(self, item: dict[str, Any]) -> None:
        piece = ("[" if self.count == 0 else ", ") + json.dumps(item_digest(item), ensure_ascii=False)
        self.count += 1
        self.length += len(piece)
        if self.parts is None:
            self.parts = []
        if self.kept < self.budget:
            self.parts.append(piece[: self.budget - self.kept])
            self.kept += len(self.parts[-1])

    def text(self) -> str:
        if self.count == 0:
            return "[]"
        body = "".join(self.parts or [])
        return (body + "]")[: self.budget] if self.kept < self.budget else body

    def total(self) -> int:
        return self.length + 1 if self.count else 2


def synthesis_prompt(job: Job, material: str) -> str:
    assert job.synthesis is not None
    return f"{job.synthesis.prompt}\n\n<results>\n{material}\n</results>"


def synthesis_task(job: Job, owner: str, material: Material, default_model: str) -> dict[str, Any]:
    """The synthesis call over ``material``: the whole job's (owner JOB_LEVEL) or one item's."""
    prompt = synthesis_prompt(job, material.text())
    slot = synthesis_slot(prompt)
    return {
        "task_id": f"{owner}#{slot}",
        "item_id": owner,
        "slot": slot,
        "kind": "synthesis",
        "model": job.model or default_model,
        "prompt": prompt,
        "output_schema": None,
        "max_tokens": max(job.inference.max_tokens, 1024),
    }


def synthesis_block(job: Job, record: Record | None, material: Material) -> dict[str, Any]:
    """A synthesis as result.json shows it, from its record (or why there is none)."""
    assert job.synthesis is not None
    spec = str((record or {}).get("model") or job.model or "")
    if record is None:
        return {"text": None, "model": spec, "error": "no result: the synthesis was not recorded"}
    if record.get("status") != "ok":
        return {"text": None, "model": spec, "error": record.get("error") or record.get("status")}
    output = record.get("output")
    text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
    if record.get("synthetic"):
        text = "[synthetic] " + synthetic_summary(material)
    budget = job.synthesis.max_input_chars
    total = material.total()
    return {"text": text, "model": spec, "input_chars": min(total, budget), "input_truncated": total > budget}


def synthetic_summary(material: Material) -> str:
    """What the simulator's synthesis says: the best-supported merged entries of the items it was shown."""
    try:
        shown = json.loads(material.text())
    except json.JSONDecodeError:
        shown = [json.loads(p.lstrip("[, ")) for p in (material.parts or []) if _whole(p)]
    lines = []
    for item in shown:
        for field, entries in (item.get("merged") or {}).items():
            top = ", ".join(str(next(iter(e.values()))) for e in entries[:3] if isinstance(e, dict) and e)
            lines.append(f"{item['id']}: top {field}: {top}.")
        if "merged" not in item:
            lines.append(f"{item['id']}: {len(item.get('sections', {}))} sections answered.")
    return " ".join(lines) or "nothing to combine."


def _whole(piece: str) -> bool:
    try:
        json.loads(piece.lstrip("[, "))
    except json.JSONDecodeError:
        return False
    return True


def done_slots(records: Iterable[Record]) -> set[str]:
    return {r["slot"] for r in records if r.get("status") in ("ok", "skipped")}


def noting_earlier_escalation(records: Iterable[Record], run: str | None, earlier: dict[str, list[int]]) -> Iterator[Record]:
    """The records, noting in ``earlier`` (by model: calls, input and output tokens) the escalated votes another
    run made: result.json's usage.escalation is what this run spent, as its usage is."""
    for record in records:
        if run is not None and record.get("run") != run and str(record.get("slot", "")).startswith(ESCALATE):
            spent = record.get("usage") or {}
            total = earlier.setdefault(str(record.get("model") or "unknown"), [0, 0, 0])
            total[0] += record.get("attempts") or 0
            total[1] += spent.get("input_tokens") or 0
            total[2] += spent.get("output_tokens") or 0
        yield record


def escalation_this_run(usage: dict[str, Any], earlier: dict[str, list[int]], prices: dict[str, Any]) -> None:
    """usage.escalation less what the escalated votes of earlier runs had cost (their items stay counted)."""
    spent = usage.get("escalation")
    if not spent or not earlier:
        return
    for model, (calls, tokens_in, tokens_out) in earlier.items():
        spent["model_calls"] -= calls
        spent["input_tokens"] -= tokens_in
        spent["output_tokens"] -= tokens_out
        rates = rates_of(model, prices)
        if rates is None or spent.get("estimated_cost_usd") is None:
            spent["estimated_cost_usd"] = None
            continue
        cost = usage_cost({"input_tokens": tokens_in, "output_tokens": tokens_out}, rates)[0]
        spent["estimated_cost_usd"] = round(max(0.0, spent["estimated_cost_usd"] - cost), 6)
