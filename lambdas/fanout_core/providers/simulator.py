"""The built-in model simulator: free, deterministic per seed and task, and honest about being synthetic.

It fills the job's ``output_schema`` with valid values, answers an item's
``expected`` value with probability ``accuracy`` (a wrong answer otherwise),
and injects latency, throttling, service errors and out-of-schema outputs at
the rates asked for, so voting and failure handling can be rehearsed.

With ``difficulty`` K, items differ as they do for real models: each item's
own accuracy is drawn once (seeded by the item) from Beta(accuracy*K,
(1-accuracy)*K), whose mean is ``accuracy``; a small K gives many easy items
and many coin flips, a large K items close to ``accuracy``.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any

from fanout_core.providers.base import ModelError, ModelReply, ModelRequest

DEFAULTS: dict[str, float | int] = {
    "latency_ms": 150.0,
    "jitter_ms": 100.0,
    "throttle_rate": 0.0,
    "error_rate": 0.0,
    "invalid_rate": 0.0,
    "timeout_rate": 0.0,
    "accuracy": 0.8,
    "difficulty": 0.0,  # 0: every item has the same accuracy
    "seed": 7,
}

_PHRASES = [
    "pricing pressure from incumbents",
    "demand for self-serve onboarding",
    "slow support response",
    "strong growth in emerging regions",
    "integration gaps with existing tools",
    "unclear refund policy",
    "price sensitivity in small teams",
    "preference for annual contracts",
    "regulatory hurdles in the EU",
    "brand awareness is low",
    "competitors bundle analytics for free",
    "mobile usage is rising",
]
_FREE_TEXT_ANSWERS = ["yes", "no", "unsure"]


class Simulator:
    name = "sim"

    def __init__(self, options: dict[str, float | int] | None = None, sleep: Callable[[float], None] = time.sleep) -> None:
        merged = {**DEFAULTS, **(options or {})}
        self.latency_ms = float(merged["latency_ms"])
        self.jitter_ms = float(merged["jitter_ms"])
        self.throttle_rate = float(merged["throttle_rate"])
        self.error_rate = float(merged["error_rate"])
        self.invalid_rate = float(merged["invalid_rate"])
        self.timeout_rate = float(merged["timeout_rate"])
        self.accuracy = float(merged["accuracy"])
        self.difficulty = float(merged["difficulty"])
        self.seed = int(merged["seed"])
        self._sleep = sleep

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        # faults depend on the attempt, so a retry can succeed; the answer does not, so retries agree
        jitter, throttle, error, invalid = _uniforms(f"{self.seed}|{request.task_id}|{attempt}")
        timeout = _uniforms(f"{self.seed}|{request.task_id}|{attempt}|timeout")[0] if self.timeout_rate else 1.0
        delay = self.latency_ms + self.jitter_ms * jitter
        if delay > 0:
            self._sleep(delay / 1000.0)
        if timeout < self.timeout_rate:
            raise ModelError("ModelTimeoutException", "simulated timeout (sim timeout_rate)", "timeout")
        if throttle < self.throttle_rate:
            raise ModelError("ThrottlingException", "simulated throttling (sim throttle_rate)", "throttled")
        if error < self.error_rate:
            raise ModelError("ServiceUnavailableException", "simulated service error (sim error_rate)", "transient")
        answer = _rng(f"{self.seed}|{request.task_id}|answer")
        try:
            output = self._answer(request, answer)
        except (TypeError, ValueError, LookupError, OverflowError, RecursionError):
            output = {}  # a schema the simulator cannot fill gets an output that misses it, as a model's would
        if invalid < self.invalid_rate:
            output = _break(output, request.output_schema)
        text = output if isinstance(output, str) else json.dumps(output)
        return ModelReply(
            output=output,
            input_tokens=max(1, (len(request.prompt) + len(request.system or "")) // 4),
            output_tokens=max(1, len(text) // 4),
            model="sim",
            synthetic=True,
        )

    def item_accuracy(self, item_key: str) -> float:
        """The chance that a vote on this item is right: ``accuracy``, or the item's own draw under ``difficulty``."""
        if self.difficulty <= 0 or self.accuracy in (0.0, 1.0):
            return self.accuracy
        k = self.difficulty
        return _rng(f"{self.seed}|{item_key}|difficulty").betavariate(self.accuracy * k, (1.0 - self.accuracy) * k)

    def _answer(self, request: ModelRequest, rng: random.Random) -> Any:
        # every vote of an item (task ids are <item>#<slot>) shares the item's accuracy
        correct = rng.random() < self.item_accuracy(request.task_id.rpartition("#")[0] or request.task_id)
        schema = request.output_schema
        if schema is None:
            if request.expected is not None and correct:
                return str(request.expected)
            pool = [a for a in _FREE_TEXT_ANSWERS if a != request.expected] or _FREE_TEXT_ANSWERS
            return rng.choice(pool)
        output = fill(schema, rng)
        if request.answer_field and request.expected is not None:
            field_schema = _field_schema(schema, request.answer_field)
            value = request.expected if correct else _wrong(request.expected, field_schema, rng)
            _set_path(output, request.answer_field, value)
        return output


