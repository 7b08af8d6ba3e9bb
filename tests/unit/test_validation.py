"""Output schemas are data: refused in Plan when they could fetch, hang or crash, and harmless at run time anyway."""

from __future__ import annotations

import random
import time
from typing import Any

import pytest

from fanout_core.providers.base import ModelReply, ModelRequest
from fanout_core.providers.simulator import Simulator, fill
from fanout_core.runner import RetryPolicy, run_batch
from fanout_core.validation import SchemaCheck, SchemaRefused, check_output_schema, strict_json
from tests.factories import batch_for, vote_tasks
from tests.fakes import MemoryRunStore

CATASTROPHIC = r"^(\[sim\] |[a-z]|[a-z]+| )*!$"


def obj(**properties: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties}


# (name, schema, the start of the refusal)
REFUSED: list[tuple[str, dict[str, Any], str]] = [
    ("remote ref", obj(x={"$ref": "http://127.0.0.1:9/x.json"}), "output_schema.properties.x.$ref: refers outside the schema"),
    ("file ref", obj(x={"$ref": "file:///etc/passwd"}), "output_schema.properties.x.$ref: refers outside the schema"),
    ("relative ref", obj(x={"$ref": "defs.json#/a"}), "output_schema.properties.x.$ref: refers outside the schema"),
    ("dangling ref", obj(x={"$ref": "#/$defs/nope"}), "output_schema.properties.x.$ref: '#/$defs/nope' does not resolve"),
    ("ref to itself", {"type": "object", "$ref": "#"}, "output_schema.$ref: makes a reference loop"),
    (
        "ref loop through allOf",
        {"type": "object", "$defs": {"a": {"$ref": "#/$defs/b"}, "b": {"allOf": [{"$ref": "#/$defs/a"}]}}},
        "output_schema.$defs.",
    ),
    ("dynamicRef without anchor", obj(x={"$dynamicRef": "#meta"}), "output_schema.properties.x.$dynamicRef: '#meta' has no"),
    ("look-ahead pattern", obj(x={"type": "string", "pattern": "(?=a)a"}), "output_schema.properties.x.pattern: pattern"),
    ("back-reference key", {"type": "object", "patternProperties": {r"(a)\1": {}}}, "output_schema.patternProperties:"),
    ("ref to a non-schema", {**obj(x={"$ref": "#/required/0"}), "required": ["x"]}, "output_schema.properties.x.$ref:"),
    ("other dialect", {"$schema": "http://json-schema.org/draft-07/schema#", "type": "object"}, "output_schema.$schema:"),
    (
        "checks that multiply",
        {
            "type": "object",
            "$defs": {"a0": {"type": "string"}}
            | {f"a{n}": {"allOf": [{"$ref": f"#/$defs/a{n - 1}"}, {"$ref": f"#/$defs/a{n - 1}"}]} for n in range(1, 30)},
        },
        "output_schema.$defs.a",
    ),
    ("nested too deep", {"type": "object"}, ""),
]


def _nest(depth: int) -> dict[str, Any]:
    node: dict[str, Any] = {"type": "string"}
    for _ in range(depth):
        node = {"type": "object", "properties": {"x": node}}
    return node


REFUSED[-1] = ("nested too deep", _nest(200), "output_schema.properties.x")


@pytest.mark.parametrize(("name", "schema", "message"), REFUSED, ids=[c[0] for c in REFUSED])
def test_a_schema_that_could_fetch_hang_or_crash_is_refused_by_its_path(name: str, schema: dict[str, Any], message: str) -> None:
    started = time.monotonic()
    with pytest.raises(SchemaRefused) as refused:
        check_output_schema(schema)
    assert str(refused.value).startswith(message), str(refused.value)
    assert time.monotonic() - started < 2


