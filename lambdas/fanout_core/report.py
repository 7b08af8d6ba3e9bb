"""report.md and results.jsonl from a result document: readable at a glance, problems first.

``Report`` is fed the items one at a time (Aggregate streams them) and keeps
only what the page shows: counts per confidence band, the first tied or
low-confidence items, the first failures and the first sectioning items.
"""

from __future__ import annotations

import json
from collections import Counter
from fractions import Fraction
from typing import Any

from fanout_core.validation import strict_json

_LOW_CONFIDENCE = 0.6
_ITEM_ROWS, _FAILURE_ROWS, _SECTION_ITEMS = 500, 200, 200


def results_jsonl(result: dict[str, Any]) -> str:
    return "".join(results_line(item) for item in result["items"])


def results_line(item: dict[str, Any]) -> str:
    # strict JSON: a NaN or Infinity that reached an item is written null, never as a token strict readers refuse
    return strict_json(item, ensure_ascii=False) + "\n"


def report_markdown(result: dict[str, Any]) -> str:
    report = Report(result["pattern"], result.get("strategy"))
    for item in result["items"]:
        report.add(item)
    return report.markdown(result)


class Report:
    """report.md built from the items as they come, in memory bounded by the rows it shows."""

    def __init__(self, pattern: str, strategy: str | None) -> None:
        self.pattern, self.strategy = pattern, strategy or "majority"
        self.items = 0
        self.bands: Counter[str] = Counter()
        self.doubtful: list[dict[str, Any]] = []  # the first tied / low-confidence (or unanswered) items
        self.others: list[dict[str, Any]] = []  # the first of the rest
        self.doubtful_count = 0
        self.failures: list[tuple[str, dict[str, Any]]] = []
        self.failure_count = 0
        self.sections: list[dict[str, Any]] = []
        self.escalated: list[dict[str, Any]] = []  # the first escalated items (aggregate.escalate)
        self.escalated_count = 0

    def add(self, item: dict[str, Any]) -> None:
        self.items += 1
        if item.get("escalated"):
            self.escalated_count += 1
            if len(self.escalated) < _ITEM_ROWS:
                self.escalated.append(item)
        errors = item.get("errors") or []
        self.failure_count += len(errors)
        for error in errors[: max(0, _FAILURE_ROWS - len(self.failures))]:
            self.failures.append((item["id"], error))
        if self.pattern != "voting":
            if len(self.sections) < _SECTION_ITEMS:
                self.sections.append(item)
            return
        if self.strategy in ("mean", "median", "threshold"):
            doubtful = item.get("answer") is None
        else:
            c = item.get("confidence") or 0.0
            self.bands["1.0" if c >= 1.0 else "0.8-0.99" if c >= 0.8 else "0.6-0.79" if c >= 0.6 else "< 0.6"] += 1
            doubtful = bool(item.get("tie")) or c < _LOW_CONFIDENCE
        if doubtful:
            self.doubtful_count += 1
            if len(self.doubtful) < _ITEM_ROWS:
                self.doubtful.append(item)
        elif len(self.others) < _ITEM_ROWS:
            self.others.append(item)

    def markdown(self, result: dict[str, Any]) -> str:
        """The page, for the result document's header fields (its items are not read)."""
        counts = result["counts"]
        usage = result["usage"]
        lines = [f"# fanout report: {result['job_id']}", ""]
        if result.get("synthetic"):
            lines += ["> Outputs come from the built-in simulator (`sim`): they are synthetic, not model answers.", ""]
        lines += [
            "| status | pattern | items | tasks | ok | invalid | failed |",
            "|---|---|---|---|---|---|---|",
            f"| **{result['status']}** | {result['pattern']} ({result.get('strategy', '')}) | {counts['items']} "
            f"| {counts['tasks']} | {counts['ok']} | {counts['invalid']} | {counts['failed']} |",
            "",
        ]
        cost = usage.get("estimated_cost_usd")
        lines += [
            "## Usage and cost",
            "",
            # result.json's usage is this run's: records reused from earlier runs of the job_id cost nothing again
            f"- model calls made by this run: {usage['model_calls']}",
            *([f"- requests reused from earlier runs: {usage['requests_reused']}"] if usage.get("requests_reused") else []),
            f"- tokens: {usage['input_tokens']} in, {usage['output_tokens']} out",
            f"- estimated cost: {'unknown (no price for this model)' if cost is None else f'${cost:.4f}'}",
            *([f"- calls saved by early stopping: {usage['calls_saved']}"] if usage.get("calls_saved") else []),
            "",
        ]
        if "evaluation" in result:
            ev = result["evaluation"]
            lines += [
                "## Evaluation",
                "",
                f"- items with expected answers: {ev['items_with_expected']}",
                f"- aggregated accuracy: {ev['accuracy']:.1%}",
                f"- mean single-call accuracy: {ev['single_call_accuracy']:.1%}",
                f"- uplift from aggregation: {ev['uplift']:+.1%}",
                *(
                    [f"- accuracy before escalation: {ev['first_pass_accuracy']:.1%} ({ev['escalated_items']} items escalated)"]
                    if "first_pass_accuracy" in ev
                    else []
                ),
                "",
            ]
            lines += _calibration(ev)
        lines += self._voting(result) if self.pattern == "voting" else self._sectioning()
        if "escalation" in usage:
            lines += self._escalation(usage["escalation"])
        if self.failures:
            lines += ["## Failures", "", "| item | task | status | reason |", "|---|---|---|---|"]
            for item_id, error in self.failures:
                lines.append(f"| {_cell(item_id)} | {_cell(error['slot'])} | {error['status']} | {_cell(error['error'])} |")
            if self.failure_count > _FAILURE_ROWS:
                lines.append(f"| ... | | | {self.failure_count - _FAILURE_ROWS} more in results.jsonl |")
            lines.append("")
        if result.get("synthesis"):
            lines += ["## Synthesis", "", str(result["synthesis"].get("text", "")), ""]
        return "\n".join(lines)

    def _voting(self, result: dict[str, Any]) -> list[str]:
        strategy = self.strategy
        lines = []
        if strategy in ("mean", "median"):
            spread = "stdev" if strategy == "mean" else "IQR"
            lines += [
                f"Strategy `{strategy}`: an answer is a number, with no confidence; each item shows n (its numeric "
                f"votes), their spread ({spread}) and their range.",
                "",
            ]
        elif strategy == "threshold":
            signal = "each element's support (how many votes reported it)"
            lines += [f"Strategy `{strategy}`: the confidence signal is {signal}.", ""]
        else:
            lines += ["## Confidence", "", "| confidence | items |", "|---|---|"]
            lines += [f"| {k} | {self.bands[k]} |" for k in ("1.0", "0.8-0.99", "0.6-0.79", "< 0.6")]
            lines += ["", f"Ties are broken by: {result.get('tie_break', '')}.", ""]
        ordered = (self.doubtful + self.others)[:_ITEM_ROWS]
        signal_column = "n, spread, range" if strategy in ("mean", "median") else "confidence"
        lines += [
            "## Items" if strategy in ("mean", "median") else "## Items (tied and low-confidence first)",
            "",
            f"| item | answer | {signal_column} | votes | tie | expected |",
            "|---|---|---|---|---|---|",
        ]
        for item in ordered:
            expected = item.get("expected", "")
            mark = "" if "correct" not in item else (" ✓" if item["correct"] else " ✗")
            lines.append(
                f"| {_cell(item['id'])} | {_cell(item.get('answer'))} | {_signal(item)} | {_votes(item)} "
                f"| {'yes' if item.get('tie') else ''} | {_cell(expected)}{mark} |"
            )
        if self.items > _ITEM_ROWS:
            lines.append(f"| ... {self.items - _ITEM_ROWS} more in results.jsonl | | | | | |")
        lines.append("")
        return lines

    def _escalation(self, spent: dict[str, Any]) -> list[str]:
        """The items that got more votes in the second pass, what they were before and after, and what that cost."""
        cost = spent.get("estimated_cost_usd")
        shown_cost = "unknown (no price for the model)" if cost is None else f"${cost:.4f}"
        lines = [
            "## Escalated items",
            "",
            f"{spent['items']} items were below the escalation threshold after the first votes and were escalated; "
            f"this run made {spent['model_calls']} calls for them ({spent['input_tokens']} tokens in, "
            f"{spent['output_tokens']} out, cost {shown_cost}).",
            "",
        ]
        if not self.escalated:
            return lines
        lines += [
            "| item | first pass | escalated votes | answer | confidence | calls | cost | expected |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for item in self.escalated:
            detail = item.get("escalation") or {}
            before = detail.get("first_pass") or {}
            votes = ", ".join(f"{_cell(k)}: {n}" for k, n in (detail.get("votes") or {}).items()) or "none valid"
            item_cost = detail.get("estimated_cost_usd")
            mark = "" if "correct" not in item else (" ✓" if item["correct"] else " ✗")
            lines.append(
                f"| {_cell(item['id'])} | {_cell(before.get('answer'))} ({before.get('confidence', 0):.2f}) | {votes} "
                f"| {_cell(item.get('answer'))} | {_signal(item)} | {detail.get('model_calls', 0)} "
                f"| {'-' if item_cost is None else f'${item_cost:.4f}'} | {_cell(item.get('expected', ''))}{mark} |"
            )
        if self.escalated_count > len(self.escalated):
            lines.append(f"| ... {self.escalated_count - len(self.escalated)} more in results.jsonl | | | | | | | |")
        lines.append("")
        return lines

    def _sectioning(self) -> list[str]:
        lines = ["## Items", ""]
        for item in self.sections:
            lines += [f"### {item['id']} ({item['status']})", ""]
            merged = item.get("merged")
            if merged:
                for field, entries in merged.items():
                    lines.append(f"Merged `{field}` ({len(entries)} after deduplication):")
                    lines.append("")
                    for entry in entries[:50]:
                        label = next((v for v in entry.values() if isinstance(v, str)), "")
                        severity = f" [{entry['severity']}]" if entry.get("severity") else ""
                        lines.append(f"- {_cell(label)}{severity}: support {entry['support']} ({', '.join(entry['sources'])})")
                    lines.append("")
            else:
                for name, output in item["sections"].items():
                    text = output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)
                    lines.append(f"- **{name}**: {_cell(text)[:300]}")
                lines.append("")
        if self.items > _SECTION_ITEMS:
            lines += [f"... {self.items - _SECTION_ITEMS} more items in results.jsonl", ""]
        return lines


