"""The built-in simulator: deterministic per seed, schema-valid, accurate at the rate asked, faults on demand."""

from __future__ import annotations

import bisect
import math
import random
import statistics
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from fanout_core.providers.base import ModelError, ModelRequest
from fanout_core.providers.simulator import Simulator, fill

LABELS = ["positive", "neutral", "negative"]
LABEL_SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}}


def sim(**options: float) -> Simulator:
    return Simulator(dict(options), sleep=lambda s: None)


def request(
    task_id: str, schema: dict[str, Any] | None = LABEL_SCHEMA, expected: Any = None, field: str | None = "label"
) -> ModelRequest:
    return ModelRequest(
        task_id=task_id, prompt=f"Classify {task_id}", output_schema=schema, expected=expected, answer_field=field
    )


def outputs(simulator: Simulator, count: int = 50, **kwargs: Any) -> list[Any]:
    return [simulator.invoke(request(f"t-{n}#v1", **kwargs), attempt=1).output for n in range(count)]


def test_same_seed_gives_the_same_outputs() -> None:
    assert outputs(sim(seed=11)) == outputs(sim(seed=11))


def test_another_seed_gives_other_outputs() -> None:
    assert outputs(sim(seed=11)) != outputs(sim(seed=12))


def test_outputs_do_not_depend_on_the_attempt() -> None:
    # a retried call must agree with the first one, or retries would change votes
    simulator = sim(seed=3)

    first = [simulator.invoke(request(f"t-{n}"), attempt=1).output for n in range(30)]
    retried = [simulator.invoke(request(f"t-{n}"), attempt=4).output for n in range(30)]

    assert first == retried


def test_replies_are_marked_synthetic_and_count_tokens() -> None:
    reply = sim().invoke(request("a#v1"), attempt=1)

    assert reply.synthetic is True
    assert reply.model == "sim"
    assert reply.input_tokens >= 1 and reply.output_tokens >= 1


def test_the_simulator_sleeps_for_its_latency() -> None:
    slept: list[float] = []
    simulator = Simulator({"latency_ms": 200, "jitter_ms": 0}, sleep=slept.append)

    simulator.invoke(request("a#v1"), attempt=1)

    assert slept == [0.2]


SCHEMAS = {
    "enum": LABEL_SCHEMA,
    "integer range": {
        "type": "object",
        "required": ["score"],
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 5}},
    },
    "negative integer range": {
        "type": "object",
        "required": ["delta"],
        "properties": {"delta": {"type": "integer", "minimum": -10, "maximum": -3}},
    },
    "integer with only a maximum": {
        "type": "object",
        "required": ["n"],
        "properties": {"n": {"type": "integer", "maximum": -1}},
    },
    "number": {
        "type": "object",
        "required": ["p"],
        "properties": {"p": {"type": "number", "minimum": 0, "maximum": 1}},
    },
    "number with exclusive bounds": {
        "type": "object",
        "required": ["p"],
        "properties": {"p": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}},
    },
    "boolean": {"type": "object", "required": ["spam"], "properties": {"spam": {"type": "boolean"}}},
    "string lengths": {
        "type": "object",
        "required": ["s", "t"],
        "properties": {"s": {"type": "string", "minLength": 60}, "t": {"type": "string", "maxLength": 5}},
    },
    "array of objects with required keys": {
        "type": "object",
        "required": ["findings"],
        "properties": {
            "findings": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["title", "severity"],
                    "additionalProperties": False,
                    "properties": {"title": {"type": "string"}, "severity": {"enum": ["low", "medium", "high"]}},
                },
            }
        },
    },
    "nested objects": {
        "type": "object",
        "required": ["meta"],
        "properties": {
            "meta": {
                "type": "object",
                "required": ["lang", "scores"],
                "properties": {
                    "lang": {"const": "en"},
                    "scores": {
                        "type": "object",
                        "required": ["a"],
                        "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 3}, "b": {"type": ["number", "null"]}},
                    },
                },
            }
        },
    },
}


@pytest.mark.parametrize("schema", SCHEMAS.values(), ids=SCHEMAS.keys())
def test_outputs_validate_against_the_schema(schema: dict[str, Any]) -> None:
    validator = Draft202012Validator(schema)
    simulator = sim(seed=5)

    produced = outputs(simulator, count=300, schema=schema, field=None)

    problems = [(out, e.message) for out in produced for e in validator.iter_errors(out)]
    assert problems == []
    # and the values vary (a constant would not rehearse anything), unless the schema allows only one
    assert len({repr(o) for o in produced}) > 1


