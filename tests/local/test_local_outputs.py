"""Every file a local run writes is whole or absent: a full disk, a cut records line or a second run at once never
wedges the job, and never costs the calls already paid for."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fanout import cli, local_records
from fanout.cli import main

ROOT = Path(__file__).resolve().parents[2]
ITEMS, VOTES = 24, 3


def job_file(tmp_path: Path, **extra: Any) -> Path:
    document = {
        "job_id": "outputs",
        "pattern": "voting",
        "votes": VOTES,
        "model": "sim:latency_ms=1",
        "prompt": "Classify: {text}",
        "items": [{"id": f"i{n:02d}", "text": f"ticket {n}"} for n in range(ITEMS)],
        "limits": {"batch_size": 6, "max_concurrency": 4},  # several batches: several records chunks
        **extra,
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(document))
    return path


def records_in(folder: Path) -> list[dict[str, Any]]:
    """Every records line in the folder, each of which must be a whole JSON record."""
    lines = [line for p in sorted((folder / "records").rglob("*.jsonl")) for line in p.read_text().splitlines()]
    return [json.loads(line) for line in lines]


def full_disk_after(writes: int, only: str | None = None) -> Any:
    """A writer that copies ``writes`` files, then writes half of the next one and fails as a full disk does."""
    done = [0]

    def write(file: Any, data: bytes, path: Path) -> None:
        if only is not None and path.name != only:
            file.write(data)
            return
        if done[0] >= writes:
            file.write(data[: len(data) // 2])
            file.flush()
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        done[0] += 1
        file.write(data)

    return write


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


def test_a_full_disk_mid_copy_keeps_every_saved_record_whole_and_a_rerun_completes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, folder = job_file(tmp_path), tmp_path / "out" / "outputs"

    # Given a disk that fills after two files, in the middle of copying the third
    with monkeypatch.context() as patched:
        patched.setattr(local_records, "_write_all", full_disk_after(2))
        code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err

    # Then the run fails saying what is kept and what to do, with no cut file and no temporary file left
    assert code == 1 and "Traceback" not in err, err
    assert "error: --out: cannot write task records" in err and "run the same command again" in err
    saved = records_in(folder)  # raises on a cut line
    assert 0 < len(saved) < ITEMS * VOTES and leftovers(folder) == []
    assert not (folder / "result.json").exists()

    # When the disk has room again and the same command runs
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0

    # Then it completes, calling the model only for the tasks without a saved record
    result = json.loads((folder / "result.json").read_text())
    run = json.loads((folder / "run.json").read_text())
    assert result["counts"]["ok"] == ITEMS * VOTES
    assert run["model_calls"] == ITEMS * VOTES - len(saved)
    assert len({r["task_id"] for r in records_in(folder)}) == ITEMS * VOTES


@pytest.mark.parametrize("name", ["result.json", "results.jsonl", "report.md", "run.json"])
def test_a_full_disk_while_writing_results_leaves_the_previous_ones_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    path, folder = job_file(tmp_path), tmp_path / "out" / "outputs"
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    before = (folder / name).read_bytes()

    # Given a disk that fills in the middle of writing one result file of a re-run
    with monkeypatch.context() as patched:
        patched.setattr(local_records, "_write_all", full_disk_after(0, only=name))
        code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err

    # Then the run fails by the file's name, and the previous file is still there whole
    assert code == 1 and f"error: --out: cannot write {folder / name}" in err and "Traceback" not in err, err
    assert (folder / name).read_bytes() == before and leftovers(folder) == []

    # and the next run writes it
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert (folder / name).stat().st_size > 0


def test_a_cut_or_corrupt_records_line_is_skipped_with_a_warning_and_its_task_runs_again(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, folder = job_file(tmp_path), tmp_path / "out" / "outputs"
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    capsys.readouterr()

    # Given one chunk cut in the middle of its last line, and another with a line that is not a record
    chunks = sorted((folder / "records").rglob("*.jsonl"))
    first = chunks[0].read_bytes()
    chunks[0].write_bytes(first[: first.rstrip(b"\n").rfind(b"\n") + 20])
    lines = chunks[1].read_bytes().splitlines(keepends=True)
    chunks[1].write_bytes(b"".join([lines[0], b'{"not": "a record"}\n', b"\x00\xff garbage\n", *lines[2:]]))
    damaged = 2  # the cut last line of the first chunk, the replaced second line of the second

    # When the job runs again
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err

    # Then it warns once per damaged chunk, re-asks only the damaged tasks, and every task has one whole record
    assert code == 0, err
    assert err.count("cut or not a task record, left out; their tasks run again") == 2
    assert json.loads((folder / "run.json").read_text())["model_calls"] == damaged
    records = records_in(folder)
    assert sorted(r["task_id"] for r in records) == sorted({r["task_id"] for r in records})
    assert len(records) == ITEMS * VOTES

    # and the chunks were healed: the next run warns of nothing
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_disk_too_full_for_the_run_is_refused_before_any_call(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = job_file(tmp_path)
    monkeypatch.setattr(cli.shutil, "disk_usage", lambda _: os.statvfs_result((0,) * 10) and type("U", (), {"free": 4096})())

    code = main(["run", str(path), "--out", str(tmp_path / "out")])

    captured = capsys.readouterr()
    assert code == 1 and captured.err.startswith("error: --out: 0.0 MB free") and "no model was called" in captured.err
    assert "model:" not in captured.out and not (tmp_path / "out" / "outputs" / "records").exists()


def _lock(folder: Path, pid: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / local_records.LOCK_FILE).write_text(json.dumps(local_records._holder(pid)))


def test_a_second_run_while_one_holds_the_lock_is_refused_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, folder = job_file(tmp_path), tmp_path / "out" / "outputs"
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        # Given a live process holding the job's lock in this --out
        _lock(folder, holder.pid)

        # When another run starts
        code = main(["run", str(path), "--out", str(tmp_path / "out")])
    finally:
        holder.kill()
        holder.wait()

    # Then it is refused, naming the holder, before any model call
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert captured.err.startswith(f"error: --out: another run of this job is writing to {folder} (pid {holder.pid}")
    assert "model:" not in captured.out and not (folder / "records").exists()


def test_a_lock_left_by_a_dead_run_is_taken_over_and_freed_at_the_end(tmp_path: Path) -> None:
    path, folder = job_file(tmp_path), tmp_path / "out" / "outputs"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _lock(folder, gone.pid)  # its holder has exited: a kill -9 leaves such a lock

    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    assert not (folder / local_records.LOCK_FILE).exists()


def test_a_lock_whose_pid_was_reused_by_a_later_process_is_stale(tmp_path: Path) -> None:
    folder = tmp_path / "out" / "outputs"
    folder.mkdir(parents=True)
    holder = {**local_records._holder(os.getpid()), "process_start": "1"}  # this pid, but a process started at boot
    (folder / local_records.LOCK_FILE).write_text(json.dumps(holder))

    with local_records.RunLock(folder):
        assert json.loads((folder / local_records.LOCK_FILE).read_text())["process_start"] != "1"


def test_a_lock_being_written_by_another_run_refuses_with_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a lock file another run has just created and not yet written its holder into
    path, folder = job_file(tmp_path), tmp_path / "out" / "outputs"
    folder.mkdir(parents=True)
    (folder / local_records.LOCK_FILE).write_bytes(b"")

    # When a run starts
    code = main(["run", str(path), "--out", str(tmp_path / "out")])

    # Then it is refused as a second run, without a traceback, and the other run's lock is left in place
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err
    assert captured.err.startswith(f"error: --out: another run of this job is writing to {folder} (a run taking the lock")
    assert (folder / local_records.LOCK_FILE).read_bytes() == b""


def test_an_empty_lock_older_than_its_write_time_is_taken_over(tmp_path: Path) -> None:
    # Given an empty lock left by a run that died between creating it and writing its holder
    folder = tmp_path / "out" / "outputs"
    folder.mkdir(parents=True)
    lock = folder / local_records.LOCK_FILE
    lock.write_bytes(b"")
    old = time.time() - local_records._LOCK_WRITE_SECONDS - 5
    os.utime(lock, (old, old))

    # When a run takes the lock, then it holds it with its own pid
    with local_records.RunLock(folder):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_two_runs_of_one_job_into_one_out_at_once_make_one_record_per_task(tmp_path: Path) -> None:
    # Given a job slow enough that two runs overlap
    path = job_file(tmp_path, model="sim:latency_ms=100")
    command = [sys.executable, "-m", "fanout", "run", str(path), "--out", str(tmp_path / "out"), "--quiet"]

    # When two start at once
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [subprocess.Popen(command, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    started = time.monotonic()
    outcomes = sorted((run.wait(timeout=300), run.stderr.read() if run.stderr else "") for run in runs)

    # Then one runs and the other is refused with exit 2, and every task has exactly one record
    assert [code for code, _ in outcomes] == [0, 2], outcomes
    assert "another run of this job is writing to" in outcomes[1][1] and "Traceback" not in outcomes[1][1]
    records = records_in(tmp_path / "out" / "outputs")
    assert len(records) == ITEMS * VOTES == len({r["task_id"] for r in records})
    assert time.monotonic() - started < 300


def test_a_run_of_over_100_batches_prints_no_metrics_blob(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given 120 one-item batches (Powertools prints a metric set once it holds 100 values, were metrics on locally;
    # a batch holds whole items, so batch_size 1 holds an item's 2 votes)
    path = job_file(tmp_path, votes=2, items=[{"id": f"i{n}", "text": "x"} for n in range(120)])
    document = json.loads(path.read_text())
    document["limits"] = {"batch_size": 1, "mode": "distributed"}
    path.write_text(json.dumps(document))

    # When it runs
    assert main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 0

    # Then stdout holds the summary only: no EMF blob, no warning
    out = capsys.readouterr().out
    assert "_aws" not in out and "CloudWatchMetrics" not in out
    assert json.loads((tmp_path / "out" / "outputs" / "run.json").read_text())["batches"] == 120
    assert len(out) < 2000, out[:500]
