"""From task records to result.json: votes, ties, invalid and missing records, counts, evaluation, merging, the report."""

from __future__ import annotations

from typing import Any

import pytest

from fanout_core.aggregation import TIE_BREAK_RULE, aggregate, merge_findings, normalise
from fanout_core.job import Job, parse_job
from fanout_core.report import report_markdown, results_jsonl

LABEL_SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no", "unsure"]}}}


def voting_job(votes: int = 4, schema: dict[str, Any] | None = LABEL_SCHEMA, ids: tuple[str, ...] = ("a",)) -> Job:
    data: dict[str, Any] = {
        "job_id": "agg",
        "pattern": "voting",
        "votes": votes,
        "prompt": "Q: {text}",
        "items": [{"id": i, "text": i} for i in ids],
    }
    if schema is not None:
        data.update(output_schema=schema, aggregate={"field": "label"})
    return parse_job(data)


def sectioning_job(**aggregate: Any) -> Job:
    return parse_job(
        {
            "job_id": "sec",
            "pattern": "sectioning",
            "sections": [{"name": n, "prompt": n + ": {text}"} for n in ("competitors", "customers", "regions")],
            "items": [{"id": "q3", "text": "brief"}],
            "output_schema": {
                "type": "object",
                "required": ["findings"],
                "properties": {
                    "findings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "required": ["title"],
                            "properties": {
                                "title": {"type": "string"},
                                "severity": {"enum": ["low", "medium", "high"]},
                                "region": {"type": "string"},
                            },
                        },
                    }
                },
            },
            "aggregate": aggregate,
        }
    )


def rec(item: str, slot: str, output: Any = None, status: str = "ok", error: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "task_id": f"{item}#{slot}",
        "item_id": item,
        "slot": slot,
        "status": status,
        "output": output,
        "error": error,
        "model": "fake",
        "usage": {"input_tokens": 10, "output_tokens": 2},
        "latency_ms": 5.0,
        "attempts": 1,
        **extra,
    }


def votes_for(item: str, *answers: Any, field: str | None = "label") -> list[dict[str, Any]]:
    return [rec(item, f"v{n}", {field: a} if field else a) for n, a in enumerate(answers, start=1)]


def items_of(job: Job) -> list[dict[str, Any]]:
    return list(job.items or [])


def test_answers_differing_in_case_punctuation_whitespace_and_width_count_as_one() -> None:
    # Given free-text votes that say the same thing in four spellings, and one that differs
    job = voting_job(votes=5, schema=None)
    records = votes_for("a", "Negative", " negative.", "NEGATIVE!", "ｎｅｇａｔｉｖｅ", "positive", field=None)

    # When they are aggregated
    item = aggregate(job, items_of(job), records)["items"][0]

    # Then they are one answer with four votes, shown in a form a voter used
    assert item["valid_votes"] == 5
    assert sorted(item["votes"].values()) == [1, 4]
    assert normalise(item["answer"]) == "negative"
    assert item["answer"] in {"Negative", " negative.", "NEGATIVE!", "ｎｅｇａｔｉｖｅ"}
    assert item["confidence"] == 0.8
    assert item["tie"] is False


@pytest.mark.parametrize(
    "text", ["Negative", " negative.", "NEGATIVE!", "ｎｅｇａｔｉｖｅ", "\u201cnegative\u201d", "negative\n"]
)
def test_normalise_reduces_spellings_to_one_form(text: str) -> None:
    assert normalise(text) == "negative"


def test_normalise_keeps_different_answers_apart() -> None:
    assert normalise("not negative") != normalise("negative")
    assert normalise("yes") != normalise("no")


@pytest.mark.parametrize(
    ("answers", "winner"),
    [(["yes", "no", "no", "yes"], "yes"), (["no", "yes", "yes", "no"], "no")],
    ids=["first vote yes", "first vote no"],
)
def test_a_two_two_tie_is_marked_and_broken_by_the_earliest_vote(answers: list[str], winner: str) -> None:
    # Given 4 votes split 2-2
    job = voting_job(votes=4)

    # When aggregated
    result = aggregate(job, items_of(job), votes_for("a", *answers))
    item = result["items"][0]

    # Then the item is a tie, both answers are listed, the earliest vote wins, and the rule is stated
    assert item["tie"] is True
    assert item["tied"] == [winner, "yes" if winner == "no" else "no"]
    assert item["answer"] == winner
    assert item["confidence"] == 0.5
    assert result["tie_break"] == TIE_BREAK_RULE
    assert "earliest vote" in result["tie_break"]


