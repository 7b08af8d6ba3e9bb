"""Calibration in result.json and report.md, recomputed independently from result.json and the task records."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from fanout.cli import main

ROOT = Path(__file__).resolve().parents[2]
GOOD = "sim:latency_ms=0,jitter_ms=0,accuracy=0.8,difficulty=3,seed=2"
POOR = "sim:latency_ms=0,jitter_ms=0,accuracy=0.55,difficulty=3,seed=3"


def test_calibration_figures_match_a_recomputation(tmp_path: Path) -> None:
    # Given 90 labelled items voted on 6 times by two simulated models of different accuracy
    job = json.loads((ROOT / "examples" / "ticket-triage.json").read_text())
    job.pop("votes")
    job.update(job_id="calibrated", votes=6, models=[GOOD, POOR], limits={"max_concurrency": 8})
    job["items"] = [{**item, "id": f"{item['id']}-{n}"} for n in range(8) for item in job["items"]][:90]
    path = tmp_path / "job.json"
    path.write_text(json.dumps(job))

    # When it runs
    assert main(["run", str(path), "--out", str(tmp_path), "--quiet"]) == 0
    result = json.loads((tmp_path / "calibrated" / "result.json").read_text())
    ev = result["evaluation"]

    # Then the reliability table, ECE, Brier score and accuracy at coverage follow from the items' confidence
    scored = [(i["confidence"], i["correct"]) for i in result["items"]]
    bins: dict[int, list[tuple[float, bool]]] = {}
    for c, ok in scored:
        bins.setdefault(min(9, int(c * 10)), []).append((c, ok))
    assert [(b["count"], b["accuracy"]) for b in ev["reliability"]] == [
        (len(m), round(sum(ok for _, ok in m) / len(m), 4)) for _, m in sorted(bins.items())
    ]
    ece = sum(len(m) / 90 * abs(sum(ok for _, ok in m) / len(m) - sum(c for c, _ in m) / len(m)) for m in bins.values())
    assert abs(ev["ece"] - ece) < 1e-4
    assert abs(ev["brier"] - sum((c - ok) ** 2 for c, ok in scored) / 90) < 1e-4
    for row in ev["accuracy_at_coverage"]:
        kept = [ok for c, ok in scored if c >= row["threshold"] - 1e-9]
        assert row["items"] == len(kept) and row["coverage"] == round(len(kept) / 90, 4)
        assert row["accuracy"] == (round(sum(kept) / len(kept), 4) if kept else None)
    assert ev["accuracy_at_coverage"][-1]["accuracy"] >= ev["accuracy"]  # unanimous items are the surest

    # and per-model accuracy and agreement follow from the task records
    records = [
        json.loads(line) for f in (tmp_path / "calibrated" / "records").rglob("*.jsonl") for line in f.read_text().splitlines()
    ]
    expected = {i["id"]: i["expected"] for i in job["items"]}
    right = Counter(r["model"] for r in records if r["output"]["label"] == expected[r["item_id"]])
    votes = Counter(r["model"] for r in records)
    assert ev["per_model"] == {m: {"votes": votes[m], "accuracy": round(right[m] / votes[m], 4)} for m in (GOOD, POOR)}
    assert ev["per_model"][GOOD]["accuracy"] > ev["per_model"][POOR]["accuracy"]
    answers: dict[tuple[str, str], list[tuple[int, str]]] = {}
    for r in records:
        answers.setdefault((r["item_id"], r["model"]), []).append((r["vote"], r["output"]["label"]))

    def plurality(given: list[tuple[int, str]]) -> str:
        counts = Counter(label for _, label in given)
        return min(given, key=lambda g: (-counts[g[1]], g[0]))[1]

    same = sum(plurality(answers[(i, GOOD)]) == plurality(answers[(i, POOR)]) for i in expected if (i, GOOD) in answers)
    assert ev["agreement"] == [{"models": sorted([GOOD, POOR]), "items": 90, "agreement": round(same / 90, 4)}]

    # and report.md shows them
    report = (tmp_path / "calibrated" / "report.md").read_text()
    assert "## Calibration" in report and f"Brier score: {ev['brier']:.3f}" in report
    assert "## Models" in report and f"{ev['per_model'][POOR]['accuracy']:.1%}" in report
    assert all(f"| {b['bin']} | {b['count']} |" in report for b in ev["reliability"])
