"""Scripted model outputs with known right answers, through the real state machine and the Bedrock provider:
a 2-2 tie, answers differing only in case and punctuation, outputs outside the schema, a median with an outlier,
near-duplicate findings from three sections, a judge, and early stopping on the simulator."""

from __future__ import annotations

import json
import re
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import main
from tests.fakes import Script, fake_server, prompt_of

MODEL = "bedrock:us.amazon.nova-lite-v1:0"


class Scripted:
    """Answers the n-th call about an item with the n-th scripted output (one call at a time keeps the order)."""

    def __init__(self, script: dict[str, list[Any]]) -> None:
        self.script = script
        self.calls: dict[str, int] = defaultdict(int)
        self.lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Any:
        item = re.search(r"<item>(.*?)</item>", prompt_of(body), re.S)
        assert item, prompt_of(body)
        with self.lock:
            n = self.calls[item.group(1)]
            self.calls[item.group(1)] += 1
        return self.script[item.group(1)][n]


@pytest.fixture
def dummy_aws(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "dummy")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")


def run_scripted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, job: dict[str, Any], script: dict[str, list[Any]]
) -> dict[str, Any]:
    scripted = Scripted(script)
    with fake_server(Script(answer=scripted), "bedrock") as (url, _):
        monkeypatch.setenv("AWS_ENDPOINT_URL_BEDROCK_RUNTIME", url)
        path = tmp_path / f"{job['job_id']}.json"
        path.write_text(json.dumps(job))
        code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    result: dict[str, Any] = json.loads((tmp_path / "out" / job["job_id"] / "result.json").read_text())
    result["exit_code"] = code
    return result


def voting(job_id: str, schema: dict[str, Any], strategy: str, votes: int, items: list[str]) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "pattern": "voting",
        "votes": votes,
        "model": MODEL,
        "prompt": "Answer about <item>{id}</item>",
        "output_schema": schema,
        "aggregate": {"strategy": strategy, "field": next(iter(schema["properties"]))},
        "limits": {"max_concurrency": 1},
        "items": [{"id": i} for i in items],
    }


def test_ties_spellings_and_outputs_outside_the_schema(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dummy_aws: None) -> None:
    schema = {"type": "object", "required": ["label"], "properties": {"label": {"type": "string", "maxLength": 12}}}
    script = {
        "tie": [{"label": "no"}, {"label": "yes"}, {"label": "yes"}, {"label": "no"}],
        "spelling": [{"label": "Yes"}, {"label": "yes."}, {"label": " YES "}, {"label": "no"}],
        # vote 2 is too long; its one repair request is too long again; so 3 valid votes remain
        "outside": [{"label": "yes"}, {"label": "x" * 40}, {"label": "y" * 40}, {"label": "no"}, {"label": "yes"}],
    }

    result = run_scripted(tmp_path, monkeypatch, voting("scripted", schema, "majority", 4, list(script)), script)

    tie, spelling, outside = result["items"]
    assert (tie["tie"], tie["tied"], tie["answer"], tie["confidence"]) == (True, ["no", "yes"], "no", 0.5)
    assert "earliest vote" in result["tie_break"]
    assert (spelling["answer"], spelling["confidence"], spelling["votes"]) == ("Yes", 0.75, {"Yes": 3, "no": 1})
    assert (outside["answer"], outside["valid_votes"], outside["confidence"]) == ("yes", 3, pytest.approx(0.6667))
    assert outside["errors"] == [{"slot": "v2", "status": "invalid", "error": "output.label: '" + "y" * 40 + "' is too long"}]
    assert result["counts"] == {"items": 3, "tasks": 12, "ok": 11, "invalid": 1, "failed": 0}
    assert result["usage"]["model_calls"] == 13  # 12 votes and one repair
    assert result["exit_code"] == 3