def test_outputs_missing_the_schema_are_invalid_excluded_from_votes_and_listed() -> None:
    # Given 4 votes where 2 records say ok but miss the schema, and one is already marked invalid
    job = voting_job(votes=5)
    records = [
        rec("a", "v1", {"label": "no"}),
        rec("a", "v2", {"label": "maybe"}),
        rec("a", "v3", {"lable": "yes"}),
        rec("a", "v4", {"label": "yes"}, status="invalid", error="output.label: 'yes' is not valid"),
        rec("a", "v5", {"label": "no"}),
    ]

    # When aggregated
    result = aggregate(job, items_of(job), records)
    item = result["items"][0]

    # Then only the valid outputs vote, the others are counted invalid and explained
    assert item["votes"] == {"no": 2}
    assert item["valid_votes"] == 2
    assert item["answer"] == "no" and item["confidence"] == 1.0
    assert result["counts"]["invalid"] == 3 and result["counts"]["ok"] == 2
    errors = {e["slot"]: e for e in item["errors"]}
    assert set(errors) == {"v2", "v3", "v4"}
    assert all(e["status"] == "invalid" for e in errors.values())
    assert errors["v2"]["error"].startswith("output.label:")
    assert errors["v3"]["error"] == "output: 'label' is a required property"
    assert item["status"] == "partial"


def test_a_duplicated_record_counts_once() -> None:
    # Given the same task recorded twice (a retried batch), plus a failed copy of another task
    job = voting_job(votes=3)
    records = [
        *votes_for("a", "yes", "no", "no"),
        rec("a", "v1", {"label": "yes"}),
        rec("a", "v2", None, status="failed", error="x"),
    ]

    # When aggregated
    result = aggregate(job, items_of(job), records)

    # Then each task counts once, and an ok copy wins over a failed one
    assert result["counts"] == {"items": 1, "tasks": 3, "ok": 3, "invalid": 0, "failed": 0}
    assert result["items"][0]["votes"] == {"no": 2, "yes": 1}
    # while usage shows every call that was made: the duplicates were paid for
    assert result["usage"]["model_calls"] == 5


def test_a_missing_record_is_failed_with_no_result() -> None:
    job = voting_job(votes=3)

    result = aggregate(job, items_of(job), votes_for("a", "yes", "yes"))

    item = result["items"][0]
    assert item["errors"] == [{"slot": "v3", "status": "failed", "error": "no result"}]
    assert result["counts"]["failed"] == 1
    assert item["valid_votes"] == 2


def test_a_missing_record_carries_its_batch_error() -> None:
    job = voting_job(votes=2)

    result = aggregate(
        job, items_of(job), votes_for("a", "yes"), batch_errors={"a#v2": "ModelThrottled: batch 0 still throttled"}
    )

    assert result["items"][0]["errors"][0]["error"] == "ModelThrottled: batch 0 still throttled"


def test_every_input_item_is_present_in_input_order() -> None:
    # Given five items, records for only two of them, given in reverse order, plus records of an unknown item
    ids = ("e", "d", "c", "b", "a")
    job = voting_job(votes=2, ids=ids)
    records = [*votes_for("a", "yes", "yes"), *votes_for("d", "no", "no"), *votes_for("zzz", "yes", "yes")]

    # When aggregated
    result = aggregate(job, items_of(job), list(reversed(records)))

    # Then all five items are there in input order, those without records failed with reasons
    assert [i["id"] for i in result["items"]] == list(ids)
    by_id = {i["id"]: i for i in result["items"]}
    assert by_id["a"]["answer"] == "yes" and by_id["d"]["answer"] == "no"
    for missing in ("e", "c", "b"):
        assert by_id[missing]["status"] == "failed"
        assert by_id[missing]["answer"] is None
        assert [e["error"] for e in by_id[missing]["errors"]] == ["no result", "no result"]
    assert result["counts"] == {"items": 5, "tasks": 10, "ok": 4, "invalid": 0, "failed": 6}


def test_counts_add_up_and_status_follows_them() -> None:
    job = voting_job(votes=3, ids=("a", "b", "c"))
    records = [
        *votes_for("a", "yes", "yes", "no"),
        rec("b", "v1", {"label": "yes"}),
        rec("b", "v2", {"label": "x"}),
        rec("b", "v3", None, status="failed", error="ValidationException: bad"),
    ]

    counts = aggregate(job, items_of(job), records)["counts"]

    assert counts["ok"] + counts["invalid"] + counts["failed"] == counts["tasks"] == counts["items"] * 3 == 9
    assert (counts["ok"], counts["invalid"], counts["failed"]) == (4, 1, 4)


@pytest.mark.parametrize(
    ("records", "status"),
    [
        (votes_for("a", "yes", "no"), "complete"),
        (votes_for("a", "yes"), "partial"),
        ([rec("a", "v1", {"label": "bad"}), rec("a", "v2", None, status="failed")], "failed"),
        ([], "failed"),
    ],
    ids=["all ok", "one missing", "none ok", "no records"],
)
def test_job_status_is_complete_partial_or_failed(records: list[dict[str, Any]], status: str) -> None:
    job = voting_job(votes=2)

    assert aggregate(job, items_of(job), records)["status"] == status


