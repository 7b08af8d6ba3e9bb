"""Voting strategies end to end through aggregate(): weighted, mean/median, threshold, judge, early stop; and a
statistical check that majority voting over the simulator lands where probability says it should."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any

import pytest

from fanout_core.aggregation import aggregate
from fanout_core.job import InvalidJob, Job, parse_job
from fanout_core.providers.base import ModelRequest
from fanout_core.providers.simulator import Simulator
from fanout_core.report import report_markdown
from fanout_core.runner import run_batch
from fanout_core.second_pass import judge_task
from fanout_core.stopping import rule_for, vote_weights
from fanout_core.voting import valid_votes
from tests.factories import batch_for
from tests.fakes import MemoryRunStore

LABELS = ["positive", "neutral", "negative"]


def job_with(strategy: str, schema: dict[str, Any], field: str | None, votes: int = 5, **aggregate_options: Any) -> Job:
    data: dict[str, Any] = {
        "job_id": "strategies",
        "pattern": "voting",
        "votes": votes,
        "prompt": "Q: {text}",
        "output_schema": schema,
        "aggregate": {"strategy": strategy, **({"field": field} if field else {}), **aggregate_options},
        "items": [{"id": "a", "text": "x"}],
    }
    return parse_job(data)


def records(*outputs: Any, models: list[str] | None = None) -> list[dict[str, Any]]:
    return [
        {
            "task_id": f"a#v{n}",
            "item_id": "a",
            "slot": f"v{n}",
            "vote": n,
            "status": "ok",
            "output": out,
            "error": None,
            "model": (models or ["m"] * len(outputs))[n - 1],
            "usage": {"input_tokens": 1, "output_tokens": 1},
            "attempts": 1,
            "latency_ms": 1.0,
        }
        for n, out in enumerate(outputs, start=1)
    ]


NUMBER = {"type": "object", "required": ["score"], "properties": {"score": {"type": "number"}}}
LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}}
FLAGS = {"type": "object", "required": ["flags"], "properties": {"flags": {"type": "array", "items": {"type": "string"}}}}


def test_median_resists_an_outlier_and_reports_the_iqr() -> None:
    job = job_with("median", NUMBER, "score")

    item = aggregate(job, job.items or [], records(*({"score": s} for s in (4, 5, 5, 6, 100))))["items"][0]

    assert item["answer"] == 5
    assert item["n"] == 5 and item["spread"] == {"iqr": 1.0}
    assert item["confidence"] is None


def test_mean_reports_the_stdev() -> None:
    job = job_with("mean", NUMBER, "score", votes=4)

    item = aggregate(job, job.items or [], records(*({"score": s} for s in (2, 4, 4, 6))))["items"][0]

    assert item["answer"] == 4.0
    assert item["spread"]["stdev"] == pytest.approx(1.632993, rel=1e-5)


def test_weighted_votes_let_a_trusted_model_outvote_two_others() -> None:
    job = job_with("weighted", LABEL, "label", votes=3, weights={"bedrock:big": 3, "sim": 1})
    outputs = [{"label": "negative"}, {"label": "positive"}, {"label": "positive"}]

    item = aggregate(job, job.items or [], records(*outputs, models=["bedrock:big", "sim", "sim"]))["items"][0]

    assert item["answer"] == "negative"
    assert item["confidence"] == 0.6  # 3 of 5 weight
    assert item["votes"] == {"negative": 1, "positive": 2}
    assert item["weighted_votes"] == {"negative": 3.0, "positive": 2.0}


def test_threshold_keeps_elements_reported_by_at_least_k_votes_with_their_support() -> None:
    job = job_with("threshold", FLAGS, "flags", votes=4, k=2)
    outputs = [
        {"flags": ["Refund delay", "rude agent"]},
        {"flags": ["refund delay.", "refund delay", "billing error"]},  # a vote repeating an element counts once
        {"flags": ["Billing error"]},
        {"flags": []},
    ]

    item = aggregate(job, job.items or [], records(*outputs))["items"][0]

    assert item["answer"] == ["Refund delay", "billing error"]
    assert [(e["value"], e["support"], e["kept"]) for e in item["elements"]] == [
        ("Refund delay", 2, True),
        ("billing error", 2, True),
        ("rude agent", 1, False),
    ]


def test_threshold_defaults_to_more_than_half_of_the_valid_votes() -> None:
    job = job_with("threshold", FLAGS, "flags", votes=5)
    outputs = [{"flags": ["a"]}, {"flags": ["a", "b"]}, {"flags": ["a", "b"]}, {"flags": ["b"]}, {"flags": ["c"]}]

    item = aggregate(job, job.items or [], records(*outputs))["items"][0]

    assert item["k"] == 3 and item["answer"] == ["a", "b"]


def judge_record(job: Job, votes: list[dict[str, Any]], status: str = "ok", output: Any = None) -> dict[str, Any]:
    """The record of the judge's second-pass task for item 'a', asked about the candidates of ``votes``."""
    task = judge_task(job, (job.items or [])[0], valid_votes(job, votes), "bedrock:judge")
    assert task is not None
    return {
        "task_id": task["task_id"],
        "item_id": "a",
        "slot": task["slot"],
        "kind": "judge",
        "status": status,
        "output": output,
        "error": None if status == "ok" else "ThrottlingException: slow down",
        "model": "bedrock:judge",
        "usage": {"input_tokens": 50, "output_tokens": 10},
        "attempts": 1,
    }


