"""fanout from Python: validate a job, run it, look at the answers as rows (a pandas DataFrame if pandas is there).

    python examples/api_example.py [OUT_DIR]

Runs with the built-in simulator (no AWS account, no cost); pass a real model spec as ``model=`` instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

import fanout

HERE = Path(__file__).resolve().parent


def main(out: str = "out") -> int:
    job = {
        "job_id": "api-example",
        "pattern": "voting",
        "votes": 5,
        "prompt": "Classify the sentiment of this ticket: {text}",
        "items": [
            {"id": "t-1", "text": "Refund took three weeks.", "expected": "negative"},
            {"id": "t-2", "text": "The new export button is great.", "expected": "positive"},
            {"id": "t-3", "text": "Where do I change my email?", "expected": "neutral"},
        ],
        "output_schema": {
            "type": "object",
            "required": ["label"],
            "properties": {"label": {"enum": ["positive", "neutral", "negative"]}},
        },
        "aggregate": {"strategy": "majority", "field": "label"},
    }
    plan = fanout.validate(job, model="sim")
    print(f"plan: {plan.tasks} tasks in {plan.batches} batches, {plan.mode}")

    try:
        result = fanout.run(job, model="sim:accuracy=0.8,seed=7", out=out)
    except fanout.FanoutError as exc:  # the message the CLI would print, and the field at fault
        print(f"error: {exc} (field {exc.field})", file=sys.stderr)
        return 2
    print(f"{result.job_id}: {result.status}, {result.counts.ok} of {result.counts.tasks} tasks ok")
    if result.evaluation is not None:
        print(f"accuracy {result.evaluation.accuracy:.0%} (single call {result.evaluation.single_call_accuracy:.0%})")

    rows = result.rows()
    try:
        import pandas
    except ImportError:
        for row in rows:
            print(f"  {row['id']}: {row['answer']} (confidence {row['confidence']:.2f})")
    else:
        print(pandas.DataFrame(rows)[["id", "answer", "confidence", "tie"]].to_string(index=False))
    print(f"report: {result.paths.report}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:2]))
