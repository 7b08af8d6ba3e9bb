"""How a job's model calls are bought: on-demand, a Bedrock batch inference job, or a Bedrock service tier.

``limits.tier`` (fanout_core.job):

- ``on_demand``: every call through Converse at the standard tier;
- ``batch``: the calls go into Bedrock batch inference jobs (model
  invocation jobs) at their lower price (models.json ``batch``); records
  that fail, and the tasks of a job that fails, stops or expires, are
  called on-demand;
- ``flex`` / ``priority``: Converse with ``serviceTier`` set ("Service tiers
  for optimizing performance and cost", service-tiers-inference.html),
  only for the models that page lists (models.json ``service_tiers``);
- ``auto``: batch when every model of the job has at least the minimum
  records of a batch job ("Minimum number of records per batch inference
  job", named in batch-inference-data.html; 100 is its usual default, not a
  figure the stored AWS pages give) and
  ``limits.deadline_hours`` leaves the up to 24 hours a batch job can take
  (its ``timeoutDurationInHours`` defaults to 24, the least it takes);
  on-demand otherwise.

The built-in simulator offers every tier at the usual factors, so a tier can
be rehearsed for free; other OpenAI-compatible servers are on-demand only.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fanout_core.batch_inference import MAX_JOBS, MAX_RECORDS_PER_JOB
from fanout_core.catalog import info
from fanout_core.errors import InvalidJob

# what a batch job may take: Bedrock's default (and least) timeoutDurationInHours
BATCH_HOURS = 24
DEFAULT_MIN_RECORDS = 100
# the simulator rehearses the tiers at the factors models.json gives them. Batch at half the on-demand price is the
# pricing page's figure; for flex and priority the docs give none: service-tiers-inference.html says only "a pricing
# discount" (Flex) and "a price premium over standard on-demand pricing" (Priority), aws.amazon.com/bedrock/service-
# tiers "Discounted standard model rate" / "Standard rate + premium". 0.5 and 1.75 are fanout's assumption, to be
# replaced per model with the price list's figures (a job's own "prices" are exact)
SIMULATED_FACTORS = {"batch": 0.5, "flex": 0.5, "priority": 1.75}
PAID_TIERS = ("batch", "flex", "priority")


def is_simulator(spec: str) -> bool:
    return spec == "sim" or spec.startswith("sim:")


def tier_factor(spec: str, tier: str) -> float | None:
    """The share of the on-demand price a call at ``tier`` costs; None when the model does not offer the tier."""
    if tier == "on_demand":
        return 1.0
    if is_simulator(spec):
        return SIMULATED_FACTORS.get(tier)
    found = info(spec) if spec.startswith("bedrock:") else None
    if found is None:
        return None
    if tier == "batch":
        return None if found.batch is None else found.batch.price_factor
    return dict(found.service_tiers).get(tier)


def min_records(spec: str) -> int:
    """The fewest records a batch job of this model takes."""
    found = info(spec) if spec.startswith("bedrock:") else None
    return found.batch.min_records if found is not None and found.batch is not None else DEFAULT_MIN_RECORDS


def split_tier(name: str) -> tuple[str, str]:
    """``bedrock:x@batch`` (a usage key of result.json) -> (``bedrock:x``, ``batch``); no suffix -> on_demand."""
    spec, at, tier = name.rpartition("@")
    if at and tier in PAID_TIERS:
        return spec, tier
    return name, "on_demand"


def usage_key(model: str, tier: str | None) -> str:
    """The key a call's usage is counted under: the model, with the tier it was bought at when not on-demand."""
    return model if tier in (None, "on_demand") else f"{model}@{tier}"


def service_tier(batch: Any) -> str | None:
    """The Bedrock service tier a batch file's Converse calls are bought at (flex / priority), None for the standard
    tier: a tier-batch job's fallback calls and second-pass batches are on-demand."""
    tier = batch.get("tier") if isinstance(batch, dict) else None
    return tier if tier in ("flex", "priority") else None


