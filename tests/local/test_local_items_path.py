"""A local items_uri names a regular file or a folder inside the job file's folder; anything else is refused, exit 2.

Both `fanout validate|run` and `fanout submit` (which uploads the file) check it the same way, before anything is
read or uploaded.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from fanout import files, remote
from fanout.cli import main
from fanout_core.errors import InvalidJob


def job_with(items_uri: str) -> dict[str, Any]:
    return {"job_id": "local-items", "pattern": "voting", "votes": 2, "prompt": "Label: {text}", "items_uri": items_uri}


def write_job(folder: Path, items_uri: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "job.json"
    path.write_text(json.dumps(job_with(items_uri)))
    return path


def validate(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    path = tmp_path / "secret.jsonl"
    path.write_text('{"id": "s", "text": "a file outside the job folder"}\n')
    return path


@pytest.mark.parametrize("given", ["../secret.jsonl", "sub/../../secret.jsonl", "file://../secret.jsonl", "ABSOLUTE"])
def test_a_path_out_of_the_job_files_folder_is_refused(
    tmp_path: Path, secret: Path, given: str, capsys: pytest.CaptureFixture[str]
) -> None:
    given = str(secret) if given == "ABSOLUTE" else given
    (tmp_path / "jobs" / "sub").mkdir(parents=True)
    code, err = validate(write_job(tmp_path / "jobs", given), capsys)
    assert code == 2
    assert f"items_uri: {given.removeprefix('file://')} resolves to {secret}, outside the job file's folder" in err
    assert "name them by a path relative to the job file" in err


def test_a_link_pointing_out_of_the_folder_is_refused_and_one_inside_it_is_read(
    tmp_path: Path, secret: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "items.jsonl").symlink_to(secret)
    code, err = validate(write_job(jobs, "items.jsonl"), capsys)
    assert code == 2 and "items_uri: items.jsonl resolves to" in err and "outside the job file's folder" in err

    # a link to a file inside the folder is the file it names
    (jobs / "items.jsonl").unlink()
    (jobs / "real.jsonl").write_text('{"id": "a", "text": "inside"}\n')
    (jobs / "items.jsonl").symlink_to(jobs / "real.jsonl")
    code, err = validate(write_job(jobs, "items.jsonl"), capsys)
    assert code == 0, err


def test_a_fifo_is_refused_at_once_instead_of_hanging_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given a job whose items_uri is a FIFO that nobody writes to
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    os.mkfifo(jobs / "items.jsonl")
    path = write_job(jobs, "items.jsonl")

    # When it is validated (in a thread, so that a hang fails the test instead of stopping it)
    outcome: list[int] = []
    worker = threading.Thread(target=lambda: outcome.append(main(["validate", str(path)])), daemon=True)
    worker.start()
    worker.join(timeout=20)
    if worker.is_alive():  # unblock the reader before failing
        with open(jobs / "items.jsonl", "wb"):
            pass
        worker.join(timeout=5)
        pytest.fail("validate hung reading a FIFO")

    # Then it is refused at once, naming items_uri and what to give instead
    assert outcome == [2]
    err = capsys.readouterr().err
    assert "items_uri: items.jsonl is not a regular file or a folder" in err and "JSON Lines or CSV file" in err


def test_a_missing_file_and_an_oversized_one_are_refused_by_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = tmp_path / "jobs"
    code, err = validate(write_job(jobs, "nothing.jsonl"), capsys)
    assert code == 2 and f"items_uri: nothing.jsonl: no such file or folder in {jobs}" in err

    monkeypatch.setattr(files, "MAX_ITEMS_FILE_BYTES", 50)
    (jobs / "items.jsonl").write_text("".join(json.dumps({"id": f"i{n}", "text": "t"}) + "\n" for n in range(10)))
    code, err = validate(write_job(jobs, "items.jsonl"), capsys)
    assert code == 2 and "items_uri: items.jsonl is " in err and "over the 50 a local items file may be" in err


def test_submit_refuses_the_same_paths_before_uploading_anything(tmp_path: Path, secret: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "linked.jsonl").symlink_to(secret)
    for given in ("../secret.jsonl", str(secret), "linked.jsonl"):
        with pytest.raises(InvalidJob) as raised:
            remote.prepare(write_job(jobs, given), None, "input-bucket")
        assert raised.value.field == "items_uri" and "outside the job file's folder" in str(raised.value)
    os.mkfifo(jobs / "pipe.jsonl")
    with pytest.raises(InvalidJob, match=r"items_uri: pipe\.jsonl is not a regular file"):
        remote.prepare(write_job(jobs, "pipe.jsonl"), None, "input-bucket")
    # a file inside the folder is uploaded as before
    (jobs / "items.jsonl").write_text('{"id": "a", "text": "inside"}\n')
    submission = remote.prepare(write_job(jobs, "items.jsonl"), None, "input-bucket")
    assert list(submission.uploads.values()) == [(jobs / "items.jsonl").read_bytes()]
