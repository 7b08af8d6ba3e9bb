"""A local run's output is the CLI's own: the in-process handlers' logs stay out of it, whatever imported them first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_a_local_run_prints_no_handler_log_lines(tmp_path: Path) -> None:
    # Given a job run by the command a user types, in a fresh process (the CLI's real import order: modules that
    # log are imported before the local runtime sets the handlers' log level)
    job = json.loads((ROOT / "examples" / "ticket-triage.json").read_text())
    path = tmp_path / "job.json"
    path.write_text(json.dumps({**job, "job_id": "quiet"}))

    # When it runs
    ran = subprocess.run(
        [sys.executable, "-m", "fanout", "run", str(path), "--out", str(tmp_path / "out"), "--model", "sim"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )

    # Then it succeeds and neither stream carries a Powertools log line ("planned", "batch done", "aggregated")
    assert ran.returncode == 0, ran.stderr
    logged = [line for line in (ran.stdout + ran.stderr).splitlines() if line.lstrip().startswith('{"level"')]
    assert logged == [], logged[:3]
    assert "job quiet: complete" in ran.stdout


def test_a_batch_that_fails_before_counting_anything_prints_no_powertools_warning_in_a_local_run() -> None:
    # Given a handler wrapped as the steps are, which fails before it adds a metric (a batch lost before its first
    # call), run inside the local runtime in a fresh process with Python's default warning filters
    code = (
        f"import sys, warnings; sys.path.insert(0, {str(ROOT)!r})\n"
        "import fanout\n"
        "from fanout.runtime import local_aws\n"
        "from fanout_core.observability import metrics\n"
        "@metrics.log_metrics\n"
        "def handler(event, context):\n"
        "    raise RuntimeError('container lost')\n"
        "with local_aws():\n"
        "    try:\n"
        "        handler({}, None)\n"
        "    except RuntimeError:\n"
        "        pass\n"
        "print('filters after', sum('No application metrics' in str(f[1]) for f in warnings.filters))\n"
    )

    # When it runs
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True, timeout=300)

    # Then nothing about empty metrics reached the terminal, and the runtime took its filter away when it ended
    assert "No application metrics" not in done.stderr, done.stderr
    assert "filters after 0" in done.stdout, done.stdout