def test_judge_picks_a_candidate_and_its_reason_and_usage_are_kept() -> None:
    # Given three votes with two distinct candidates, and the judge's second-pass record picking the second
    job = job_with("judge", {"type": "object", "properties": {"label": {"type": "string"}}}, "label", votes=3)
    votes = records({"label": "positive"}, {"label": "negative"}, {"label": "Negative"})
    verdict = judge_record(job, votes, output={"best": 2, "reason": "the ticket complains"})

    # When the item is aggregated
    result = aggregate(job, job.items or [], [*votes, verdict])
    item = result["items"][0]

    # Then the judge's pick is the answer, with its reason, and its call is in the usage
    assert "[1] positive" in judge_task(job, (job.items or [])[0], valid_votes(job, votes), "j")["prompt"]  # type: ignore[index]
    assert item["answer"] == "negative" and item["confidence"] == pytest.approx(2 / 3, rel=1e-3)
    assert item["judge"] == {"choice": 2, "reason": "the ticket complains", "model": "bedrock:judge"}
    assert result["usage"]["by_model"]["bedrock:judge"] == {"model_calls": 1, "input_tokens": 50, "output_tokens": 10}
    assert "judge: the ticket complains" in report_markdown(result)


def test_a_failed_judge_falls_back_to_the_majority_and_says_so() -> None:
    job = job_with("judge", LABEL, "label", votes=3)
    votes = records({"label": "positive"}, {"label": "negative"}, {"label": "negative"})

    item = aggregate(job, job.items or [], [*votes, judge_record(job, votes, status="failed")])["items"][0]

    assert item["answer"] == "negative"
    assert item["judge"] == {"error": "ThrottlingException: slow down", "fallback": "majority"}


def test_a_verdict_about_other_candidates_is_not_used() -> None:
    # Given a judge's record from a run whose votes differed (it was asked about other candidates)
    job = job_with("judge", LABEL, "label", votes=3)
    earlier = records({"label": "positive"}, {"label": "neutral"}, {"label": "negative"})
    stale = judge_record(job, earlier, output={"best": 1, "reason": "positive"})
    votes = records({"label": "positive"}, {"label": "negative"}, {"label": "negative"})

    # When the item is aggregated with the votes it has now
    item = aggregate(job, job.items or [], [*votes, stale])["items"][0]

    # Then the stale verdict is not taken: the majority decides and the missing verdict is named
    assert item["answer"] == "negative"
    assert item["judge"]["fallback"] == "majority" and "not recorded" in item["judge"]["error"]


