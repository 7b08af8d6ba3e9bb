"""A job with many inline items runs as one with items_uri: the execution input stays small, the result is the same."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from fanout.cli import STAGE_ITEMS_ABOVE_BYTES, main

FAST_SIM = "sim:latency_ms=0,jitter_ms=0,seed=5"
# Step Functions' cap on an execution's input ("Step Functions service quotas": 256 KiB)
EXECUTION_INPUT_QUOTA = 256 * 1024


def job(items: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {
        "pattern": "voting",
        "votes": 3,
        "prompt": "Classify: {text}",
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["a", "b"]}}},
        "aggregate": {"strategy": "majority", "field": "label"},
        "items": items,
        **extra,
    }


def many_items(n: int = 1500) -> list[dict[str, Any]]:
    return [{"id": f"t-{k}", "text": f"ticket {k}: ünïcødé \u2028 and a line separator " + "x" * 200} for k in range(n)]


def started_inputs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The input of every execution the local runtime starts."""
    from fanout.runtime import LocalRuntime

    inputs: list[str] = []
    real_start = LocalRuntime.start

    def start(self: LocalRuntime, job_input: Any, name: str) -> str:
        inputs.append(json.dumps(job_input))
        return real_start(self, job_input, name)

    monkeypatch.setattr(LocalRuntime, "start", start)
    return inputs


def test_inline_items_are_staged_and_give_the_result_of_items_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given the same items inline in one job file (well over the staging size) and in a JSONL file for another
    items = many_items()
    assert len(json.dumps(items)) > EXECUTION_INPUT_QUOTA > STAGE_ITEMS_ABOVE_BYTES
    inline = tmp_path / "same.json"
    inline.write_text(json.dumps(job(items), ensure_ascii=False))
    (tmp_path / "uri").mkdir()
    (tmp_path / "uri" / "items.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    pointed = {key: value for key, value in job([]).items() if key != "items"}
    (tmp_path / "uri" / "same.json").write_text(json.dumps({**pointed, "items_uri": "items.jsonl"}))
    inputs = started_inputs(monkeypatch)

    # When both run
    assert main(["run", str(inline), "--out", str(tmp_path / "a"), "--model", FAST_SIM, "--quiet"]) == 0
    assert main(["run", str(tmp_path / "uri" / "same.json"), "--out", str(tmp_path / "b"), "--model", FAST_SIM, "--quiet"]) == 0

    # Then the inline job's execution input was small and named its items by URI
    staged = json.loads(inputs[0])
    assert len(inputs[0]) < STAGE_ITEMS_ABOVE_BYTES
    assert "items" not in staged and staged["items_uri"].startswith("s3://fanout-local-input/items/")
    # and the two results are the same document
    first = json.loads((tmp_path / "a" / "same" / "result.json").read_text())
    second = json.loads((tmp_path / "b" / "same" / "result.json").read_text())
    assert first == second
    assert [i["id"] for i in first["items"]] == [i["id"] for i in items]


def test_a_small_inline_job_keeps_its_items_in_the_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "small.json"
    path.write_text(json.dumps(job([{"id": "t-1", "text": "hello"}])))
    inputs = started_inputs(monkeypatch)

    assert main(["run", str(path), "--out", str(tmp_path), "--model", FAST_SIM, "--quiet"]) == 0

    assert json.loads(inputs[0])["items"] == [{"id": "t-1", "text": "hello"}]


def test_waiting_reads_the_execution_once_not_at_every_poll(tmp_path: Path) -> None:
    from fanout.runtime import local_aws

    # Given a job of several batches of slow calls, and every DescribeExecution counted
    described: list[str] = []
    items = [{"id": f"t-{k}", "text": "x"} for k in range(40)]
    event = job(items, job_id="polled", model="sim:latency_ms=20,jitter_ms=0", limits={"batch_size": 12, "max_concurrency": 4})
    with local_aws() as runtime:
        boto3._get_default_session().events.register(
            "before-call.sfn.DescribeExecution", lambda **kwargs: described.append(kwargs["model"].name)
        )

        # When the runtime waits for it
        execution = runtime.wait(runtime.start(event, "polled-1"), poll_seconds=0.05)

    # Then it ran for many polls but the execution (and its input) was described once, at the end
    assert execution.status == "SUCCEEDED"
    assert described == ["DescribeExecution"]


def test_the_summary_counts_skipped_and_this_runs_calls(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a job run once, then again (every task already has a record)
    path = tmp_path / "again.json"
    path.write_text(json.dumps(job([{"id": f"t-{k}", "text": "x"} for k in range(4)])))
    assert main(["run", str(path), "--out", str(tmp_path), "--model", FAST_SIM, "--quiet"]) == 0
    capsys.readouterr()

    # When it runs again
    assert main(["run", str(path), "--out", str(tmp_path), "--model", FAST_SIM, "--quiet"]) == 0

    # Then the counts line says what was skipped, and "model calls" are this run's: none
    out = capsys.readouterr().out
    assert "model calls 0 made, 12 requests reused" in out
    assert "reused 12 requests an earlier run of this job_id answered" in out
    # and the reports say the same: the calls this run made, the requests it reused
    report = (tmp_path / "again" / "report.md").read_text()
    assert "- model calls made by this run: 0\n" in report and "- requests reused from earlier runs: 12\n" in report


def test_a_median_job_shows_votes_and_spread_not_confidence(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "scores.json"
    numeric = {
        **job([{"id": f"t-{k}", "text": "x"} for k in range(5)]),
        "output_schema": {"type": "object", "required": ["score"], "properties": {"score": {"type": "number"}}},
        "aggregate": {"strategy": "median", "field": "score"},
    }
    path.write_text(json.dumps(numeric))

    assert main(["run", str(path), "--out", str(tmp_path), "--model", FAST_SIM, "--quiet"]) == 0

    out = capsys.readouterr().out
    assert "low confidence" not in out
    assert "votes per item n 3-3" in out and "iqr median" in out
