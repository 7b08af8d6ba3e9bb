"""A local run's task records, kept in ``DIR/<job_id>/records/`` as they are written, not only when the run ends.

The handlers write records to the local S3 (moto) in chunk files that never
change once written, a record at most 0.5 s after its task finished
(``FANOUT_RECORD_FLUSH_SECONDS`` in fanout.runtime). ``RecordMirror`` copies
each new chunk out to the folder every 0.25 s (and once more when the run
ends or is interrupted), each file written whole or not at all, so a
finished record is on disk within a second and Ctrl-C, SIGTERM or kill -9
loses at most the calls in flight and that last second; the next run of the job puts the
folder's records back into the local S3 and calls the model only for the
tasks that lack one. A records line that is cut or not a record (a chunk
damaged outside fanout, a disk that failed) is left out with a warning, so
its task runs again; it never stops the job.

Every file the CLI writes goes through :func:`write_whole` (a temporary
name in the same folder, then ``os.replace``): a full disk or a kill leaves
the previous file, never a truncated one. :class:`RunLock` keeps one run
per job_id and ``--out`` at a time.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fanout import moto_patches
from fanout.errors import FanoutError
from fanout_core import layout

JOB_FILE = "_job.json"  # the run's job.json, next to the records it describes


class RecordMirror:
    """Copies ``runs/<job_id>/records/`` and ``job.json`` from the local S3 to ``target/records/``.

    ``replace_previous`` (``--fresh``): the folder's earlier records are
    neither put back nor removed until this run has records of its own; then
    they are replaced. Its result files are replaced only by this run's.
    """

    def __init__(self, account: str, bucket: str, job_id: str, target: Path, *, replace_previous: bool = False) -> None:
        self.account, self.bucket = account, bucket
        self.prefix = layout.run_prefix(job_id)
        self.target = target
        self.records = target / "records"
        self.replace_previous = replace_previous
        self.count = 0  # records in the local S3 so far, put back ones included
        self.saved = 0  # records this run wrote to the folder
        self.error: OSError | None = None  # why the last sync could not write every chunk
        self._seen: dict[str, Any] = {}
        self._pending_job: bytes | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def restore(self, s3: Any, warn: Callable[[str], None] | None = None) -> None:
        """Put the folder's records (and their job.json) back into the local S3, unless replacing them.

        A line that is cut or not a record is left out (``warn`` says which), and its chunk rewritten without it:
        its task has no record, so this run calls it again.
        """
        warn = warn or _warn
        if not self.replace_previous and self.records.is_dir():
            for stale in self.records.rglob(".*.tmp"):  # a write a killed run never finished
                stale.unlink(missing_ok=True)
            saved_job = self.records / JOB_FILE
            if saved_job.exists():
                body = saved_job.read_bytes()
                if _json_object(body) is not None:
                    s3.put_object(Bucket=self.bucket, Key=self.prefix + layout.JOB_FILE, Body=body)
                else:
                    warn(f"{saved_job} is cut or not JSON; left out (a changed job is not detected for this run)")
            for path in sorted(self.records.rglob("*.jsonl")):
                key = f"{self.prefix}records/{path.relative_to(self.records).as_posix()}"
                good = _good_records(path, warn)
                if good is not None:
                    s3.put_object(Bucket=self.bucket, Key=key, Body=good)
        with self._lock:
            # what was put back is in the folder already: counted, not copied again
            for _, body in moto_patches.new_objects(self.account, self.bucket, self.prefix + layout.RECORDS_DIR, self._seen):
                self.count += body.count(b"\n")
            for _ in moto_patches.new_objects(self.account, self.bucket, self.prefix + layout.JOB_FILE, self._seen):
                pass

    def sync(self) -> int:
        """Copy the chunks written since the last sync; returns the records counted so far.

        A chunk that cannot be written (a full disk) is tried again at the next sync; the error is kept in
        ``error`` until a sync writes everything.
        """
        with self._lock:
            failed: OSError | None = None
            for _, body in moto_patches.new_objects(self.account, self.bucket, self.prefix + layout.JOB_FILE, self._seen):
                self._pending_job = body
            for key, body in moto_patches.new_objects(self.account, self.bucket, self.prefix + layout.RECORDS_DIR, self._seen):
                try:
                    if self.replace_previous:
                        self._replace_previous()
                    if self._pending_job is not None:
                        write_whole(self.records / JOB_FILE, self._pending_job)
                        self._pending_job = None
                    write_whole(self.records / key[len(self.prefix + layout.RECORDS_DIR) :], body)
                except OSError as exc:
                    self._seen.pop(key, None)  # not on disk: copied at the next sync
                    failed = failed or exc
                    continue
                self.count += body.count(b"\n")
                self.saved += body.count(b"\n")
            if self._pending_job is not None and not self.replace_previous:
                try:
                    write_whole(self.records / JOB_FILE, self._pending_job)
                    self._pending_job = None
                except OSError as exc:
                    failed = failed or exc
            if failed is not None and self.error is None:
                _warn(f"cannot write task records to {self.records} ({failed.strerror or failed}); trying again")
            self.error = failed
            return self.count

    def start(self, every_seconds: float = 0.25) -> RecordMirror:
        """Sync in the background until ``stop``."""

        def loop() -> None:
            while not self._stop.wait(every_seconds):
                self.sync()

        self._thread = threading.Thread(target=loop, name="fanout-records", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> int:
        """Stop the background sync and copy what is left; returns the records counted.

        Raises FanoutError when some records could not be written: what is on disk is whole, and the same command
        run again calls the model only for the tasks without a saved record.
        """
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        count = self.sync()
        if self.error is not None:
            raise FanoutError(
                f"--out: cannot write task records to {self.records} ({self.error.strerror or self.error}); "
                f"{self.saved} records of this run are saved there whole. Free space and run the same command "
                "again: only the tasks without a saved record are called",
                "--out",
            )
        return count

    def _replace_previous(self) -> None:
        """The first record of a fresh run: the folder's earlier records go (a re-run must not count them too).

        The earlier result files stay until this run writes its own over them, each whole: a fresh run that is
        stopped halfway leaves the last finished run's results readable, and the same command resumes it.
        """
        self.replace_previous = False
        previous = self.target / ".previous-records"
        if self.records.exists():
            shutil.rmtree(previous, ignore_errors=True)
            self.records.rename(previous)
        shutil.rmtree(previous, ignore_errors=True)


def write_whole(path: Path, body: bytes | str) -> None:
    """Write a file so that it is there whole or not at all, whenever the process dies or the disk fills.

    A temporary name in the same folder (so the rename never crosses file systems), then ``os.replace``, atomic
    on POSIX and Windows. No fsync: a killed process leaves the page cache to the kernel; only power loss would
    need it.
    """
    data = body.encode("utf-8") if isinstance(body, str) else body
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            _write_all(file, data, path)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_all(file: Any, data: bytes, path: Path) -> None:
    """The copy itself, apart so that a test can fill the disk in the middle of it."""
    file.write(data)


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _good_records(path: Path, warn: Callable[[str], None]) -> bytes | None:
    """A chunk's body without the lines that are cut or not records; None when no line is left.

    A damaged chunk is rewritten on disk with its good lines only, so the warning is given once.
    """
    body = path.read_bytes()
    lines = body.split(b"\n")
    tail = lines.pop()  # after the last newline: empty when the chunk ends whole
    good, bad = [], 0
    for line in lines:
        record = _json_object(line) if line.strip() else None
        if record is not None and isinstance(record.get("task_id"), str) and isinstance(record.get("status"), str):
            good.append(line + b"\n")
        elif line.strip():
            bad += 1
    bad += 1 if tail.strip() else 0
    if not bad:
        return body
    warn(f"{path}: {bad} line(s) cut or not a task record, left out; their tasks run again")
    cleaned = b"".join(good)
    if cleaned:
        write_whole(path, cleaned)
        return cleaned
    path.unlink(missing_ok=True)
    return None


LOCK_FILE = ".run.lock"
# a lock file that has no holder written in it yet is being taken; after this long it is left from a crash
_LOCK_WRITE_SECONDS = 10.0


class RunLock:
    """One local run per job_id and ``--out``: ``DIR/<job_id>/.run.lock`` names its holder.

    Taken atomically (``O_CREAT | O_EXCL``: of two runs only one creates the file), with the holder's pid, host
    and process start time in it; freed when the run ends. A lock whose holder is gone (no such pid on this host,
    or the pid now belongs to a process started later) is taken over.
    """

    def __init__(self, folder: Path) -> None:
        self.path = folder / LOCK_FILE
        self.mine: bytes | None = None

    def acquire(self) -> None:
        me = json.dumps(_holder(os.getpid())).encode()
        for _ in range(5):
            try:
                handle = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._held()
                if held is None:
                    continue  # taken over; try again
                raise FanoutError(held, "--out", exit_code=2) from None
            except OSError as exc:  # a read-only or full --out: refused before any model call
                raise FanoutError(f"--out: cannot write {self.path} ({exc.strerror or exc})", "--out") from None
            with os.fdopen(handle, "wb") as file:
                file.write(me)
            self.mine = me
            return
        raise FanoutError(f"--out: cannot take {self.path}: other runs keep taking it; try again", "--out", exit_code=2)

    def release(self) -> None:
        if self.mine is None:
            return
        with contextlib.suppress(OSError):
            if self.path.read_bytes() == self.mine:
                self.path.unlink()
        self.mine = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, *_: Any) -> None:
        self.release()

    def _held(self) -> str | None:
        """The refusal when a live run holds the lock; None once a stale lock is removed."""
        try:
            body = self.path.read_bytes()
            age = dt.datetime.now().timestamp() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        holder = _json_object(body)
        if holder is None and age < _LOCK_WRITE_SECONDS:
            return self._refusal({})
        if holder is not None and _alive(holder):
            return self._refusal(holder)
        self._take_over(body)
        return None

    def _refusal(self, holder: dict[str, Any]) -> str:
        # an empty holder is a lock another run has created and not yet written its pid into
        host = holder.get("host")
        who = f"pid {holder['pid']}" if "pid" in holder else "a run taking the lock just now"
        who += f" on {host}" if host and host != socket.gethostname() else ""
        since = f", started {holder['started']}" if holder.get("started") else ""
        return (
            f"--out: another run of this job is writing to {self.path.parent} ({who}{since}); wait for it to end, or "
            f"give another --out. If no such run exists, delete {self.path}"
        )

    def _take_over(self, stale: bytes) -> None:
        """Remove the stale lock, unless another run replaced it meanwhile."""
        aside = self.path.with_name(f"{LOCK_FILE}.{os.getpid()}.stale")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        if aside.read_bytes() != stale:  # a run took it over first: its lock goes back
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        aside.unlink(missing_ok=True)


def _holder(pid: int) -> dict[str, Any]:
    return {
        "pid": pid,
        "host": socket.gethostname(),
        "process_start": _process_start(pid),
        "started": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux /proc), which tells a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the lock's holder still runs; a holder on another host is taken to run (it cannot be asked)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it runs
    except OSError as exc:
        return exc.errno != errno.ESRCH
    started = holder.get("process_start")
    return started is None or _process_start(pid) in (None, started)
