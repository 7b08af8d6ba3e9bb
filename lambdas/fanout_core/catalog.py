"""What fanout knows about each Bedrock model, from one data file (``models.json``).

Prices, lifecycle, structured-output mode and prompt-caching limits are
read from the Amazon Bedrock documentation, named in the file's
``_sources``:

- lifecycle states and dates: "Model lifecycle" and "Model lifecycle
  (Legacy)" in the Bedrock User Guide, and each model's card
  (``model-card-<provider>-<model>.html``);
- structured output: "Get validated JSON results from models"
  (structured-output.html) lists the models that accept Converse's
  ``outputConfig.textFormat``; every other model gets a forced tool;
- prompt caching: "Prompt caching for faster model inference"
  (prompt-caching.html) and the cards' caching table (minimum tokens per
  cache checkpoint, the fields that take a ``cachePoint``).

A model the file does not list is allowed (its lifecycle is unknown, its
price is unknown and costs say so), never guessed.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from fanout_core.errors import InvalidJob

PROFILE_PREFIXES = ("us-gov.", "us.", "eu.", "apac.", "global.", "jp.", "au.", "ca.")
GLOBAL_PREFIX = "global."

Status = Literal["active", "legacy", "eol", "unknown"]
StructuredMode = Literal["json_schema", "tool"]


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens for one model id (its profile's premium applied)."""

    input: float
    output: float
    cache_read: float
    cache_write: float


@dataclass(frozen=True)
class Lifecycle:
    status: Status
    legacy: str | None = None
    eol: str | None = None
    eol_no_sooner_than: str | None = None
    replacement: str | None = None


@dataclass(frozen=True)
class CacheLimits:
    min_tokens: int
    max_checkpoints: int
    fields: tuple[str, ...]


@dataclass(frozen=True)
class BatchSupport:
    """Bedrock batch inference for a model: its share of the on-demand price and the fewest records a job takes."""

    price_factor: float
    min_records: int


@dataclass(frozen=True)
class ModelInfo:
    model_id: str  # the foundation model id the entry is keyed by
    name: str
    rates: Rates | None
    lifecycle: Lifecycle
    structured_output: StructuredMode
    cache: CacheLimits | None
    max_output_tokens: int | None
    # None: no batch inference; service tiers besides standard ("flex", "priority") with their price factors
    batch: BatchSupport | None = None
    service_tiers: tuple[tuple[str, float], ...] = ()


@functools.cache
def _data() -> dict[str, Any]:
    return dict(json.loads((Path(__file__).parent / "models.json").read_text())["models"])


def base_model_id(model: str) -> str:
    """``bedrock:us.anthropic.x`` or an inference-profile ARN -> ``anthropic.x``."""
    model = model.removeprefix("bedrock:")
    if model.startswith("arn:"):
        model = model.rsplit("/", 1)[-1]
    for prefix in PROFILE_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model


def profile_prefix(model: str) -> str:
    """The inference-profile prefix of an id (``us.``), or "" for a foundation model id."""
    model = model.removeprefix("bedrock:")
    if model.startswith("arn:"):
        model = model.rsplit("/", 1)[-1]
    return next((p for p in PROFILE_PREFIXES if model.startswith(p)), "")


def is_bedrock(spec: str) -> bool:
    return spec.startswith("bedrock:")


def info(spec: str) -> ModelInfo | None:
    """What the data file says about a ``bedrock:`` spec (or a bare id); None for other providers and unknown models."""
    if spec.startswith(("sim", "openai:")):
        return None
    key = base_model_id(spec)
    entry = _data().get(key)
    if entry is None:
        return None
    price = entry.get("price")
    rates = None
    if price is not None:
        # geo and in-region ids of the newer Claude models cost more than the global profile
        premium = 1.0 if profile_prefix(spec) == GLOBAL_PREFIX else 1.0 + float(entry.get("regional_premium", 0.0))
        base_in = float(price["input"])
        rates = Rates(
            input=base_in * premium,
            output=float(price["output"]) * premium,
            cache_read=float(price.get("cache_read", base_in)) * premium,
            cache_write=float(price.get("cache_write", base_in)) * premium,
        )
    life = entry.get("lifecycle") or {}
    cache = entry.get("cache")
    return ModelInfo(
        model_id=key,
        name=str(entry.get("name", key)),
        rates=rates,
        lifecycle=Lifecycle(
            status=life.get("status", "unknown"),
            legacy=life.get("legacy"),
            eol=life.get("eol"),
            eol_no_sooner_than=life.get("eol_no_sooner_than"),
            replacement=life.get("replacement"),
        ),
        structured_output=entry.get("structured_output", "tool"),
        cache=None
        if not cache
        else CacheLimits(int(cache["min_tokens"]), int(cache["max_checkpoints"]), tuple(cache.get("fields", ()))),
        max_output_tokens=entry.get("max_output_tokens"),
        batch=None
        if not entry.get("batch")
        else BatchSupport(float(entry["batch"]["price_factor"]), int(entry["batch"]["min_records"])),
        service_tiers=tuple(
            (name, float(tier["price_factor"])) for name, tier in sorted((entry.get("service_tiers") or {}).items())
        ),
    )


