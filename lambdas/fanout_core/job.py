"""The job file: its model, its checks, and the one-line messages a user sees when it is wrong.

A job is parsed strictly: unknown keys, wrong types, duplicate item ids,
template fields an item lacks and an invalid ``output_schema`` are all
refused with an :class:`InvalidJob` whose message starts with the field's
path (``items[3].id: duplicate id 'a' (first at items[0])``).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fanout_core import strictjson
from fanout_core.errors import InvalidJob
from fanout_core.providers.spec import parse_model_spec
from fanout_core.templating import template_fields
from fanout_core.validation import SchemaRefused, check_output_schema

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
SECTION_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.-]{0,63}$"
MAX_ITEM_ID_CHARS = 200

MAX_WEIGHT = 1_000_000.0
MAX_PRICE_PER_MILLION = 1_000_000.0  # USD per million tokens: far above any model's, far below float's range

VOTING_STRATEGIES = ("majority", "weighted", "mean", "median", "threshold", "judge")
SECTIONING_STRATEGIES = ("merge",)


class _Strict(BaseModel):
    # strict: a JSON job with "votes": "5" or "temperature": "0.8" is a wrong type, not a value to coerce
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Section(_Strict):
    name: str = Field(pattern=SECTION_NAME_PATTERN)
    prompt: str = Field(min_length=1)


class Inference(_Strict):
    # bedrock reserves tokens-per-minute quota from max_tokens, so it always has a value
    max_tokens: int = Field(default=512, ge=1, le=64_000)
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, ge=0.0, le=1.0)


class Dedupe(_Strict):
    field: str = Field(min_length=1)
    key: str = Field(min_length=1)
    threshold: int = Field(default=85, ge=0, le=100)
    block_by: str | None = None


DEFAULT_JUDGE_PROMPT = "Pick the best of these candidate answers to the task. Judge accuracy, completeness and clarity."


class Judge(_Strict):
    prompt: str = Field(default=DEFAULT_JUDGE_PROMPT, min_length=1)
    model: str | None = None


class Stop(_Strict):
    """Adaptive stopping: an item gets votes until its answer is settled, at most ``max_votes``."""

    # window: votes in windows of `window`, stop at the first unanimous one; adaptive: stop when the
    # posterior probability that the leader stays the leader passes `threshold`
    method: Literal["window", "adaptive"]
    window: int | None = Field(default=None, ge=2)
    threshold: float | None = Field(default=None, gt=0.5, lt=1.0)
    max_votes: int | None = Field(default=None, ge=2)


class Escalate(_Strict):
    """A second pass for the doubtful: items whose confidence is below ``below`` after the first votes get ``votes``
    more, from ``model`` when given (a stronger model: its votes decide) or from the job's own model(s)."""

    below: float = Field(gt=0.0, le=1.0)
    votes: int = Field(default=1, ge=1)
    model: str | None = None


class Aggregate(_Strict):
    strategy: str | None = None
    # a dotted path into the structured output: what is voted on
    field: str | None = None
    dedupe: Dedupe | None = None
    # weighted: weight of each model's vote, by model spec (unlisted models weigh 1)
    # bounded so that no sum of weights overflows into infinity (and confidence into NaN)
    weights: dict[str, Annotated[float, Field(ge=0, le=MAX_WEIGHT, allow_inf_nan=False)]] | None = None
    # threshold: an element is kept when at least k votes report it (default: more than half)
    k: int | None = Field(default=None, ge=1)
    # threshold over a list of objects: the property that identifies an element
    key: str | None = None
    # early stop: when the first n votes of an item agree, its other votes are not asked
    stop_when_agree: int | None = Field(default=None, ge=2)
    stop: Stop | None = None
    judge: Judge | None = None
    escalate: Escalate | None = None


class Synthesis(_Strict):
    prompt: str = Field(min_length=1)
    per_item: bool = False
    max_input_chars: int = Field(default=60_000, ge=1_000, le=600_000)