@pytest.mark.parametrize(
    ("strategy", "schema", "field", "options", "message"),
    [
        ("mean", LABEL, "label", {}, "aggregate.field: 'label' must be a number"),
        ("threshold", LABEL, "label", {}, "aggregate.field: strategy 'threshold' needs a list field"),
        ("majority", LABEL, "label", {"weights": {"m": 2}}, "aggregate.weights: only for strategy 'weighted'"),
        ("majority", LABEL, "label", {"stop_when_agree": 5}, "aggregate.stop_when_agree: 5 must be fewer"),
        ("median", NUMBER, "score", {"stop_when_agree": 2}, "aggregate.stop_when_agree: only for strategies"),
        ("threshold", FLAGS, "flags", {"k": 9}, "aggregate.k: 9 is more than the 5 votes"),
    ],
)
def test_strategy_options_are_checked(
    strategy: str, schema: dict[str, Any], field: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidJob) as raised:
        job_with(strategy, schema, field, **options)
    assert str(raised.value).startswith(message)


def batch_of(job: Job, items: int) -> dict[str, Any]:
    from fanout_core.planning import expand_tasks

    tasks = expand_tasks(job, [{"id": f"i{n}", "text": "x", "expected": LABELS[n % 3]} for n in range(items)], "sim")
    stopping = {"stop": rule.to_batch(), "vote_weights": vote_weights(job, "sim")} if (rule := rule_for(job)) else {}
    shared = {"system": None, "inference": {"max_tokens": 8}, "output_schema": LABEL, "answer_field": "label"}
    return dict(batch_for(tasks, **shared, **stopping))


def test_early_stop_skips_the_remaining_votes_of_items_whose_first_votes_agree() -> None:
    # Given 5 votes per item, stopping when the first 3 agree, on a model that is right 90% of the time
    job = job_with("majority", LABEL, "label", votes=5, stop_when_agree=3)
    batch = batch_of(job, 200)
    store = MemoryRunStore()
    sim = Simulator({"latency_ms": 0, "jitter_ms": 0, "accuracy": 0.9, "seed": 4})

    # When the batch runs
    outcome = run_batch(batch, store=store, provider_for=lambda _: sim, threads=8)

    # Then items whose first three votes agreed were not asked again, and every task has one record
    saved = outcome.counts["stopped_early"]
    assert saved > 150  # about 0.73 of 200 items agree on the first three votes, 2 votes saved each
    assert outcome.counts["model_calls"] == 1000 - saved
    assert len(store.records) == 1000
    skipped = [r for r in store.records.values() if r["status"] == "skipped"]
    assert len(skipped) == saved and all(r["slot"] in ("v4", "v5") for r in skipped)

    # and the result counts them as saved calls, not failures
    items = [{"id": entry["item"]["id"], "text": "x"} for entry in batch["items"]]
    result = aggregate(job, items, list(store.records.values()))
    assert result["status"] == "complete"
    assert result["counts"]["skipped"] == saved and result["counts"]["failed"] == 0
    assert result["usage"]["calls_saved"] == saved
    agreed = [i for i in result["items"] if i["valid_votes"] == 3]
    assert len(agreed) * 2 == saved and all(i["confidence"] == 1.0 and i["status"] == "ok" for i in agreed)


def expected_plurality_accuracy(accuracy: float, votes: int, labels: int) -> float:
    """Exact P(plurality is right) when wrong votes spread evenly over the other labels, ties to the earliest vote."""
    wrong = (1 - accuracy) / (labels - 1)
    total = 0.0
    for sequence in itertools.product(range(labels), repeat=votes):  # label 0 is the right one
        probability = math.prod(accuracy if v == 0 else wrong for v in sequence)
        counts = [sequence.count(label) for label in range(labels)]
        top = max(counts)
        winner = next(v for v in sequence if counts[v] == top)  # the earliest vote among the tied answers
        total += probability if winner == 0 else 0.0
    return total


