"""The run store on moto: records of any id written in chunks, read back once each, found by batch."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from fanout_core.store import RunStore, parse_s3_uri

BUCKET = "fanout-results-test"

AWKWARD_IDS = [
    "plain",
    "orders/eu/11",
    "orders%2Feu%2F11",
    "with space",
    "with+plus",
    "with%20percent",
    "ünïcödé",
    "日本語のチケット",
    "emoji 🎉",
    ".",
    "..",
    "...",
    "./x",
    "../../etc/passwd",
    "a#v1",
    "?query=1&x",
    "back\\slash",
    "tab\tand\nnewline",
    "UPPER",
    "upper",
    "x" * 199,
    "x" * 200,
    "x" * 500,
    "x" * 499 + "y",
    "é" * 400,
    "🎉" * 300,
]


@pytest.fixture(scope="module")
def s3_client() -> Iterator[Any]:
    # fake credentials so nothing can reach a real account; one moto session for the module keeps the tests fast
    with pytest.MonkeyPatch.context() as env:
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_SESSION_TOKEN": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }.items():
            env.setenv(name, value)
        env.delenv("AWS_PROFILE", raising=False)
        with mock_aws():
            import boto3

            yield boto3.client("s3", region_name="us-east-1")


@pytest.fixture
def s3(s3_client: Any) -> Iterator[Any]:
    # a fresh, empty bucket for every test
    s3_client.create_bucket(Bucket=BUCKET)
    yield s3_client
    for page in s3_client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
        for obj in page.get("Contents", []):
            s3_client.delete_object(Bucket=BUCKET, Key=obj["Key"])
    s3_client.delete_bucket(Bucket=BUCKET)


def records_for(ids: list[str], slot: str = "v1", status: str = "ok") -> list[dict[str, Any]]:
    return [{"task_id": f"{i}#{slot}", "item_id": i, "slot": slot, "status": status, "output": {"label": "é 🎉"}} for i in ids]


def test_records_of_any_id_round_trip_through_s3(s3: Any) -> None:
    # Given records for awkward item ids, voting and sectioning slots
    store = RunStore(s3, BUCKET, "job-1")
    records = records_for(AWKWARD_IDS)
    records.append({"task_id": "a#market size", "item_id": "a", "slot": "market size", "status": "failed", "output": None})

    # When one batch writes them
    writer = store.writer(0, flush_records=7)
    for record in records:
        writer.add(record)
    writer.close()

    # Then reading the run returns every one exactly once, unchanged, and no key carries an id
    assert sorted(store.iter_records(), key=lambda r: r["task_id"]) == sorted(records, key=lambda r: r["task_id"])
    keys = list(store.record_keys())
    assert len(keys) == -(-len(records) // 7)
    assert all(re.fullmatch(r"runs/job-1/records/b00000/[0-9a-f]{12}-\d{5}\.jsonl", k) for k in keys)


def test_the_writer_flushes_by_count_and_keeps_what_it_wrote_when_closed_early(s3: Any) -> None:
    store = RunStore(s3, BUCKET, "job-1")
    writer = store.writer(3, flush_records=2, flush_seconds=3600)

    for record in records_for(["a", "b", "c"]):
        writer.add(record)

    # two records flushed as one chunk; the third waits until close
    assert [r["item_id"] for r in store.iter_records()] == ["a", "b"]
    writer.close()
    assert sorted(r["item_id"] for r in store.iter_records()) == ["a", "b", "c"]
    assert writer.written == 3


def test_the_writer_flushes_by_age(s3: Any) -> None:
    store = RunStore(s3, BUCKET, "job-1")
    writer = store.writer(0, flush_records=1000, flush_seconds=0.0)

    writer.add(records_for(["a"])[0])

    assert [r["item_id"] for r in store.iter_records()] == ["a"]


def test_a_record_that_no_other_follows_is_written_within_flush_seconds(s3: Any) -> None:
    # Given a writer that has just written a chunk, and one more record right after it (the last of a wave of calls)
    store = RunStore(s3, BUCKET, "job-1", flush_seconds=0.3)
    writer = store.writer(0)
    writer.add(records_for(["a"])[0])
    started = time.monotonic()

    # When no other record comes (the next calls are still running)
    while not list(store.record_keys()) and time.monotonic() - started < 5:
        time.sleep(0.02)

    # Then it is in S3 within the flush time, before the batch closes its writer
    assert [r["item_id"] for r in store.iter_records()] == ["a"]
    assert time.monotonic() - started < 0.3 + 1.0
    writer.close()
    assert writer.written == 1 and len(list(store.record_keys())) == 1


def test_a_timed_write_that_fails_leaves_its_records_for_close(s3: Any) -> None:
    # Given a store whose first write fails (S3 unavailable for a moment)
    store = RunStore(s3, BUCKET, "job-1", flush_seconds=0.05)
    puts: list[str] = []
    real_put = s3.put_object

    def flaky_put(**kwargs: Any) -> Any:
        puts.append(kwargs["Key"])
        if len(puts) == 1:
            raise ConnectionError("S3 unavailable")
        return real_put(**kwargs)

    writer = store.writer(0)
    writer.s3 = type("FlakyS3", (), {"put_object": staticmethod(flaky_put)})()

    # When the timer's write fails and the batch then ends
    writer.add(records_for(["a"])[0])
    deadline = time.monotonic() + 5
    while not puts and time.monotonic() < deadline:
        time.sleep(0.02)
    writer.close()

    # Then close wrote the record the timer could not
    assert len(puts) == 2
    assert [r["item_id"] for r in store.iter_records()] == ["a"]


def test_completed_lists_the_tasks_of_that_batch_with_a_final_record(s3: Any) -> None:
    # Given two runs of batch 1 (a retry) and a run of batch 2
    store = RunStore(s3, BUCKET, "job-1")
    for batch, records in [(1, records_for(["a", "b"])), (1, records_for(["c"], status="failed")), (2, records_for(["d"]))]:
        writer = store.writer(batch)
        for record in records:
            writer.add(record)
        writer.close()

    # Then batch 1's completed tasks are those with a final record (ok, skipped, invalid, failed), whichever run
    # wrote them: a retry of the batch asks none of them again
    assert store.completed(1) == {"a#v1", "b#v1", "c#v1"}
    assert store.completed(2) == {"d#v1"}
    assert store.completed(3) == set()
    assert store.has_records()
    assert not RunStore(s3, BUCKET, "job-2").has_records()


def test_runs_do_not_see_each_others_records(s3: Any) -> None:
    for job, item in [("job-1", "a"), ("job-10", "b")]:
        writer = RunStore(s3, BUCKET, job).writer(0)
        writer.add(records_for([item])[0])
        writer.close()

    assert [r["item_id"] for r in RunStore(s3, BUCKET, "job-10").iter_records()] == ["b"]
    assert [r["item_id"] for r in RunStore(s3, BUCKET, "job-1").iter_records()] == ["a"]


def test_iter_records_reads_many_chunks(s3: Any) -> None:
    store = RunStore(s3, BUCKET, "many")
    writer = store.writer(0, flush_records=1)
    for record in records_for([f"i{n}" for n in range(150)]):
        writer.add(record)
    writer.close()

    assert sorted(r["item_id"] for r in store.iter_records()) == sorted(f"i{n}" for n in range(150))


def test_failures_and_delete_prefix(s3: Any) -> None:
    store = RunStore(s3, BUCKET, "job-1")
    store.put_json("failures/4.json", {"Error": "States.Timeout", "Cause": "took too long"})

    assert list(store.failures()) == [{"Error": "States.Timeout", "Cause": "took too long", "batch": 4}]
    store.delete_prefix("failures/")
    assert list(store.failures()) == []


def test_json_documents_round_trip(s3: Any) -> None:
    store = RunStore(s3, BUCKET, "job-1")

    store.put_json("plan.json", {"batches": [{"index": 0}], "note": "ünï"})

    assert store.get_json("plan.json") == {"batches": [{"index": 0}], "note": "ünï"}
    assert store.uri == f"s3://{BUCKET}/runs/job-1/"
    assert RunStore.from_uri(s3, store.uri, "job-1").bucket == BUCKET


@pytest.mark.parametrize("uri", ["s3://bucket", "https://bucket/key", "bucket/key"])
def test_parse_s3_uri_refuses_what_is_not_bucket_and_key(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_s3_uri(uri)


def test_parse_s3_uri_splits_bucket_and_key() -> None:
    assert parse_s3_uri("s3://b/runs/x/y.json") == ("b", "runs/x/y.json")


@pytest.mark.parametrize(
    "body",
    [
        {"task_id": "ünï#v1", "output": {"label": "日本語", "n": 1.5, "big": 10**30, "none": None, "ok": True}},
        [1, -0.0, float("inf"), float("nan"), '\u2028 \\ " \x00 🎉', {"nested": [[], {}]}],
        "a string alone",
        3.0,
    ],
)
def test_run_files_are_the_bytes_json_dumps_writes(body: Any) -> None:
    import json

    from fanout_core.store import _dumps

    assert _dumps(body) == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def test_a_body_that_is_not_json_is_refused_as_json_dumps_refuses_it() -> None:
    from fanout_core.store import _dumps

    with pytest.raises(TypeError, match="not JSON serializable"):
        _dumps({"when": object()})
