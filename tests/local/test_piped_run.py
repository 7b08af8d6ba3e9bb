"""``fanout run ... | head``: the reader stopping early ends the command quietly, after the run has kept its results."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("redirect", "reader"),
    [
        ("", "head -3"),  # the summary, cut after three lines
        ("2>&1", "head -3"),  # the progress lines too: plain lines, as output that is not a terminal gets
        ("", "head -n 0"),  # a reader gone before the first write: the closed pipe is met every time
    ],
    ids=["stdout", "with-progress", "reader-gone"],
)
def test_a_run_piped_into_head_ends_quietly_with_its_results_kept(tmp_path: Path, redirect: str, reader: str) -> None:
    # Given a job run through a pipe into a reader that stops early
    job = json.loads((ROOT / "examples" / "ticket-triage.json").read_text())
    path = tmp_path / "job.json"
    path.write_text(json.dumps({**job, "job_id": "piped"}))
    out = tmp_path / "out"
    command = shlex.join(
        [sys.executable, "-m", "fanout", "run", str(path), "--out", str(out), "--model", "sim:latency_ms=0,jitter_ms=0"]
    )

    # When the reader has taken what it wants
    piped = subprocess.run(
        ["bash", "-c", f'{command} {redirect} | {reader}; echo "exit ${{PIPESTATUS[0]}}" >&2'],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Then no complaint about the closed pipe and no traceback: the command ends as a shell expects of a writer
    # whose reader went away (0, or 141 for SIGPIPE)
    status = piped.stderr.strip().splitlines()[-1]
    assert "Broken pipe" not in piped.stderr and "Traceback" not in piped.stderr, piped.stderr
    assert status in ("exit 0", "exit 141"), piped.stderr
    lines = piped.stdout.splitlines()
    assert len(lines) == (0 if reader == "head -n 0" else 3), piped.stdout
    # progress that is not on a terminal is plain lines: no cursor movement or colour codes
    assert "\x1b" not in piped.stdout
    if redirect:
        assert any(line.startswith("tasks ") for line in lines), lines
    # and the run finished and kept every result before it met the closed pipe
    result = json.loads((out / "piped" / "result.json").read_text())
    assert result["status"] == "complete" and result["counts"]["ok"] == result["counts"]["tasks"]