def _calibration(ev: dict[str, Any]) -> list[str]:
    """How far confidence can be trusted: reliability, ECE, Brier, accuracy at coverage, and models side by side."""
    lines: list[str] = []
    if "reliability" in ev:
        lines += [
            "## Calibration",
            "",
            f"- expected calibration error (ECE): {ev['ece']:.3f}",
            f"- Brier score: {ev['brier']:.3f}",
            "",
            "| confidence | items | mean confidence | accuracy |",
            "|---|---|---|---|",
        ]
        lines += [f"| {b['bin']} | {b['count']} | {b['mean_confidence']:.2f} | {b['accuracy']:.1%} |" for b in ev["reliability"]]
        lines += ["", "| confidence at least | coverage | items | accuracy |", "|---|---|---|---|"]
        for row in ev["accuracy_at_coverage"]:
            shown = "-" if row["accuracy"] is None else f"{row['accuracy']:.1%}"
            lines.append(f"| {row['threshold']:.1f} | {row['coverage']:.1%} | {row['items']} | {shown} |")
        lines.append("")
    if "per_model" in ev:
        lines += ["## Models", "", "| model | votes | accuracy |", "|---|---|---|"]
        for name, row in ev["per_model"].items():
            shown = "-" if row["accuracy"] is None else f"{row['accuracy']:.1%}"
            lines.append(f"| {_cell(name)} | {row['votes']} | {shown} |")
        lines += ["", "| models | items both answered | agreement |", "|---|---|---|"]
        for pair in ev["agreement"]:
            shown = "-" if pair["agreement"] is None else f"{pair['agreement']:.1%}"
            lines.append(f"| {_cell(pair['models'][0])} / {_cell(pair['models'][1])} | {pair['items']} | {shown} |")
        lines.append("")
    return lines


