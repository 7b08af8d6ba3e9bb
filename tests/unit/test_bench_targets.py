"""make bench (h)'s targets, asserted at a size that runs in seconds, so the claims in the README cannot regress."""

from __future__ import annotations

from bench import stopping

ITEMS = 600  # the row's own job at 600 items instead of 2,000: the same mix, difficulty and seed


def test_adaptive_stopping_keeps_fixed_8_accuracy_with_30_percent_fewer_calls() -> None:
    # Given the row's hardest mix: accuracy 0.7, difficulty 4, 3 labels, up to 8 votes
    fixed_calls, fixed_accuracy = stopping.measure(None, 0.7, 4.0, ITEMS)

    # When adaptive stopping (threshold 0.95) runs the same items
    calls, accuracy = stopping.measure(stopping.METHODS["adaptive 0.95"], 0.7, 4.0, ITEMS)

    # Then it is within 1 point of fixed-8 accuracy with at least 30% fewer calls
    assert fixed_calls == stopping.MAX_VOTES
    assert fixed_accuracy - accuracy <= 0.01
    assert 1 - calls / fixed_calls >= 0.30
