"""A local run's task records, kept in ``DIR/<job_id>/records/`` as they are written, not only when the run ends.

The handlers write records to the local S3 (moto) in chunk files that never
change once written. ``RecordMirror`` copies each new chunk out to the
folder at least every second (and once more when the run ends or is
interrupted), each file written whole or not at all, so Ctrl-C, SIGTERM or
kill -9 loses at most the calls in flight; the next run of the job puts the
folder's records back into the local S3 and calls the model only for the
tasks that lack one.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

from fanout import moto_patches
from fanout_core import layout

JOB_FILE = "_job.json"  # the run's job.json, next to the records it describes
RESULT_FILES = ("result.json", "results.jsonl", "report.md", "run.json")


class RecordMirror:
    """Copies ``runs/<job_id>/records/`` and ``job.json`` from the local S3 to ``target/records/``.

    ``replace_previous`` (``--fresh``): the folder's earlier records and
    results are neither put back nor removed until this run has records of
    its own; then they are replaced.
    """

    def __init__(self, account: str, bucket: str, job_id: str, target: Path, *, replace_previous: bool = False) -> None:
        self.account, self.bucket = account, bucket
        self.prefix = layout.run_prefix(job_id)
        self.target = target
        self.records = target / "records"
        self.replace_previous = replace_previous
        self.count = 0  # records in the local S3 so far, put back ones included
        self._seen: dict[str, Any] = {}
        self._pending_job: bytes | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self, s3: Any) -> None:
        """Put the folder's records (and their job.json) back into the local S3, unless replacing them."""
        if not self.replace_previous and self.records.is_dir():
            saved_job = self.records / JOB_FILE
            if saved_job.exists():
                s3.put_object(Bucket=self.bucket, Key=self.prefix + layout.JOB_FILE, Body=saved_job.read_bytes())
            for path in sorted(self.records.rglob("*.jsonl")):
                key = f"{self.prefix}records/{path.relative_to(self.records).as_posix()}"
                s3.put_object(Bucket=self.bucket, Key=key, Body=path.read_bytes())
        with self._lock:
            # what was put back is in the folder already: counted, not copied again
            for _, body in moto_patches.new_objects(self.account, self.bucket, self.prefix + layout.RECORDS_DIR, self._seen):
                self.count += body.count(b"\n")
            for _ in moto_patches.new_objects(self.account, self.bucket, self.prefix + layout.JOB_FILE, self._seen):
                pass

    def sync(self) -> int:
        """Copy the chunks written since the last sync; returns the records counted so far."""
        with self._lock:
            for _, body in moto_patches.new_objects(self.account, self.bucket, self.prefix + layout.JOB_FILE, self._seen):
                self._pending_job = body
            for key, body in moto_patches.new_objects(self.account, self.bucket, self.prefix + layout.RECORDS_DIR, self._seen):
                if self.replace_previous:
                    self._replace_previous()
                if self._pending_job is not None:
                    _write_whole(self.records / JOB_FILE, self._pending_job)
                    self._pending_job = None
                _write_whole(self.records / key[len(self.prefix + layout.RECORDS_DIR) :], body)
                self.count += body.count(b"\n")
            if self._pending_job is not None and not self.replace_previous:
                _write_whole(self.records / JOB_FILE, self._pending_job)
                self._pending_job = None
            return self.count

    def start(self, every_seconds: float = 0.5) -> RecordMirror:
        """Sync in the background until ``stop``."""

        def loop() -> None:
            while not self._stop.wait(every_seconds):
                self.sync()

        self._thread = threading.Thread(target=loop, name="fanout-records", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop the background sync and copy what is left; returns the records counted."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        return self.sync()

    def _replace_previous(self) -> None:
        """The first record of a fresh run: the folder's earlier records and results go."""
        self.replace_previous = False
        previous = self.target / ".previous-records"
        if self.records.exists():
            shutil.rmtree(previous, ignore_errors=True)
            self.records.rename(previous)
        for name in RESULT_FILES:
            (self.target / name).unlink(missing_ok=True)
        shutil.rmtree(previous, ignore_errors=True)


def _write_whole(path: Path, body: bytes) -> None:
    """Write a file so that it is there whole or not at all, whenever the process dies.

    No fsync: a killed process leaves the page cache to the kernel; only power loss would need it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(body)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
