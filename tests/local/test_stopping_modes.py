"""Adaptive stopping on the real state machine: inline and distributed agree, weighted too, and a re-run asks nothing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import main

ROOT = Path(__file__).resolve().parents[2]
SIM = "sim:latency_ms=1,jitter_ms=1,accuracy=0.75,difficulty=4,seed=21"


def stopping_job(job_id: str, stop: dict[str, Any], **fields: Any) -> dict[str, Any]:
    job = json.loads((ROOT / "examples" / "ticket-triage.json").read_text())
    job.pop("votes")
    job.update(job_id=job_id, limits={"max_concurrency": 6, "batch_size": 24})
    job["aggregate"] = {"strategy": "majority", "field": "label", "stop": {**stop, "max_votes": 8}}
    job["items"] = [{**item, "id": f"{item['id']}-{n}"} for n in range(3) for item in job["items"]]
    job.update(fields)
    return job


def run(tmp_path: Path, job: dict[str, Any], model: str | None = SIM) -> tuple[int, dict[str, Any], dict[str, Any]]:
    path = tmp_path / f"{job['job_id']}.json"
    path.write_text(json.dumps(job))
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", *(["--model", model] if model else [])])
    target = tmp_path / "out" / job["job_id"]
    return code, json.loads((target / "result.json").read_text()), json.loads((target / "run.json").read_text())


@pytest.mark.parametrize("stop", [{"method": "window", "window": 3}, {"method": "adaptive", "threshold": 0.95}])
def test_inline_and_distributed_stop_the_same_votes(tmp_path: Path, stop: dict[str, Any]) -> None:
    # Given 36 items of up to 8 votes with a stopping rule, forced inline and forced distributed
    inline_job = stopping_job("stop-inline", stop)
    inline_job["limits"]["mode"] = "inline"
    distributed_job = stopping_job("stop-distributed", stop)
    distributed_job["limits"]["mode"] = "distributed"

    # When both run
    code_i, inline, figures_i = run(tmp_path, inline_job)
    code_d, distributed, figures_d = run(tmp_path, distributed_job)

    # Then both complete, save calls, and agree on every answer and every saved call
    assert code_i == code_d == 0
    assert (figures_i["mode"], figures_d["mode"]) == ("inline", "distributed")
    saved = inline["usage"]["calls_saved"]
    assert 0 < saved < 36 * 8 and inline["usage"]["model_calls"] == 36 * 8 - saved == figures_i["model_calls"]
    for result in (inline, distributed):
        result.pop("job_id")
    assert inline == distributed


def test_weighted_voting_stops_early_and_a_re_run_asks_nothing(tmp_path: Path) -> None:
    # Given a weighted job over two simulated models, one trusted twice as much
    strong, weak = SIM, SIM.replace("accuracy=0.75", "accuracy=0.6")
    job = stopping_job("stop-weighted", {"method": "adaptive"}, models=[strong, weak])
    job["aggregate"].update(strategy="weighted", weights={strong: 2.0, weak: 1.0})

    # When it runs, and runs again
    code, result, _ = run(tmp_path, job, model=None)
    code_again, again, figures_again = run(tmp_path, job, model=None)

    # Then calls were saved, and the re-run finds every vote answered or settled
    assert code == code_again == 0
    assert result["usage"]["calls_saved"] > 0
    assert set(result["usage"]["by_model"]) == {strong, weak}
    # and --model on a multi-model job keeps the stopping rule's number of votes
    assert run(tmp_path, {**job, "job_id": "stop-one-model"})[0] == 0
    assert figures_again["model_calls"] == 0
    assert again["items"] == result["items"]


def test_throttling_saves_the_same_calls_as_no_faults(tmp_path: Path) -> None:
    # Given the same adaptive job on the same simulated model, once with 30% of calls throttled
    clean_job = stopping_job("stop-clean", {"method": "adaptive"})
    throttled_job = stopping_job("stop-throttled", {"method": "adaptive"})

    # When both run
    _, clean, _ = run(tmp_path, clean_job)
    code, throttled, figures = run(tmp_path, throttled_job, model=SIM + ",throttle_rate=0.3")

    # Then the throttled run made more attempts but saved exactly the same calls, with the same answers
    assert code == 0
    assert throttled["usage"]["calls_saved"] == clean["usage"]["calls_saved"] > 0
    assert figures["model_calls"] > clean["usage"]["model_calls"]
    assert [i["answer"] for i in throttled["items"]] == [i["answer"] for i in clean["items"]]
