"""Voting strategies: how an item's valid votes become one answer with a confidence signal.

- ``majority``: answers normalised before counting; confidence is the
  winner's share of the valid votes; ties are broken by the earliest vote.
- ``weighted``: the same, each vote counting its model's weight.
- ``mean`` / ``median``: numbers; the spread (stdev / IQR) and ``n`` are the
  confidence signal.
- ``threshold``: list answers; elements reported by at least k votes, each
  with its support.
- ``judge``: one extra model call per item picks the best candidate, with
  the judge's reason (its call is a second-pass task, see
  ``fanout_core.second_pass``; its record becomes a ``JudgeVerdict``).
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from fanout_core.answers import answer_at, normalise
from fanout_core.contracts import Record
from fanout_core.job import Job
from fanout_core.validation import canonical

TIE_BREAK_RULE = "earliest vote: among tied answers, the one given by the lowest-numbered vote wins"


@dataclass(slots=True)
class Vote:
    position: int  # 0-based vote number, for the tie rule
    value: Any  # the voted-on part of the output
    output: Any  # the whole output
    model: str
    key: str  # the normalised answer votes are compared by


@dataclass(frozen=True)
class JudgeVerdict:
    choice: int | None  # index into the candidates, None when the judge failed
    reason: str
    model: str
    error: str | None = None
    usage: tuple[int, int, int] = (0, 0, 0)  # model calls, input tokens, output tokens


def valid_votes(job: Job, outcomes: list[Record]) -> list[Vote]:
    """The ok votes of an item that carry an answer, in vote order."""
    votes = []
    field = job.aggregate.field
    for position, record in enumerate(outcomes):
        if record["status"] != "ok":
            continue
        output = record["output"]
        value = (
            output.get(field)
            if field is not None and "." not in field and isinstance(output, dict)
            else (answer_at(output, field))
        )
        if value is not None:
            votes.append(Vote(position, value, output, str(record.get("model", "")), normalise(value)))
    return votes


def decide(
    job: Job, votes: list[Vote], verdict: JudgeVerdict | None = None, weigh: Callable[[Vote], float] | None = None
) -> dict[str, Any]:
    """The answer fields of one voting item under the job's strategy (``weigh``: a factor on each vote's weight)."""
    strategy = job.strategy
    if strategy in ("mean", "median"):
        return numeric(votes, strategy)
    if strategy == "threshold":
        return threshold(votes, job.aggregate.key, job.aggregate.k)
    if strategy == "judge":
        return judged(votes, verdict, weigh)
    weights = job.aggregate.weights if strategy == "weighted" else None
    return plurality(votes, weights, weigh)


class _Answer:
    """One distinct (normalised) answer among an item's votes."""

    __slots__ = ("count", "first", "forms", "weight")

    def __init__(self, first: int) -> None:
        self.weight = 0.0
        self.count = 0
        self.first = first
        self.forms: dict[str, list[Any]] = {}  # original form -> [votes, value]


def plurality(
    votes: list[Vote], weights: dict[str, float] | None = None, weigh: Callable[[Vote], float] | None = None
) -> dict[str, Any]:
    """Majority (or weighted) vote over normalised answers; the answer keeps its most common original form.

    ``weigh`` multiplies a vote's weight (escalated votes of a stronger model outweigh the first ones).
    """
    answers: dict[str, _Answer] = {}
    for vote in votes:
        answer = answers.get(vote.key)
        if answer is None:
            answer = answers[vote.key] = _Answer(vote.position)
        base = 1.0 if weights is None else float(weights.get(vote.model, 1.0))
        answer.weight += base if weigh is None else base * weigh(vote)
        answer.count += 1
        form = vote.value if isinstance(vote.value, str) else canonical(vote.value)
        seen = answer.forms.get(form)
        if seen is None:
            answer.forms[form] = [1, vote.value]
        else:
            seen[0] += 1
    total = sum(a.weight for a in answers.values())
    if not votes or total <= 0:
        return {"answer": None, "confidence": 0.0, "votes": {}, "valid_votes": len(votes), "tie": False}
    ranked = sorted(answers.values(), key=lambda a: (-a.weight, a.first))
    top = ranked[0].weight
    tied = [a for a in ranked if a.weight == top]  # already in earliest-vote order
    # each answer is shown in its most common original form (the first seen wins a tie)
    shown = {id(a): max(a.forms.items(), key=lambda f: f[1][0]) for a in ranked}
    out: dict[str, Any] = {
        "answer": shown[id(ranked[0])][1][1],
        "confidence": round(top / total, 4),
        "votes": {shown[id(a)][0]: a.count for a in ranked},
        "valid_votes": len(votes),
        "tie": len(tied) > 1,
    }
    if weights is not None or weigh is not None:
        out["weighted_votes"] = {shown[id(a)][0]: round(a.weight, 4) for a in ranked}
    if len(tied) > 1:
        out["tied"] = [shown[id(a)][1][1] for a in tied]
    return out