def test_fill_respects_integer_bounds_exactly() -> None:
    rng = random.Random(1)
    schema = {"type": "integer", "minimum": 1, "maximum": 3}

    values = {fill(schema, rng) for _ in range(200)}

    assert values == {1, 2, 3}


@pytest.mark.parametrize(
    "schema",
    [
        {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        {"type": "number", "minimum": 0.1001, "maximum": 0.1004},
        {"type": "number", "maximum": -5},
        {"type": "integer", "exclusiveMinimum": 0.5, "exclusiveMaximum": 3},
        {"type": "integer", "minimum": 1000},
    ],
    ids=["exclusive 0..1", "narrow range", "maximum only", "fractional exclusive integer bounds", "minimum only"],
)
def test_fill_stays_inside_numeric_bounds_over_many_draws(schema: dict[str, Any]) -> None:
    # rounding and one-sided bounds are where a value slips out; 20000 draws find a 1-in-2000 slip
    rng = random.Random(0)
    validator = Draft202012Validator(schema)

    bad = [v for v in (fill(schema, rng) for _ in range(20_000)) if not validator.is_valid(v)]

    assert bad == []


def test_accuracy_one_always_answers_the_expected_label() -> None:
    produced = outputs(sim(accuracy=1.0), count=200, expected="neutral")

    assert {o["label"] for o in produced} == {"neutral"}


def test_accuracy_zero_never_answers_the_expected_label() -> None:
    produced = outputs(sim(accuracy=0.0), count=200, expected="neutral")

    labels = {o["label"] for o in produced}
    assert "neutral" not in labels
    assert labels <= set(LABELS)


def test_accuracy_zero_on_a_nested_answer_field() -> None:
    schema = {
        "type": "object",
        "required": ["result"],
        "properties": {"result": {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}}},
    }

    produced = outputs(sim(accuracy=0.0), count=100, schema=schema, expected="negative", field="result.label")

    assert all(o["result"]["label"] in ("positive", "neutral") for o in produced)


def test_accuracy_is_met_over_many_tasks() -> None:
    # Given 2000 tasks whose expected label is known
    simulator = sim(accuracy=0.7, seed=21)

    # When each is answered once
    produced = outputs(simulator, count=2000, expected="negative")

    # Then the share answered correctly is the accuracy asked for
    share = sum(o["label"] == "negative" for o in produced) / len(produced)
    assert abs(share - 0.7) <= 0.03, share


def test_free_text_answers_follow_accuracy_too() -> None:
    right = outputs(sim(accuracy=1.0), count=50, schema=None, expected="yes", field=None)
    wrong = outputs(sim(accuracy=0.0), count=50, schema=None, expected="yes", field=None)

    assert set(right) == {"yes"}
    assert "yes" not in wrong


def test_throttle_rate_one_always_throttles() -> None:
    simulator = sim(throttle_rate=1.0)

    for attempt in (1, 2, 5):
        with pytest.raises(ModelError) as caught:
            simulator.invoke(request("a#v1"), attempt=attempt)
        assert caught.value.kind == "throttled"
        assert caught.value.code == "ThrottlingException"


def test_error_rate_one_gives_transient_errors() -> None:
    with pytest.raises(ModelError) as caught:
        sim(error_rate=1.0).invoke(request("a#v1"), attempt=1)

    assert caught.value.kind == "transient"


def test_a_throttled_call_can_succeed_on_a_later_attempt() -> None:
    simulator = sim(throttle_rate=0.5, seed=2)

    def first_ok_attempt(task_id: str) -> int:
        for attempt in range(1, 30):
            try:
                simulator.invoke(request(task_id), attempt=attempt)
                return attempt
            except ModelError:
                continue
        return 0

    attempts = [first_ok_attempt(f"t-{n}") for n in range(40)]
    assert 0 not in attempts
    assert max(attempts) > 1  # some were throttled first


@pytest.mark.parametrize(
    "schema",
    [
        LABEL_SCHEMA,
        SCHEMAS["array of objects with required keys"],
        {"type": "object", "properties": {"label": {"enum": LABELS}}},
        {"type": "object", "properties": {"label": {"enum": LABELS}}, "additionalProperties": False},
    ],
    ids=["required enum", "required array", "no required keys", "closed object"],
)
def test_invalid_rate_one_gives_outputs_that_miss_the_schema(schema: dict[str, Any]) -> None:
    validator = Draft202012Validator(schema)

    produced = outputs(sim(invalid_rate=1.0), count=50, schema=schema, field=None)

    assert all(not validator.is_valid(o) for o in produced), [o for o in produced if validator.is_valid(o)][:3]