def _signal(item: dict[str, Any]) -> str:
    if item.get("confidence") is not None:
        return f"{item['confidence']:.2f}"
    return number_signal(item) or "-"


def number_signal(item: dict[str, Any]) -> str | None:
    """A mean or median item's signal, which is not a confidence: how many numeric votes (n), their spread (stdev
    for mean, IQR for median) and their range, e.g. ``n=5, iqr 1, range 2–4``; None for other items."""
    spread = item.get("spread")
    if not spread:
        return None
    from fanout_core.voting import short_number

    name, value = next(iter(spread.items()))
    shown = f"n={item.get('n', 0)}, {name} {short_number(value)}"
    numbers = [_as_number(v) for v in item.get("values") or []]
    if numbers and None not in numbers:
        low, high = min(numbers), max(numbers)  # type: ignore[type-var]
        shown += f", range {short_number(low)}–{short_number(high)}"
    return shown


def _as_number(value: Any) -> int | float | Fraction | None:
    """A vote value as voting.numeric keeps it: a float, or an exact figure (an int, or a decimal string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    try:
        return Fraction(str(value))
    except (ValueError, ZeroDivisionError):
        return None


def _votes(item: dict[str, Any]) -> str:
    if "elements" in item:
        return ", ".join(f"{_cell(e['value'])}: {e['support']}{'' if e['kept'] else ' (dropped)'}" for e in item["elements"])
    shown = ", ".join(f"{_cell(k)}: {n}" for k, n in (item.get("votes") or {}).items())
    judge = item.get("judge")
    if judge and judge.get("reason"):
        shown += f" (judge: {_cell(judge['reason'])})"
    return shown


def _cell(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text.replace("|", "\\|").replace("\n", " ")
