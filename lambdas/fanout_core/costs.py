"""What a job will cost before it runs: an estimate, and an upper bound no run can pass.

The **estimate** is what a typical run costs: input at about four
characters per token, output at half of ``max_tokens``, one call per task,
and where a prompt cache applies the item's first task writes the shared
prefix and its siblings read it.

The **upper bound** is the most any run of the job can be billed for its
task, judge and synthesis calls: every task makes its first call, the
re-ask of a cut-off answer (twice the budget) and a repair, each one at its
full ``max_tokens`` of output; input is counted at one token per UTF-8
byte (a token is never shorter than a byte) plus an allowance per call for
the tool definition and message framing, at the higher of the input and
cache-write prices. Throttled or timed-out attempts that Bedrock rejects
are not billed, so they do not count.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from fanout_core.catalog import CHARS_PER_TOKEN, cache_plan
from fanout_core.pricing import rates_of
from fanout_core.runner import reask_budget
from fanout_core.sharing import spans_by_task
from fanout_core.tiers import usage_key

# per call, for the forced tool's definition and the message framing around the prompt (the schema is counted apart)
CALL_ALLOWANCE_TOKENS = 1_000
# a repair prompt adds at most 2,000 characters of the previous answer (4 bytes each at most) and the error
REPAIR_EXTRA_BYTES = 2_000 * 4 + 2_000
ESTIMATE_BASIS = (
    "one call per task; input at about 4 characters per token; output at half of max_tokens; "
    "cached prefixes written by an item's first task and read by its siblings"
)
BOUND_BASIS = (
    "every task's first call, a re-ask at twice max_tokens and a repair, each at its full max_tokens of output, "
    "plus every judge and synthesis call at its max_tokens and, with aggregate.escalate, every item's escalated votes "
    "bounded as a first vote is; input at one token per UTF-8 byte plus "
    f"{CALL_ALLOWANCE_TOKENS} tokens a call, at the higher of the input and cache-write prices"
)


@dataclass
class PlanCosts:
    input_tokens: int = 0
    estimated_cost: float | None = 0.0
    bound_cost: float | None = 0.0
    bound_output_tokens: int = 0
    caching_notes: list[str] = field(default_factory=list)

    def as_plan(self) -> dict[str, Any]:
        return {
            "estimated_input_tokens": self.input_tokens,
            "estimated_cost_usd": _round(self.estimated_cost),
            "estimate_basis": ESTIMATE_BASIS,
            "max_output_tokens": self.bound_output_tokens,
            "cost_upper_bound_usd": _round(self.bound_cost),
            "upper_bound_basis": BOUND_BASIS,
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def plan_costs(
    job: Any, tasks: list[dict[str, Any]], overrides: dict[str, Any] | None = None, tier: str = "on_demand"
) -> PlanCosts:
    """The estimate, the bound and what the prompt cache will (not) do, for a job's tasks bought at ``tier``.

    At tier batch the estimate prices each task's one call at the batch price with no prompt cache (batch
    records are sent without a cachePoint); the bound adds that batch call to the whole on-demand bound, since
    any record may fall back to an on-demand call.
    """
    overrides = overrides if overrides is not None else {n: p.model_dump() for n, p in (job.prices or {}).items()}
    if tier == "batch":
        return _batch_costs(job, tasks, overrides)
    out = PlanCosts()
    system = job.system or ""
    schema_bytes = len(json.dumps(job.output_schema).encode()) if job.output_schema else 0
    budget = job.inference.max_tokens
    spans = spans_by_task(tasks)
    first_seen: set[tuple[str, str]] = set()
    notes: dict[str, str] = {}
    for task in tasks:
        prompt = task["prompt"]
        rates = rates_of(usage_key(task["model"], tier), overrides)
        reask = reask_budget(task["model"], budget) or 0
        tokens_in = (len(system) + len(prompt)) // CHARS_PER_TOKEN + 1
        out.input_tokens += tokens_in
        out.bound_output_tokens += budget + reask + budget
        if rates is None:
            out.estimated_cost = out.bound_cost = None
            continue
        cached = 0
        span = spans.get(task["task_id"])
        if span is not None:
            shared = prompt[: span[0]] if span[0] else prompt[len(prompt) - span[1] :]
            applies, why = cache_plan(task["model"], system, shared)
            notes.setdefault(task["model"], why)
            if applies:
                cached = (len(system) + len(shared)) // CHARS_PER_TOKEN
        elif task["model"].startswith("bedrock:"):
            notes.setdefault(task["model"], f"the tasks of an item share no prompt prefix for {task['model']} to cache")
        if out.estimated_cost is not None:
            key = (task["item_id"], task["model"])
            cached_rate = rates.cache_read if key in first_seen else rates.cache_write
            first_seen.add(key)
            out.estimated_cost += ((tokens_in - cached) * rates.input + cached * cached_rate + budget / 2 * rates.output) / 1e6
        if out.bound_cost is not None:
            in_rate = max(rates.input, rates.cache_write)
            call_in = len((system + prompt).encode()) + schema_bytes + CALL_ALLOWANCE_TOKENS
            bound_in = 3 * call_in + REPAIR_EXTRA_BYTES  # first call, re-ask, repair
            out.bound_cost += (bound_in * in_rate + (budget + reask + budget) * rates.output) / 1e6
    _bound_extra_calls(job, tasks, overrides, out)
    out.caching_notes = [notes[m] for m in sorted(notes)]
    return out


def _bound_extra_calls(job: Any, tasks: list[dict[str, Any]], overrides: dict[str, Any], out: PlanCosts) -> None:
    """The judge's call per item, every item's escalated votes and the synthesis call(s), at their full budgets, in
    the bound."""
    items = {t["item_id"] for t in tasks}
    calls: list[tuple[str, int, int]] = []  # (model, input tokens at most, output tokens at most)
    default = tasks[0]["model"] if tasks else ""
    budget = job.inference.max_tokens
    per_vote_out = budget + (reask_budget(default, budget) or 0)
    if job.pattern == "voting" and job.strategy == "judge":
        spec = (job.aggregate.judge.model if job.aggregate.judge else None) or job.model or default
        by_item: dict[str, int] = {}
        for task in tasks:
            by_item[task["item_id"]] = by_item.get(task["item_id"], 0) + len(task["prompt"].encode()) + per_vote_out
        calls += [(spec, size + CALL_ALLOWANCE_TOKENS, max(256, budget)) for size in by_item.values()]
    escalate = job.aggregate.escalate if job.pattern == "voting" else None
    if escalate is not None:
        # every item may turn out doubtful: its escalated votes, each bounded as a first vote is
        prompts = {t["item_id"]: len(t["prompt"].encode()) for t in tasks}
        reask = reask_budget(escalate.model or default, budget) or 0
        for size in prompts.values():
            for n in range(1, escalate.votes + 1):
                spec = escalate.model or job.vote_model(job.vote_count + n - 1, default)
                calls.append((spec, 3 * (size + CALL_ALLOWANCE_TOKENS) + REPAIR_EXTRA_BYTES, budget + reask + budget))
    if job.synthesis is not None:
        spec = job.model or default
        count = len(items) if job.synthesis.per_item else 1
        size = job.synthesis.max_input_chars * 4 + len(job.synthesis.prompt.encode()) + CALL_ALLOWANCE_TOKENS
        calls += [(spec, size, max(budget, 1024))] * count
    for spec, tokens_in, tokens_out in calls:
        out.bound_output_tokens += tokens_out
        rates = rates_of(spec, overrides)
        if rates is None or out.bound_cost is None:
            out.bound_cost = None
            continue
        out.bound_cost += (tokens_in * max(rates.input, rates.cache_write) + tokens_out * rates.output) / 1e6


def _batch_costs(job: Any, tasks: list[dict[str, Any]], overrides: dict[str, Any]) -> PlanCosts:
    """Tier batch: one batch call per task, uncached, estimated; bounded by that call plus the on-demand bound."""
    out = plan_costs(job, tasks, overrides)
    budget = job.inference.max_tokens
    system = job.system or ""
    estimate: float | None = 0.0
    extra_bound: float | None = 0.0
    for task in tasks:
        rates = rates_of(usage_key(task["model"], "batch"), overrides)
        if rates is None:
            estimate = extra_bound = None
            break
        tokens_in = (len(system) + len(task["prompt"])) // CHARS_PER_TOKEN + 1
        assert estimate is not None and extra_bound is not None
        estimate += (tokens_in * rates.input + budget / 2 * rates.output) / 1e6
        call_in = len((system + task["prompt"]).encode()) + CALL_ALLOWANCE_TOKENS
        extra_bound += (call_in * rates.input + budget * rates.output) / 1e6
    out.estimated_cost = estimate
    out.bound_cost = None if out.bound_cost is None or extra_bound is None else out.bound_cost + extra_bound
    out.bound_output_tokens += budget * len(tasks)
    out.caching_notes = ["batch inference records are sent without a cachePoint: the estimate has no cache reads"]
    return out