class Price(_Strict):
    input_per_million: float = Field(ge=0, le=MAX_PRICE_PER_MILLION, allow_inf_nan=False)
    output_per_million: float = Field(ge=0, le=MAX_PRICE_PER_MILLION, allow_inf_nan=False)


# the default of limits.max_job_bytes and the deployment's cap in cdk.json (README "Caps" has the figure behind it)
DEFAULT_MAX_JOB_BYTES = 200_000_000


class Limits(_Strict):
    max_concurrency: int = Field(default=16, ge=1, le=10_000)
    batch_size: int | None = Field(default=None, ge=1, le=10_000)
    # auto: inline Map for small jobs, Distributed Map above the inline threshold
    mode: Literal["auto", "inline", "distributed"] = "auto"
    # share of Distributed Map children that may fail before the Map gives up (the job still aggregates)
    tolerated_failure_percentage: float = Field(default=100.0, ge=0.0, le=100.0)
    # what Plan and Aggregate were measured to hold in their functions' memory (README "Scale", bench.scale (k))
    max_items: int = Field(default=200_000, ge=1)
    max_tasks: int = Field(default=1_000_000, ge=1)
    max_votes: int = Field(default=25, ge=2)
    max_item_bytes: int = Field(default=200_000, ge=1)
    # all the items' bytes together (each as max_item_bytes counts it): Plan holds every item at once, so this,
    # not max_items x max_item_bytes, is what must fit its memory (bench.scale --rows k --item-bytes)
    max_job_bytes: int = Field(default=DEFAULT_MAX_JOB_BYTES, ge=1)
    max_prompt_bytes: int = Field(default=400_000, ge=1)
    # how the model calls are bought (fanout_core.tiers): on-demand, a Bedrock batch inference job at its lower
    # price, a Bedrock service tier, or auto: batch when the job is large enough and the deadline allows
    tier: Literal["on_demand", "batch", "flex", "priority", "auto"] = "on_demand"
    # hours the job may take at most: what 'auto' weighs against a batch job's up to 24 h
    deadline_hours: float | None = Field(default=None, gt=0, le=8_760)
    # the model's on-demand quota when it is known ("Quotas for the bedrock-runtime endpoint"): calls are paced
    # to it; without it the pace is learned from the service's refusals (fanout_core.pacing)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    requests_per_minute: int | None = Field(default=None, ge=1)
    # the most a run may spend on model calls: no call starts that could pass it (fanout_core.pacing.Budget)
    max_cost_usd: float | None = Field(default=None, gt=0)


class Job(_Strict):
    job_id: str | None = Field(default=None, pattern=JOB_ID_PATTERN)
    pattern: Literal["sectioning", "voting"]
    description: str | None = None
    items: list[Any] | None = None
    items_uri: str | None = Field(default=None, pattern=r"^s3://[^/]+/.+")
    sections: list[Section] | None = None
    prompt: str | None = Field(default=None, min_length=1)
    votes: int | None = Field(default=None, ge=2)
    models: list[str] | None = Field(default=None, min_length=1)
    system: str | None = None
    model: str | None = None
    inference: Inference = Inference()
    output_schema: dict[str, Any] | None = None
    aggregate: Aggregate = Aggregate()
    synthesis: Synthesis | None = None
    limits: Limits = Limits()
    prices: dict[str, Price] | None = None
    # a re-run asks again the requests whose final record is invalid or failed (CLI: --retry-failed); without it
    # only requests with no final record are asked (ok, skipped, invalid and failed records are all kept)
    retry_failed: bool = False

    @property
    def strategy(self) -> str:
        default = "majority" if self.pattern == "voting" else "merge"
        return self.aggregate.strategy or default

    @property
    def vote_count(self) -> int:
        """How many times each item is asked (voting)."""
        if self.votes is not None:
            return self.votes
        if self.aggregate.stop is not None and self.aggregate.stop.max_votes is not None:
            return self.aggregate.stop.max_votes
        return len(self.models or [])

    def vote_model(self, vote: int, default: str) -> str:
        """The model spec answering vote ``vote`` (0-based): models rotate when several are named."""
        if self.models:
            return self.models[vote % len(self.models)]
        return self.model or default

    def fingerprint_fields(self) -> dict[str, Any]:
        """What decides a task's answer: a change here must not reuse stale records."""
        return self.model_dump(exclude={"job_id", "description", "limits", "items_uri", "items", "prices", "retry_failed"})


