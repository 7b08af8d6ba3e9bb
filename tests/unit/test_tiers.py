"""limits.tier: which tier a job's calls are bought at and why, refusals naming the model, and tier prices."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import Stubber

from fanout_core.catalog import info
from fanout_core.costs import plan_costs
from fanout_core.errors import InvalidJob
from fanout_core.job import parse_job
from fanout_core.planning import expand_tasks
from fanout_core.pricing import estimate_cost, rates_of
from fanout_core.providers.base import ModelRequest
from fanout_core.providers.bedrock import BedrockProvider, client_config
from fanout_core.runner import run_batch
from fanout_core.tiers import choose_tier, for_this_run, min_records, tier_factor
from tests.factories import batch_for
from tests.fakes import MemoryRunStore

CLAUDE = "bedrock:us.anthropic.claude-haiku-4-5-20251001-v1:0"
NOVA_PRO = "bedrock:us.amazon.nova-pro-v1:0"
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}


def job_of(count: int, model: str = CLAUDE, **limits: Any) -> tuple[Any, list[dict[str, Any]]]:
    """A voting job of ``count`` items x 2 votes."""
    job = parse_job(
        {
            "job_id": "tiers",
            "pattern": "voting",
            "votes": 2,
            "model": model,
            "prompt": "Is this about billing? {text}",
            "output_schema": SCHEMA,
            "aggregate": {"field": "label"},
            "items": [{"id": f"i{n}", "text": f"ticket {n} about an invoice"} for n in range(count)],
            "limits": limits,
        }
    )
    return job, expand_tasks(job, job.items or [], "sim")


def test_auto_picks_batch_at_the_minimum_records_and_a_deadline_that_allows_it() -> None:
    # Given a job with exactly the minimum records a batch job of its model takes, and two days to finish
    least = min_records(CLAUDE)
    job, tasks = job_of(least // 2, tier="auto", deadline_hours=48)
    # When the tier is chosen
    choice = choose_tier(job, tasks, lambda tier: plan_costs(job, tasks, tier=tier).estimated_cost)
    # Then it is batch, it says why, and its estimate sits next to on-demand's at the batch price factor
    assert choice.tier == "batch"
    assert "48 h" in choice.reason and str(least) in choice.reason
    factor = info(CLAUDE).batch.price_factor  # type: ignore[union-attr]
    assert choice.estimated_cost_usd == pytest.approx(choice.on_demand_cost_usd * factor, rel=1e-6)


def test_auto_stays_on_demand_below_the_minimum_or_with_a_short_deadline() -> None:
    least = min_records(CLAUDE)
    small, small_tasks = job_of(least // 2 - 1, tier="auto")
    choice = choose_tier(small, small_tasks)
    assert choice.tier == "on_demand" and f"under the {least} records" in choice.reason

    hurried, hurried_tasks = job_of(least, tier="auto", deadline_hours=6)
    choice = choose_tier(hurried, hurried_tasks)
    assert choice.tier == "on_demand" and "6 h is under the 24 h" in choice.reason


def test_auto_stays_on_demand_for_a_model_without_batch_inference() -> None:
    job, tasks = job_of(200, model="openai:http://127.0.0.1:9#m", tier="auto")
    choice = choose_tier(job, tasks)
    assert choice.tier == "on_demand" and "not offered in Bedrock batch inference" in choice.reason


def test_a_service_tier_the_model_does_not_offer_is_refused_naming_the_model() -> None:
    job, tasks = job_of(3, tier="flex")
    with pytest.raises(InvalidJob) as refused:
        choose_tier(job, tasks)
    assert refused.value.field == "limits.tier"
    assert CLAUDE in str(refused.value) and "Claude Haiku 4.5" in str(refused.value)


def test_flex_is_taken_for_a_model_that_offers_it_at_its_price_factor() -> None:
    job, tasks = job_of(3, model=NOVA_PRO, tier="flex")
    choice = choose_tier(job, tasks, lambda tier: plan_costs(job, tasks, tier=tier).estimated_cost)
    assert choice.tier == "flex"
    factor = dict(info(NOVA_PRO).service_tiers)["flex"]  # type: ignore[union-attr]
    assert choice.estimated_cost_usd == pytest.approx(choice.on_demand_cost_usd * factor, rel=1e-6)


def test_batch_below_the_minimum_is_refused_and_a_deadline_needs_auto_or_batch() -> None:
    job, tasks = job_of(10, tier="batch")
    with pytest.raises(InvalidJob, match="needs at least 100 tasks"):
        choose_tier(job, tasks)
    job, tasks = job_of(100, tier="batch", deadline_hours=12)
    with pytest.raises(InvalidJob, match=r"limits\.deadline_hours: 12 h is under the 24 h"):
        choose_tier(job, tasks)
    job, tasks = job_of(3, tier="on_demand", deadline_hours=12)
    with pytest.raises(InvalidJob, match=r"only for limits\.tier 'auto' or 'batch'"):
        choose_tier(job, tasks)


def test_a_resumed_batch_run_with_few_tasks_left_calls_them_on_demand() -> None:
    job, tasks = job_of(100, tier="batch")
    choice = choose_tier(job, tasks)
    resumed = for_this_run(choice, tasks[:7], lambda tier: 1.0)
    assert resumed.tier == "on_demand" and "7 tasks left" in resumed.reason
    assert for_this_run(choice, tasks, lambda tier: 1.0).tier == "batch"


def test_usage_bought_at_a_tier_is_priced_at_its_factor() -> None:
    usage = {"input_tokens": 1_000_000, "output_tokens": 1_000_000}
    on_demand = estimate_cost({CLAUDE: usage})
    batch = estimate_cost({f"{CLAUDE}@batch": usage})
    assert on_demand is not None and batch is not None
    assert batch == pytest.approx(on_demand * tier_factor(CLAUDE, "batch"))  # type: ignore[operator]
    assert rates_of(f"{CLAUDE}@flex") is None  # not offered: no price, never a guess


def test_a_job_price_for_the_simulator_is_used_and_its_tiers_are_rehearsed() -> None:
    prices = {"sim": {"input_per_million": 2.0, "output_per_million": 8.0}}
    rates = rates_of("sim@batch", prices)
    assert rates is not None and rates.input == pytest.approx(2.0 * tier_factor("sim", "batch"))  # type: ignore[operator]


def test_flex_calls_send_the_service_tier_and_their_records_say_it() -> None:
    # Given a Bedrock client whose Converse requests botocore checks against its own model
    client = boto3.client(
        "bedrock-runtime", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x", config=client_config(1)
    )
    reply = {
        "output": {"message": {"role": "assistant", "content": [{"text": "fine"}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7},
        "metrics": {"latencyMs": 10},
    }
    task = {"task_id": "a#v1", "item_id": "a", "slot": "v1", "kind": "vote", "model": NOVA_PRO, "prompt": "hi"}
    batch = dict(batch_for([task], tier="flex", inference={"max_tokens": 32}))
    store = MemoryRunStore()
    with Stubber(client) as stub:
        stub.add_response(
            "converse",
            reply,
            {
                "modelId": "us.amazon.nova-pro-v1:0",
                "messages": [{"role": "user", "content": [{"text": "hi"}]}],
                "inferenceConfig": {"maxTokens": 32},
                "serviceTier": {"type": "flex"},
            },
        )
        # When the batch runs
        run_batch(batch, store=store, provider_for=lambda _: BedrockProvider("us.amazon.nova-pro-v1:0", client), threads=1)
        stub.assert_no_pending_responses()
    # Then the record is marked with its tier, which prices it
    (record,) = store.records.values()
    assert record["tier"] == "flex" and record["status"] == "ok"
    assert ModelRequest(task_id="x", prompt="p").service_tier is None


def test_an_unknown_tier_or_a_bad_deadline_is_refused_with_the_field_named() -> None:
    with pytest.raises(InvalidJob) as refused:
        job_of(1, tier="cheap")
    assert str(refused.value).startswith("limits.tier: must be one of") and "'batch'" in str(refused.value)
    with pytest.raises(InvalidJob) as refused:
        job_of(1, tier="auto", deadline_hours=0)
    assert str(refused.value).startswith("limits.deadline_hours:")


def test_plan_raises_a_poll_interval_that_would_pass_the_execution_history_and_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3
    from moto import mock_aws

    from fanout_core import batch_inference, steps
    from fanout_core.settings import Settings

    for name, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(name, value)
    # Given a batch job of two models (two batch jobs) and an interval of a minute
    job = {
        "job_id": "polls",
        "pattern": "voting",
        "models": ["sim:seed=1", "sim:seed=2"],
        "prompt": "Classify: {text}",
        "items": [{"id": f"t-{n}", "text": f"ticket {n}"} for n in range(100)],
        "limits": {"tier": "batch"},
    }
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="results")
        plan = steps.plan(job, "exec-1", s3=s3, settings=Settings(results_bucket="results", batch_poll_seconds=60))
    # Then the plan polls the two jobs at an interval whose looks fit the history, and its tier block says why
    jobs = len(plan["inference_jobs"])
    assert jobs == 2
    assert plan["inference_poll_seconds"] > 60
    assert plan["inference_max_polls"] * batch_inference.EVENTS_PER_POLL * jobs <= batch_inference.POLL_HISTORY_EVENTS
    assert "execution history" in plan["tier"]["poll_note"]
