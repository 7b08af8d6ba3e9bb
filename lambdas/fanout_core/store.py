"""S3 I/O for a run: the plan, batch files, the task records, and the results (keys: ``fanout_core.layout``).

Records are written as the batch goes, a chunk at a time (every
``flush_records`` records or ``flush_seconds``, and when the batch ends or
fails), so a crashed batch keeps what it finished and a retried one skips
it. Ids never appear in keys: any id, with '/', spaces or unicode, is safe.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fanout_core import layout
from fanout_core.contracts import FINAL_STATUSES, Record


def parse_s3_uri(uri: str) -> tuple[str, str]:
    if not uri.startswith("s3://") or "/" not in uri[5:]:
        raise ValueError(f"not an s3://bucket/key URI: {uri!r}")
    bucket, _, key = uri[5:].partition("/")
    return bucket, key


# a chunk is written once it holds this many records, if flush_seconds has not come first: what bounds how long a
# record waits is the time; the count only keeps a chunk's body bounded (~1 MB) when calls come back fast. Each
# chunk is a PutObject, a GetObject in Aggregate and a file in a local run's --out (500 made ~40 chunks a second)
FLUSH_RECORDS = 2000
# held by the run of a job_id from Plan to Aggregate (fanout_core.lease), so two runs never share its records
LEASE = layout.LEASE_FILE
# the record statuses that need no more model calls (contracts.FINAL_STATUSES): answered, not asked because earlier
# votes agreed, invalid after its repair, failed after its own retries; a batch retry asks none of them again
FINISHED = FINAL_STATUSES


class RunStore:
    """The run data of one job under ``runs/<job_id>/`` in the results bucket."""

    def __init__(self, s3: Any, bucket: str, job_id: str, *, flush_seconds: float = 1.0) -> None:
        self.s3 = s3
        self.bucket = bucket
        self.job_id = job_id
        self.prefix = layout.run_prefix(job_id)
        self.flush_seconds = flush_seconds  # the longest a finished record waits for its chunk

    @classmethod
    def from_uri(cls, s3: Any, run_uri: str, job_id: str, *, flush_seconds: float = 1.0) -> RunStore:
        bucket, _ = parse_s3_uri(run_uri)
        return cls(s3, bucket, job_id, flush_seconds=flush_seconds)

    @property
    def uri(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    def put_json(self, name: str, body: Any) -> None:
        self.s3.put_object(Bucket=self.bucket, Key=self.prefix + name, Body=_dumps(body), ContentType="application/json")

    def put_json_streamed(self, name: str, body: Any) -> None:
        """``put_json`` through a temporary file (/tmp in Lambda): a large body (a job's items) is never held as one
        string and its bytes at once, only encoded and uploaded in parts."""
        encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
        with tempfile.TemporaryFile() as file:
            for chunk in encoder.iterencode(body):
                file.write(chunk.encode("utf-8"))
            file.seek(0)
            self.s3.upload_fileobj(file, self.bucket, self.prefix + name, ExtraArgs={"ContentType": "application/json"})

    def get_json(self, name: str) -> Any:
        return get_json(self.s3, self.bucket, self.prefix + name)

    def batch_name(self, index: int) -> str:
        return layout.batch_name(index)

    def writer(self, batch_index: int, flush_records: int = FLUSH_RECORDS, flush_seconds: float | None = None) -> RecordWriter:
        """Where one run of batch ``batch_index`` writes its records."""
        prefix = f"{self.prefix}{layout.batch_records_dir(batch_index)}{uuid.uuid4().hex[:12]}"
        return RecordWriter(
            self.s3, self.bucket, prefix, flush_records, self.flush_seconds if flush_seconds is None else flush_seconds
        )

    def second_pass_keys(self) -> set[str] | None:
        """The request keys the second pass's stages planned this run (layout.second_pass_keys); None when none did."""
        found: set[str] | None = None
        for key in self._keys(layout.SECOND_PASS_DIR):
            if key.endswith(".keys.json"):
                found = (found or set()) | set(get_json(self.s3, self.bucket, key))
        return found

    def note_spent(self, batch_index: int, run: str | None, calls: dict[str, int]) -> None:
        """The calls of one batch invocation that left no record (by model spec), so usage counts every call."""
        if any(calls.values()):
            name = f"{layout.batch_spent_dir(batch_index)}{uuid.uuid4().hex[:12]}.json"
            self.put_json(name, {"run": run, "model_calls": calls})

    def spent(self, run: str | None) -> dict[str, int]:
        """The calls that left no record, of the run ``run`` (every run's when None), by model spec."""
        total: dict[str, int] = {}
        for key in self._keys(layout.SPENT_DIR):
            noted = get_json(self.s3, self.bucket, key)
            if run is not None and noted.get("run") != run:
                continue
            for model, calls in (noted.get("model_calls") or {}).items():
                total[model] = total.get(model, 0) + int(calls)
        return total

    def completed(self, batch_index: int) -> set[str]:
        """Task ids with a final record from an earlier invocation of this batch (a retry or a redrive)."""
        return {r["task_id"] for r in self.finished_records(batch_index)}

    def finished_records(self, batch_index: int) -> list[Record]:
        """The records behind ``completed``: early stopping decides from their answers. A batch inference answer
        marked ``fallback`` (an error, a cut-off or out-of-schema answer) is not final: the on-demand calls ask it."""
        records = self._read_records(self._keys(layout.batch_records_dir(batch_index)))
        return [r for r in records if r["status"] in FINISHED and not r.get("fallback")]

    def has_records(self) -> bool:
        listed = self.s3.list_objects_v2(Bucket=self.bucket, Prefix=self.prefix + layout.RECORDS_DIR, MaxKeys=1)
        return bool(listed.get("KeyCount"))

    def record_keys(self) -> Iterator[str]:
        return self._keys(layout.RECORDS_DIR)

    def failures(self) -> Iterator[dict[str, Any]]:
        """The errors of batches that failed for good, written by the state machine (layout.FAILURE_FORMAT)."""
        for key in self._keys(layout.FAILURES_DIR):
            failure: dict[str, Any] = get_json(self.s3, self.bucket, key)
            failure["batch"] = layout.failure_batch(key)
            yield failure

    def delete_prefix(self, name: str) -> None:
        keys = list(self._keys(name))
        for start in range(0, len(keys), 1000):
            chunk = [{"Key": k} for k in keys[start : start + 1000]]
            self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": chunk, "Quiet": True})

    def names(self, prefix: str) -> list[str]:
        """The names (relative to the run's prefix) of the run's objects under ``prefix``."""
        return [key[len(self.prefix) :] for key in self._keys(prefix)]

    def _keys(self, name: str) -> Iterator[str]:
        paginator = self.s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix + name):
            for obj in page.get("Contents", []):
                yield obj["Key"]

    def iter_records(self) -> Iterator[Record]:
        """Every task record of the run (of every attempt), streamed."""
        return self._read_records(self.record_keys())

    def _read_records(self, keys: Iterator[str], threads: int = 16) -> Iterator[Record]:
        """Records of the given chunk files, fetched concurrently, a window of files at a time."""
        with ThreadPoolExecutor(max_workers=threads) as pool:
            while True:
                window = [k for _, k in zip(range(threads * 4), keys, strict=False)]
                if not window:
                    return
                for body in pool.map(self._get_bytes, window):
                    for line in body.splitlines():
                        if line.strip():
                            yield json.loads(line)

    def _get_bytes(self, key: str) -> bytes:
        body: bytes = self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return body