def _uniforms(key: str) -> tuple[float, float, float, float]:
    """Four uniform numbers in [0, 1) from a string, the same in every process; cheaper than seeding a generator."""
    digest = hashlib.blake2b(key.encode(), digest_size=32).digest()
    return tuple(int.from_bytes(digest[i : i + 8], "big") / 2**64 for i in range(0, 32, 8))  # type: ignore[return-value]


def _rng(key: str) -> random.Random:
    """A generator seeded from a string, the same in every process (str hashes are salted per process)."""
    return random.Random(int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big"))


# what the simulator builds at most for one value, whatever minItems / minLength a schema asks for
_MAX_FILL_ITEMS = 100
_MAX_FILL_CHARS = 10_000


def fill(schema: Any, rng: random.Random, depth: int = 0) -> Any:
    """A value valid under a (simple) JSON Schema: enums, consts, numbers, strings, arrays and objects.

    Any schema gets a value without an error: one no value fits (``enum: []``,
    ``minimum`` above ``maximum``, ``false``) gets one that misses it.
    """
    if not isinstance(schema, dict):
        return None if schema is False else "[sim] " + rng.choice(_PHRASES)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return rng.choice(schema["enum"]) if isinstance(schema["enum"], list) and schema["enum"] else None
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return fill(schema[key][0], rng, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        kind = "object" if "properties" in schema else "string"
    if kind == "object":
        properties = schema.get("properties", {})
        return {name: fill(sub, rng, depth + 1) for name, sub in properties.items()} if isinstance(properties, dict) else {}
    if kind == "array":
        low = min(int(schema.get("minItems", 1)), _MAX_FILL_ITEMS)
        high = max(low, min(int(schema.get("maxItems", 3)), 3 if depth < 3 else low))
        return [fill(schema.get("items", {}), rng, depth + 1) for _ in range(rng.randint(low, high))]
    if kind in ("integer", "number"):
        open_low = "minimum" not in schema and "exclusiveMinimum" in schema
        open_high = "maximum" not in schema and "exclusiveMaximum" in schema
        given_low = schema.get("minimum", schema.get("exclusiveMinimum"))
        given_high = schema.get("maximum", schema.get("exclusiveMaximum"))
        # a schema may bound one side only: take 100 from the other
        if given_low is not None:
            bottom: float = given_low
        else:
            bottom = 0 if given_high is None or given_high >= 100 else given_high - 100
        top: float = given_high if given_high is not None else bottom + 100
        if kind == "integer":
            low_int = math.floor(bottom) + 1 if open_low else math.ceil(bottom)
            high_int = math.ceil(top) - 1 if open_high else math.floor(top)
            value: float = rng.randint(low_int, high_int) if low_int <= high_int else low_int
            return value
        if not (_fits_float(bottom) and _fits_float(top)) or bottom > top:
            return bottom  # no number fits (or none that a float can hold): the output will miss the schema
        value = round(rng.uniform(float(bottom), float(top)), 3)
        inside = (value > bottom if open_low else value >= bottom) and (value < top if open_high else value <= top)
        # rounding can land on an exclusive bound or outside a narrow range
        return value if inside else (bottom + top) / 2
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    text = "[sim] " + rng.choice(_PHRASES)
    low, high = min(int(schema.get("minLength", 0)), _MAX_FILL_CHARS), int(schema.get("maxLength", _MAX_FILL_CHARS))
    return (text + " " * max(0, low - len(text)))[:high]


def _fits_float(value: float) -> bool:
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _field_schema(schema: dict[str, Any], path: str) -> dict[str, Any]:
    node: Any = schema
    for part in path.split("."):
        properties = node.get("properties") if isinstance(node, dict) else None
        node = properties.get(part, {}) if isinstance(properties, dict) else {}
    return node if isinstance(node, dict) else {}


def _set_path(output: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = output
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def _wrong(expected: Any, schema: dict[str, Any], rng: random.Random) -> Any:
    if "enum" in schema:
        others = [v for v in schema["enum"] if v != expected]
        return rng.choice(others) if others else expected
    if isinstance(expected, bool):
        return not expected
    if isinstance(expected, (int, float)):
        return expected + rng.choice([-2, -1, 1, 2])
    return rng.choice([*_FREE_TEXT_ANSWERS, "other"])


def _break(output: Any, schema: dict[str, Any] | None) -> Any:
    """An output that misses the schema, as a model sometimes returns."""
    if schema is None or not isinstance(output, dict):
        return output
    required = schema.get("required")
    if required:
        broken = dict(output)
        broken.pop(required[0], None)
        return broken
    # with no required key, leaving one out is still valid: answer with cut-off JSON text, not an object
    return json.dumps(output)[:-1]
