"""A batch that runs out of Lambda time is handed back (BatchIncomplete) and the state machine's retry finishes it.

The local Lambda context reports the time left of the invocation's timeout (``FANOUT_LOCAL_LAMBDA_TIMEOUT_SECONDS``),
so a short timeout drives a batch past its deadline as a long job does in the cloud.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fanout.cli import main
from fanout.runtime import LAMBDA_TIMEOUT_ENV

ITEMS, VOTES = 20, 3
SIM = "sim:latency_ms=40,jitter_ms=0,seed=3"


@pytest.mark.parametrize("mode", ["inline", "distributed"])
def test_a_batch_out_of_time_is_continued_by_the_retry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    # Given invocations that may start calls for half a second (a 31.5 s timeout less the 1 s model timeout and the
    # 30 s kept to write records), and one batch of 60 calls of 40 ms, 2 at a time (about 1.2 s of calls)
    monkeypatch.setenv(LAMBDA_TIMEOUT_ENV, "31.5")
    monkeypatch.setenv("FANOUT_MODEL_TIMEOUT_SECONDS", "1")
    job = {
        "job_id": f"short-lambda-{mode}",
        "pattern": "voting",
        "votes": VOTES,
        "prompt": "Classify: {text}",
        "items": [{"id": f"t-{n}", "text": f"ticket {n}"} for n in range(ITEMS)],
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["a", "b"]}}},
        "aggregate": {"field": "label"},
        "limits": {"max_concurrency": 2, "batch_size": ITEMS * VOTES, "mode": mode},
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))

    # When it runs on the local state machine
    code = main(["run", str(path), "--out", str(tmp_path / "out"), "--quiet", "--model", SIM])

    # Then the batch ran in more than one invocation (BatchIncomplete, then the Retry), and the job is complete with
    # one record per task and one call per task: nothing was asked twice
    target = tmp_path / "out" / job["job_id"]
    result = json.loads((target / "result.json").read_text())
    run = json.loads((target / "run.json").read_text())
    assert code == 0 and result["status"] == "complete"
    assert run["batches"] == 1 and run["lambda_invocations"]["fanout-subtask"] >= 2
    records = [
        json.loads(line) for file in (target / "records").rglob("*.jsonl") for line in file.read_text().splitlines() if line
    ]
    per_task = Counter(r["task_id"] for r in records)
    assert len(per_task) == ITEMS * VOTES and set(per_task.values()) == {1}
    assert result["usage"]["model_calls"] == ITEMS * VOTES
