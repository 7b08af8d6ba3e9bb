"""The Python API: fanout.run / fanout.validate on the same code path as the CLI, typed results, one error type."""

from __future__ import annotations

import json
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import fanout
from fanout.cli import main

ROOT = Path(__file__).resolve().parents[2]
FAST_SIM = "sim:latency_ms=1,jitter_ms=1,seed=3"


def voting_job(**extra: Any) -> dict[str, Any]:
    return {
        "pattern": "voting",
        "votes": 3,
        "prompt": "Classify: {text}",
        "items": [
            {"id": "a", "text": "Refund took three weeks.", "expected": "negative"},
            {"id": "b", "text": "Great app.", "expected": "positive"},
        ],
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["positive", "negative"]}}},
        "aggregate": {"strategy": "majority", "field": "label"},
        **extra,
    }


def test_run_takes_a_dict_and_returns_the_typed_result_the_cli_writes(tmp_path: Path) -> None:
    # Given a job as a dict
    job = voting_job(job_id="api-dict")

    # When it runs through the API
    result = fanout.run(job, model=FAST_SIM, out=tmp_path)

    # Then the typed result is result.json, field for field
    written = json.loads((tmp_path / "api-dict" / "result.json").read_text())
    assert result.status == written["status"] == "complete"
    assert result.counts.tasks == 6 and result.counts.ok == written["counts"]["ok"]
    assert [i.id for i in result.items] == ["a", "b"]
    assert [i.answer for i in result.items] == [i["answer"] for i in written["items"]]
    assert result.items[0].confidence == written["items"][0]["confidence"]
    assert result.items[0].votes == written["items"][0]["votes"]
    assert result.usage.model_calls == written["usage"]["model_calls"] == 6
    assert result.evaluation is not None and result.evaluation.items_with_expected == 2
    assert result.paths.result == tmp_path / "api-dict" / "result.json" and result.paths.report.is_file()
    assert result.figures["model_calls"] == 6 and result.paths.run.is_file()


def test_rows_are_flat_dicts_in_input_order_that_a_dataframe_can_take(tmp_path: Path) -> None:
    result = fanout.run(voting_job(job_id="api-rows"), model=FAST_SIM, out=tmp_path)
    rows = result.rows()
    assert [r["id"] for r in rows] == ["a", "b"]
    assert all(isinstance(r, dict) for r in rows)
    assert {"answer", "confidence", "votes", "valid_votes", "tie", "expected", "correct"} <= set(rows[0])
    assert rows[0]["answer"] == result.items[0].answer
    # plain JSON-able values only: no fanout types a table library would have to know
    assert json.loads(json.dumps(rows)) == rows


def test_sectioning_rows_carry_one_column_per_section(tmp_path: Path) -> None:
    result = fanout.run(ROOT / "examples" / "market-research.json", model=FAST_SIM, out=tmp_path)
    rows = result.rows()
    assert result.pattern == "sectioning" and len(rows) == result.counts.items
    assert {"sections.competitors", "sections.customers", "sections.regions"} <= set(rows[0])


def test_run_takes_a_path_and_a_typed_job_alike(tmp_path: Path) -> None:
    job = voting_job(job_id="api-typed")
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))
    from_path = fanout.run(path, model=FAST_SIM, out=tmp_path / "a")
    from_job = fanout.run(fanout.Job.model_validate(job), model=FAST_SIM, out=tmp_path / "b")
    assert from_path.job_id == from_job.job_id == "api-typed"
    assert [i.answer for i in from_path.items] == [i.answer for i in from_job.items]


def test_a_dict_without_job_id_is_named_after_its_content_so_a_rerun_resumes(tmp_path: Path) -> None:
    first = fanout.run(voting_job(), model=FAST_SIM, out=tmp_path)
    again = fanout.run(voting_job(), model=FAST_SIM, out=tmp_path)
    other = fanout.run(voting_job(prompt="Label: {text}"), model=FAST_SIM, out=tmp_path)
    assert first.job_id == again.job_id != other.job_id
    assert again.figures["model_calls"] == 0 and again.figures["tasks_skipped"] == 6


def test_validate_returns_the_plan_and_calls_no_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plan = fanout.validate(voting_job(job_id="api-plan"), model=FAST_SIM)
    assert (plan.job_id, plan.tasks, plan.items, plan.models) == ("api-plan", 6, 2, [FAST_SIM])
    # the same plan the CLI prints
    path = tmp_path / "job.json"
    path.write_text(json.dumps(voting_job(job_id="api-plan")))
    assert main(["validate", str(path), "--model", FAST_SIM]) == 0
    printed = capsys.readouterr().out
    assert json.loads(printed[: printed.rindex("}") + 1]) == plan.model_dump()


@pytest.mark.parametrize(
    ("job", "field"),
    [
        ({"pattern": "votin", "items": [{"id": "a"}]}, "pattern"),
        (voting_job(votes=1), "votes"),
        (voting_job(items=[{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]), "items[1].id"),
    ],
)
def test_an_invalid_job_is_one_fanout_error_with_the_cli_message_and_field(
    job: dict[str, Any], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Given the same invalid job for the API and the CLI
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))

    # When both refuse it
    with pytest.raises(fanout.FanoutError) as raised:
        fanout.run(job, model=FAST_SIM, out=tmp_path / "out")
    code = main(["run", str(path), "--model", FAST_SIM, "--out", str(tmp_path / "out"), "--quiet"])

    # Then the message is the CLI's line, the field is named, and nothing was written
    assert code == 2 and raised.value.exit_code == 2
    assert capsys.readouterr().err.strip() == f"error: {raised.value}"
    assert raised.value.field == field
    assert not (tmp_path / "out").exists()


def test_the_error_type_covers_paths_and_unusable_output_folders(tmp_path: Path) -> None:
    with pytest.raises(fanout.FanoutError, match="cannot read the job file"):
        fanout.run(tmp_path / "missing.json")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(fanout.FanoutError, match="--out: cannot write") as raised:
        fanout.run(voting_job(job_id="api-out"), model=FAST_SIM, out=blocker)
    assert raised.value.field == "--out"
    with pytest.raises(fanout.FanoutError, match="job: must be a dict"):
        fanout.run(42)  # type: ignore[arg-type]


def test_the_example_script_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    namespace = runpy.run_path(str(ROOT / "examples" / "api_example.py"))
    assert namespace["main"](str(tmp_path)) == 0
    printed = capsys.readouterr().out
    assert "api-example: complete, 15 of 15 tasks ok" in printed
    assert (tmp_path / "api-example" / "result.json").is_file()


def test_importing_fanout_stays_light() -> None:
    # `fanout --version` and `import fanout` do not load the runtime, moto or pydantic models
    code = "import sys, fanout; print(fanout.__version__); print('moto' in sys.modules, 'fanout.api' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout.split()
    assert out == [fanout.__version__, "False", "False"]