@pytest.mark.slow
def test_majority_accuracy_matches_probability_theory_on_the_simulator() -> None:
    # Given 2,400 items x 5 votes from a simulator that is right 70% of the time over 3 labels
    items_n, votes, accuracy = 2400, 5, 0.7
    job = parse_job(
        {
            "job_id": "stats",
            "pattern": "voting",
            "votes": votes,
            "prompt": "{text}",
            "output_schema": LABEL,
            "aggregate": {"field": "label"},
            "items": [{"id": f"i{n}", "text": "t", "expected": LABELS[n % 3]} for n in range(items_n)],
        }
    )
    sim = Simulator({"latency_ms": 0, "jitter_ms": 0, "accuracy": accuracy, "seed": 17})
    recs = []
    for item in job.items or []:
        for v in range(1, votes + 1):
            request = ModelRequest(
                task_id=f"{item['id']}#v{v}", prompt="t", output_schema=LABEL, expected=item["expected"], answer_field="label"
            )
            recs.append(
                {
                    "task_id": request.task_id,
                    "item_id": item["id"],
                    "slot": f"v{v}",
                    "status": "ok",
                    "output": sim.invoke(request, 1).output,
                    "model": "sim",
                    "attempts": 1,
                }
            )

    # When they are aggregated
    evaluation = aggregate(job, job.items or [], recs)["evaluation"]

    # Then single-call accuracy is the simulator's and aggregated accuracy the exact expectation, within 3 sigma
    expected = expected_plurality_accuracy(accuracy, votes, 3)
    sigma_vote = math.sqrt(accuracy * (1 - accuracy) / (items_n * votes))
    sigma_item = math.sqrt(expected * (1 - expected) / items_n)
    assert evaluation["single_call_accuracy"] == pytest.approx(accuracy, abs=3 * sigma_vote)
    assert evaluation["accuracy"] == pytest.approx(expected, abs=3 * sigma_item)
    assert expected > 0.88  # the uplift voting promises: 0.7 per call, about 0.89 aggregated


def _votes(values: list[Any]) -> list[Any]:
    from fanout_core.voting import Vote

    return [Vote(n, v, {"score": v}, "sim", str(v)) for n, v in enumerate(values)]


def _strict(value: Any) -> Any:
    """value through strict JSON: NaN or Infinity anywhere fails."""
    return json.loads(json.dumps(value, allow_nan=False))


@pytest.mark.parametrize("strategy", ["mean", "median"])
def test_numbers_outside_float_range_are_aggregated_exactly(strategy: str) -> None:
    from fanout_core.voting import numeric

    # Given 401-digit integer votes (schema-valid, far past a float's range)
    big = 10**400
    out = _strict(numeric(_votes([big, big + 2, big + 4]), strategy))

    # Then the answer is exact, and every figure is strict JSON
    assert out["answer"] == big + 2 and out["n"] == 3
    assert out["values"] == [big, big + 2, big + 4]


def test_float_votes_whose_sum_overflows_have_a_finite_mean_and_spread() -> None:
    from fanout_core.voting import numeric

    out = _strict(numeric(_votes([1.7e308, 1.7e308, -1.7e308]), "mean"))
    assert out["answer"] == pytest.approx(1.7e308 / 3)
    assert out["spread"]["stdev"] > 1e308  # an exact integer where a float overflows


def test_numerals_that_are_not_finite_numbers_are_not_votes() -> None:
    from fanout_core.voting import numeric

    out = _strict(numeric(_votes(["nan", "inf", "-Infinity", "1e999999999", "4", " 6 ", "1e400"]), "median"))
    assert (out["n"], out["answer"]) == (3, 6.0)


def test_a_huge_spread_is_written_short_in_the_reports() -> None:
    from fanout_core.voting import short_number

    assert short_number(2.5) == "2.5"
    assert short_number(123456 * 10**400) == "1.23456e+405"
    assert short_number(-(10**400)) == "-1.0e+400"


@pytest.mark.parametrize("text", ['{"n": ' + "9" * 5000 + "}", "[" * 100_000 + "]" * 100_000])
def test_a_reply_json_cannot_read_stays_text_for_validation_to_refuse(text: str) -> None:
    from fanout_core.providers.bedrock import output_of
    from fanout_core.providers.openai_compat import _parse_json

    # an integer past 4,300 digits raises ValueError, deep nesting RecursionError: neither may end the batch
    assert _parse_json(text) == text
    assert output_of({"output": {"message": {"content": [{"text": text}]}}}, structured=True) == text
