"""Find the job in a state machine input: the job itself, ``{"job_uri": ...}``, or an S3 upload event."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import Any

from botocore.exceptions import ClientError

from fanout_core import strictjson
from fanout_core.documents import csv_items, is_csv, s3_document_items
from fanout_core.errors import InvalidJob
from fanout_core.job import Job, check_items, job_bytes_message
from fanout_core.store import parse_s3_uri


def job_source(event_input: Any) -> tuple[str, str] | None:
    """(bucket, key) when the input points at a job object in S3, else None (the input is the job)."""
    if not isinstance(event_input, dict):
        return None
    if "detail" in event_input and "pattern" not in event_input:
        return _event_object(event_input["detail"])
    if set(event_input) == {"bucket", "key"}:
        return _named_object(event_input["bucket"], event_input["key"], "")
    if set(event_input) == {"job_uri"}:
        uri = event_input["job_uri"]
        if not isinstance(uri, str):
            raise InvalidJob("job_uri: must be a string like s3://bucket/key.json", "job_uri")
        try:
            return parse_s3_uri(uri)
        except ValueError as exc:
            raise InvalidJob(f"job_uri: {exc}; use s3://bucket/key.json", "job_uri") from None
    return None


def _event_object(detail: Any) -> tuple[str, str]:
    """The object of an EventBridge "Object Created" event (as it arrives without an input transformer).

    Field names: "Amazon S3 event notifications > Using EventBridge > EventBridge event message structure"
    (detail.bucket.name, detail.object.key).
    """
    if not isinstance(detail, dict):
        raise InvalidJob("detail: an S3 event's detail must be an object with bucket.name and object.key", "detail")
    bucket, obj = detail.get("bucket"), detail.get("object")
    if not isinstance(bucket, dict):
        raise InvalidJob('detail.bucket: must be an object like {"name": "my-bucket"}', "detail.bucket")
    if not isinstance(obj, dict):
        raise InvalidJob('detail.object: must be an object like {"key": "jobs/job.json"}', "detail.object")
    return _named_object(bucket.get("name"), obj.get("key"), "detail.")


def _named_object(bucket: Any, key: Any, prefix: str) -> tuple[str, str]:
    names = {f"{prefix}bucket{'.name' if prefix else ''}": bucket, f"{prefix}{'object.' if prefix else ''}key": key}
    for where, value in names.items():
        if not isinstance(value, str) or not value or strictjson.problem(value) is not None or len(value) > 1024:
            # S3 bucket names are at most 63 characters and object keys at most 1,024 bytes ("Naming Amazon S3 objects")
            raise InvalidJob(f"{where}: must be a non-empty string naming the job object in S3", where)
    return bucket, key


# what a job object may hold besides its items (prompts, sections, schema), on top of limits.max_job_bytes
JOB_FIELDS_BYTES = 16 << 20


def read_job_object(s3: Any, bucket: str, key: str, *, max_job_bytes: int | None = None) -> Any:
    """The decoded JSON of a job object; every failure is an InvalidJob naming the object.

    With ``max_job_bytes`` (the deployment's cap) the object is read a chunk at a time and refused as soon as it
    passes that plus JOB_FIELDS_BYTES: a job object far over the cap is never held whole.
    """
    where = f"s3://{bucket}/{key}"
    try:
        stream = s3.get_object(Bucket=bucket, Key=key)["Body"]
        if max_job_bytes is None:
            body = stream.read()
        else:
            limit = max_job_bytes + JOB_FIELDS_BYTES
            try:
                body = b"".join(_bounded_chunks(stream, limit, where))
            except InvalidJob:
                raise InvalidJob(
                    f"{where}: the job object is more than {limit} bytes (limits.max_job_bytes {max_job_bytes} and "
                    f"{JOB_FIELDS_BYTES} for the rest of the job); split the items into several jobs",
                    "job_uri",
                ) from None
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        raise InvalidJob(f"{where}: cannot read the job object ({code}); check the bucket and key", "job_uri") from None
    return decode_json(body, where)


def decode_json(body: bytes, where: str) -> Any:
    """The JSON document in ``body``; what is not data in it is left as a marker for parse_job to refuse by its path."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"{where}: not UTF-8 text (byte {exc.start}); save the file as UTF-8", where) from None
    try:
        return strictjson.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidJob(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", where) from None
    except strictjson.TooDeep as exc:
        raise _too_deep(exc, "job", where) from None


def _too_deep(exc: strictjson.TooDeep, root: str, where: str) -> InvalidJob:
    path = root + exc.path if not exc.path or exc.path.startswith("[") else exc.path
    path = path if len(path) <= 120 else path[:120] + "..."
    return InvalidJob(f"{path}: nested deeper than {strictjson.MAX_DEPTH} levels (line {exc.line} of {where}); flatten it", path)


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
        items: list[Any] = s3_document_items(
            s3, bucket, key, max_items=limits.max_items, max_item_bytes=limits.max_item_bytes, max_job_bytes=limits.max_job_bytes
        )
    else:
        try:
            stream = s3.get_object(Bucket=bucket, Key=key)["Body"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            raise InvalidJob(f"items_uri: cannot read {job.items_uri} ({code}); check the bucket and key", "items_uri") from None
        # the file is counted against limits.max_job_bytes as it is read: one far over it is refused before it is held
        chunks = _bounded_chunks(stream, job.limits.max_job_bytes, job.items_uri)
        head = next(chunks, b"")
        if is_csv(key) or head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
            items = parse_item_file(head + b"".join(chunks), key, "items_uri", max_items=job.limits.max_items)
        else:
            # JSON Lines are read a chunk at a time: the whole body, its text and its lines are never held at once
            items = parse_item_lines(_prepend(head, chunks), "items_uri", max_items=job.limits.max_items)
    check_items(job, items, where="items_uri")
    return items


# JSON Lines items_uri objects are read in chunks of this size
STREAM_CHUNK = 1 << 20


def _bounded_chunks(stream: Any, limit: int, uri: str) -> Iterator[bytes]:
    """The body a chunk at a time; InvalidJob (limits.max_job_bytes) as soon as more than ``limit`` bytes are read."""
    read = 0
    while chunk := stream.read(STREAM_CHUNK):
        read += len(chunk)
        if read > limit:
            raise InvalidJob(job_bytes_message("items_uri", limit, f"the bytes of {uri}"), "items_uri")
        yield chunk


def _prepend(head: bytes, chunks: Iterator[bytes]) -> Iterator[bytes]:
    yield head
    yield from chunks


def parse_item_lines(chunks: Iterable[bytes], where: str, *, max_items: int | None = None) -> list[Any]:
    """JSON Lines items from a body given in chunks, split on ``\\n`` only (as ``parse_items``), one line decoded at a time."""
    items: list[Any] = []
    rest = b""
    number = 0
    first = True
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        for raw in lines:
            number += 1
            if first:
                raw, first = raw.removeprefix(b"\xef\xbb\xbf"), False
            _add_line(items, raw, number, where, max_items)
    if rest:
        number += 1
        _add_line(items, rest.removeprefix(b"\xef\xbb\xbf") if first else rest, number, where, max_items)
    return items


def _add_line(items: list[Any], raw: bytes, number: int, where: str, max_items: int | None) -> None:
    try:
        line = raw.decode("utf-8").removesuffix("\r")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"{where}: not UTF-8 text (line {number}, byte {exc.start})", where) from None
    if line.strip():
        _append_item(items, line, number, where, max_items)


def parse_item_file(body: bytes, name: str, where: str, *, max_items: int | None = None) -> list[Any]:
    """A CSV file (by its name) or a JSON list / JSON Lines file of items."""
    return csv_items(body, where) if is_csv(name) else parse_items(body, where, max_items=max_items)


def parse_items(body: bytes, where: str, *, max_items: int | None = None) -> list[Any]:
    """A JSON list of items, or JSON Lines with one item per line.

    JSON Lines are split on ``\\n`` (and ``\\r\\n``) only, as the format says: U+2028, U+0085 or a form feed inside
    a string are text, not line ends (``str.splitlines`` would cut the item there). Reading stops at the first line
    past ``max_items``: a file far over the limit is refused without decoding the rest of it.
    """
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidJob(f"{where}: not UTF-8 text (byte {exc.start})", where) from None
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = strictjson.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidJob(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno}", where) from None
        except strictjson.TooDeep as exc:
            raise _too_deep(exc, where, where) from None
        if not isinstance(items, list):
            raise InvalidJob(f"{where}: a file that starts with '[' must be one JSON list of items", where)
        return items
    items = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            _append_item(items, line, number, where, max_items)
    return items


def _append_item(items: list[Any], line: str, number: int, where: str, max_items: int | None) -> None:
    """One JSON Lines item, parsed strictly; reading stops at the first line past ``max_items``."""
    if max_items is not None and len(items) >= max_items:
        raise InvalidJob(f"{where}: more than limits.max_items ({max_items}) items", where)
    try:
        items.append(strictjson.loads(line))
    except json.JSONDecodeError as exc:
        raise InvalidJob(f"{where}: line {number} is not valid JSON: {exc.msg}", where) from None
    except strictjson.TooDeep:
        raise InvalidJob(
            f"{where}[{len(items)}]: nested deeper than {strictjson.MAX_DEPTH} levels (line {number}); flatten it",
            f"{where}[{len(items)}]",
        ) from None
