"""The models data file: lifecycle checks before any call, prices with cache rates, and validate's estimate and bound."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fanout_core import catalog
from fanout_core.catalog import cache_plan, check_job_models, info, lifecycle_problem, status_on
from fanout_core.costs import plan_costs
from fanout_core.errors import InvalidJob
from fanout_core.job import parse_job
from fanout_core.planning import expand_tasks
from fanout_core.pricing import price_of, price_usage, rates_of
from fanout_core.settings import Settings
from fanout_core.steps import plan

ROOT = Path(__file__).resolve().parents[2]
TODAY = dt.date(2026, 12, 2)
HAIKU_35 = "bedrock:us.anthropic.claude-3-5-haiku-20241022-v1:0"
HAIKU_55 = "bedrock:us.anthropic.claude-haiku-5-5"
JOB: dict[str, Any] = {
    "pattern": "voting",
    "votes": 3,
    "prompt": "Classify: {text}",
    "items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}],
}


def test_the_shipped_defaults_are_active_and_support_structured_output() -> None:
    # Given the deployment's default and allowed models as cdk.json names them
    context = json.loads((ROOT / "cdk.json").read_text())["context"]
    specs = [context["fanout:defaultModel"], *(f"bedrock:{m}" for m in context["fanout:models"])]

    # Then each is in the data file, Active today, and has a structured-output mode
    for spec in specs:
        model = info(spec)
        assert model is not None, spec
        assert status_on(model.lifecycle, TODAY) == "active", spec
        assert model.structured_output in ("json_schema", "tool")
        assert model.rates is not None


def test_an_end_of_life_model_is_refused_naming_the_field_and_the_replacement() -> None:
    job = parse_job({**JOB, "model": HAIKU_35})

    with pytest.raises(
        InvalidJob, match=r"^model: .*end-of-life on Bedrock on 2026-06-19.*use bedrock:us\.anthropic\.claude-haiku-5-5"
    ) as raised:
        check_job_models(job, "sim", TODAY)
    assert raised.value.field == "model"


def test_an_end_of_life_model_in_a_multi_model_vote_names_its_index() -> None:
    job = parse_job({**{k: v for k, v in JOB.items() if k != "votes"}, "models": ["sim", HAIKU_35]})

    with pytest.raises(InvalidJob, match=r"^models\[1\]: ") as raised:
        check_job_models(job, "sim", TODAY)
    assert raised.value.field == "models[1]"


def test_an_end_of_life_default_says_it_is_the_default() -> None:
    with pytest.raises(InvalidJob, match=r"^model \(not set, so the deployment's default model\): "):
        check_job_models(parse_job(JOB), HAIKU_35, TODAY)


def test_a_legacy_model_warns_before_its_end_of_life_date_and_is_refused_after_it() -> None:
    job = parse_job({**JOB, "model": HAIKU_35})

    # Given a day before the published end-of-life date: Legacy, a warning naming the replacement
    warnings = check_job_models(job, "sim", dt.date(2026, 5, 1))
    assert len(warnings) == 1 and warnings[0].startswith("model: ") and "is Legacy" in warnings[0]
    assert "bedrock:us.anthropic.claude-haiku-5-5" in warnings[0]

    # Then on the date itself it is end-of-life
    assert lifecycle_problem(HAIKU_35, dt.date(2026, 6, 19)) is not None
    assert lifecycle_problem(HAIKU_35, dt.date(2026, 6, 19))[0] == "eol"  # type: ignore[index]


def test_models_the_data_file_does_not_know_are_allowed() -> None:
    job = parse_job({**JOB, "model": "bedrock:us.example.new-model-v1:0"})

    assert check_job_models(job, "sim", TODAY) == []
    assert price_of("bedrock:us.example.new-model-v1:0") is None


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="results")
        yield client


def test_plan_refuses_an_end_of_life_model_before_writing_anything(s3: Any) -> None:
    with pytest.raises(InvalidJob, match=r"^model: .*end-of-life") as raised:
        plan({**JOB, "model": HAIKU_35}, "exec-1", s3=s3, settings=Settings(results_bucket="results"))

    assert raised.value.field == "model"
    assert s3.list_objects_v2(Bucket="results").get("KeyCount", 0) == 0


def test_plan_refuses_an_end_of_life_deployment_default(s3: Any) -> None:
    settings = Settings(results_bucket="results", default_model=HAIKU_35)

    with pytest.raises(InvalidJob, match=r"deployment's default model"):
        plan(JOB, "exec-1", s3=s3, settings=settings)


def test_profiles_cost_as_their_model_with_the_regional_premium_where_published() -> None:
    # Given Claude Haiku 5.5's list price (the global profile) and the 10% premium of geo profiles
    global_rates = rates_of("bedrock:global.anthropic.claude-haiku-5-5")
    us_rates = rates_of(HAIKU_55)
    assert global_rates is not None and us_rates is not None

    assert (global_rates.input, global_rates.output) == (0.10, 0.50)
    assert us_rates.input == pytest.approx(0.11) and us_rates.output == pytest.approx(0.55)
    # and a model without a published premium costs the same under any prefix
    assert price_of("bedrock:us.amazon.nova-lite-v1:0") == price_of("bedrock:amazon.nova-lite-v1:0") == (0.06, 0.24)


def test_usage_with_cache_tokens_is_priced_at_the_cache_rates_and_shows_the_saving() -> None:
    # Given one model's usage: 1M uncached input, 1M output, 2M read from and 1M written to the cache
    usage: dict[str, Any] = {
        "by_model": {
            "bedrock:global.anthropic.claude-haiku-5-5": {
                "model_calls": 3,
                "input_tokens": 1_000_000,
                "output_tokens": 1_000_000,
                "cache_read_input_tokens": 2_000_000,
                "cache_write_input_tokens": 1_000_000,
            }
        }
    }

    price_usage(usage)

    # Then input 0.10 + output 0.50 + reads 2 x 0.01 + writes 0.125
    assert usage["estimated_cost_usd"] == pytest.approx(0.745)
    assert (usage["cache_read_input_tokens"], usage["cache_write_input_tokens"]) == (2_000_000, 1_000_000)
    # and the saving: 3M at the input price (0.30) less what reads and writes cost (0.145)
    assert usage["cache_savings_usd"] == pytest.approx(0.155)


def test_usage_without_cache_tokens_has_no_cache_fields() -> None:
    usage: dict[str, Any] = {"by_model": {"sim": {"model_calls": 1, "input_tokens": 5, "output_tokens": 5}}}
    price_usage(usage)
    assert usage == {"by_model": usage["by_model"], "estimated_cost_usd": 0.0}


def _tasks(job_data: dict[str, Any], default: str = HAIKU_55) -> tuple[Any, list[dict[str, Any]]]:
    job = parse_job(job_data)
    return job, expand_tasks(job, job.items or [], default)


def test_the_upper_bound_counts_every_call_at_max_tokens_and_is_above_the_estimate() -> None:
    # Given 2 items x 3 votes on the global Haiku 5.5 profile, max_tokens 100
    job, tasks = _tasks({**JOB, "model": "bedrock:global.anthropic.claude-haiku-5-5", "inference": {"max_tokens": 100}})

    costs = plan_costs(job, tasks)

    # Then the bound's output is first call + re-ask at twice the budget + repair, for each of 6 tasks
    assert costs.bound_output_tokens == 6 * (100 + 200 + 100)
    # and its cost is that output at 0.50/M plus input no lower than the prompts' bytes, three calls each
    output_cost = 6 * 400 * 0.50 / 1e6
    assert costs.bound_cost is not None and costs.estimated_cost is not None
    assert costs.bound_cost > output_cost + 6 * 3 * len(b"Classify: x") * 0.125 / 1e6
    assert costs.bound_cost > costs.estimated_cost > 0
    plan_doc = costs.as_plan()
    assert {"estimated_cost_usd", "estimate_basis", "cost_upper_bound_usd", "upper_bound_basis"} <= set(plan_doc)


def test_caching_notes_say_when_the_shared_prefix_is_under_the_minimum() -> None:
    job, tasks = _tasks({**JOB, "model": HAIKU_55})

    notes = plan_costs(job, tasks).caching_notes

    assert notes == [f"the shared prefix of {HAIKU_55} is about 2 tokens, under its minimum of 4096 tokens per cache checkpoint"]


def test_caching_applies_to_a_long_shared_document_and_lowers_the_estimate() -> None:
    # Given sections over one long document (~6,000 tokens) on Claude Haiku 5.5
    doc = "The launch brief says many things about the market. " * 460
    job_data = {
        "pattern": "sectioning",
        "model": HAIKU_55,
        "items": [{"id": "q3", "text": doc}],
        "sections": [{"name": n, "prompt": f"Analyse the {n} for: {{text}}"} for n in ("competitors", "customers", "regions")],
    }
    job, tasks = _tasks(job_data)

    costs = plan_costs(job, tasks)

    # Then the cache applies, and the estimate is below three full-price reads of the document
    assert cache_plan(HAIKU_55, None, doc)[0]
    assert costs.caching_notes[0].startswith("a cachePoint follows the shared prefix")
    full_price_input = 3 * len(doc) / 4 * 0.11 / 1e6
    assert costs.estimated_cost is not None and costs.estimated_cost < full_price_input


def test_validate_prints_estimate_bound_and_lifecycle(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fanout.cli import main

    # Given a job on a model the data file says is Legacy today
    data = {k: dict(v) for k, v in catalog._data().items()}
    data["amazon.nova-lite-v1:0"]["lifecycle"] = {
        "status": "legacy",
        "eol": "2027-06-01",
        "replacement": "amazon.nova-2-lite-v1:0",
    }
    monkeypatch.setattr(catalog, "_data", lambda: data)
    path = tmp_path / "job.json"
    path.write_text(json.dumps({**JOB, "model": "bedrock:us.amazon.nova-lite-v1:0"}))

    # When it is validated
    assert main(["validate", str(path)]) == 0
    out, err = capsys.readouterr()

    # Then a warning names the field and the replacement, and the plan shows both figures named as what they are
    assert "warning: model: 'bedrock:us.amazon.nova-lite-v1:0' (Nova Lite) is Legacy" in err
    assert "use bedrock:us.amazon.nova-2-lite-v1:0" in err
    plan_doc = json.loads(out.split("\nok:")[0])
    assert plan_doc["cost_upper_bound_usd"] > plan_doc["estimated_cost_usd"] > 0
    assert plan_doc["caching"] == [
        "the shared prefix of bedrock:us.amazon.nova-lite-v1:0 is about 2 tokens, "
        "under its minimum of 1000 tokens per cache checkpoint"
    ]


def test_validate_and_run_refuse_an_end_of_life_model_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fanout.cli import main

    path = tmp_path / "job.json"
    path.write_text(json.dumps({**JOB, "model": HAIKU_35}))

    for command in (["validate", str(path)], ["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: invalid job: model: ") and "end-of-life" in err and "claude-haiku-5-5" in err
    assert not (tmp_path / "out").exists()


def test_plan_names_a_legacy_model_in_its_warnings(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    data = {k: dict(v) for k, v in catalog._data().items()}
    data["amazon.nova-lite-v1:0"]["lifecycle"] = {
        "status": "legacy",
        "eol": "2099-01-01",
        "replacement": "amazon.nova-2-lite-v1:0",
    }
    monkeypatch.setattr(catalog, "_data", lambda: data)

    summary = plan(
        {**JOB, "model": "bedrock:us.amazon.nova-lite-v1:0"}, "exec-1", s3=s3, settings=Settings(results_bucket="results")
    )

    assert summary["warnings"] == [
        "model: 'bedrock:us.amazon.nova-lite-v1:0' (Nova Lite) is Legacy on Bedrock: it answers until its end-of-life "
        "on 2099-01-01, new accounts cannot use it; use bedrock:us.amazon.nova-2-lite-v1:0"
    ]
    saved = json.loads(s3.get_object(Bucket="results", Key=f"runs/{summary['job_id']}/plan.json")["Body"].read())
    assert saved["warnings"] == summary["warnings"]
