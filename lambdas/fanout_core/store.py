"""S3 I/O for a run: the plan, batch files, one record per task, and the results.

Layout in the results bucket::

    runs/<job_id>/job.json                 the checked job with its items
    runs/<job_id>/plan.json                batches and counts
    runs/<job_id>/batches/<n>.json         the rendered tasks of batch n
    runs/<job_id>/records/<item>/<slot>.json   one result record per task
    results/<job_id>/result.json, results.jsonl, report.md
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

from botocore.exceptions import ClientError


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


def key_part(text: str) -> str:
    """A distinct, valid S3 key segment for any id ('/', spaces, unicode included), at most ~200 bytes."""
    # '~' marks a shortened id below, so a literal one is escaped: no short id can spell a shortened one
    quoted = quote(text, safe="-_.@+=,").replace("~", "%7E")
    if quoted in (".", ".."):
        quoted = quoted.replace(".", "%2E")
    if len(quoted) <= 200:
        return quoted
    return f"{quoted[:160]}~{hashlib.sha256(text.encode()).hexdigest()[:24]}"


class RunStore:
    """The run data of one job under ``runs/<job_id>/`` in the results bucket."""

    def __init__(self, s3: Any, bucket: str, job_id: str) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.job_id = job_id
        self.prefix = f"runs/{job_id}/"

    @classmethod
    def from_uri(cls, s3: Any, run_uri: str, job_id: str) -> RunStore:
        bucket, _ = parse_s3_uri(run_uri)
        return cls(s3, bucket, job_id)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def put_json(self, name: str, body: Any) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=_dumps(body), ContentType="application/json")

    def get_json(self, name: str) -> Any:
        return get_json(self.s3, self.bucket, self.prefix + name)

    def batch_name(self, index: int) -> str:
        return f"batches/{index:05d}.json"

    def record_key(self, item_id: str, slot: str) -> str:
        return f"{self.prefix}records/{key_part(item_id)}/{key_part(slot)}.json"

    def put_record(self, record: dict[str, Any]) -> None:
        key = self.record_key(record["item_id"], record["slot"])
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=_dumps(record), ContentType="application/json")

    def get_record(self, item_id: str, slot: str) -> dict[str, Any] | None:
        try:
            record: dict[str, Any] = get_json(self.s3, self.bucket, self.record_key(item_id, slot))
            return record
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def record_keys(self) -> Iterator[str]:
        return self._keys("records/")

    def failures(self) -> Iterator[dict[str, Any]]:
        """The errors of batches that failed for good, written by the state machine as failures/<n>.json."""
        for key in self._keys("failures/"):
            failure: dict[str, Any] = get_json(self.s3, self.bucket, key)
            failure["batch"] = int(key.rsplit("/", 1)[-1].split(".")[0])
            yield failure

    def delete_prefix(self, name: str) -> None:
        keys = list(self._keys(name))
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    def _keys(self, name: str) -> Iterator[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + name):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def iter_records(self, threads: int = 32) -> Iterator[dict[str, Any]]:
        """Every task record of the run, read concurrently and streamed in chunks."""
        keys = self.record_keys()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            while True:
                chunk = [k for _, k in zip(range(threads * 16), keys, strict=False)]
                if not chunk:
                    return
                yield from pool.map(lambda key: get_json(self.s3, self.bucket, key), chunk)


def get_json(s3: Any, bucket: str, key: str) -> Any:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def put_text(s3: Any, bucket: str, key: str, text: str, content_type: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