CAPPED_LIMITS = ("max_items", "max_tasks", "max_votes", "max_item_bytes", "max_job_bytes", "max_prompt_bytes")


def parse_job(data: Any, *, job_id_default: str | None = None, caps: dict[str, int] | None = None) -> Job:
    """Parse and check a job document (already decoded from JSON); raise InvalidJob on the first problem.

    ``caps`` are the deployment's ceilings for the job's limits: a job may
    lower a limit, never raise it above its cap.
    """
    found = strictjson.problem(data)
    if found is not None:
        where, message = found
        raise InvalidJob(f"{where or 'job'}: {message}", where or "job")
    if not isinstance(data, dict):
        raise InvalidJob(f"job: must be a JSON object, got {_type_name(data)}", "job")
    if not data:
        raise InvalidJob("job: is empty; it needs at least 'pattern' and 'items'", "job")
    try:
        job = Job.model_validate(data)
    except ValidationError as exc:
        raise _from_validation_error(exc, data) from None
    if job.job_id is None and job_id_default:
        job = job.model_copy(update={"job_id": safe_job_id(job_id_default)})
    for name, cap in (caps or {}).items():
        if getattr(job.limits, name) > cap:
            asked = "limits." + name in _given_limits(data)
            if asked:
                raise InvalidJob(
                    f"limits.{name}: {getattr(job.limits, name)} is above this deployment's cap ({cap}); "
                    "ask for less, or raise the cap where fanout is deployed",
                    f"limits.{name}",
                )
            job = job.model_copy(update={"limits": job.limits.model_copy(update={name: cap})})
    with unexpected_as_invalid("job"):
        check_job(job)
    return job


UNCHECKED = "could not be checked as written"


@contextmanager
def unexpected_as_invalid(where: str) -> Iterator[None]:
    """A check that trips over a value of a type it did not foresee still refuses the job, never a traceback.

    Every such case found is a missing check (tests/local/test_fuzz_jobs.py fails on this message): this is the
    last line, so that a user and the state machine get InvalidJob instead of a stack trace as the Cause.
    """
    try:
        yield
    except (TypeError, AttributeError, KeyError, IndexError, ValueError, RecursionError, UnicodeError) as exc:
        if isinstance(exc, InvalidJob):
            raise
        raise InvalidJob(
            f"{where}: {UNCHECKED}: a value somewhere in it has a type or form fanout does not expect there; "
            "compare the job with the examples",
            where,
        ) from None


def _given_limits(data: dict[str, Any]) -> set[str]:
    limits = data.get("limits")
    return {f"limits.{k}" for k in limits} if isinstance(limits, dict) else set()


def check_job(job: Job) -> None:
    """The checks that span several fields (the item list is checked by :func:`check_items`)."""
    if job.items is None and job.items_uri is None:
        raise InvalidJob("items: required; give a list of objects with an 'id', or 'items_uri'", "items")
    if job.items is not None and job.items_uri is not None:
        raise InvalidJob("items_uri: give either 'items' or 'items_uri', not both", "items_uri")
    for name in ("model",):
        if job.model is not None:
            _check_model_spec(job.model, name)
    for index, spec in enumerate(job.models or []):
        _check_model_spec(spec, f"models[{index}]")
    if job.output_schema is not None:
        _check_output_schema(job.output_schema)
    if job.pattern == "sectioning":
        _check_sectioning(job)
    else:
        _check_voting(job)
    if job.items is not None:
        check_items(job, job.items)


