"""`fanout results JOB_ID --out DIR` writes inside DIR only, whatever the job_id or the links already in DIR."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fanout import remote
from fanout.errors import FanoutError

BUCKET = "results"


@pytest.fixture
def connection(monkeypatch: pytest.MonkeyPatch) -> Iterator[remote.Remote]:
    for key in list(os.environ):
        if key.startswith("AWS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield remote.Remote(None, s3, remote.Target("arn:aws:states:us-east-1:123456789012:stateMachine:fanout", "in", BUCKET))


def put_results(s3: Any, prefix: str) -> None:
    for name in ("result.json", "results.jsonl", "report.md"):
        s3.put_object(Bucket=BUCKET, Key=f"{prefix}{name}", Body=json.dumps({"name": name}).encode())


@pytest.mark.parametrize("job_id", ["../escaped", "../../tmp/escaped", "a/../../escaped", "/abs", "..", ".hidden", "a/b"])
def test_a_job_id_that_is_not_one_is_refused_before_anything_is_read_or_written(
    connection: remote.Remote, tmp_path: Path, job_id: str
) -> None:
    # Given results stored under a key that the job_id would reach
    put_results(connection.s3, f"results/{job_id}/")
    out = tmp_path / "deep" / "out"
    out.mkdir(parents=True)

    # When they are downloaded into out
    with pytest.raises(FanoutError) as raised:
        remote.download(connection, job_id, out)

    # Then the job_id is refused, by name, with exit 2, and nothing was written anywhere
    assert raised.value.field == "job_id" and raised.value.exit_code == 2
    assert str(raised.value).startswith(f"job_id: {job_id!r} is not a job_id")
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_a_link_in_the_output_folder_cannot_send_the_download_elsewhere(connection: remote.Remote, tmp_path: Path) -> None:
    # Given an output folder whose <job_id> entry is a link to a folder outside it
    put_results(connection.s3, "results/linked/")
    outside, out = tmp_path / "outside", tmp_path / "out"
    outside.mkdir()
    out.mkdir()
    (out / "linked").symlink_to(outside, target_is_directory=True)

    # When the job's results are downloaded there
    with pytest.raises(FanoutError) as raised:
        remote.download(connection, "linked", out)

    # Then it is refused naming --out, and nothing was written outside
    assert raised.value.field == "--out" and raised.value.exit_code == 2
    assert "outside" in str(raised.value) and "choose another --out" in str(raised.value)
    assert list(outside.iterdir()) == []


def test_a_valid_job_id_downloads_into_its_folder(connection: remote.Remote, tmp_path: Path) -> None:
    put_results(connection.s3, "results/job-1.v2_x/")
    target = remote.download(connection, "job-1.v2_x", tmp_path)
    assert target == tmp_path / "job-1.v2_x"
    assert sorted(p.name for p in target.iterdir()) == ["report.md", "result.json", "results.jsonl"]


def test_the_job_id_read_from_an_execution_input_is_always_a_job_id() -> None:
    described = {"name": "run-1", "input": json.dumps({"job_id": "../../etc"})}
    assert remote.job_id_of(described) == "etc"
    assert remote.job_id_of({"name": "run-1", "input": json.dumps({"job_id": "ok-1"})}) == "ok-1"
