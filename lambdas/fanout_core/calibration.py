"""How far an item's confidence can be trusted, over the items that carry ``expected``.

- reliability table: items binned by confidence (tenths; 1.0 in the top
  bin), each bin with its count, mean confidence and accuracy;
- ECE (expected calibration error): the count-weighted mean gap between a
  bin's accuracy and its mean confidence;
- Brier score: the mean of (confidence - correct)^2, the confidence read as
  the probability that the answer is right;
- accuracy at coverage: for a confidence threshold, the share of items at
  or above it (coverage) and their accuracy: what trusting only confident
  answers buys;
- for votes from several models: each model's accuracy over its votes, and
  how often two models' answers to an item agree (each model's answer to an
  item is its own plurality, the earliest vote winning a tie).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

from fanout_core.voting import Vote

BINS = 10
COVERAGE_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def calibration(scored: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """Reliability table, ECE, Brier score and accuracy at coverage for (confidence, correct) pairs."""
    bins: list[list[tuple[float, bool]]] = [[] for _ in range(BINS)]
    for confidence, correct in scored:
        bins[min(BINS - 1, max(0, int(confidence * BINS)))].append((confidence, correct))
    total = len(scored)
    table, ece = [], 0.0
    for index, members in enumerate(bins):
        if not members:
            continue
        mean_confidence = sum(c for c, _ in members) / len(members)
        accuracy = sum(1 for _, ok in members if ok) / len(members)
        ece += len(members) / total * abs(accuracy - mean_confidence)
        table.append(
            {
                "bin": f"{index / BINS:.1f}-{(index + 1) / BINS:.1f}",
                "count": len(members),
                "mean_confidence": round(mean_confidence, 4),
                "accuracy": round(accuracy, 4),
            }
        )
    coverage = []
    for threshold in COVERAGE_THRESHOLDS:
        kept = [ok for c, ok in scored if c >= threshold - 1e-9]
        coverage.append(
            {
                "threshold": threshold,
                "coverage": round(len(kept) / total, 4),
                "items": len(kept),
                "accuracy": round(sum(kept) / len(kept), 4) if kept else None,
            }
        )
    return {
        "reliability": table,
        "ece": round(ece, 4),
        "brier": round(sum((c - (1.0 if ok else 0.0)) ** 2 for c, ok in scored) / total, 4),
        "accuracy_at_coverage": coverage,
    }


def by_model(votes: Sequence[tuple[Any, Sequence[Vote]]], right: Callable[[Vote, Any], bool]) -> dict[str, Any] | None:
    """Per-model accuracy and pairwise agreement over (expected, votes) of each item; None with fewer than two models."""
    models = sorted({v.model for _, item_votes in votes for v in item_votes})
    if len(models) < 2:
        return None
    tally = {m: [0, 0] for m in models}  # votes, right
    answers: list[dict[str, str]] = []
    for expected, item_votes in votes:
        mine: dict[str, dict[str, list[int]]] = {}
        for vote in item_votes:
            tally[vote.model][0] += 1
            tally[vote.model][1] += 1 if right(vote, expected) else 0
            count = mine.setdefault(vote.model, {}).setdefault(vote.key, [0, vote.position])
            count[0] += 1
        answers.append({m: min(keys, key=lambda k: (-keys[k][0], keys[k][1])) for m, keys in mine.items()})
    agreement = []
    for a, b in itertools.combinations(models, 2):
        both = [given for given in answers if a in given and b in given]
        agreement.append(
            {
                "models": [a, b],
                "items": len(both),
                "agreement": round(sum(1 for g in both if g[a] == g[b]) / len(both), 4) if both else None,
            }
        )
    return {
        "per_model": {m: {"votes": n, "accuracy": round(ok / n, 4) if n else None} for m, (n, ok) in tally.items()},
        "agreement": agreement,
    }