ACCEPTED = [
    obj(kids={"type": "array", "items": {"$ref": "#"}}),
    {"type": "object", "$defs": {"l": {"enum": ["a", "b"]}}, "properties": {"label": {"$ref": "#/$defs/l"}}},
    {"type": "object", "$dynamicAnchor": "node", "properties": {"kids": {"type": "array", "items": {"$dynamicRef": "#node"}}}},
    {
        "$id": "https://example.com/root.json",
        "type": "object",
        "$defs": {"x": {"type": "string"}},
        "properties": {"a": {"$ref": "https://example.com/root.json#/$defs/x"}},
    },
    obj(x={"type": "string", "pattern": CATASTROPHIC}),
]


@pytest.mark.parametrize("schema", ACCEPTED)
def test_references_inside_the_schema_and_linear_patterns_are_accepted(schema: dict[str, Any]) -> None:
    check_output_schema(schema)


def test_a_backtracking_pattern_is_matched_in_linear_time() -> None:
    # Given the pattern that hung a batch with Python's backtracking matcher
    check = SchemaCheck(obj(x={"type": "string", "pattern": CATASTROPHIC}))

    # When outputs that would make it backtrack are checked
    started = time.monotonic()
    problems = [check({"x": "[sim] " + "a" * n + "?"}) for n in (30, 1_000, 100_000)]

    # Then each is answered (as not matching), at once
    assert all(p is not None and "does not match" in p for p in problems)
    assert time.monotonic() - started < 1
    assert check({"x": "[sim] abc!"}) is None


def test_outputs_that_strict_json_cannot_carry_miss_the_schema() -> None:
    check = SchemaCheck(obj(x={"type": "number"}))
    assert check({"x": float("nan")}) == "output.x: nan is not a JSON number"
    assert check({"x": float("inf")}) == "output.x: inf is not a JSON number"
    assert check({"x": 10**400}) is None  # a JSON integer of any size is a number
    deep: Any = 1
    for _ in range(500):
        deep = [deep]
    assert check({"x": deep}) is not None and "nested deeper" in str(check({"x": deep}))


class _Counting:
    name = "fake"

    def __init__(self) -> None:
        self.calls = 0

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        self.calls += 1
        return ModelReply(output={"x": "a"}, input_tokens=1, output_tokens=1, model="fake")


def test_a_schema_plan_would_refuse_fails_only_its_tasks_at_run_time_without_a_call() -> None:
    # Given a batch file whose schema refers outside itself (as a batch file written past Plan could)
    batch = dict(batch_for(vote_tasks(3, "fake", prompt="p"), output_schema=obj(x={"$ref": "http://127.0.0.1:9/x.json"})))
    store, provider = MemoryRunStore(), _Counting()

    # When the batch runs
    outcome = run_batch(batch, store=store, provider_for=lambda _: provider, threads=2, policy=RetryPolicy(max_attempts=1))

    # Then every task is failed with the reason, records are kept, and no call was paid for
    records = list(store.records.values())
    assert outcome.counts["failed"] == 3 and provider.calls == 0
    assert len(records) == 3 and all("refers outside the schema" in r["error"] for r in records)


@pytest.mark.parametrize(
    "schema",
    [
        obj(label={"enum": []}),
        obj(n={"type": "integer", "minimum": 5, "maximum": 1}),
        obj(n={"type": "number", "minimum": 5, "maximum": 1}),
        obj(v={"oneOf": [True]}),
        obj(a=True, b=False),
        obj(n={"type": "number", "minimum": 10**400}),
        obj(s={"type": "string", "minLength": 10**9}, a={"type": "array", "minItems": 10**9}),
    ],
)
def test_the_simulator_answers_any_schema_without_an_error(schema: dict[str, Any]) -> None:
    fill(schema, random.Random(1))
    request = ModelRequest(
        task_id="t", prompt="p", system=None, output_schema=schema, max_tokens=8, answer_field="label", expected="x"
    )
    reply = Simulator({"latency_ms": 0, "jitter_ms": 0}).invoke(request, 1)
    assert isinstance(reply.output, dict)


def test_strict_json_never_writes_nan_or_infinity() -> None:
    assert strict_json({"a": float("nan"), "b": [float("inf"), 1.5]}) == '{"a": null, "b": [null, 1.5]}'
