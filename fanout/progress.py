"""Progress of a run, read from its task records: done, failed, retried calls, cost so far, ETA.

The same figures for a local run (records in moto's in-process S3) and for a deployed one (records in
the results bucket, ``fanout submit --wait``). Record chunks never change once written, so each is read
once. On a terminal the figures are a live bar; otherwise (a pipe, a log file, CI) a plain line every
few seconds and one at the end.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fanout_core.pricing import estimate_cost

_RANK = {"ok": 4, "skipped": 3, "invalid": 2, "failed": 1}
PLAIN_EVERY_SECONDS = 5.0


@dataclass(frozen=True)
class Snapshot:
    total: int
    done: int
    failed: int
    invalid: int
    throttled: int  # calls the model refused with a throttling error (each retried after a pause)
    retried: int  # calls repeated after throttling, a timeout or a transient error (a record's attempts past the first)
    cost_usd: float | None
    elapsed: float
    eta_seconds: float | None
    quota_wait: float = 0.0  # seconds calls waited for the model's quota before they were sent (fanout_core.pacing)

    def figures(self) -> str:
        cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        waited = f"  quota wait {self.quota_wait:.0f}s" if self.quota_wait >= 1 else ""
        counts = f"failed {self.failed}  invalid {self.invalid}  throttled {self.throttled}  retried {self.retried}"
        return f"{counts}{waited}  cost {cost}"

    def compact(self) -> str:
        """The figures for a live bar on an 80-column terminal: the zero ones other than failed left out."""
        cost = "unknown" if self.cost_usd is None else f"${self.cost_usd:.4f}"
        shown = [f"failed {self.failed}"]
        shown += [
            f"{name} {n}"
            for name, n in (("invalid", self.invalid), ("throttled", self.throttled), ("retried", self.retried))
            if n
        ]
        if self.quota_wait >= 1:
            shown.append(f"quota wait {self.quota_wait:.0f}s")
        return "  ".join([*shown, f"cost {cost}", f"eta {self.eta()}"])

    def eta(self) -> str:
        return "-" if self.eta_seconds is None else _clock(self.eta_seconds)

    def line(self) -> str:
        return f"tasks {self.done}/{self.total or '?'} done  {self.figures()}  elapsed {_clock(self.elapsed)}  eta {self.eta()}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "tasks": self.total,
            "done": self.done,
            "failed": self.failed,
            "invalid": self.invalid,
            "throttled": self.throttled,
            "retried": self.retried,
            "quota_wait_seconds": round(self.quota_wait, 1),
            "cost_usd": self.cost_usd,
            "elapsed_seconds": round(self.elapsed, 1),
            "eta_seconds": None if self.eta_seconds is None else round(self.eta_seconds, 1),
        }


class Tally:
    """Task records seen so far; the best status of each task counts once, as Aggregate counts it.

    Records written before ``since`` (epoch seconds; an earlier run of the same job_id) count as done
    but not towards this run's cost, retries or pace.
    """

    def __init__(
        self, total: int = 0, prices: dict[str, Any] | None = None, since: float | None = None, started: float | None = None
    ) -> None:
        self.total = total  # 0 while not known
        self.prices = prices
        self.since = since
        self.started = time.time() if started is None else started  # epoch seconds: the run's start
        self._best: dict[str, int] = {}
        self._earlier = 0  # tasks finished by an earlier run
        self._retried = 0
        self._throttled = 0
        self._waited = 0.0
        self._by_model: dict[str, dict[str, int]] = {}
        self._seen: set[str] = set()

    def seen(self, key: str) -> bool:
        return key in self._seen

    def add_chunk(self, key: str, body: bytes, written: float | None = None) -> None:
        """One records chunk (JSON lines); ``written`` is its modification time (epoch seconds)."""
        if key in self._seen:
            return
        self._seen.add(key)
        earlier = self.since is not None and written is not None and written < self.since
        for line in body.splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if not isinstance(record, dict):
                continue
            self._add(record, earlier)

    def _add(self, record: dict[str, Any], earlier: bool) -> None:
        task = str(record.get("task_id", ""))
        rank = _RANK.get(str(record.get("status")), 0)
        if task not in self._best:
            self._earlier += earlier
        if rank > self._best.get(task, -1):
            self._best[task] = rank
        if earlier:
            return
        attempts, throttled = record.get("attempts"), record.get("throttled")
        if isinstance(attempts, int) and attempts > 1:
            self._retried += attempts - 1
        if isinstance(throttled, int) and throttled > 0:
            self._throttled += throttled
        waited = record.get("quota_wait_ms")
        if isinstance(waited, (int, float)) and waited > 0:
            self._waited += waited / 1000
        spent = record.get("usage")
        usage: dict[str, Any] = spent if isinstance(spent, dict) else {}
        model = self._by_model.setdefault(str(record.get("model") or "unknown"), {"input_tokens": 0, "output_tokens": 0})
        for field in ("input_tokens", "output_tokens"):
            value = usage.get(field)
            if isinstance(value, int):
                model[field] += value

    def snapshot(self) -> Snapshot:
        elapsed = max(0.0, time.time() - self.started)
        done = len(self._best)
        ranks = list(self._best.values())
        this_run = done - self._earlier
        eta = None
        if self.total and this_run > 0 and done < self.total:
            eta = (self.total - done) * elapsed / this_run
        elif self.total and done >= self.total:
            eta = 0.0
        return Snapshot(
            total=max(self.total, done) if self.total else 0,
            done=done,
            failed=ranks.count(_RANK["failed"]),
            invalid=ranks.count(_RANK["invalid"]),
            throttled=self._throttled,
            retried=self._retried,
            cost_usd=estimate_cost(self._by_model, self.prices),
            elapsed=elapsed,
            eta_seconds=eta,
            quota_wait=self._waited,
        )


def read_s3_chunks(s3: Any, bucket: str, prefix: str, tally: Tally) -> None:
    """Feed the chunks under ``prefix`` not read yet into ``tally`` (ListObjectsV2, then GetObject per new key)."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            if tally.seen(obj["Key"]):
                continue
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
            tally.add_chunk(obj["Key"], body, obj["LastModified"].timestamp())


