"""The deployment's caps on a job's limits: a job may lower a limit, never raise it above the cap."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fanout_core.errors import InvalidJob
from fanout_core.job import parse_job
from fanout_core.settings import Settings
from fanout_core.steps import plan

JOB: dict[str, Any] = {
    "pattern": "voting",
    "votes": 3,
    "prompt": "{text}",
    "items": [{"id": "a", "text": "x"}, {"id": "b", "text": "y"}],
}


def test_a_cap_lowers_a_default_limit() -> None:
    job = parse_job(JOB, caps={"max_items": 5, "max_votes": 4})

    assert (job.limits.max_items, job.limits.max_votes) == (5, 4)


def test_a_job_asking_for_more_than_the_cap_is_refused_by_the_field() -> None:
    with pytest.raises(InvalidJob, match=r"^limits.max_items: 500 is above this deployment's cap \(100\)"):
        parse_job({**JOB, "limits": {"max_items": 500}}, caps={"max_items": 100})


def test_a_job_beyond_a_capped_default_is_refused_by_what_it_exceeds() -> None:
    with pytest.raises(InvalidJob, match=r"^items: 2 items exceed limits.max_items \(1\)"):
        parse_job(JOB, caps={"max_items": 1})


def test_a_job_may_ask_for_less_than_the_cap() -> None:
    assert parse_job({**JOB, "limits": {"max_votes": 3}}, caps={"max_votes": 10}).limits.max_votes == 3


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with mock_aws():
        client = boto3.client("s3")
        client.create_bucket(Bucket="results")
        yield client


def test_plan_applies_the_settings_caps_before_writing_anything(s3: Any) -> None:
    settings = Settings(results_bucket="results", caps={"max_tasks": 5})

    with pytest.raises(InvalidJob, match=r"^limits.max_tasks: the job expands to 6 tasks"):
        plan(JOB, "exec-1", s3=s3, settings=settings)

    assert s3.list_objects_v2(Bucket="results").get("KeyCount", 0) == 0
    assert plan(JOB, "exec-2", s3=s3, settings=Settings(results_bucket="results"))["counts"]["tasks"] == 6


def test_a_second_run_of_a_running_job_id_is_refused_until_the_first_ends(s3: Any) -> None:
    # Given a job whose first run has been planned (and not aggregated yet)
    from fanout_core.steps import run_aggregate

    settings = Settings(results_bucket="results")
    first = plan({**JOB, "job_id": "busy"}, "exec-1", s3=s3, settings=settings)

    # When another execution plans the same job_id, it is refused by the field, naming the holder
    with pytest.raises(InvalidJob, match=r"^job_id: 'busy' is already running \(execution exec-1"):
        plan({**JOB, "job_id": "busy"}, "exec-2", s3=s3, settings=settings)

    # Then once the first run is aggregated, the job_id is free again
    run_aggregate({"job_id": "busy", "run_uri": first["run_uri"], "execution": "exec-1"}, s3=s3)
    assert plan({**JOB, "job_id": "busy"}, "exec-3", s3=s3, settings=settings)["job_id"] == "busy"


def test_a_lease_left_by_a_run_that_died_is_taken_over_after_its_ttl(s3: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from fanout_core import lease, steps

    # a holder known by name only (no execution ARN to ask Step Functions about) loses its lease by age
    settings = Settings(results_bucket="results")
    plan({**JOB, "job_id": "died"}, "exec-1", s3=s3, settings=settings)
    later = steps.time.time() + lease.TTL_SECONDS + 1
    monkeypatch.setattr(steps.time, "time", lambda: later)

    assert plan({**JOB, "job_id": "died"}, "exec-2", s3=s3, settings=settings)["job_id"] == "died"


def test_a_job_whose_items_pass_max_job_bytes_is_refused_by_name_before_any_task(s3: Any) -> None:
    # Given a deployment capping the items' bytes in all below what two small items take (each ~28 bytes)
    settings = Settings(results_bucket="results", caps={"max_job_bytes": 40})

    # When the job is planned, Then it is refused by the limit's name, with the fix, and nothing is written
    with pytest.raises(InvalidJob, match=r"^items: .* more than limits.max_job_bytes \(40 bytes\).*split the items"):
        plan(JOB, "exec-1", s3=s3, settings=settings)
    assert s3.list_objects_v2(Bucket="results").get("KeyCount", 0) == 0

    # and the same job under a cap it fits is planned
    assert (
        plan(JOB, "exec-2", s3=s3, settings=Settings(results_bucket="results", caps={"max_job_bytes": 1000}))["counts"]["tasks"]
        == 6
    )


def test_a_job_may_not_raise_max_job_bytes_above_the_cap() -> None:
    with pytest.raises(InvalidJob, match=r"^limits.max_job_bytes: 5000 is above this deployment's cap \(100\)"):
        parse_job({**JOB, "limits": {"max_job_bytes": 5000}}, caps={"max_job_bytes": 100})


class _EndlessBody:
    """An items file that never ends: counts what is read of it."""

    def __init__(self, line: bytes) -> None:
        self.line, self.read_bytes = line, 0

    def read(self, size: int = -1) -> bytes:
        assert size > 0, "the whole body was asked for"
        start = self.read_bytes % len(self.line)
        self.read_bytes += size
        return (self.line * (size // len(self.line) + 2))[start : start + size]


class _OneObject:
    def __init__(self, body: _EndlessBody) -> None:
        self.body = body

    def get_object(self, **_: Any) -> dict[str, Any]:
        return {"Body": self.body}


@pytest.mark.parametrize("key", ["items.jsonl", "items.csv", "list.json"])
def test_an_items_file_over_max_job_bytes_is_refused_as_it_is_read(key: str) -> None:
    # Given an items_uri whose file has no end, under a 3 MB max_job_bytes
    from fanout_core import loading

    line = b'{"id": "x", "text": "y"}\n' if key != "list.json" else b'[{"id": "x", "text": "y"},'
    body = _EndlessBody(line)
    job = parse_job(
        {**{k: v for k, v in JOB.items() if k != "items"}, "items_uri": f"s3://in/{key}"}, caps={"max_job_bytes": 3 << 20}
    )

    # When Plan loads it, Then it is refused naming the file and the limit, having read barely past the limit
    with pytest.raises(InvalidJob, match=rf"^items_uri: the bytes of s3://in/{key} .*limits.max_job_bytes \(3145728 bytes\)"):
        loading.load_items(_OneObject(body), job)
    assert body.read_bytes <= (3 << 20) + loading.STREAM_CHUNK


def test_a_folder_of_text_files_over_max_job_bytes_is_refused_before_any_is_read(tmp_path: Any) -> None:
    from fanout_core.documents import local_document_items

    for name in ("a.txt", "b.txt", "c.txt"):
        (tmp_path / name).write_text("z" * 400)
    with pytest.raises(InvalidJob, match=r"^items_uri: the text files in .* more than limits.max_job_bytes \(1000 bytes\)"):
        local_document_items(tmp_path, max_items=10, max_item_bytes=1000, max_job_bytes=1000)
    assert len(local_document_items(tmp_path, max_items=10, max_item_bytes=1000, max_job_bytes=1200)) == 3


def test_plan_refuses_a_job_object_far_over_max_job_bytes_as_it_reads_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a job object in S3 that never ends, under a deployment's 1 MB max_job_bytes (and 1 MB for the job's fields)
    from fanout_core import loading

    monkeypatch.setattr(loading, "JOB_FIELDS_BYTES", 1 << 20)
    body = _EndlessBody(b'{"id": "x", "text": "y"},')
    settings = Settings(results_bucket="results", caps={"max_job_bytes": 1 << 20})

    # When Plan is started on it, Then it is refused naming the object and the limit, having read barely past the bound
    with pytest.raises(
        InvalidJob, match=r"^s3://in/jobs/big.json: the job object is more than 2097152 bytes \(limits.max_job_bytes"
    ):
        plan({"bucket": "in", "key": "jobs/big.json"}, "exec-1", s3=_OneObject(body), settings=settings)
    assert body.read_bytes <= (2 << 20) + loading.STREAM_CHUNK