def test_a_vote_on_a_boolean_field_keeps_the_boolean() -> None:
    schema = {"type": "object", "required": ["label"], "properties": {"label": {"type": "boolean"}}}
    job = voting_job(votes=3, schema=schema)

    item = aggregate(job, items_of(job), votes_for("a", True, False, True))["items"][0]

    assert item["answer"] is True
    assert item["votes"] == {"true": 2, "false": 1}


def test_evaluation_compares_aggregated_and_single_call_accuracy() -> None:
    # Given three items with expected answers and three votes each, and one item without
    job = parse_job(
        {
            "job_id": "ev",
            "pattern": "voting",
            "votes": 3,
            "prompt": "{text}",
            "items": [
                {"id": "a", "text": "1", "expected": "yes"},
                {"id": "b", "text": "2", "expected": "No"},
                {"id": "c", "text": "3", "expected": "yes"},
                {"id": "d", "text": "4"},
            ],
            "output_schema": LABEL_SCHEMA,
            "aggregate": {"field": "label"},
        }
    )
    records = [
        *votes_for("a", "yes", "yes", "no"),  # right, 2 of 3 calls right
        *votes_for("b", "no", "no", "yes"),  # right (case differs), 2 of 3
        *votes_for("c", "yes", "no", "no"),  # wrong, 1 of 3
        *votes_for("d", "yes", "yes", "yes"),  # not scored
    ]

    # When aggregated
    result = aggregate(job, items_of(job), records)

    # Then accuracy is 2/3, single-call accuracy is the mean of 2/3, 2/3, 1/3
    assert {k: result["evaluation"][k] for k in ("items_with_expected", "accuracy", "single_call_accuracy", "uplift")} == {
        "items_with_expected": 3,
        "accuracy": round(2 / 3, 4),
        "single_call_accuracy": round(5 / 9, 4),
        "uplift": round(2 / 3 - 5 / 9, 4),
    }
    assert [i.get("correct") for i in result["items"]] == [True, True, False, None]


def test_no_evaluation_without_expected_answers() -> None:
    job = voting_job(votes=2)

    assert "evaluation" not in aggregate(job, items_of(job), votes_for("a", "yes", "yes"))


def test_usage_sums_tokens_and_calls() -> None:
    job = voting_job(votes=2)
    records = [rec("a", "v1", {"label": "yes"}, attempts=3), rec("a", "v2", {"label": "yes"})]

    usage = aggregate(job, items_of(job), records)["usage"]

    assert (usage["model_calls"], usage["input_tokens"], usage["output_tokens"]) == (4, 20, 4)


def findings(*entries: tuple[str, str] | tuple[str, str, str]) -> dict[str, Any]:
    out = []
    for entry in entries:
        finding = {"title": entry[0], "severity": entry[1]}
        if len(entry) == 3:
            finding["region"] = entry[2]
        out.append(finding)
    return {"findings": out}


def test_merge_findings_merges_near_duplicates_across_sections() -> None:
    # Given three sections that report the same finding in different words, and one distinct finding
    sources = [
        ("competitors", [{"title": "Slow support response", "severity": "low"}]),
        ("customers", [{"title": "support response is slow!", "severity": "high"}, {"title": "Low brand awareness"}]),
        ("regions", [{"title": "Slow  support response", "severity": "medium"}]),
    ]

    # When merged
    merged = merge_findings(sources, key="title", threshold=85)

    # Then the three become one with support 3, every source and the highest severity, first wording kept
    assert len(merged) == 2
    top = merged[0]
    assert top["title"] == "Slow support response"
    assert top["support"] == 3
    assert top["sources"] == ["competitors", "customers", "regions"]
    assert top["severity"] == "high"
    assert merged[1]["title"] == "Low brand awareness" and merged[1]["support"] == 1


def test_merge_findings_respects_the_threshold() -> None:
    sources = [("a", [{"title": "slow support response"}]), ("b", [{"title": "slow support responses today"}])]

    assert len(merge_findings(sources, key="title", threshold=70)) == 1
    assert len(merge_findings(sources, key="title", threshold=100)) == 2


def test_merge_findings_only_merges_within_a_block() -> None:
    sources = [
        ("a", [{"title": "pricing too high", "region": "EU"}]),
        ("b", [{"title": "Pricing too high", "region": "US"}, {"title": "pricing is too high", "region": "EU"}]),
    ]

    merged = merge_findings(sources, key="title", threshold=85, block_by="region")

    assert sorted((m["region"], m["support"]) for m in merged) == [("EU", 2), ("US", 1)]


