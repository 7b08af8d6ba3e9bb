"""Progress figures read from task records, shown live on a terminal and as plain lines elsewhere."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from fanout.progress import ProgressView, Tally, local_view

ROOT = Path(__file__).resolve().parents[2]


def chunk(*records: dict[str, Any]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def record(
    task: str, status: str = "ok", attempts: int = 1, tokens: tuple[int, int] = (1000, 100), throttled: int = 0
) -> dict[str, Any]:
    return {
        "task_id": task,
        "status": status,
        "attempts": attempts,
        **({"throttled": throttled} if throttled else {}),
        "model": "bedrock:amazon.nova-lite-v1:0",
        "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]},
    }


def test_a_task_counts_once_by_its_best_record_and_failures_retries_and_cost_add_up() -> None:
    prices = {"bedrock:amazon.nova-lite-v1:0": {"input_per_million": 1.0, "output_per_million": 10.0}}
    tally = Tally(total=10, prices=prices, started=time.time() - 4)
    tally.add_chunk("a", chunk(record("t1"), record("t2", "failed", attempts=3, throttled=2), record("t3", "invalid")))
    tally.add_chunk("b", chunk(record("t2", "ok", attempts=2)))  # a retried batch answered t2 after all
    tally.add_chunk("a", chunk(record("t9")))  # a chunk already read is not read again

    snap = tally.snapshot()
    assert (snap.done, snap.failed, snap.invalid, snap.throttled, snap.retried) == (3, 0, 1, 2, 3)
    # 4 records of 1000 in / 100 out tokens at $1 / $10 per million
    assert snap.cost_usd == round(4 * (1000 / 1e6 * 1.0 + 100 / 1e6 * 10.0), 6)
    # 3 tasks in about 4 s: 7 to go take about 9 s more
    assert snap.eta_seconds is not None and 8 < snap.eta_seconds < 11
    assert "tasks 3/10 done  failed 0  invalid 1  throttled 2  retried 3  cost $0.0080" in snap.line()


def test_records_of_an_earlier_run_count_as_done_but_not_as_this_runs_cost_or_pace() -> None:
    now = time.time()
    tally = Tally(total=4, since=now - 1, started=now - 2)
    tally.add_chunk("old", chunk(record("t1", tokens=(10**6, 0)), record("t2", tokens=(10**6, 0))), written=now - 3600)
    snap = tally.snapshot()
    assert snap.done == 2 and snap.eta_seconds is None  # no task of this run has finished: no pace yet
    assert snap.cost_usd == 0.0
    tally.add_chunk("new", chunk(record("t3", tokens=(0, 0))), written=now)
    snap = tally.snapshot()
    assert snap.done == 3 and snap.eta_seconds is not None and 1 < snap.eta_seconds < 4


def test_an_unknown_total_and_unknown_prices_are_shown_as_such() -> None:
    tally = Tally()
    tally.add_chunk("a", chunk({**record("t1"), "model": "bedrock:some.unpriced-model"}))
    assert "tasks 1/? done" in tally.snapshot().line() and "cost unknown" in tally.snapshot().line()


def test_not_a_terminal_plain_lines_every_few_seconds_and_one_at_the_end() -> None:
    tally = Tally(total=2)
    stream = io.StringIO()
    with ProgressView(tally.snapshot, stream=stream, every=3600) as view:
        view.update()
        tally.add_chunk("a", chunk(record("t1")))
        view.update()  # within the interval: no line
        tally.add_chunk("b", chunk(record("t2")))
    lines = stream.getvalue().splitlines()
    assert [line.split("  ")[0] for line in lines] == ["tasks 0/2 done", "tasks 2/2 done"]
    assert "\x1b" not in stream.getvalue()  # no escape codes in a log


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_a_live_bar_carries_the_same_figures() -> None:
    tally = Tally(total=2)
    stream = _Terminal()
    with ProgressView(tally.snapshot, stream=stream) as view:
        tally.add_chunk("a", chunk(record("t1", "failed", attempts=2)))
        view.update()
        assert view.live
        time.sleep(0.2)
    shown = stream.getvalue()
    assert "1/2" in shown and "failed 1" in shown and "retried 1" in shown and "eta" in shown


def test_quiet_shows_nothing(tmp_path: Path) -> None:
    stream = io.StringIO()
    with ProgressView(Tally(total=1).snapshot, stream=stream, quiet=True) as view:
        view.update()
    assert stream.getvalue() == ""


def test_a_local_run_reads_the_records_it_copies_into_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "records"
    (folder / "b00000").mkdir(parents=True)
    (folder / "b00000" / "old.jsonl").write_bytes(chunk(record("t1")))
    view = local_view(3, folder, quiet=True)
    (folder / "b00000" / "new.jsonl").write_bytes(chunk(record("t2"), record("t3", "failed")))
    snap = view.read()
    assert (snap.done, snap.failed) == (3, 1)
    # a fresh run calls every task again: what was there before is not progress
    fresh = local_view(3, folder, quiet=True, fresh=True)
    assert fresh.read().done == 0


def test_piping_into_head_ends_quietly() -> None:
    # Given a command whose output is longer than what the reader takes (validate prints the plan)
    command = f"{sys.executable} -m fanout validate examples/market-research.json | head -1"

    # When the reader stops after one line
    piped = subprocess.run(["sh", "-c", command], cwd=ROOT, capture_output=True, text=True, timeout=60)

    # Then there is that line and no complaint about the closed pipe
    assert piped.stdout == "{\n"
    assert "Broken pipe" not in piped.stderr and "Traceback" not in piped.stderr, piped.stderr


def test_a_local_run_shows_the_calls_the_model_throttled(tmp_path: Path) -> None:
    # Given a simulator that throttles about a third of the calls (each is retried after a pause)
    job = json.loads((ROOT / "examples" / "ticket-triage.json").read_text())
    (tmp_path / "job.json").write_text(json.dumps({**job, "job_id": "throttled"}))
    command = [sys.executable, "-m", "fanout", "run", str(tmp_path / "job.json"), "--out", str(tmp_path / "out")]
    command += ["--model", "sim:latency_ms=1,throttle_rate=0.3,seed=5"]

    # When it runs with its progress going to a pipe
    ran = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)

    # Then the last progress line counts the throttled calls the task records hold
    assert ran.returncode == 0, ran.stderr
    records = [json.loads(line) for p in (tmp_path / "out" / "throttled" / "records").rglob("*.jsonl") for line in p.open()]
    throttled = sum(r.get("throttled", 0) for r in records)
    assert throttled > 0
    last = [line for line in ran.stderr.splitlines() if line.startswith("tasks ")][-1]
    assert last.startswith("tasks 60/60 done") and f"throttled {throttled}  " in last


def test_progress_shows_the_time_calls_waited_for_the_quota() -> None:
    tally = Tally(total=4)
    waited = {**record("t1"), "quota_wait_ms": 2500.0}
    tally.add_chunk("a", chunk(waited, record("t2", throttled=1)))
    snap = tally.snapshot()
    assert snap.quota_wait == 2.5
    assert "throttled 1" in snap.compact() and "quota wait 2s" in snap.compact()
    assert "quota wait 2s" in snap.line()
