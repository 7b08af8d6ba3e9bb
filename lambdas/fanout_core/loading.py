"""Find the job in a state machine input: the job itself, ``{"job_uri": ...}``, or an S3 upload event."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Any

from botocore.exceptions import ClientError

from fanout_core.documents import csv_items, is_csv, s3_document_items
from fanout_core.errors import InvalidJob
from fanout_core.job import Job, check_items
from fanout_core.store import parse_s3_uri


def job_source(event_input: Any) -> tuple[str, str] | None:
    """(bucket, key) when the input points at a job object in S3, else None (the input is the job)."""
    if not isinstance(event_input, dict):
        return None
    detail = event_input.get("detail")
    if isinstance(detail, dict) and "bucket" in detail and "object" in detail:
        # the EventBridge "Object Created" event as it arrives without an input transformer
        return str(detail["bucket"].get("name", "")), str(detail["object"].get("key", ""))
    if set(event_input) == {"bucket", "key"}:
        return str(event_input["bucket"]), str(event_input["key"])
    if set(event_input) == {"job_uri"}:
        try:
            return parse_s3_uri(str(event_input["job_uri"]))
        except ValueError as exc:
            raise InvalidJob(f"job_uri: {exc}; use s3://bucket/key.json", "job_uri") from None
    return None


def read_job_object(s3: Any, bucket: str, key: str) -> Any:
    """The decoded JSON of a job object; every failure is an InvalidJob naming the object."""
    where = f"s3://{bucket}/{key}"
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise InvalidJob(f"{where}: cannot read the job object ({code}); check the bucket and key", "job_uri") from None
    return decode_json(body, where)


def decode_json(body: bytes, where: str) -> Any:
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"{where}: not UTF-8 text (byte {exc.start}); save the file as UTF-8", where) from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", where) from None


def key_stem(key: str) -> str:
    return PurePosixPath(key).stem


def load_items(s3: Any, job: Job) -> list[dict[str, Any]]:
    """The job's items, from the job or from ``items_uri`` (JSON list or JSON Lines), checked."""
    if job.items is not None:
        return job.items
    assert job.items_uri is not None
    bucket, key = parse_s3_uri(job.items_uri)
    if key.endswith("/"):  # a prefix of documents: one item per object
        limits = job.limits
        items: list[Any] = s3_document_items(s3, bucket, key, max_items=limits.max_items, max_item_bytes=limits.max_item_bytes)
    else:
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise InvalidJob(f"items_uri: cannot read {job.items_uri} ({code}); check the bucket and key", "items_uri") from None
        items = parse_item_file(body, key, "items_uri")
    check_items(job, items, where="items_uri")
    return items


def parse_item_file(body: bytes, name: str, where: str) -> list[Any]:
    """A CSV file (by its name) or a JSON list / JSON Lines file of items."""
    return csv_items(body, where) if is_csv(name) else parse_items(body, where)


def parse_items(body: bytes, where: str) -> list[Any]:
    """A JSON list of items, or JSON Lines with one item per line."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"{where}: not UTF-8 text (byte {exc.start})", where) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidJob(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno}", where) from None
        return list(items)
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InvalidJob(f"{where}: line {number} is not valid JSON: {exc.msg}", where) from None
    return items