def numeric(votes: list[Vote], strategy: str) -> dict[str, Any]:
    """Mean or median of the numeric votes, with n and the spread (stdev for mean, IQR for median).

    Votes within float's comfortable range are summed as floats; when one is not (a 401-digit integer,
    ``"1e400"``, or floats whose sum would overflow) the item is aggregated exactly, in fractions, and a figure
    too large for a float is written as the nearest integer: never inf or NaN, never an OverflowError.
    """
    exact = [n for n in (_number(v.value) for v in votes) if n is not None]
    out: dict[str, Any] = {
        "answer": None,
        "confidence": None,
        "n": len(exact),
        "valid_votes": len(exact),
        "votes": {},
        "tie": False,
    }
    if not exact:
        return out
    floats = all(abs(n) <= _FLOAT_SAFE for n in exact)
    numbers: list[Any] = [float(n) for n in exact] if floats else exact
    tally: dict[str, int] = {}
    for n in numbers:
        tally[_show(n)] = tally.get(_show(n), 0) + 1
    out["votes"] = tally
    if strategy == "mean":
        mean = statistics.fmean(numbers) if floats else sum(numbers, Fraction(0)) / len(numbers)
        out["answer"] = _figure(mean)
        out["spread"] = {"stdev": _stdev(numbers) if len(numbers) > 1 else 0.0}
    else:
        out["answer"] = _figure(statistics.median(numbers))
        if len(numbers) > 1:
            q1, _, q3 = statistics.quantiles(numbers, n=4, method="inclusive")
            out["spread"] = {"iqr": _figure(q3 - q1)}
        else:
            out["spread"] = {"iqr": 0.0}
    out["values"] = [n if isinstance(n, float) else _figure(n, rounded=False) for n in numbers]
    return out


# below this size a sum of 25 votes and its squares cannot overflow a float
_FLOAT_SAFE = 1e150


def _stdev(numbers: list[Any]) -> float | int:
    if isinstance(numbers[0], float):
        return _round(statistics.stdev(numbers))
    variance = statistics.variance(numbers)
    try:
        return _round(math.sqrt(variance))
    except OverflowError:
        return math.isqrt(round(variance))


def _figure(value: Any, *, rounded: bool = True) -> float | int:
    """A float when one can hold the value (rounded to 6 places), else the nearest integer, exact."""
    try:
        number = float(value)
    except OverflowError:
        return round(value)
    return _round(number) if rounded else number


