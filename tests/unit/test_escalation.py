"""Escalation (aggregate.escalate): doubtful items get more votes in the second pass, from a stronger model when named."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from moto import mock_aws

from fanout_core import layout
from fanout_core.aggregation import aggregate
from fanout_core.errors import InvalidJob
from fanout_core.job import parse_job
from fanout_core.planning import expand_tasks
from fanout_core.report import report_markdown
from fanout_core.second_pass import STAGE_BATCH_BASE
from fanout_core.settings import Settings
from fanout_core.steps import aggregate_step, plan, plan_second_pass
from fanout_core.store import RunStore

LABEL = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["a", "b", "c"]}}}
STRONG = "sim:accuracy=0.95"


def voting(escalate: dict[str, Any] | None, votes: int = 3, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": "esc",
        "pattern": "voting",
        "votes": votes,
        "prompt": "Label: {text}",
        "output_schema": LABEL,
        "aggregate": {"field": "label", **({"escalate": escalate} if escalate is not None else {})},
        "items": [{"id": "doubtful", "text": "x", "expected": "b"}, {"id": "sure", "text": "y", "expected": "a"}],
        **extra,
    }


def record(item: str, slot: str, label: str, model: str = "sim", tokens: int = 10) -> dict[str, Any]:
    return {
        "task_id": f"{item}#{slot}",
        "item_id": item,
        "slot": slot,
        "status": "ok",
        "output": {"label": label},
        "error": None,
        "model": model,
        "usage": {"input_tokens": tokens, "output_tokens": 2},
        "attempts": 1,
    }


def first_votes() -> list[dict[str, Any]]:
    # 'doubtful' splits 2:1 (confidence 0.67); 'sure' is unanimous
    return [
        record("doubtful", "v1", "a"),
        record("doubtful", "v2", "a"),
        record("doubtful", "v3", "b"),
        *(record("sure", f"v{n}", "a") for n in (1, 2, 3)),
    ]


@pytest.mark.parametrize(
    ("escalate", "message"),
    [
        ({"below": 1.5}, "aggregate.escalate.below: input should be less than or equal to 1"),
        ({"below": 0.7, "votes": 0}, "aggregate.escalate.votes: input should be greater than or equal to 1"),
        ({"below": 0.7, "votes": 30}, "aggregate.escalate.votes: 3 votes and 30 escalated ones exceed limits.max_votes"),
        ({"below": 0.7, "model": "gpt:4"}, "aggregate.escalate.model:"),
        ({"below": 0.7, "vote": 2}, "aggregate.escalate.vote: unknown key 'vote'; did you mean 'votes'?"),
        ({"votes": 2}, "aggregate.escalate.below: required"),
    ],
)
def test_a_wrong_escalation_is_refused_naming_the_field(escalate: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidJob) as raised:
        parse_job(voting(escalate))
    assert str(raised.value).startswith(message), str(raised.value)


def test_escalation_needs_a_vote_share() -> None:
    job = voting({"below": 0.7})
    job["output_schema"] = {"type": "object", "required": ["n"], "properties": {"n": {"type": "number"}}}
    job["aggregate"] = {"strategy": "median", "field": "n", "escalate": {"below": 0.7}}
    with pytest.raises(InvalidJob) as raised:
        parse_job(job)
    assert str(raised.value).startswith("aggregate.escalate: only for strategies 'majority', 'weighted' and 'judge'")


def test_escalation_is_for_voting_only() -> None:
    job = {
        "pattern": "sectioning",
        "sections": [{"name": "s", "prompt": "{text}"}],
        "items": [{"id": "i", "text": "t"}],
        "aggregate": {"escalate": {"below": 0.7}},
    }
    with pytest.raises(InvalidJob) as raised:
        parse_job(job)
    assert str(raised.value).startswith("aggregate.escalate: only for pattern 'voting'")


@pytest.mark.parametrize(("model", "answer"), [(STRONG, "b"), (None, "a")])
def test_a_named_models_votes_decide_and_the_jobs_own_votes_only_add(model: str | None, answer: str) -> None:
    # Given a doubtful item (2 'a' to 1 'b') whose one escalated vote says 'b'
    job = parse_job(voting({"below": 0.7, "votes": 1, **({"model": model} if model else {})}))
    escalated = record("doubtful", "escalate:1", "b", model=model or "sim", tokens=40)

    # When it is aggregated
    result = aggregate(job, job.items or [], [*first_votes(), escalated])
    doubtful, sure = result["items"]

    # Then a named (stronger) model's vote decides; the job's own model's vote is one more vote (2:2, earliest wins)
    assert doubtful["answer"] == answer
    assert doubtful["votes"] == {"a": 2, "b": 2} or doubtful["votes"] == {"b": 2, "a": 2}
    assert doubtful["escalated"] is True and "escalated" not in sure
    assert doubtful["escalation"]["first_pass"] == {"answer": "a", "confidence": 0.6667}
    assert doubtful["escalation"]["decisive"] is (model is not None)
    assert doubtful["escalation"]["votes"] == {"b": 1}
    assert doubtful["escalation"]["model_calls"] == 1 and doubtful["escalation"]["input_tokens"] == 40
    assert result["usage"]["escalation"] == {
        "items": 1,
        "model_calls": 1,
        "input_tokens": 40,
        "output_tokens": 2,
        "estimated_cost_usd": 0.0,
    }
    assert result["usage"]["model_calls"] == 7


def test_escalation_cost_and_the_report_list_the_escalated_items() -> None:
    # Given a strong model with a price, and two escalated votes for the doubtful item
    prices = {STRONG: {"input_per_million": 3.0, "output_per_million": 15.0}}
    job = parse_job(voting({"below": 0.7, "votes": 2, "model": STRONG}, prices=prices))
    extra = [record("doubtful", f"escalate:{n}", "b", model=STRONG, tokens=1000) for n in (1, 2)]

    # When the job is aggregated and reported
    result = aggregate(job, job.items or [], [*first_votes(), *extra])
    page = report_markdown(result)

    # Then the item's escalation says what its calls cost, and the report lists it with its before and after
    expected_cost = 2 * (1000 * 3.0 + 2 * 15.0) / 1e6
    assert result["items"][0]["escalation"]["estimated_cost_usd"] == pytest.approx(expected_cost)
    assert result["usage"]["escalation"]["estimated_cost_usd"] == pytest.approx(expected_cost)
    assert result["items"][0]["answer"] == "b" and result["items"][0]["correct"] is True
    # and the evaluation says what escalation bought: the doubtful item's first answer was wrong, its final one right
    assert result["evaluation"]["accuracy"] == 1.0
    assert result["evaluation"]["first_pass_accuracy"] == 0.5 and result["evaluation"]["escalated_items"] == 1
    assert "- accuracy before escalation: 50.0% (1 items escalated)" in page
    assert "## Escalated items" in page
    assert "1 items were below the escalation threshold after the first votes and were escalated; this run made 2 calls" in page
    assert "| doubtful | a (0.67) | b: 2 | b |" in page
    assert f"${expected_cost:.4f}" in page
    # and report.html's table says the same in the item's row
    from fanout_core.report_html import page_data

    row = page_data(result, result["items"])["rows"][0]
    assert row["votes"].endswith(f"(escalated from a at 0.67: 2 calls, ${expected_cost:.4f})")


def test_a_missing_escalated_vote_is_reported_and_the_first_votes_still_decide() -> None:
    # Given a doubtful item whose escalation batch failed for good for its first escalated vote (the state machine
    # recorded the failure), and whose second escalated vote has no record at all
    job = parse_job(voting({"below": 0.7, "votes": 2, "model": STRONG}))
    failed = {"doubtful#escalate:1": "batch 1000000 failed: ModelThrottled: still throttled"}

    # When it is aggregated
    item = aggregate(job, job.items or [], first_votes(), batch_errors=failed)["items"][0]

    # Then the first votes decide, and the escalation says why each vote is missing
    assert item["answer"] == "a" and item["escalated"] is True and item["status"] == "ok"
    assert [e["error"] for e in item["escalation"]["errors"]] == [failed["doubtful#escalate:1"], "no result"]


def test_the_second_pass_plans_escalated_votes_for_the_doubtful_items_only() -> None:
    with mock_aws():
        # Given a planned job whose first votes are recorded: one item doubtful, one sure
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="results")
        settings = Settings(results_bucket="results", default_model="sim")
        planned = plan(voting({"below": 0.7, "votes": 2, "model": STRONG}), "exec-1", s3=s3, settings=settings)
        store = RunStore(s3, "results", "esc")
        writer = store.writer(0)
        # each record keyed by its task's request, as RunBatch writes it (a record of another request answers nothing)
        job = parse_job(voting({"below": 0.7, "votes": 2, "model": STRONG}))
        keys = {t["task_id"]: t["key"] for t in expand_tasks(job, job.items or [], "sim")}
        for r in first_votes():
            writer.add({**r, "key": keys[f"{r['item_id']}#{r['slot']}"]})
        writer.close()
        event = {"job_id": "esc", "run_uri": planned["run_uri"], "stage": 0}

        # When the second pass is planned after the first Map
        first = plan_second_pass(event, s3=s3, settings=settings)

        # Then its first stage asks the strong model twice for the doubtful item only, in a batch numbered apart
        assert first["done"] is False and first["name"] == "escalate" and first["stage"] == 1
        assert first["counts"] == {"tasks": 2, "batches": 1}
        assert [b["index"] for b in first["batches"]] == [STAGE_BATCH_BASE]
        batch = store.get_json(layout.batch_name(STAGE_BATCH_BASE))
        assert [(t["task_id"], t["model"]) for t in batch["tasks"]] == [
            ("doubtful#escalate:1", STRONG),
            ("doubtful#escalate:2", STRONG),
        ]
        assert batch["output_schema"] == LABEL and batch["tasks"][0]["prompt"] == "Label: x"
        assert store.get_json(layout.second_pass_manifest("escalate")) == first["batches"]

        # and once the stage has run, nothing is left: Aggregate comes next
        assert plan_second_pass({**event, "stage": 1}, s3=s3, settings=settings)["done"] is True
        # and a re-plan after the escalated votes were recorded asks nothing again
        writer = store.writer(STAGE_BATCH_BASE)
        for n in (1, 2):
            writer.add(record("doubtful", f"escalate:{n}", "b", model=STRONG))
        writer.close()
        assert plan_second_pass(event, s3=s3, settings=settings)["done"] is True


def test_the_aggregate_step_plans_the_stage_left_then_aggregates_one_kind_of_work_at_a_time() -> None:
    with mock_aws():
        # Given an escalating job planned and its first votes recorded, one item doubtful
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="results")
        settings = Settings(results_bucket="results", default_model="sim")
        data = voting({"below": 0.7, "votes": 2, "model": STRONG})
        planned = plan(data, "exec-1", s3=s3, settings=settings)
        job = parse_job(data)
        keys = {t["task_id"]: t["key"] for t in expand_tasks(job, job.items or [], "sim")}
        writer = RunStore(s3, "results", "esc").writer(0)
        for r in first_votes():
            writer.add({**r, "key": keys[f"{r['item_id']}#{r['slot']}"]})
        writer.close()
        event = {"job_id": "esc", "run_uri": planned["run_uri"], "execution": "exec-1", "second_pass": True}
        result_key = layout.result_key("esc", "result.json")

        def written() -> bool:
            return "Contents" in s3.list_objects_v2(Bucket="results", Prefix=result_key)

        # When the Aggregate state invokes the function after the first Map (stage 0, as Plan's state starts it)
        first = aggregate_step({**event, "stage": 0}, s3=s3, settings=settings)

        # Then it planned the escalation stage and did not aggregate
        assert first["status"] == "second_pass" and first["stage"] == 1 and first["done"] is False
        assert not written()

        # and after the stage ran, escalation being the job's last stage, the next invocation aggregates at once
        summary = aggregate_step({**event, "stage": first["stage"]}, s3=s3, settings=settings)
        assert summary["status"] in ("complete", "partial") and summary["result_uri"].endswith("/result.json")
        assert written()

        # and an execution of the definition that planned in a state of its own (PlanSecondPass) is still answered
        legacy = aggregate_step(
            {"step": "second_pass", "job_id": "esc", "run_uri": planned["run_uri"], "stage": 1}, s3=s3, settings=settings
        )
        assert (legacy["status"], legacy["done"]) == ("second_pass", True)
        # while a job without a second pass (or a payload without the field) is aggregated
        assert aggregate_step({**event, "second_pass": False, "stage": 0}, s3=s3, settings=settings)["status"] != "second_pass"


def test_the_plans_cost_bound_counts_every_items_escalated_votes() -> None:
    # Given the same job with and without escalation to a priced model
    from fanout_core.costs import plan_costs
    from fanout_core.planning import expand_tasks

    strong = "bedrock:amazon.nova-pro-v1:0"
    plain = parse_job({**voting(None), "model": "bedrock:amazon.nova-lite-v1:0"})
    escalating = parse_job({**voting({"below": 0.7, "votes": 2, "model": strong}), "model": "bedrock:amazon.nova-lite-v1:0"})

    # When validate's cost bound is computed for each
    bounds = [plan_costs(job, expand_tasks(job, job.items or [], "sim")) for job in (plain, escalating)]

    # Then escalation adds what every item's two escalated votes could cost at most, at the strong model's price
    assert bounds[0].bound_cost is not None and bounds[1].bound_cost is not None
    assert bounds[1].bound_cost > bounds[0].bound_cost
    assert bounds[1].bound_output_tokens == bounds[0].bound_output_tokens + 2 * 2 * (512 + 1024 + 512)


def test_the_judge_is_asked_after_escalation_about_every_vote() -> None:
    # Given a judged job with escalation: the doubtful item's escalated vote brings a third candidate
    from fanout_core.second_pass import judge_task
    from fanout_core.voting import valid_votes

    data = voting({"below": 0.7, "votes": 1, "model": STRONG})
    data["aggregate"]["strategy"] = "judge"
    job = parse_job(data)
    escalated = record("doubtful", "escalate:1", "c", model=STRONG)
    votes = [r for r in first_votes() if r["item_id"] == "doubtful"] + [escalated]
    task = judge_task(job, (job.items or [])[0], valid_votes(job, votes), "sim")
    assert task is not None and "[3] c" in task["prompt"]
    verdict = {**record("doubtful", task["slot"], "c"), "output": {"best": 3, "reason": "the strong model is right"}}

    # When the item is aggregated with its escalated vote and the verdict asked about all three candidates
    item = aggregate(job, job.items or [], [*first_votes(), escalated, verdict])["items"][0]

    # Then the judge's pick among every vote is the answer, and the first votes' own answer is kept beside it
    assert item["answer"] == "c" and item["judge"]["choice"] == 3
    assert item["escalation"]["first_pass"]["answer"] == "a"


@pytest.mark.parametrize(("batch_size", "mode"), [(100, "inline"), (5, "distributed")])
def test_the_second_pass_state_stays_small_however_many_items_are_doubtful(batch_size: int, mode: str) -> None:
    import json

    with mock_aws():
        # Given 1,000 items whose first votes all split 2:1, so every one is escalated
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="results")
        settings = Settings(results_bucket="results", default_model="sim")
        items = [{"id": f"item-{n}", "text": "t" * 200} for n in range(1000)]
        data = {**voting({"below": 0.7, "votes": 1, "model": STRONG}), "items": items, "limits": {"batch_size": batch_size}}
        planned = plan(data, "exec-1", s3=s3, settings=settings)
        writer = RunStore(s3, "results", "esc").writer(0)
        for item in items:
            for n, label in enumerate("aab", start=1):
                writer.add(record(item["id"], f"v{n}", label))
        writer.close()

        # When the second pass is planned
        planned_second = plan_second_pass({"job_id": "esc", "run_uri": planned["run_uri"], "stage": 0}, s3=s3, settings=settings)

        # Then the 1,000 escalated votes are in batch files and the state holds counts and at most 100 batch ranges
        assert planned_second["counts"]["tasks"] == 1000 and planned_second["mode"] == mode
        assert len(planned_second["batches"]) <= 100
        assert len(json.dumps(planned_second)) < 16_000
        # and the batch files, written from the stage's spill file, hold every task once, in item order
        store = RunStore(s3, "results", "esc")
        written = [
            t["task_id"]
            for r in store.get_json(layout.second_pass_manifest("escalate"))
            for t in store.get_json(layout.batch_name(r["index"]))["tasks"]
        ]
        assert written == [f"item-{n}#escalate:1" for n in range(1000)]
