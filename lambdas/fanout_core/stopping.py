"""When an item has had enough votes: the rules of ``aggregate.stop``, as pure functions.

- ``agree`` (``stop_when_agree: n``): ask n votes; when all n give the same
  answer the item stops, otherwise it gets the rest of its votes.
- ``window`` (early-stopping self-consistency, Li et al., ICLR 2024): votes
  come in windows of k; the item stops at the first window whose k votes
  all give the same answer.
- ``adaptive`` (after Adaptive-Consistency, Aggarwal et al., EMNLP 2023):
  after every vote, the posterior probability (uniform Dirichlet prior over
  the answers) that the current leader is still the leader once all
  ``max_votes`` votes are in; the item stops once it passes ``threshold``.
  Asking the rest would then change the answer with probability below
  1 - threshold, which is what fixed voting at ``max_votes`` is compared to.

Every rule decides from all the votes an item has, whichever run asked
them. Votes are asked in waves that never ask more than one-at-a-time
asking would: the next wave of an item is the fewest votes that could let
it stop, so the savings match the sequential rule while items run in
parallel.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from fanout_core.answers import answer_at, normalise
from fanout_core.job import Job

DEFAULT_THRESHOLD = 0.95
Method = Literal["agree", "window", "adaptive"]
# what is known of one item's votes: vote position (0-based) -> normalised answer, or None when the vote gave none
Known = Mapping[int, "str | None"]


@dataclass(frozen=True)
class StopRule:
    method: Method
    max_votes: int
    window: int = 0  # agree: the first n votes; window: k
    threshold: float = DEFAULT_THRESHOLD  # adaptive

    def to_batch(self) -> dict[str, Any]:
        return {"method": self.method, "max_votes": self.max_votes, "window": self.window, "threshold": self.threshold}

    @classmethod
    def from_batch(cls, batch: Mapping[str, Any]) -> StopRule | None:
        """The rule a batch file carries under ``stop``, None when it has none."""
        stop = batch.get("stop")
        if not isinstance(stop, Mapping):
            return None
        method: Method = stop["method"]
        return cls(method, int(stop["max_votes"]), int(stop.get("window") or 0), float(stop.get("threshold", DEFAULT_THRESHOLD)))


@dataclass(frozen=True)
class Step:
    stop: bool  # the votes not asked yet are not needed
    ask: tuple[int, ...]  # vote positions (0-based) to ask now; empty and not stop: every vote is known


def next_step(rule: StopRule, known: Known, weights: Sequence[float] | None = None) -> Step:
    """What an item needs next, given what is known of its votes."""
    total = rule.max_votes
    weight = list(weights) if weights else [1.0] * total
    prefix = 0
    while prefix < total and prefix in known:
        prefix += 1
    answers = [known[i] for i in range(prefix)]
    for point in _checkpoints(rule):
        if point > prefix:
            break
        if _stops(rule, answers[:point], weight):
            return Step(True, ())
    if prefix >= total:
        return Step(False, ())
    target = _target(rule, answers, weight, prefix)
    return Step(False, tuple(i for i in range(prefix, target) if i not in known))


def _checkpoints(rule: StopRule) -> Iterable[int]:
    """The vote counts after which the rule may stop an item (never after the last vote: nothing is left to save)."""
    if rule.method == "agree":
        return [rule.window] if rule.window < rule.max_votes else []
    step = rule.window if rule.method == "window" else 1
    return range(step, rule.max_votes, step)


def _target(rule: StopRule, answers: list[str | None], weight: list[float], prefix: int) -> int:
    """How many votes the item should have after the next wave."""
    total = rule.max_votes
    if rule.method == "agree":
        return rule.window if prefix < rule.window else total
    if rule.method == "window":
        return min(total, (prefix // rule.window + 1) * rule.window)
    # adaptive: the fewest votes after which stopping is possible (every new vote going to the leader)
    leader = _leader(answers, weight)
    for count in range(prefix + 1, total):
        if _stops(rule, answers + [leader] * (count - prefix), weight):
            return count
    return total


def _leader(answers: list[str | None], weight: list[float]) -> str:
    counts = _tally(answers, weight)
    return max(counts, key=lambda a: counts[a]) if counts else "\x00any"


def _tally(answers: Sequence[str | None], weight: Sequence[float]) -> dict[str, float]:
    counts: dict[str, float] = {}
    for answer, w in zip(answers, weight, strict=False):
        if answer is not None:
            counts[answer] = counts.get(answer, 0.0) + w
    return counts


def _stops(rule: StopRule, answers: list[str | None], weight: list[float]) -> bool:
    if rule.method in ("agree", "window"):
        last = answers[-rule.window :]
        return len(last) == rule.window and last[0] is not None and all(a == last[0] for a in last)
    later = weight[len(answers) : rule.max_votes]
    # weighted votes: the votes still to come weigh their models' mean weight
    each = sum(later) / len(later) if later else 1.0
    # strictly above: a probability that equals the threshold but for rounding (0.95000000000000002) does not stop
    return stays_leader(_tally(answers, weight), rule.max_votes - len(answers), each) > rule.threshold + 1e-9


def stays_leader(counts: Mapping[str, float], remaining: int, vote_weight: float = 1.0) -> float:
    """The posterior probability that the current leader still leads strictly once ``remaining`` more votes are in.

    Posterior: a Dirichlet with one plus each answer's (weighted) count for
    the leader, the runner-up and the other answers lumped together (lumping
    only makes losing likelier, so the rule errs towards asking more); with
    one answer seen, the runner-up is an answer not seen yet. The remaining
    votes follow its Dirichlet-multinomial predictive, each weighing
    ``vote_weight``; a tie counts as losing. 0 with no votes.
    """
    top = sorted(counts.values(), reverse=True)
    if not top:
        return 0.0
    return _stays(
        top[0], top[1] if len(top) > 1 else 0.0, sum(top[2:]), len(top) - 2 if len(top) > 2 else 0, remaining, vote_weight
    )


@functools.lru_cache(maxsize=65_536)
def _stays(lead: float, second: float, rest: float, others: int, remaining: int, vote_weight: float) -> float:
    # vote counts repeat across items (majority counts are small integers): computed once each
    alpha = [lead + 1.0, second + 1.0] + ([rest + others] if others else [])
    base = [lead, second, rest]
    total_alpha = sum(alpha)
    common = math.lgamma(remaining + 1) + math.lgamma(total_alpha) - math.lgamma(total_alpha + remaining)
    common -= sum(math.lgamma(a) for a in alpha)
    probability = 0.0
    for to_lead in range(remaining + 1):
        for to_second in range(remaining - to_lead + 1):
            to_rest = remaining - to_lead - to_second
            if to_rest and len(alpha) == 2:
                continue
            final = base[0] + vote_weight * to_lead
            if final <= base[1] + vote_weight * to_second or (len(alpha) == 3 and final <= base[2] + vote_weight * to_rest):
                continue
            shares = (to_lead, to_second, to_rest)[: len(alpha)]
            log_p = common + sum(math.lgamma(a + x) - math.lgamma(x + 1) for a, x in zip(alpha, shares, strict=True))
            probability += math.exp(log_p)
    return min(1.0, probability)


def vote_position(task: Mapping[str, Any]) -> int:
    """A vote task's position (0-based) from its slot ``v<n>``."""
    return int(str(task["slot"])[1:]) - 1


def record_answer(record: Mapping[str, Any], field: str | None) -> str | None:
    """The normalised answer a finished vote record gives (None when it gives none)."""
    if record.get("status") != "ok":
        return None
    value = answer_at(record.get("output"), field)
    return None if value is None else normalise(value)


def rule_for(job: Job) -> StopRule | None:
    """The stopping rule of a job's ``aggregate.stop`` (or its shorthand ``stop_when_agree``), None without one."""
    votes = job.vote_count
    if job.aggregate.stop_when_agree is not None:
        return StopRule("agree", votes, window=job.aggregate.stop_when_agree)
    stop = job.aggregate.stop
    if stop is None:
        return None
    if stop.method == "window":
        return StopRule("window", votes, window=stop.window or 0)
    return StopRule("adaptive", votes, threshold=stop.threshold if stop.threshold is not None else DEFAULT_THRESHOLD)


def vote_weights(job: Job, default_model: str) -> list[float] | None:
    """Each vote position's weight under strategy ``weighted`` (its model's weight), None for majority."""
    if job.strategy != "weighted":
        return None
    weights = job.aggregate.weights or {}
    return [float(weights.get(job.vote_model(n, default_model), 1.0)) for n in range(job.vote_count)]