def _check_sectioning(job: Job) -> None:
    if not job.sections:
        raise InvalidJob("sections: required for pattern 'sectioning'; give a list of {name, prompt}", "sections")
    for key in ("prompt", "votes", "models"):
        if getattr(job, key) is not None:
            raise InvalidJob(f"{key}: only for pattern 'voting'; sectioning uses 'sections'", key)
    for key in ("weights", "k", "key", "stop_when_agree", "stop", "judge", "escalate"):
        if getattr(job.aggregate, key) is not None:
            raise InvalidJob(f"aggregate.{key}: only for pattern 'voting'", f"aggregate.{key}")
    seen: dict[str, int] = {}
    for index, section in enumerate(job.sections):
        if section.name in seen:
            raise InvalidJob(
                f"sections[{index}].name: duplicate section '{section.name}' (first at sections[{seen[section.name]}])",
                f"sections[{index}].name",
            )
        seen[section.name] = index
    if job.strategy not in SECTIONING_STRATEGIES:
        raise InvalidJob(
            f"aggregate.strategy: '{job.strategy}' is not a sectioning strategy; use one of {list(SECTIONING_STRATEGIES)}",
            "aggregate.strategy",
        )
    if job.aggregate.dedupe is not None:
        _check_path_in_schema(job, job.aggregate.dedupe.field, "aggregate.dedupe.field")


def _check_voting(job: Job) -> None:
    if job.sections is not None:
        raise InvalidJob("sections: only for pattern 'sectioning'; voting uses 'prompt' and 'votes'", "sections")
    if job.prompt is None:
        raise InvalidJob("prompt: required for pattern 'voting'; the template every vote answers", "prompt")
    stop_rule = job.aggregate.stop
    if job.votes is None and job.models is None and (stop_rule is None or stop_rule.max_votes is None):
        raise InvalidJob("votes: required for pattern 'voting'; give 'votes' (2 or more) or a list of 'models'", "votes")
    if job.vote_count < 2:
        raise InvalidJob("models: voting needs at least 2 votes; name 2 or more models, or add 'votes'", "models")
    if job.vote_count > job.limits.max_votes:
        raise InvalidJob(
            f"votes: {job.vote_count} votes exceed limits.max_votes ({job.limits.max_votes}); ask for fewer or raise the limit",
            "votes",
        )
    if job.strategy not in VOTING_STRATEGIES:
        raise InvalidJob(
            f"aggregate.strategy: '{job.strategy}' is not a voting strategy; use one of {list(VOTING_STRATEGIES)}",
            "aggregate.strategy",
        )
    if job.aggregate.dedupe is not None:
        raise InvalidJob("aggregate.dedupe: only for pattern 'sectioning'", "aggregate.dedupe")
    strategy, field = job.strategy, job.aggregate.field
    if job.output_schema is not None and field is None and strategy != "judge":
        raise InvalidJob(
            "aggregate.field: required when the job has an output_schema; name the output field to vote on (e.g. 'label')",
            "aggregate.field",
        )
    node: dict[str, Any] = {}
    if field is not None:
        if job.output_schema is None:
            raise InvalidJob(
                "aggregate.field: needs an output_schema (structured output) to pick the field from", "aggregate.field"
            )
        node = _check_path_in_schema(job, field, "aggregate.field")
    kind = node.get("type")
    if strategy in ("mean", "median") and field is not None and kind not in ("number", "integer"):
        raise InvalidJob(
            f"aggregate.field: '{field}' must be a number or integer in output_schema for strategy '{strategy}'",
            "aggregate.field",
        )
    if strategy == "threshold":
        if field is None or kind != "array":
            raise InvalidJob(
                'aggregate.field: strategy \'threshold\' needs a list field in output_schema ("type": "array")',
                "aggregate.field",
            )
        element = node.get("items")
        if isinstance(element, dict) and element.get("type") == "object" and job.aggregate.key is None:
            raise InvalidJob("aggregate.key: name the property that identifies a list element (e.g. 'title')", "aggregate.key")
        if job.aggregate.k is not None and job.aggregate.k > job.vote_count:
            raise InvalidJob(f"aggregate.k: {job.aggregate.k} is more than the {job.vote_count} votes", "aggregate.k")
    if job.aggregate.weights is not None and strategy != "weighted":
        raise InvalidJob("aggregate.weights: only for strategy 'weighted'", "aggregate.weights")
    for name, weight in (job.aggregate.weights or {}).items():
        if weight < 0:
            raise InvalidJob(f"aggregate.weights.{name}: must be 0 or more", f"aggregate.weights.{name}")
    if job.aggregate.judge is not None and strategy != "judge":
        raise InvalidJob("aggregate.judge: only for strategy 'judge'", "aggregate.judge")
    if job.aggregate.judge is not None and job.aggregate.judge.model is not None:
        _check_model_spec(job.aggregate.judge.model, "aggregate.judge.model")
    stop = job.aggregate.stop_when_agree
    if stop is not None:
        if strategy not in ("majority", "weighted"):
            raise InvalidJob(
                "aggregate.stop_when_agree: only for strategies 'majority' and 'weighted'", "aggregate.stop_when_agree"
            )
        if stop >= job.vote_count:
            raise InvalidJob(
                f"aggregate.stop_when_agree: {stop} must be fewer than the {job.vote_count} votes to save any",
                "aggregate.stop_when_agree",
            )
    if job.aggregate.stop is not None:
        _check_stop(job, job.aggregate.stop)
    if job.aggregate.escalate is not None:
        _check_escalate(job, job.aggregate.escalate)