class ProgressView:
    """Shows snapshots: a live bar on a terminal, plain lines (every few seconds and at the end) otherwise."""

    def __init__(
        self,
        read: Callable[[], Snapshot],
        *,
        quiet: bool = False,
        stream: TextIO | None = None,
        every: float = PLAIN_EVERY_SECONDS,
    ) -> None:
        self.read = read
        self.quiet = quiet
        self.stream = stream or sys.stderr
        self.every = every
        self.live = not quiet and _is_terminal(self.stream)
        self._bar: Any = None
        self._last_plain: float | None = None
        self._last: Snapshot | None = None

    def __enter__(self) -> ProgressView:
        if self.live:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

            self._bar = Progress(
                TextColumn("tasks"),
                BarColumn(bar_width=10),
                MofNCompleteColumn(),
                TextColumn("{task.fields[figures]}"),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task("tasks", total=None, figures="")
        return self

    def update(self) -> None:
        if self.quiet:
            return
        snap = self._last = self.read()
        if self._bar is not None:
            figures = snap.compact()  # rich's bar shows done/total itself
            self._bar.update(self._task, total=snap.total or None, completed=snap.done, figures=figures)
        elif self._last_plain is None or time.monotonic() - self._last_plain >= self.every:
            self._last_plain = time.monotonic()
            self._plain(snap)

    def __exit__(self, *_: Any) -> None:
        if self._bar is not None:
            self._bar.stop()
        elif not self.quiet and self._last is not None:
            self._plain(self.read())  # the final figures, once

    def _plain(self, snap: Snapshot) -> None:
        try:
            self.stream.write(snap.line() + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):  # the reader went away: progress is not worth failing the run for
            self.quiet = True


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _clock(seconds: float) -> str:
    seconds = max(0, round(seconds))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def read_folder_chunks(folder: Path, tally: Tally) -> None:
    """Feed the record chunks a local run has copied into ``folder`` (DIR/<job_id>/records/) and not read yet."""
    if not folder.is_dir():
        return
    for path in folder.rglob("*.jsonl"):
        key = path.as_posix()
        if tally.seen(key):
            continue
        try:
            body, written = path.read_bytes(), path.stat().st_mtime
        except OSError:  # replaced while listed: read it next time
            continue
        tally.add_chunk(key, body, written)


def local_view(
    total: int,
    folder: Path,
    *,
    quiet: bool,
    prices: dict[str, Any] | None = None,
    fresh: bool = False,
    refresh: Callable[[], Any] | None = None,
) -> ProgressView:
    """The progress of a local run, from the records it writes to ``folder`` (``refresh`` copies the latest there).

    Earlier runs' records count as done (they are not called again), unless the run is ``fresh``.
    """
    now = time.time()
    since = now - 0.5  # a file system's mtime can trail the clock a little
    tally = Tally(total, prices=prices, since=since, started=now)
    earlier = {p.as_posix() for p in folder.rglob("*.jsonl")} if fresh and folder.is_dir() else set()

    def read() -> Snapshot:
        for key in earlier:
            tally.add_chunk(key, b"")  # a fresh run calls these tasks again: their old records are not progress
        earlier.clear()
        if refresh is not None:
            refresh()
        read_folder_chunks(folder, tally)
        return tally.snapshot()

    return ProgressView(read, quiet=quiet)