def test_median_with_an_outlier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dummy_aws: None) -> None:
    schema = {"type": "object", "required": ["price"], "properties": {"price": {"type": "number"}}}
    script = {"estimate": [{"price": p} for p in (19.0, 21.0, 20.0, 950.0, 20.5)]}

    result = run_scripted(tmp_path, monkeypatch, voting("median", schema, "median", 5, ["estimate"]), script)

    item = result["items"][0]
    assert item["answer"] == 20.5 and item["n"] == 5
    assert item["spread"] == {"iqr": 1.0}
    assert result["status"] == "complete"


def test_near_duplicate_findings_from_three_sections_merge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dummy_aws: None
) -> None:
    job = json.loads((Path(__file__).resolve().parents[2] / "examples" / "market-research.json").read_text())
    job.update(job_id="merging", model=MODEL, items=[{"id": "brief", "text": "a launch"}], limits={"max_concurrency": 1})
    job.pop("synthesis")
    for section in job["sections"]:
        section["prompt"] = section["name"] + " for <item>{id}</item>"
    script = {
        "brief": [
            {"findings": [{"title": "Pricing pressure from incumbents", "severity": "medium"}]},
            {
                "findings": [
                    {"title": "pricing pressure from the incumbents", "severity": "high"},
                    {"title": "Demand for self-serve onboarding", "severity": "low"},
                ]
            },
            {
                "findings": [
                    {"title": "Incumbents pricing pressure", "severity": "low"},
                    {"title": "EU data residency rules", "severity": "medium"},
                ]
            },
        ]
    }

    result = run_scripted(tmp_path, monkeypatch, job, script)

    merged = result["items"][0]["merged"]["findings"]
    assert [(m["title"], m["support"], m["sources"], m["severity"]) for m in merged] == [
        ("Pricing pressure from incumbents", 3, ["competitors", "customers", "regions"], "high"),
        ("EU data residency rules", 1, ["regions"], "medium"),
        ("Demand for self-serve onboarding", 1, ["customers"], "low"),
    ]


def test_judge_and_early_stop_on_the_simulator(tmp_path: Path) -> None:
    base = json.loads((Path(__file__).resolve().parents[2] / "examples" / "ticket-triage.json").read_text())
    judged = {**base, "job_id": "judged", "aggregate": {"strategy": "judge", "field": "label"}}
    early = {**base, "job_id": "early", "aggregate": {"strategy": "majority", "field": "label", "stop_when_agree": 3}}
    for job in (judged, early):
        (tmp_path / f"{job['job_id']}.json").write_text(json.dumps(job))

    def run_early() -> int:
        return main(
            [
                "run",
                str(tmp_path / "early.json"),
                "--out",
                str(tmp_path),
                "--quiet",
                "--model",
                "sim:latency_ms=1,jitter_ms=1,accuracy=0.95",
            ]
        )

    assert (
        main(["run", str(tmp_path / "judged.json"), "--out", str(tmp_path), "--quiet", "--model", "sim:latency_ms=1,jitter_ms=1"])
        == 0
    )
    assert run_early() == 0

    judged_result = json.loads((tmp_path / "judged" / "result.json").read_text())
    assert all("judge" in i for i in judged_result["items"])
    contested = [i for i in judged_result["items"] if i.get("candidates", 1) > 1]
    assert contested, "the simulator should leave some items with more than one candidate"
    assert all(i["judge"]["model"] == "sim:latency_ms=1,jitter_ms=1" and i["judge"]["reason"] for i in contested)
    assert judged_result["usage"]["model_calls"] == 60 + len(contested)  # one judge call per contested item
    early_result = json.loads((tmp_path / "early" / "result.json").read_text())
    saved = early_result["usage"]["calls_saved"]
    assert saved > 0 and early_result["counts"]["skipped"] == saved
    assert early_result["usage"]["model_calls"] == 60 - saved
    assert early_result["status"] == "complete"

    # and running the early-stopped job again asks nothing: skipped votes are finished, not missing
    assert run_early() == 0
    again = json.loads((tmp_path / "early" / "run.json").read_text())
    assert again["model_calls"] == 0 and again["tasks_skipped"] == 60
    assert json.loads((tmp_path / "early" / "result.json").read_text())["items"] == early_result["items"]