def _check_escalate(job: Job, escalate: Escalate) -> None:
    where = "aggregate.escalate"
    if job.strategy not in ("majority", "weighted", "judge"):
        raise InvalidJob(
            f"{where}: only for strategies 'majority', 'weighted' and 'judge' (it acts on the vote share); "
            f"strategy '{job.strategy}' has no confidence to compare with 'below'",
            where,
        )
    if job.vote_count + escalate.votes > job.limits.max_votes:
        raise InvalidJob(
            f"{where}.votes: {job.vote_count} votes and {escalate.votes} escalated ones exceed limits.max_votes "
            f"({job.limits.max_votes}); ask for fewer or raise the limit",
            f"{where}.votes",
        )
    if escalate.model is not None:
        _check_model_spec(escalate.model, f"{where}.model")


def _check_stop(job: Job, stop: Stop) -> None:
    if job.aggregate.stop_when_agree is not None:
        raise InvalidJob(
            "aggregate.stop: give either 'stop' or its shorthand 'stop_when_agree', not both", "aggregate.stop_when_agree"
        )
    if job.strategy not in ("majority", "weighted"):
        raise InvalidJob("aggregate.stop: only for strategies 'majority' and 'weighted'", "aggregate.stop")
    if stop.max_votes is not None and job.votes is not None and stop.max_votes != job.votes:
        raise InvalidJob(
            f"aggregate.stop.max_votes: {stop.max_votes} differs from votes ({job.votes}); give one of them",
            "aggregate.stop.max_votes",
        )
    if stop.method == "window":
        if stop.window is None:
            where = "aggregate.stop.window"
            raise InvalidJob(f"{where}: required for method 'window' (votes per window, e.g. 3)", where)
        if stop.threshold is not None:
            raise InvalidJob("aggregate.stop.threshold: only for method 'adaptive'", "aggregate.stop.threshold")
        if stop.window >= job.vote_count:
            raise InvalidJob(
                f"aggregate.stop.window: {stop.window} must be fewer than the {job.vote_count} votes to save any",
                "aggregate.stop.window",
            )
    elif stop.window is not None:
        raise InvalidJob("aggregate.stop.window: only for method 'window'", "aggregate.stop.window")