class RecordWriter:
    """Collects a batch's records and writes them to S3 in JSON Lines chunks; thread-safe."""

    def __init__(self, s3: Any, bucket: str, prefix: str, flush_records: int, flush_seconds: float) -> None:
        self.s3, self.bucket, self.prefix = s3, bucket, prefix
        self.flush_records, self.flush_seconds = flush_records, flush_seconds
        self._pending: list[Record] = []
        self._lock = threading.Lock()
        self._sequence = 0
        self._last_flush = time.monotonic()
        # writes what is pending once the oldest pending record is flush_seconds old, when no record comes after it
        self._timer: threading.Timer | None = None
        self._late = threading.Lock()  # held by the timer's write, so close waits for it
        self.written = 0

    def add(self, record: Record) -> None:
        timer = None
        with self._lock:
            self._pending.append(record)
            due = len(self._pending) >= self.flush_records or time.monotonic() - self._last_flush >= self.flush_seconds
            chunk = self._take() if due else None
            if chunk is None and self._timer is None:
                timer = self._timer = threading.Timer(self.flush_seconds, self._flush_late)
                timer.daemon = True
        if timer is not None:
            # started outside the lock: a thread's start waits for it to run, and the batch's other threads would
            # wait for the lock meanwhile. A timer cancelled before it starts (by a chunk or close) does nothing.
            timer.start()
        if chunk:
            self._put(*chunk)

    def close(self) -> None:
        """Write whatever is pending (called when the batch ends, also when it fails), after a timer's write in flight."""
        with self._late, self._lock:
            chunk = self._take()
        if chunk:
            self._put(*chunk)

    def _flush_late(self) -> None:
        """The timer's write: a record that finished just after a chunk waits no longer than ``flush_seconds``.

        A write that fails leaves its records pending, for the next chunk or ``close`` (which raises if it fails too).
        """
        with self._late:
            with self._lock:
                chunk = self._take()
            if not chunk:
                return
            try:
                self._put(*chunk)
            except Exception:
                with self._lock:
                    self._pending[:0] = chunk[1]

    def _take(self) -> tuple[int, list[Record]] | None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._pending:
            return None
        records, self._pending = self._pending, []
        self._sequence += 1
        self._last_flush = time.monotonic()
        return self._sequence, records

    def _put(self, sequence: int, records: list[Record]) -> None:
        body = b"".join(_dumps(r) + b"\n" for r in records)
        self.s3.put_object(
            Bucket=self.bucket, Key=f"{self.prefix}-{sequence:05d}.jsonl", Body=body, ContentType="application/x-ndjson"
        )
        with self._lock:
            self.written += len(records)


def get_json(s3: Any, bucket: str, key: str) -> Any:
    body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    return json.loads(body)


def put_text(s3: Any, bucket: str, key: str, text: str, content_type: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=text.encode("utf-8"), ContentType=content_type)


# one encoder for every record and file: json.dumps with options builds a new one per call
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# what _ENCODER.encode runs (JSONEncoder.iterencode's C encoder, same options), built once instead of on every call
# (about a fifth of a record's encoding). Without circular-reference markers: a body is made of JSON values, and one
# markers dict shared by the threads that write records could report a cycle that is another thread's object.
_C_ENCODER: Any = getattr(json.encoder, "c_make_encoder", None)
_ENCODE: Any = (
    _C_ENCODER(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",", False, False, True)
    if _C_ENCODER is not None
    else None
)


def _dumps(body: Any) -> bytes:
    if _ENCODE is None:
        return _ENCODER.encode(body).encode("utf-8")
    return "".join(_ENCODE(body, 0)).encode("utf-8")