def status_on(lifecycle: Lifecycle, today: dt.date) -> Status:
    """The state on ``today``: a published EOL or Legacy date that has passed moves the recorded state on."""
    if lifecycle.eol is not None and dt.date.fromisoformat(lifecycle.eol) <= today:
        return "eol"
    if lifecycle.legacy is not None and dt.date.fromisoformat(lifecycle.legacy) <= today:
        return "legacy"
    return lifecycle.status


def today_utc() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def replacement_spec(spec: str, model: ModelInfo) -> str | None:
    """The replacement, with the same profile prefix as the spec the user wrote (``bedrock:us.<replacement>``)."""
    if model.lifecycle.replacement is None:
        return None
    return f"bedrock:{profile_prefix(spec)}{model.lifecycle.replacement}"


def lifecycle_problem(spec: str, today: dt.date) -> tuple[Status, str] | None:
    """("legacy" | "eol", message) for a spec that is not Active on ``today``; None when it is (or is unknown)."""
    model = info(spec)
    if model is None:
        return None
    status = status_on(model.lifecycle, today)
    if status not in ("legacy", "eol"):
        return None
    instead = replacement_spec(spec, model)
    use = f"; use {instead}" if instead else "; choose an Active model"
    if status == "eol":
        when = f" on {model.lifecycle.eol}" if model.lifecycle.eol else ""
        return status, f"'{spec}' ({model.name}) reached end-of-life on Bedrock{when} and no longer answers{use}"
    until = f" until its end-of-life on {model.lifecycle.eol}" if model.lifecycle.eol else ""
    return status, f"'{spec}' ({model.name}) is Legacy on Bedrock: it answers{until}, new accounts cannot use it{use}"


def job_models(job: Any, default_model: str) -> list[tuple[str, str, bool]]:
    """(field, spec, is the deployment default) of every model a job calls."""
    named: list[tuple[str, str, bool]] = [(f"models[{n}]", spec, False) for n, spec in enumerate(job.models or [])]
    if job.model is not None:
        named.append(("model", job.model, False))
    elif not (job.pattern == "voting" and job.models):
        named.append(("model", default_model, True))
    judge = job.aggregate.judge
    if judge is not None and judge.model is not None:
        named.append(("aggregate.judge.model", judge.model, False))
    escalate = job.aggregate.escalate
    if escalate is not None and escalate.model is not None:
        named.append(("aggregate.escalate.model", escalate.model, False))
    return named


def check_job_models(job: Any, default_model: str, today: dt.date | None = None) -> list[str]:
    """Refuse a job that calls an end-of-life model (InvalidJob naming the field); return warnings for Legacy ones."""
    today = today or today_utc()
    warnings: list[str] = []
    for field, spec, default in job_models(job, default_model):
        found = lifecycle_problem(spec, today)
        if found is None:
            continue
        status, message = found
        where = f"{field} (not set, so the deployment's default model)" if default else field
        if status == "eol":
            raise InvalidJob(f"{where}: {message}", field)
        warnings.append(f"{where}: {message}")
    return list(dict.fromkeys(warnings))


def eol_models(specs: list[str], today: dt.date | None = None) -> list[str]:
    """The messages for the specs (``bedrock:`` or bare ids) that are end-of-life on ``today``."""
    today = today or today_utc()
    out = []
    for spec in specs:
        found = lifecycle_problem(spec if spec.startswith(("bedrock:", "sim", "openai:")) else f"bedrock:{spec}", today)
        if found is not None and found[0] == "eol":
            out.append(found[1])
    return out


# about four characters of English per token: what decides whether a prefix reaches the cache's minimum
CHARS_PER_TOKEN = 4


def estimated_tokens(text: str) -> int:
    return len(text) // CHARS_PER_TOKEN


def cache_plan(spec: str, system: str | None, shared: str) -> tuple[bool, str]:
    """Whether a cachePoint is sent after the shared prefix (system prompt, then the shared part of the prompt), and why."""
    model = info(spec)
    if model is None or model.cache is None:
        return False, f"{spec} has no explicit prompt caching in fanout's model data"
    tokens = estimated_tokens((system or "") + shared)
    if tokens < model.cache.min_tokens:
        return False, (
            f"the shared prefix of {spec} is about {tokens} tokens, under its minimum of {model.cache.min_tokens} "
            "tokens per cache checkpoint"
        )
    return True, f"a cachePoint follows the shared prefix (about {tokens} tokens) of {spec}"
