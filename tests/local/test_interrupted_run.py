"""A local run killed halfway keeps what it finished in DIR/<job_id>/records/, and the next run pays only for the rest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fanout.cli import main

ROOT = Path(__file__).resolve().parents[2]
SLOW_SIM = "sim:latency_ms=50,jitter_ms=0,seed=1"
ITEMS, VOTES = 80, 5  # 400 tasks of 50 ms, 8 at a time: about 2.5 s of calls


def job_file(tmp_path: Path, job_id: str) -> Path:
    job = {
        "job_id": job_id,
        "pattern": "voting",
        "votes": VOTES,
        "prompt": "Classify: {text}",
        "items": [{"id": f"t-{n}", "text": f"ticket {n}"} for n in range(ITEMS)],
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["a", "b", "c"]}}},
        "aggregate": {"strategy": "majority", "field": "label"},
        "limits": {"max_concurrency": 8, "batch_size": 25},
    }
    path = tmp_path / f"{job_id}.json"
    path.write_text(json.dumps(job))
    return path


def records_in(folder: Path) -> list[dict[str, Any]]:
    for _ in range(20):
        try:
            return [
                json.loads(line)
                for path in sorted((folder / "records").rglob("*.jsonl"))
                for line in path.read_text().splitlines()
                if line.strip()
            ]
        except FileNotFoundError:  # read while a --fresh run moved the earlier records away: look again
            time.sleep(0.05)
    raise AssertionError(f"the records in {folder} kept moving")


def start_run(job: Path, out: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "fanout", "run", str(job), "--out", str(out), "--model", SLOW_SIM, "--quiet"]
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_midway(process: subprocess.Popen[str], folder: Path, sig: int) -> tuple[int, str]:
    """Send ``sig`` once some records are on disk and the run is far from done; returns the exit code and stderr."""
    deadline = time.monotonic() + 60
    while len(records_in(folder)) < 40:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "no records reached the folder while the run went on"
        time.sleep(0.05)
    process.send_signal(sig)
    _, err = process.communicate(timeout=30)
    return process.returncode, err


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=["ctrl-c", "sigterm", "kill-9"])
def test_a_killed_run_loses_at_most_the_calls_in_flight(tmp_path: Path, sig: int) -> None:
    # Given a slow job running in its own process
    job_id = f"killed-{sig}"
    job, out = job_file(tmp_path, job_id), tmp_path / "out"
    folder = out / job_id
    process = start_run(job, out)

    # When it is killed in the middle of the run
    code, err = kill_midway(process, folder, sig)

    # Then the records it finished are in the folder, one per task, and Ctrl-C says how to resume
    first = records_in(folder)
    finished = {r["task_id"] for r in first if r["status"] == "ok"}
    assert 0 < len(finished) < ITEMS * VOTES
    assert max(Counter(r["task_id"] for r in first).values()) == 1
    if sig in (signal.SIGINT, signal.SIGTERM):
        assert code == (130 if sig == signal.SIGINT else 143)
        assert "resume" in err and f"{job.name} --out {out}" in err
    else:
        assert code == -signal.SIGKILL

    # When the job runs again
    assert main(["run", str(job), "--out", str(out), "--model", SLOW_SIM, "--quiet"]) == 0

    # Then it called the model only for the tasks the first run did not finish, and no task has two records
    run = json.loads((folder / "run.json").read_text())
    assert run["model_calls"] + len(finished) == ITEMS * VOTES
    every = records_in(folder)
    assert len(every) == ITEMS * VOTES
    assert max(Counter(r["task_id"] for r in every).values()) == 1
    assert json.loads((folder / "result.json").read_text())["status"] == "complete"


@pytest.mark.slow
def test_a_finished_record_reaches_the_folder_within_a_second_while_other_calls_run(tmp_path: Path) -> None:
    # Given a job whose calls take 3 s, two at a time: each wave's records finish together, then nothing for 3 s
    job_id = "cadence"
    job = {
        "job_id": job_id,
        "pattern": "voting",
        "votes": 2,
        "prompt": "Classify: {text}",
        "items": [{"id": "a", "text": "one"}, {"id": "b", "text": "two"}],
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["x", "y"]}}},
        "aggregate": {"strategy": "majority", "field": "label"},
        "limits": {"max_concurrency": 2},
    }
    path, out = tmp_path / "cadence.json", tmp_path / "out"
    path.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "fanout", "run", str(path), "--out", str(out), "--model",
               "sim:latency_ms=3000,jitter_ms=0", "--quiet"]  # fmt: skip
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # When the first record of the first wave is in the folder
        deadline = time.monotonic() + 60
        while not records_in(out / job_id):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "no record reached the folder"
            time.sleep(0.05)
        first_seen = time.monotonic()

        # Then within a second both of that wave's records are there, while the second wave still runs
        while len(records_in(out / job_id)) < 2 and time.monotonic() - first_seen < 2.5:
            time.sleep(0.05)
        waited = time.monotonic() - first_seen
        assert len(records_in(out / job_id)) == 2
        assert waited < 1.0, f"the wave's second record reached the folder {waited:.2f} s after the first"
        assert process.poll() is None
    finally:
        process.kill()
        process.communicate()


def test_fresh_keeps_the_previous_results_until_the_new_run_has_records(tmp_path: Path) -> None:
    from fanout.local_records import RecordMirror

    # Given a folder with the results of an earlier run
    folder = tmp_path / "out" / "j"
    (folder / "records" / "b00000").mkdir(parents=True)
    (folder / "records" / "b00000" / "old-00001.jsonl").write_text('{"task_id": "old"}\n')
    (folder / "result.json").write_text("{}")
    from moto import mock_aws

    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="results")
        mirror = RecordMirror("123456789012", "results", "j", folder, replace_previous=True)

        # When a fresh run starts and has written nothing yet (its job.json only)
        mirror.restore(s3)
        s3.put_object(Bucket="results", Key="runs/j/job.json", Body=b"{}")
        mirror.sync()

        # Then the earlier records and result are untouched, and none of them went back into the run
        assert (folder / "result.json").exists()
        assert [r["task_id"] for r in records_in(folder)] == ["old"]
        assert "Contents" not in s3.list_objects_v2(Bucket="results", Prefix="runs/j/records/")

        # When its first records are written
        s3.put_object(Bucket="results", Key="runs/j/records/b00000/new-00001.jsonl", Body=b'{"task_id": "new"}\n')
        mirror.sync()

    # Then they replace the earlier records; the earlier result stays until the run writes its own
    assert [r["task_id"] for r in records_in(folder)] == ["new"]
    assert (folder / "result.json").read_text() == "{}"
    assert (folder / "records" / "_job.json").read_text() == "{}"


@pytest.mark.slow
def test_a_fresh_run_killed_halfway_leaves_the_last_results_and_resumes(tmp_path: Path) -> None:
    # Given a job that finished, its results in the folder
    job, out = job_file(tmp_path, "refreshed"), tmp_path / "out"
    folder = out / "refreshed"
    assert main(["run", str(job), "--out", str(out), "--model", "sim:latency_ms=0,jitter_ms=0,seed=1", "--quiet"]) == 0
    before = {name: (folder / name).read_bytes() for name in ("result.json", "results.jsonl", "report.md", "report.html")}

    # When a --fresh run of it is killed halfway
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "fanout", "run", str(job), "--out", str(out), "--model", SLOW_SIM, "--fresh", "--quiet"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not 40 <= sum(r.get("latency_ms", 0) >= 50 for r in records_in(folder)) < ITEMS * VOTES:
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the fresh run wrote no records"
        time.sleep(0.05)
    process.kill()
    process.communicate()

    # Then the last finished run's result files are there unchanged, and the records are the fresh run's only
    assert {name: (folder / name).read_bytes() for name in before} == before
    fresh = records_in(folder)
    assert 0 < len(fresh) < ITEMS * VOTES
    assert all(r["latency_ms"] >= 50 for r in fresh)  # every record is a slow call of the fresh run
    assert max(Counter(r["task_id"] for r in fresh).values()) == 1

    # When the same job runs again without --fresh, it finishes the fresh run and its results replace the old
    assert main(["run", str(job), "--out", str(out), "--model", SLOW_SIM, "--quiet"]) == 0
    run = json.loads((folder / "run.json").read_text())
    assert run["model_calls"] + len(fresh) == ITEMS * VOTES
    assert (folder / "result.json").read_bytes() != before["result.json"]
