"""result.json holds only the fields contracts.Result declares, so a reader (the CLI, fanout results, report.html)
finds its shape in one module and mypy checks what it reads (Aggregate's summary, a total TypedDict, mypy checks whole)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fanout.cli import main
from fanout_core.contracts import EscalationUsage, Result, ResultCounts, ResultUsage


def declared(kind: Any) -> set[str]:
    return set(kind.__required_keys__ | kind.__optional_keys__)


def test_a_voting_run_with_escalation_a_budget_and_expected_answers_writes_only_declared_fields(tmp_path: Path) -> None:
    # Given a voting job whose result has every optional part: evaluation, escalation, pacing and a budget
    job = {
        "job_id": "contract",
        "pattern": "voting",
        "votes": 3,
        "prompt": "Label: {text}",
        "output_schema": {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["a", "b"]}}},
        "aggregate": {"field": "label", "escalate": {"below": 0.9, "votes": 2}},
        "limits": {"max_cost_usd": 5},
        "items": [{"id": f"i{n}", "text": f"t{n}", "expected": "a"} for n in range(12)],
    }
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))

    # When it runs locally
    code = main(["run", str(path), "--out", str(tmp_path), "--model", "sim:accuracy=0.6,latency_ms=0,seed=5", "--quiet"])

    # Then result.json, its counts and usage (escalation included) hold no field the contract leaves out
    assert code in (0, 1)
    result = json.loads((tmp_path / "contract" / "result.json").read_text())
    assert {"evaluation", "pacing"} <= set(result) and "escalation" in result["usage"]
    assert set(result) <= declared(Result), set(result) - declared(Result)
    assert set(result["counts"]) <= declared(ResultCounts)
    assert set(result["usage"]) <= declared(ResultUsage), set(result["usage"]) - declared(ResultUsage)
    assert set(result["usage"]["escalation"]) <= declared(EscalationUsage)
