"""S3 keys for any item id, and the run store's record round trip (moto)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
from moto import mock_aws

from fanout_core.store import RunStore, key_part, parse_s3_uri

BUCKET = "fanout-results-test"
SAFE_SEGMENT = re.compile(r"^[A-Za-z0-9\-_.~@+=,%]+$")

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


def test_key_parts_are_distinct_for_distinct_ids() -> None:
    parts = [key_part(i) for i in AWKWARD_IDS]

    assert len(set(parts)) == len(AWKWARD_IDS)


@pytest.mark.parametrize("item_id", AWKWARD_IDS, ids=range(len(AWKWARD_IDS)))
def test_a_key_part_is_one_safe_segment(item_id: str) -> None:
    part = key_part(item_id)

    assert SAFE_SEGMENT.match(part), part
    assert part not in (".", "..")
    assert "/" not in part
    assert len(part.encode("utf-8")) <= 200


def test_a_short_id_cannot_pose_as_a_shortened_long_one() -> None:
    # a long id becomes its first 160 quoted characters, '~' and a hash; a short id spelled that way must not collide
    long_id = "x" * 500
    shortened = key_part(long_id)
    impostor = shortened.replace("%7E", "~")

    assert len(shortened) < 200
    assert key_part(impostor) != shortened


def test_key_part_is_stable() -> None:
    assert [key_part(i) for i in AWKWARD_IDS] == [key_part(i) for i in AWKWARD_IDS]


def test_short_ids_stay_readable() -> None:
    assert key_part("ticket-42") == "ticket-42"
    assert key_part("with space") == "with%20space"


@pytest.mark.parametrize("item_id", ["x" * 200, "é" * 200, "🎉" * 200, "a/" * 100])
def test_a_record_key_is_at_most_1024_bytes_for_the_longest_ids_and_names(item_id: str) -> None:
    # the longest job id and section name the job model allows
    store = RunStore(None, BUCKET, "j" * 64)

    key = store.record_key(item_id, "s" * 30 + " " * 34)

    assert len(key.encode("utf-8")) <= 1024
    assert key.startswith("runs/" + "j" * 64 + "/records/")


def test_records_round_trip_through_s3(s3: Any) -> None:
    # Given records for awkward item ids, voting and sectioning slots
    store = RunStore(s3, BUCKET, "job-1")
    records = [
        {"task_id": f"{item_id}#v1", "item_id": item_id, "slot": "v1", "status": "ok", "output": {"label": "é 🎉"}}
        for item_id in AWKWARD_IDS
    ]
    records.append({"task_id": "a#market size", "item_id": "a", "slot": "market size", "status": "failed", "output": None})

    # When they are written
    for record in records:
        store.put_record(record)

    # Then each reads back by its item and slot, and listing returns every one exactly once
    for record in records:
        assert store.get_record(record["item_id"], record["slot"]) == record
    listed = list(store.iter_records(threads=4))
    assert sorted(r["task_id"] for r in listed) == sorted(r["task_id"] for r in records)


def test_a_missing_record_reads_as_none(s3: Any) -> None:
    store = RunStore(s3, BUCKET, "job-1")
    store.put_record({"task_id": "a#v1", "item_id": "a", "slot": "v1", "status": "ok"})

    assert store.get_record("a", "v2") is None
    assert store.get_record("b", "v1") is None


def test_a_rewritten_record_replaces_the_old_one(s3: Any) -> None:
    store = RunStore(s3, BUCKET, "job-1")
    store.put_record({"task_id": "a#v1", "item_id": "a", "slot": "v1", "status": "failed"})

    store.put_record({"task_id": "a#v1", "item_id": "a", "slot": "v1", "status": "ok"})

    assert [r["status"] for r in store.iter_records()] == ["ok"]


def test_runs_do_not_see_each_others_records(s3: Any) -> None:
    RunStore(s3, BUCKET, "job-1").put_record({"task_id": "a#v1", "item_id": "a", "slot": "v1", "status": "ok"})
    other = RunStore(s3, BUCKET, "job-10")
    other.put_record({"task_id": "b#v1", "item_id": "b", "slot": "v1", "status": "ok"})

    assert [r["item_id"] for r in other.iter_records()] == ["b"]
    assert [r["item_id"] for r in RunStore(s3, BUCKET, "job-1").iter_records()] == ["a"]


def test_iter_records_reads_more_than_one_chunk(s3: Any) -> None:
    # chunks are threads * 16 keys; 1 thread makes 16-key chunks, so 40 records span three
    store = RunStore(s3, BUCKET, "many")
    for n in range(40):
        store.put_record({"task_id": f"i{n}#v1", "item_id": f"i{n}", "slot": "v1", "status": "ok"})

    listed = list(store.iter_records(threads=1))

    assert sorted(r["item_id"] for r in listed) == sorted(f"i{n}" for n in range(40))


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