def threshold(votes: list[Vote], key: str | None, k: int | None) -> dict[str, Any]:
    """Elements of list answers reported by at least k votes (default: more than half), each with its support."""
    support: dict[str, int] = {}
    shown: dict[str, Any] = {}
    order: dict[str, int] = {}
    for vote in votes:
        elements = vote.value if isinstance(vote.value, list) else []
        mine: set[str] = set()
        for element in elements:
            ident = element.get(key) if key is not None and isinstance(element, dict) else element
            if ident is None:
                continue
            norm = normalise(ident)
            if norm in mine:
                continue  # a vote that lists an element twice supports it once
            mine.add(norm)
            support[norm] = support.get(norm, 0) + 1
            shown.setdefault(norm, element)
            order.setdefault(norm, len(order))
    need = k if k is not None else len(votes) // 2 + 1
    ranked = sorted(support, key=lambda n: (-support[n], order[n]))
    elements_out = [{"value": shown[n], "support": support[n], "kept": support[n] >= need} for n in ranked]
    return {
        "answer": [e["value"] for e in elements_out if e["kept"]],
        "confidence": None,
        "elements": elements_out,
        "k": need,
        "valid_votes": len(votes),
        "votes": {},
        "tie": False,
    }


def candidates(votes: list[Vote]) -> list[tuple[Any, int]]:
    """Distinct outputs offered to the judge, with how many votes gave each."""
    seen: dict[str, list[Any]] = {}
    for vote in votes:
        seen.setdefault(vote.key, [vote.value, 0])[1] += 1
    return [(value, count) for value, count in seen.values()]


def judged(votes: list[Vote], verdict: JudgeVerdict | None, weigh: Callable[[Vote], float] | None = None) -> dict[str, Any]:
    """The judge's pick among the distinct candidates; agreement with it is the confidence."""
    offered = candidates(votes)
    if verdict is None or verdict.choice is None or not 0 <= verdict.choice < len(offered):
        out = plurality(votes, None, weigh)
        out["judge"] = {"error": (verdict.error if verdict else None) or "no verdict", "fallback": "majority"}
        return out
    value, count = offered[verdict.choice]
    return {
        "answer": value,
        "confidence": round(count / len(votes), 4),
        "candidates": len(offered),
        "valid_votes": len(votes),
        "votes": {v if isinstance(v, str) else canonical(v): n for v, n in offered},
        "tie": False,
        "judge": {"choice": verdict.choice + 1, "reason": verdict.reason, "model": verdict.model},
    }


def judge_schema(count: int) -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["best", "reason"],
        "properties": {
            "best": {"type": "integer", "minimum": 1, "maximum": count},
            "reason": {"type": "string"},
        },
    }


def judge_prompt(instruction: str, task: str, offered: list[tuple[Any, int]]) -> str:
    shown = "\n".join(
        f"[{n}] {value if isinstance(value, str) else canonical(value)}" for n, (value, _) in enumerate(offered, start=1)
    )
    return (
        f"{instruction}\n\n<task>\n{task}\n</task>\n\n<candidates>\n{shown}\n</candidates>\n\n"
        f"Reply with the number of the best candidate (1 to {len(offered)}) as 'best' and one sentence as 'reason'."
    )


def _number(value: Any) -> Fraction | None:
    """A vote's number, exactly; None for what is not a finite number (or a numeral longer than 400 characters)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        return Fraction(value) if math.isfinite(value) else None
    if isinstance(value, str) and len(value) <= _MAX_NUMERAL_CHARS:
        numeral = _NUMERAL.match(value.strip())
        if numeral is None or abs(int(numeral.group(1) or 0)) > _MAX_EXPONENT:
            return None
        return Fraction(value.strip())
    return None


# a numeral in a string is parsed exactly; "1e999999999" would be a billion-digit integer
_MAX_NUMERAL_CHARS = 400
_MAX_EXPONENT = 1000
_NUMERAL = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE]([+-]?\d{1,6}))?$")


def _round(value: float) -> float:
    return round(value, 6)


def short_number(value: Any) -> str:
    """A figure as ``%g`` writes it, also for an integer too large for a float (``1.23e+400``)."""
    try:
        return f"{float(value):g}"
    except OverflowError:
        digits = str(abs(int(value)))
        return f"{'-' if value < 0 else ''}{digits[0]}.{digits[1:6].rstrip('0') or '0'}e+{len(digits) - 1}"


def _show(value: Any) -> str:
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    return str(_figure(value, rounded=False))