def _check_path_in_schema(job: Job, path: str, where: str) -> dict[str, Any]:
    schema = job.output_schema
    if schema is None:
        raise InvalidJob(f"{where}: needs an output_schema to find '{path}' in", where)
    node: Any = schema
    for part in path.split("."):
        properties = node.get("properties") if isinstance(node, dict) else None
        if not isinstance(properties, dict) or part not in properties:
            known = sorted(properties) if isinstance(properties, dict) else []
            raise InvalidJob(f"{where}: '{path}' is not a property of output_schema (has {known})", where)
        node = properties[part]
    return node if isinstance(node, dict) else {}


def _check_model_spec(spec: str, where: str) -> None:
    try:
        parse_model_spec(spec)
    except ValueError as exc:
        raise InvalidJob(f"{where}: {exc}", where) from None


def _check_output_schema(schema: dict[str, Any]) -> None:
    try:
        check_output_schema(schema)
    except SchemaRefused as exc:
        raise InvalidJob(str(exc), exc.where) from None
    if schema.get("type") != "object":
        raise InvalidJob(
            'output_schema.type: must be "object" (structured output fills an object); wrap single values in a property',
            "output_schema.type",
        )


def check_items(job: Job, items: list[Any], *, where: str = "items") -> None:
    """Every item is an object with a unique string id, fits the limits and has every field its prompts use."""
    with unexpected_as_invalid(where):
        _check_items(job, items, where)


# an item's size as json.dumps(item, ensure_ascii=False) encodes it, with one encoder for every item (json.dumps with
# options builds a new one on each call)
_ITEM_ENCODER = json.JSONEncoder(ensure_ascii=False)


def _check_items(job: Job, items: list[Any], where: str) -> None:
    if not items:
        raise InvalidJob(f"{where}: is empty; give at least one item", where)
    if len(items) > job.limits.max_items:
        raise InvalidJob(f"{where}: {len(items)} items exceed limits.max_items ({job.limits.max_items})", where)
    check_task_count(job, len(items))
    templates = prompt_templates(job)
    needed = {name: sorted(template_fields(text)) for name, text in templates.items()}
    seen: dict[str, int] = {}
    total = 0
    for index, item in enumerate(items):
        at = f"{where}[{index}]"
        found = strictjson.problem(item, at)
        if found is not None:
            raise InvalidJob(f"{found[0]}: {found[1]}", found[0])
        if not isinstance(item, dict):
            raise InvalidJob(f"{at}: must be an object with an 'id', got {_type_name(item)}", at)
        if "id" not in item:
            raise InvalidJob(f"{at}.id: required; every item needs a unique string id", f"{at}.id")
        item_id = item["id"]
        if not isinstance(item_id, str):
            raise InvalidJob(f"{at}.id: must be a string, got {_type_name(item_id)} {json.dumps(item_id)}; quote it", f"{at}.id")
        if not item_id.strip():
            raise InvalidJob(f"{at}.id: is empty; every item needs a unique string id", f"{at}.id")
        if len(item_id) > MAX_ITEM_ID_CHARS:
            raise InvalidJob(f"{at}.id: longer than {MAX_ITEM_ID_CHARS} characters", f"{at}.id")
        if item_id in seen:
            raise InvalidJob(f"{at}.id: duplicate id '{item_id}' (first at {where}[{seen[item_id]}])", f"{at}.id")
        seen[item_id] = index
        size = len(_ITEM_ENCODER.encode(item).encode("utf-8"))
        if size > job.limits.max_item_bytes:
            raise InvalidJob(
                f"{at}: item '{item_id}' is {size} bytes, over limits.max_item_bytes ({job.limits.max_item_bytes}); "
                "shorten it or raise the limit",
                at,
            )
        total += size
        if total > job.limits.max_job_bytes:
            raise InvalidJob(job_bytes_message(where, job.limits.max_job_bytes, f"the items up to {at}"), where)
        for template_name, fields in needed.items():
            for field in fields:
                if _lookup(item, field) is _MISSING:
                    raise InvalidJob(
                        f"{at}.{field}: item '{item_id}' lacks field '{field}' used by {template_name}",
                        f"{at}.{field}",
                    )