def test_merge_findings_skips_entries_without_the_key() -> None:
    merged = merge_findings([("a", [{"name": "x"}, "text", {"title": "kept"}]), ("b", None)], key="title", threshold=85)

    assert [m["title"] for m in merged] == ["kept"]


def test_sectioning_result_holds_every_section_and_the_merged_list() -> None:
    job = sectioning_job(dedupe={"field": "findings", "key": "title", "threshold": 85})
    records = [
        rec("q3", "competitors", findings(("Price war with incumbents", "medium"))),
        rec("q3", "customers", findings(("price war with incumbents", "high"), ("Wants self-serve onboarding", "low"))),
        rec("q3", "regions", None, status="failed", error="ServiceUnavailableException: down"),
    ]

    result = aggregate(job, items_of(job), records)

    item = result["items"][0]
    assert set(item["sections"]) == {"competitors", "customers", "regions"}
    assert item["sections"]["regions"] is None
    merged = item["merged"]["findings"]
    assert [(m["title"], m["support"], m["severity"]) for m in merged] == [
        ("Price war with incumbents", 2, "high"),
        ("Wants self-serve onboarding", 1, "low"),
    ]
    assert item["status"] == "partial"
    assert result["status"] == "partial"
    assert "tie_break" not in result and "evaluation" not in result


def test_the_report_puts_doubtful_items_first_and_lists_failures() -> None:
    # Given a confident item first in input order, a tied item and a low-confidence item after it, and a failure
    job = voting_job(votes=5, ids=("sure", "tied", "shaky"))
    records = [
        *votes_for("sure", "yes", "yes", "yes", "yes", "yes"),
        *votes_for("tied", "yes", "no", "yes", "no"),
        *votes_for("shaky", "yes", "no", "unsure", "yes", "no"),
    ]
    result = aggregate(job, items_of(job), records)

    # When the report is written
    report = report_markdown(result)

    # Then tied and low-confidence items come before the confident one, and the failure is listed
    listing = report.split("## Items", 1)[1].split("## Failures", 1)[0]
    rows = [line for line in listing.splitlines() if line.startswith(("| sure ", "| tied ", "| shaky "))]
    assert [r.split("|")[1].strip() for r in rows] == ["tied", "shaky", "sure"]
    assert "## Failures" in report
    failures = report.split("## Failures", 1)[1]
    assert "| tied | v5 | failed | no result |" in failures
    assert "sure" not in failures
    assert TIE_BREAK_RULE in report
    assert "**partial**" in report


def test_results_jsonl_has_one_line_per_item_in_order() -> None:
    job = voting_job(votes=2, ids=("x", "y"))

    lines = results_jsonl(aggregate(job, items_of(job), votes_for("y", "no", "no"))).splitlines()

    assert [line.split('"id": ')[1].split(",")[0] for line in lines] == ['"x"', '"y"']


def test_calibration_figures_worked_by_hand() -> None:
    # Given four items: two unanimous and right, one 2-of-3 and right, one 2-of-3 and wrong
    job = parse_job(
        {
            "job_id": "cal",
            "pattern": "voting",
            "votes": 3,
            "prompt": "{text}",
            "items": [{"id": k, "text": k, "expected": "yes"} for k in "abcd"],
            "output_schema": LABEL_SCHEMA,
            "aggregate": {"field": "label"},
        }
    )
    records = [
        *votes_for("a", "yes", "yes", "yes"),
        *votes_for("b", "yes", "yes", "yes"),
        *votes_for("c", "yes", "no", "yes"),
        *votes_for("d", "no", "yes", "no"),
    ]

    ev = aggregate(job, items_of(job), records)["evaluation"]

    # Then the 0.6-0.7 bin holds the two 2-of-3 items (half right), the top bin the two unanimous ones
    assert ev["reliability"] == [
        {"bin": "0.6-0.7", "count": 2, "mean_confidence": 0.6667, "accuracy": 0.5},
        {"bin": "0.9-1.0", "count": 2, "mean_confidence": 1.0, "accuracy": 1.0},
    ]
    # ECE = 2/4 |0.5 - 2/3| + 2/4 |1 - 1| = 1/12; Brier = ((1/3)^2 + (2/3)^2) / 4 = 5/36
    assert ev["ece"] == round(1 / 12, 4)
    assert ev["brier"] == round(5 / 36, 4)
    at = {row["threshold"]: row for row in ev["accuracy_at_coverage"]}
    assert (at[0.6]["coverage"], at[0.6]["accuracy"]) == (1.0, 0.75)
    assert (at[0.7]["coverage"], at[0.7]["items"], at[0.7]["accuracy"]) == (0.5, 2, 1.0)
    assert "per_model" not in ev  # one model: nothing to compare
    report = report_markdown(aggregate(job, items_of(job), records))
    assert "## Calibration" in report and "expected calibration error (ECE): 0.083" in report