def test_invalid_rate_zero_gives_valid_outputs() -> None:
    validator = Draft202012Validator(LABEL_SCHEMA)

    assert all(validator.is_valid(o) for o in outputs(sim(invalid_rate=0.0), count=100))


# items that differ in difficulty: each item's accuracy is drawn from Beta(accuracy*K, (1-accuracy)*K)


def _beta_cdf(x: float, a: float, b: float, steps: int = 20_000) -> float:
    """The Beta CDF by the midpoint rule on the density (an oracle independent of the simulator's generator)."""
    norm = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b))
    h = x / steps
    return norm * h * sum(((i + 0.5) * h) ** (a - 1) * (1 - (i + 0.5) * h) ** (b - 1) for i in range(steps))


def test_without_difficulty_every_item_has_the_accuracy_asked_for() -> None:
    simulator = sim(accuracy=0.7)

    assert {simulator.item_accuracy(f"item-{n}") for n in range(100)} == {0.7}


def test_item_accuracies_follow_the_beta_distribution() -> None:
    # Given accuracy 0.7 and concentration 4: Beta(2.8, 1.2)
    simulator = sim(accuracy=0.7, difficulty=4, seed=9)
    n = 4000

    # When 4000 items draw their accuracy
    draws = sorted(simulator.item_accuracy(f"item-{i}") for i in range(n))

    # Then the mean is within 5 standard errors of 0.7 (sd of Beta(2.8, 1.2) = sqrt(0.21 / 5))
    assert abs(statistics.fmean(draws) - 0.7) < 5 * math.sqrt(0.21 / 5 / n)
    # and the empirical CDF is within the DKW bound of the Beta CDF: P(sup |F_n - F| > 0.035) <= 2 exp(-2 n 0.035^2) ~ 1e-4
    for x in (0.2, 0.4, 0.6, 0.8, 0.95):
        empirical = bisect.bisect_right(draws, x) / n
        assert abs(empirical - _beta_cdf(x, 2.8, 1.2)) < 0.035, x


def test_item_accuracy_is_fixed_per_item_and_seed() -> None:
    first = [sim(accuracy=0.6, difficulty=2, seed=4).item_accuracy(f"i{n}") for n in range(20)]

    assert first == [sim(accuracy=0.6, difficulty=2, seed=4).item_accuracy(f"i{n}") for n in range(20)]
    assert first != [sim(accuracy=0.6, difficulty=2, seed=5).item_accuracy(f"i{n}") for n in range(20)]
    assert len(set(first)) == 20


@pytest.mark.parametrize("difficulty", [None, 4.0])
def test_votes_of_one_item_share_its_accuracy(difficulty: float | None) -> None:
    # Given 2000 items with 8 votes each at accuracy 0.7
    options: dict[str, float] = {"accuracy": 0.7, "seed": 13}
    if difficulty is not None:
        options["difficulty"] = difficulty
    simulator = sim(**options)
    items, votes = 2000, 8

    # When every vote is asked
    right = [
        sum(
            simulator.invoke(request(f"item-{i}#v{v}", expected="neutral"), attempt=1).output["label"] == "neutral"
            for v in range(1, votes + 1)
        )
        for i in range(items)
    ]

    # Then single votes are right 70% of the time either way, within 5 standard errors (the votes of an item are
    # correlated under difficulty: the beta-binomial variance is (K + 8) / (K + 1) times the binomial one)
    inflation = (difficulty + votes) / (difficulty + 1) if difficulty else 1.0
    assert abs(sum(right) / (items * votes) - 0.7) < 5 * math.sqrt(0.21 * inflation / (items * votes))
    # and the share of items with all 8 votes right is the beta-binomial P(X = 8) = prod (aK + j) / (K + j),
    # or 0.7^8 without difficulty: 0.204 against 0.058, far apart
    k = difficulty
    p_all = 0.7**votes if k is None else math.prod((0.7 * k + j) / (k + j) for j in range(votes))
    share = sum(1 for r in right if r == votes) / items
    assert abs(share - p_all) < 5 * math.sqrt(p_all * (1 - p_all) / items)
