"""The real ASL file, end to end, on the local runtime: moto's interpreter with the handlers in-process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import boto3
import pytest

from fanout.cli import main
from fanout.runtime import RESULTS_BUCKET, local_aws

ROOT = Path(__file__).resolve().parents[2]
FAST_SIM = "sim:latency_ms=5,jitter_ms=5,seed=3"


def write_job(tmp_path: Path, job: dict[str, Any], name: str = "job.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(job, ensure_ascii=False))
    return path


def batch_one_crashes(message: str) -> Any:
    """A stand-in for steps.run_batch whose batch 1 raises every time it runs."""
    from fanout_core import steps

    real_run_batch = steps.run_batch

    def crashing(batch: dict[str, Any], **kwargs: Any) -> Any:
        if batch["index"] == 1:
            raise RuntimeError(message)
        return real_run_batch(batch, **kwargs)

    return crashing


def read_records(out: Path, job_id: str) -> list[dict[str, Any]]:
    """The task records the CLI copied out, one JSON line each."""
    files = (out / job_id / "records").rglob("*.jsonl")
    return [json.loads(line) for path in files for line in path.read_text().splitlines() if line.strip()]


def read_result(out: Path, job_id: str) -> dict[str, Any]:
    return json.loads((out / job_id / "result.json").read_text())


def test_ticket_triage_example_runs_to_a_complete_result(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the voting example as shipped
    example = json.loads((ROOT / "examples" / "ticket-triage.json").read_text())

    # When it runs locally through the CLI
    code = main(["run", str(ROOT / "examples" / "ticket-triage.json"), "--out", str(tmp_path), "--quiet"])

    # Then every item is present, in input order, with the voting fields of the contract
    assert code == 0
    result = read_result(tmp_path, "ticket-triage")
    assert result["status"] == "complete"
    assert [i["id"] for i in result["items"]] == [i["id"] for i in example["items"]]
    for item in result["items"]:
        assert set(item) >= {"id", "answer", "confidence", "votes", "valid_votes", "tie"}
        assert item["answer"] in ("positive", "neutral", "negative")
        assert sum(item["votes"].values()) == item["valid_votes"] == 5
        assert 0 < item["confidence"] <= 1
    counts = result["counts"]
    assert counts == {"items": 12, "tasks": 60, "ok": 60, "invalid": 0, "failed": 0}
    assert result["usage"]["model_calls"] == 60
    assert result["usage"]["estimated_cost_usd"] == 0.0
    assert result["evaluation"]["items_with_expected"] == 12
    assert result["evaluation"]["accuracy"] >= result["evaluation"]["single_call_accuracy"]
    # and the run's figures and files sit next to it
    run = json.loads((tmp_path / "ticket-triage" / "run.json").read_text())
    assert run["mode"] == "inline" and run["batches"] >= 1 and run["state_transitions"] >= 5
    assert run["model_calls"] == 60
    assert len((tmp_path / "ticket-triage" / "results.jsonl").read_text().splitlines()) == 12
    assert "report.md" in capsys.readouterr().out
    records = read_records(tmp_path, "ticket-triage")
    assert len(records) == 60 and len({r["task_id"] for r in records}) == 60


def test_market_research_example_merges_sections_and_synthesises(tmp_path: Path) -> None:
    code = main(["run", str(ROOT / "examples" / "market-research.json"), "--out", str(tmp_path), "--quiet", "--model", FAST_SIM])

    assert code == 0
    result = read_result(tmp_path, "launch-review")
    assert [i["id"] for i in result["items"]] == ["q3-launch", "q4-mobile"]
    for item in result["items"]:
        assert set(item["sections"]) == {"competitors", "customers", "regions"}
        merged = item["merged"]["findings"]
        reported = sum(len(s["findings"]) for s in item["sections"].values())
        assert 0 < len(merged) <= reported
        assert sum(len(e["sources"]) for e in merged) <= reported
        assert all(e["support"] == len(e["sources"]) >= 1 for e in merged)
    assert result["synthesis"]["text"]
    assert result["counts"]["tasks"] == 6 and result["usage"]["model_calls"] == 7


def test_awkward_ids_and_texts_keep_every_item_and_record(tmp_path: Path) -> None:
    # Given ids with slashes, spaces, unicode and dots, and texts full of template-like characters
    ids = ["a/b", "a b", "a%2Fb", "ünï/cødé 😀", "..", ".", "x" * 150, "A/B", "a#v1"]
    items = [{"id": i, "text": f"{{text}} %s %(x)s \"q\" 'q' {{{{ }} 🙂 {n}", "expected": "yes"} for n, i in enumerate(ids)]
    job = {"job_id": "awkward", "pattern": "voting", "votes": 5, "prompt": "Answer yes or no: {text}", "items": items}

    # When it runs
    code = main(["run", str(write_job(tmp_path, job)), "--out", str(tmp_path / "out"), "--quiet", "--model", FAST_SIM])

    # Then every item is there, in order, with five distinct records each
    assert code == 0
    result = read_result(tmp_path / "out", "awkward")
    assert [i["id"] for i in result["items"]] == ids
    assert result["counts"]["ok"] == len(ids) * 5
    records = read_records(tmp_path / "out", "awkward")
    assert len(records) == len({r["task_id"] for r in records}) == len(ids) * 5
    assert {r["item_id"] for r in records} == set(ids)


def test_invalid_job_exits_2_names_the_field_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    job = {"pattern": "voting", "votes": 3, "prompt": "{text}", "items": [{"id": "a", "text": "x"}, {"id": "a"}]}

    code = main(["run", str(write_job(tmp_path, job)), "--out", str(tmp_path / "out")])

    assert code == 2
    err = capsys.readouterr().err
    assert "items[1].id: duplicate id 'a'" in err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_state_machine_fails_an_invalid_job_with_a_readable_cause() -> None:
    # Given a job the CLI would refuse, sent straight to the state machine
    with local_aws() as runtime:
        arn = runtime.start({"pattern": "voting", "prompt": "{text}", "votes": 3, "items": [{"id": "a"}]}, "bad-1")

        # When it runs
        execution = runtime.wait(arn)

        # Then Plan's InvalidJob ends in the InvalidJob Fail state with the message as Cause, and nothing is written
        assert execution.status == "FAILED"
        assert execution.error == "InvalidJob"
        assert execution.cause is not None and execution.cause.startswith("items[0].text: item 'a' lacks field 'text'")
        listed = boto3.client("s3").list_objects_v2(Bucket=RESULTS_BUCKET)
        assert listed.get("KeyCount", 0) == 0


def test_job_from_s3_upload_event_and_job_uri() -> None:
    job = {"pattern": "voting", "votes": 2, "model": FAST_SIM, "prompt": "{text}", "items": [{"id": "a", "text": "x"}]}
    with local_aws() as runtime:
        s3 = boto3.client("s3")
        s3.put_object(Bucket="fanout-local-input", Key="jobs/from-upload.json", Body=json.dumps(job))
        event = {"detail": {"bucket": {"name": "fanout-local-input"}, "object": {"key": "jobs/from-upload.json"}}}

        uploaded = runtime.wait(runtime.start(event, "upload-1"))
        pointed = runtime.wait(runtime.start({"job_uri": "s3://fanout-local-input/jobs/from-upload.json"}, "uri-1"))

        # the job id defaults to the object's stem, and both runs leave a complete result
        assert uploaded.status == "SUCCEEDED", uploaded.cause
        assert uploaded.output is not None and uploaded.output["job_id"] == "from-upload"
        assert uploaded.output["status"] == "complete"
        assert pointed.status == "SUCCEEDED" and pointed.output is not None
        result = json.loads(s3.get_object(Bucket=RESULTS_BUCKET, Key="results/from-upload/result.json")["Body"].read())
        assert result["counts"]["ok"] == 2
        # the second run found the first run's ok records and called no model: its usage is its own calls
        assert result["usage"]["model_calls"] == 0
        assert result["usage"]["requests_reused"] == 2

        missing = runtime.wait(runtime.start({"job_uri": "s3://fanout-local-input/jobs/nope.json"}, "uri-2"))
        assert missing.status == "FAILED" and missing.error == "InvalidJob"
        assert missing.cause is not None and "s3://fanout-local-input/jobs/nope.json" in missing.cause


def test_a_failed_batch_is_recorded_not_lost(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a job in several batches, one of which crashes every time it runs
    from fanout_core import steps

    crashing = batch_one_crashes("disk on fire")

    monkeypatch.setattr(steps, "run_batch", crashing)
    items = [{"id": f"i{n}", "text": "t"} for n in range(6)]
    job = {
        "job_id": "crashy",
        "pattern": "voting",
        "votes": 2,
        "prompt": "{text}",
        "items": items,
        "limits": {"batch_size": 4, "max_concurrency": 4},
    }

    # When it runs
    code = main(["run", str(write_job(tmp_path, job)), "--out", str(tmp_path / "out"), "--quiet", "--model", FAST_SIM])

    # Then the job is partial, every item is present, and the crashed batch's tasks are failed with its error
    assert code == 3
    result = read_result(tmp_path / "out", "crashy")
    assert result["status"] == "partial"
    assert [i["id"] for i in result["items"]] == [i["id"] for i in items]
    assert result["counts"] == {"items": 6, "tasks": 12, "ok": 8, "invalid": 0, "failed": 4}
    failed = [e for i in result["items"] for e in i.get("errors", [])]
    assert len(failed) == 4
    assert all("batch 1 failed: RuntimeError: disk on fire" in e["error"] for e in failed)


def test_partial_results_when_outputs_miss_the_schema(tmp_path: Path) -> None:
    job = json.loads((ROOT / "examples" / "ticket-triage.json").read_text())
    job["job_id"] = "noisy"

    code = main(
        [
            "run",
            str(write_job(tmp_path, job)),
            "--out",
            str(tmp_path / "out"),
            "--quiet",
            "--model",
            "sim:latency_ms=1,jitter_ms=1,invalid_rate=0.3,seed=11",
        ]
    )

    assert code == 3
    result = read_result(tmp_path / "out", "noisy")
    counts = result["counts"]
    assert counts["invalid"] > 0 and counts["ok"] + counts["invalid"] + counts["failed"] == counts["tasks"] == 60
    for item in result["items"]:
        invalid = [e for e in item.get("errors", []) if e["status"] == "invalid"]
        assert item["valid_votes"] == 5 - len(invalid)
        assert all(e["error"].startswith("output") for e in invalid)


def test_a_rerun_calls_the_model_only_for_tasks_without_an_ok_record(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a first run whose batch 1 crashed, leaving 4 of 12 tasks without a record
    from fanout_core import steps

    crashing = batch_one_crashes("container lost")

    items = [{"id": f"i{n}", "text": "t"} for n in range(6)]
    job = {
        "job_id": "resumable",
        "pattern": "voting",
        "votes": 2,
        "prompt": "{text}",
        "items": items,
        "limits": {"batch_size": 4, "max_concurrency": 4},
    }
    path, out = write_job(tmp_path, job), tmp_path / "out"
    with monkeypatch.context() as patch:
        patch.setattr(steps, "run_batch", crashing)
        assert main(["run", str(path), "--out", str(out), "--quiet", "--model", FAST_SIM]) == 3
    assert json.loads((out / "resumable" / "run.json").read_text())["model_calls"] == 8
    capsys.readouterr()

    # When the same job runs again
    code = main(["run", str(path), "--out", str(out), "--quiet", "--model", FAST_SIM])

    # Then only the 4 unfinished tasks call the model, the CLI says so, and the job is complete
    assert code == 0
    second = json.loads((out / "resumable" / "run.json").read_text())
    assert second["tasks_skipped"] == 8 and second["model_calls"] == 4
    shown = capsys.readouterr().out
    assert "model calls 4 made, 8 requests reused" in shown and "reused 8 requests" in shown
    result = read_result(out, "resumable")
    assert result["counts"] == {"items": 6, "tasks": 12, "ok": 12, "invalid": 0, "failed": 0}
    assert len(read_records(out, "resumable")) == 12


def test_a_changed_job_under_the_same_id_asks_only_its_changed_requests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given a job that ran once
    job = {"job_id": "changing", "pattern": "voting", "votes": 2, "prompt": "Q1 {text}", "items": [{"id": "a", "text": "x"}]}
    out = tmp_path / "out"
    assert main(["run", str(write_job(tmp_path, job)), "--out", str(out), "--quiet", "--model", FAST_SIM]) == 0

    # When its prompt changes and it runs again under the same job_id: no refusal, every changed request is asked
    job["prompt"] = "Q2 {text}"
    assert main(["run", str(write_job(tmp_path, job)), "--out", str(out), "--quiet", "--model", FAST_SIM]) == 0
    changed = json.loads((out / "changing" / "run.json").read_text())
    assert changed["model_calls"] == 2 and changed["requests_reused"] == 0

    # and an unchanged re-run asks nothing, while --fresh asks every request again
    assert main(["run", str(write_job(tmp_path, job)), "--out", str(out), "--quiet", "--model", FAST_SIM]) == 0
    assert json.loads((out / "changing" / "run.json").read_text())["model_calls"] == 0
    assert main(["run", str(write_job(tmp_path, job)), "--out", str(out), "--quiet", "--model", FAST_SIM, "--fresh"]) == 0
    assert json.loads((out / "changing" / "run.json").read_text())["model_calls"] == 2
    assert "model calls 2 made, 0 requests reused" in capsys.readouterr().out