def job_bytes_message(where: str, limit: int, what: str) -> str:
    """The refusal of a job whose items pass limits.max_job_bytes, with the fix."""
    return (
        f"{where}: {what} add up to more than limits.max_job_bytes ({limit} bytes), what Plan holds at once; "
        "split the items into several jobs (or lower each item's size)"
    )


def task_count(job: Job, item_count: int) -> int:
    """How many tasks the job expands to, counted without building them."""
    return item_count * (len(job.sections or []) if job.pattern == "sectioning" else job.vote_count)


def check_task_count(job: Job, item_count: int) -> None:
    """limits.max_tasks, checked on the count before any task is built (100k items x 25 votes is refused at once)."""
    count = task_count(job, item_count)
    if count > job.limits.max_tasks:
        raise InvalidJob(
            f"limits.max_tasks: the job expands to {count} tasks, over limits.max_tasks ({job.limits.max_tasks})",
            "limits.max_tasks",
        )


def prompt_templates(job: Job) -> dict[str, str]:
    """Each prompt template with the name a message uses for it."""
    if job.pattern == "sectioning":
        return {f"sections[{i}].prompt": s.prompt for i, s in enumerate(job.sections or [])}
    return {"prompt": job.prompt or ""}


_MISSING = object()


def _lookup(item: dict[str, Any], path: str) -> Any:
    node: Any = item
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def safe_job_id(text: str) -> str:
    """A job id derived from a file or key name: allowed characters only, at most 64 of them."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._") or "job"
    return cleaned[:64]


def _type_name(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "a number",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "job"


def _known_keys(loc: tuple[Any, ...]) -> list[str]:
    model: Any = Job
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if hasattr(model, "model_fields") else None
        if field is None:
            return []
        annotation = field.annotation
        candidates = [annotation, *getattr(annotation, "__args__", ())]
        for candidate in candidates:
            args = getattr(candidate, "__args__", ())
            for c in (candidate, *args):
                if isinstance(c, type) and issubclass(c, BaseModel):
                    model = c
                    break
            else:
                continue
            break
        else:
            return []
    return list(model.model_fields) if hasattr(model, "model_fields") else []


def _from_validation_error(exc: ValidationError, data: dict[str, Any]) -> InvalidJob:
    error = exc.errors()[0]
    loc = tuple(error["loc"])
    kind = error["type"]
    where = _path(loc)
    if kind == "extra_forbidden":
        key = str(loc[-1])
        known = _known_keys(loc[:-1])
        hint = difflib.get_close_matches(key, known, n=1)
        suggestion = f"; did you mean '{hint[0]}'?" if hint else f"; known keys: {', '.join(known)}"
        return InvalidJob(f"{where}: unknown key '{key}'{suggestion}", where)
    if kind == "missing":
        fix = "; use 'sectioning' or 'voting'" if loc == ("pattern",) else ""
        return InvalidJob(f"{where}: required{fix}", where)
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        return InvalidJob(f"{where}: must be one of {expected}, got {json.dumps(error.get('input'))}", where)
    if kind == "string_pattern_mismatch":
        if loc and loc[0] == "job_id":
            return InvalidJob(f"{where}: use 1-64 letters, digits, '.', '_' or '-' (starting with a letter or digit)", where)
        if loc and loc[-1] == "name":
            return InvalidJob(f"{where}: use 1-64 letters, digits, spaces, '.', '_' or '-'", where)
        if loc and loc[0] == "items_uri":
            return InvalidJob(f"{where}: must look like s3://bucket/key.jsonl", where)
    message = error["msg"]
    got = error.get("input")
    shown = json.dumps(got)[:60] if not isinstance(got, (dict, list)) else _type_name(got)
    return InvalidJob(f"{where}: {message[0].lower()}{message[1:]} (got {shown})", where)
