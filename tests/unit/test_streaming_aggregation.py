"""Aggregation a part at a time gives what aggregating everything at once gives; the report is built as items come."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

from fanout_core.aggregation import aggregate, aggregate_stream
from fanout_core.job import Job, parse_job
from fanout_core.report import Report, report_markdown

LABELS = ["yes", "no", "unsure"]


def voting_job(items: int, votes: int = 3, strategy: str = "majority") -> Job:
    schema: dict[str, Any] = {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}}
    if strategy in ("mean", "median"):
        schema = {"type": "object", "required": ["score"], "properties": {"score": {"type": "number"}}}
    return parse_job(
        {
            "job_id": "stream",
            "pattern": "voting",
            "votes": votes,
            "prompt": "Q: {text}",
            "items": [{"id": f"i{n}", "text": "t", **({"expected": "yes"} if n % 2 else {})} for n in range(items)],
            "output_schema": schema,
            "aggregate": {"strategy": strategy, "field": "score" if strategy in ("mean", "median") else "label"},
        }
    )


def messy_records(job: Job, seed: int = 7) -> list[dict[str, Any]]:
    """Every kind of record Aggregate meets: answers, failures, invalid outputs, duplicates, strangers, gaps."""
    rng = random.Random(seed)
    records = []
    for item in job.items or []:
        for vote in range(1, (job.votes or 3) + 1):
            roll = rng.random()
            if roll < 0.05:
                continue  # no record: failed with "no result"
            status = "failed" if roll < 0.1 else "ok"
            output = {"label": rng.choice(LABELS), "score": rng.randint(0, 9)} if roll > 0.15 else {"label": 3}
            record = {
                "task_id": f"{item['id']}#v{vote}",
                "item_id": item["id"],
                "slot": f"v{vote}",
                "status": status,
                "output": output if status == "ok" else None,
                "error": None if status == "ok" else "boom",
                "model": rng.choice(["m1", "m2"]),
                "usage": {"input_tokens": 10, "output_tokens": 2},
                "attempts": 1,
            }
            records.append(record)
            if roll > 0.9:
                records.append({**record, "status": "failed", "output": None})  # a retried batch's duplicate
    records.append({"task_id": "ghost#v1", "item_id": "ghost", "slot": "v1", "status": "ok", "output": {}, "attempts": 1})
    rng.shuffle(records)  # records arrive in any order: by batch, by writer, by retry
    return records


def test_streaming_in_small_parts_gives_the_same_result_as_all_at_once(tmp_path: Path) -> None:
    for strategy in ("majority", "median"):
        # Given a job of 300 items with messy records, aggregated at once and in parts of 40 tasks
        job = voting_job(300, strategy=strategy)
        records = messy_records(job)
        whole = aggregate(job, list(job.items or []), iter(records))
        streamed: list[dict[str, Any]] = []

        head = aggregate_stream(
            job, list(job.items or []), iter(records), streamed.append, part_tasks=40, spill_dir=str(tmp_path)
        )

        # Then the items come in input order, the same, and the head is the rest of the same document
        assert streamed == whole["items"]
        assert {**head, "items": streamed} == whole
        assert "evaluation" in head
        assert list(tmp_path.iterdir()) == []  # the spill files are gone


def test_the_streamed_report_is_the_report_of_the_whole_result() -> None:
    job = voting_job(1200)
    result = aggregate(job, list(job.items or []), iter(messy_records(job)))
    report = Report(result["pattern"], result.get("strategy"))
    for item in result["items"]:
        report.add(item)

    page = report.markdown({k: v for k, v in result.items() if k != "items"})

    assert page == report_markdown(result)
    assert "700 more in results.jsonl" in page


def test_report_md_is_linear_in_items() -> None:
    # Given results of 20,000 and 80,000 items, most of them confident (the case that was quadratic)
    def result_of(n: int) -> dict[str, Any]:
        items = [{"id": f"i{k}", "answer": "yes", "confidence": 1.0 if k % 50 else 0.2, "votes": {"yes": 5}} for k in range(n)]
        counts = {"items": n, "tasks": 5 * n, "ok": 5 * n, "invalid": 0, "failed": 0}
        usage = {"model_calls": 5 * n, "input_tokens": 0, "output_tokens": 0}
        return {"job_id": "j", "pattern": "voting", "status": "complete", "counts": counts, "items": items, "usage": usage}

    def seconds(n: int) -> float:
        result = result_of(n)
        started = time.perf_counter()
        report_markdown(result)
        return time.perf_counter() - started

    small, large = min(seconds(20_000) for _ in range(3)), min(seconds(80_000) for _ in range(3))

    # Then four times the items take about four times as long (quadratic would be sixteen), and little of it
    assert large < 8 * small + 0.05
    assert large < 2.0


def test_result_json_from_the_stream_is_one_document(tmp_path: Path) -> None:
    from fanout_core.steps import _write_result

    # Given a head and an item list file as Aggregate writes them
    listed = tmp_path / "items.part"
    listed.write_text(",\n".join(json.dumps({"id": f"i{n}", "answer": "ü"}, ensure_ascii=False) for n in range(3)))
    head = {"job_id": "j", "status": "complete", "counts": {"items": 3}, "usage": {"model_calls": 3}}

    _write_result(tmp_path / "result.json", head, listed)

    document = json.loads((tmp_path / "result.json").read_text("utf-8"))
    assert list(document) == ["job_id", "status", "counts", "items", "usage"]
    assert [i["id"] for i in document["items"]] == ["i0", "i1", "i2"]
    listed.write_text("")
    _write_result(tmp_path / "empty.json", head, listed)
    assert json.loads((tmp_path / "empty.json").read_text())["items"] == []
