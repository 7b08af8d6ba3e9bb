"""make bench (h)'s targets, asserted at a size that runs in seconds, so the claims in the README cannot regress."""

from __future__ import annotations

from bench import stopping

ITEMS = 600  # the rows' own jobs at 600 items instead of 2,000: the same mixes, difficulty and seeds


def test_adaptive_stopping_keeps_fixed_8_accuracy_with_30_percent_fewer_calls() -> None:
    # Given the row's hardest mix: accuracy 0.7, difficulty 4, 3 labels, up to 8 votes
    fixed_calls, fixed_accuracy = stopping.measure(None, 0.7, 4.0, ITEMS)

    # When adaptive stopping (threshold 0.95) runs the same items
    calls, accuracy = stopping.measure(stopping.METHODS["adaptive 0.95"], 0.7, 4.0, ITEMS)

    # Then it is within 1 point of fixed-8 accuracy with at least 30% fewer calls
    assert fixed_calls == stopping.MAX_VOTES
    assert fixed_accuracy - accuracy <= 0.01
    assert 1 - calls / fixed_calls >= 0.30


def test_escalation_beats_cheap_only_accuracy_at_half_the_cost_of_all_strong() -> None:
    # Given the row's three ways to label the same items: the cheap model alone, the strong one alone, and the cheap
    # one for every item with the strong one's vote for the items it leaves doubtful (escalation's second pass)
    rows = stopping.escalation_rows(ITEMS)
    cheap, strong, cascade = rows["cheap only"], rows["strong only"], rows["cheap + strong for the doubtful"]

    # Then escalation is more accurate than the cheap model alone, at no more than half of all-strong's cost
    assert 0 < cascade["escalated"] < 1
    assert cascade["accuracy"] > cheap["accuracy"]
    assert cascade["cost"] <= 0.5 * strong["cost"]
    assert cheap["cost"] < cascade["cost"]  # the strong votes were paid for