@dataclass(frozen=True)
class TierChoice:
    tier: str  # on_demand | batch | flex | priority
    requested: str
    reason: str
    estimated_cost_usd: float | None = None
    on_demand_cost_usd: float | None = None

    def as_plan(self) -> dict[str, Any]:
        return {
            "tier": self.tier,
            "requested": self.requested,
            "reason": self.reason,
            "estimated_cost_usd": _round(self.estimated_cost_usd),
            "on_demand_cost_usd": _round(self.on_demand_cost_usd),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def choose_tier(job: Any, tasks: list[dict[str, Any]], estimate: Callable[[str], float | None] | None = None) -> TierChoice:
    """The tier the job's calls are bought at, and why; an unsupported tier is refused (InvalidJob) naming the model.

    ``estimate(tier)`` is the job's estimated cost at a tier (fanout_core.costs), shown next to on-demand.
    """
    requested = job.limits.tier
    deadline = job.limits.deadline_hours
    if deadline is not None and requested not in ("auto", "batch"):
        raise InvalidJob(
            f"limits.deadline_hours: only for limits.tier 'auto' or 'batch' (it is '{requested}'); "
            "drop it, or set limits.tier to 'auto'",
            "limits.deadline_hours",
        )
    per_model = Counter(t["model"] for t in tasks)
    if requested == "auto":
        tier, reason = _auto(per_model, deadline)
    elif requested == "on_demand":
        tier, reason = "on_demand", "limits.tier is on_demand"
    else:
        _check_offered(requested, per_model)
        if requested == "batch":
            _check_batch(per_model, deadline)
        tier, reason = requested, f"limits.tier is {requested}"
    if estimate is None:
        return TierChoice(tier, requested, reason)
    return TierChoice(tier, requested, reason, estimate(tier), estimate("on_demand"))


def _check_offered(tier: str, per_model: Counter[str]) -> None:
    for spec in sorted(per_model):
        if tier_factor(spec, tier) is None:
            found = info(spec) if spec.startswith("bedrock:") else None
            named = f"{spec} ({found.name})" if found is not None else spec
            where = "Bedrock batch inference" if tier == "batch" else f"the Bedrock '{tier}' service tier"
            raise InvalidJob(
                f"limits.tier: '{tier}' is not offered for {named}: fanout's model data does not list it for "
                f"{where}; use 'on_demand' or 'auto', or a model that offers it",
                "limits.tier",
            )


def _check_batch(per_model: Counter[str], deadline: float | None) -> None:
    if deadline is not None and deadline < BATCH_HOURS:
        raise InvalidJob(
            f"limits.deadline_hours: {deadline:g} h is under the {BATCH_HOURS} h a batch job can take; "
            "use limits.tier 'auto' (on-demand for this deadline) or 'on_demand'",
            "limits.deadline_hours",
        )
    jobs = sum(math.ceil(count / MAX_RECORDS_PER_JOB) for count in per_model.values())
    if jobs > MAX_JOBS:
        raise InvalidJob(
            f"limits.tier: 'batch' would need {jobs} batch inference jobs of at most {MAX_RECORDS_PER_JOB} records, "
            f"over the {MAX_JOBS} one run polls; split the job, or use 'on_demand'",
            "limits.tier",
        )
    for spec, count in sorted(per_model.items()):
        least = min_records(spec)
        if count < least:
            raise InvalidJob(
                f"limits.tier: 'batch' needs at least {least} tasks for each model (the minimum records per Bedrock "
                f"batch inference job) and {spec} has {count}; use 'auto' (on-demand below the minimum) or 'on_demand'",
                "limits.tier",
            )


def _auto(per_model: Counter[str], deadline: float | None) -> tuple[str, str]:
    for spec in sorted(per_model):
        if tier_factor(spec, "batch") is None:
            return "on_demand", f"auto: on-demand, {spec} is not offered in Bedrock batch inference"
    for spec, count in sorted(per_model.items()):
        least = min_records(spec)
        if count < least:
            return "on_demand", (
                f"auto: on-demand, {spec} has {count} tasks, under the {least} records a batch inference job needs"
            )
    jobs = sum(math.ceil(count / MAX_RECORDS_PER_JOB) for count in per_model.values())
    if jobs > MAX_JOBS:
        return "on_demand", f"auto: on-demand, the job would need {jobs} batch inference jobs, over the {MAX_JOBS} one run polls"
    if deadline is not None and deadline < BATCH_HOURS:
        return "on_demand", f"auto: on-demand, the deadline of {deadline:g} h is under the {BATCH_HOURS} h a batch job can take"
    counts = ", ".join(f"{spec}: {count}" for spec, count in sorted(per_model.items()))
    allows = f"the deadline of {deadline:g} h allows" if deadline is not None else "no deadline is set, so nothing rules out"
    return (
        "batch",
        f"auto: batch, every model has at least the records a batch job needs ({counts}) and {allows} its up to {BATCH_HOURS} h",
    )


def for_this_run(choice: TierChoice, pending: list[dict[str, Any]], estimate: Callable[[str], float | None]) -> TierChoice:
    """A resumed run with too few tasks left for a batch job buys them on-demand (the job's tier still decides the rest);
    the estimate of this run's tasks at its tier goes next to on-demand's."""
    if choice.tier == "on_demand":
        return choice
    if choice.tier != "batch":
        return TierChoice(choice.tier, choice.requested, choice.reason, estimate(choice.tier), estimate("on_demand"))
    for spec, count in sorted(Counter(t["model"] for t in pending).items()):
        least = min_records(spec)
        if count < least:
            reason = (
                f"{choice.reason}; this run has {count} tasks left for {spec}, under the {least} records a batch "
                "inference job needs, so they are called on-demand"
            )
            return TierChoice("on_demand", choice.requested, reason, estimate("on_demand"), estimate("on_demand"))
    return TierChoice(choice.tier, choice.requested, choice.reason, estimate("batch"), estimate("on_demand"))
