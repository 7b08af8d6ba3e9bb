"""Adaptive stopping: the rules (agree, window, adaptive) as pure functions, checked against independent oracles,
and through run_batch: savings, one record per task, and the same decisions after throttling and retries."""

from __future__ import annotations

import itertools
import math
import random
from typing import Any

import pytest

from fanout_core.aggregation import aggregate
from fanout_core.errors import ModelThrottled
from fanout_core.job import InvalidJob, Job, parse_job
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest
from fanout_core.providers.simulator import Simulator
from fanout_core.runner import RetryPolicy, run_batch
from fanout_core.steps import first_run_batches
from fanout_core.stopping import Step, StopRule, next_step, rule_for, stays_leader, vote_weights
from tests.fakes import MemoryRunStore

LABELS = ["positive", "neutral", "negative"]
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": LABELS}}}


def _urn_stays(lead: int, second: int, rest: int, remaining: int, groups: int) -> float:
    """The same posterior predictive by brute force: every sequence of remaining votes, drawn from a Polya urn."""
    alpha = [lead + 1, second + 1, rest][:groups]
    total = 0.0
    for sequence in itertools.product(range(groups), repeat=remaining):
        urn, p = list(alpha), 1.0
        for group in sequence:
            p *= urn[group] / sum(urn)
            urn[group] += 1
        final = [lead + sequence.count(0), second + sequence.count(1), (rest - 1 if groups == 3 else 0) + sequence.count(2)]
        if final[0] > max(final[1:groups]):
            total += p
    return total


def test_four_unanimous_of_eight_votes_stay_ahead_with_the_probability_worked_by_hand() -> None:
    # Beta(5, 1) on the leader's share; the leader only loses (a 4-4 tie counts as losing) when all 4 later votes
    # go elsewhere: 1 - int (1-p)^4 5 p^4 dp = 1 - 5 B(5, 5) = 1 - 5 * 4! 4! / 9!
    assert stays_leader({"a": 4}, 4) == pytest.approx(1 - 5 * math.factorial(4) ** 2 / math.factorial(9), rel=1e-12)


@pytest.mark.parametrize(
    ("counts", "remaining"),
    [({"a": 3}, 5), ({"a": 2, "b": 1}, 5), ({"a": 3, "b": 2, "c": 1}, 4), ({"a": 1, "b": 1}, 6), ({"a": 5, "b": 1}, 2)],
)
def test_stays_leader_matches_enumerating_every_later_sequence(counts: dict[str, int], remaining: int) -> None:
    top = [*sorted(counts.values(), reverse=True), 0, 0]
    groups = 3 if len(counts) > 2 else 2
    rest = sum(v + 1 for v in sorted(counts.values(), reverse=True)[2:])  # the lumped answers' Dirichlet parameter
    oracle = _urn_stays(top[0], top[1], rest, remaining, groups)

    assert stays_leader(counts, remaining) == pytest.approx(oracle, abs=1e-12)


def test_no_votes_never_stop() -> None:
    assert stays_leader({}, 5) == 0.0
    assert next_step(StopRule("adaptive", 8), {}).stop is False


def test_window_asks_a_window_at_a_time_and_stops_at_the_first_unanimous_one() -> None:
    rule = StopRule("window", 8, window=3)

    assert next_step(rule, {}).ask == (0, 1, 2)
    assert next_step(rule, {0: "a", 1: "a", 2: "b"}).ask == (3, 4, 5)
    assert next_step(rule, {0: "a", 1: "a", 2: "b", 3: "c", 4: "c", 5: "c"}).stop is True
    # a vote that gave no answer breaks the window; the last, partial window is asked as it is
    assert next_step(rule, {0: "a", 1: None, 2: "a"}).ask == (3, 4, 5)
    assert next_step(rule, {i: x for i, x in enumerate("aabcab")}).ask == (6, 7)
    assert next_step(rule, {i: x for i, x in enumerate("aabcabcc")}) == Step(False, ())  # every vote is in


def test_agree_is_the_old_stop_when_agree() -> None:
    rule = StopRule("agree", 5, window=3)

    assert next_step(rule, {}).ask == (0, 1, 2)
    assert next_step(rule, {0: "x", 1: "x", 2: "x"}).stop is True
    assert next_step(rule, {0: "x", 1: "y", 2: "x"}).ask == (3, 4)


def test_a_wave_asks_only_what_could_let_the_item_stop() -> None:
    rule = StopRule("adaptive", 8, threshold=0.95)

    # 3 unanimous votes of 8 stay ahead with 0.960 > 0.95, 2 with 0.881: the first wave is 3 votes
    assert stays_leader({"a": 3}, 5) > 0.95 > stays_leader({"a": 2}, 6)
    assert next_step(rule, {}).ask == (0, 1, 2)
    assert next_step(rule, {0: "a", 1: "a", 2: "a"}).stop is True
    # after a split, the fewest votes that could settle it: 2-1 needs 2 more for the leader (4-1 with 3 to come)
    assert next_step(rule, {0: "a", 1: "b", 2: "a"}).ask == (3, 4)
    assert stays_leader({"a": 4, "b": 1}, 3) > 0.95 > stays_leader({"a": 3, "b": 1}, 4)
    # a known vote is never asked again, and the wave starts at the first missing vote
    assert next_step(rule, {0: "a", 2: "a"}).ask == (1,)


def _sequential(rule: StopRule, answers: list[str | None]) -> int:
    """How many votes one-at-a-time asking makes: after each vote, the rule's own test on the counts so far."""
    for asked in range(1, rule.max_votes):
        window = answers[asked - rule.window : asked] if rule.method != "adaptive" else []
        if rule.method == "window" and asked % rule.window == 0 and window[0] is not None and len(set(window)) == 1:
            return asked
        if rule.method == "adaptive":
            counts: dict[str, float] = {}
            for a in answers[:asked]:
                if a is not None:
                    counts[a] = counts.get(a, 0) + 1
            if stays_leader(counts, rule.max_votes - asked) > rule.threshold + 1e-9:
                return asked
    return rule.max_votes


@pytest.mark.parametrize(
    "rule", [StopRule("adaptive", 8), StopRule("adaptive", 12, threshold=0.8), StopRule("window", 9, window=3)]
)
def test_waves_ask_exactly_as_many_votes_as_asking_one_at_a_time(rule: StopRule) -> None:
    rng = random.Random(3)
    for _ in range(300):
        answers: list[str | None] = [rng.choice(["a", "a", "a", "b", "c", None]) for _ in range(rule.max_votes)]
        known: dict[int, str | None] = {}
        while True:
            step = next_step(rule, known)
            if step.stop or not step.ask:
                break
            known.update({i: answers[i] for i in step.ask})

        assert len(known) == _sequential(rule, answers)


def test_a_probability_equal_to_the_threshold_does_not_stop() -> None:
    # 2 unanimous of 5: the leader loses only if all 3 later votes go elsewhere, P = 3! / (4 * 5 * 6) = 0.05 exactly,
    # which floating point computes as 0.95000000000000002 staying
    assert stays_leader({"a": 2}, 3) == pytest.approx(0.95, abs=1e-12)
    assert next_step(StopRule("adaptive", 5, threshold=0.95), {0: "a", 1: "a"}).stop is False
    assert next_step(StopRule("adaptive", 5, threshold=0.94), {0: "a", 1: "a"}).stop is True


def test_a_heavy_model_settles_an_item_sooner() -> None:
    rule = StopRule("adaptive", 6)
    known: dict[int, str | None] = {0: "a", 1: "a"}

    assert next_step(rule, known, [1.0] * 6).stop is False
    assert next_step(rule, known, [3.0, 3.0, 1.0, 1.0, 1.0, 1.0]).stop is True


def voting_job(stop: dict[str, Any] | None = None, **fields: Any) -> Job:
    body: dict[str, Any] = {
        "job_id": "j",
        "pattern": "voting",
        "prompt": "{text}",
        "output_schema": SCHEMA,
        "aggregate": {"field": "label", **({"stop": stop} if stop is not None else {})},
        "items": [{"id": "a", "text": "t"}],
        **fields,
    }
    if "votes" not in fields and "models" not in fields and not (stop or {}).get("max_votes"):
        body["votes"] = 8
    return parse_job(body)


def test_stop_rules_come_from_the_job() -> None:
    assert rule_for(voting_job({"method": "window", "window": 3})) == StopRule("window", 8, window=3)
    assert rule_for(voting_job({"method": "adaptive", "max_votes": 10})) == StopRule("adaptive", 10, threshold=0.95)
    assert rule_for(voting_job({"method": "adaptive", "threshold": 0.9})) == StopRule("adaptive", 8, threshold=0.9)
    shorthand = parse_job(
        {
            "pattern": "voting",
            "votes": 5,
            "prompt": "{text}",
            "output_schema": SCHEMA,
            "aggregate": {"field": "label", "stop_when_agree": 3},
            "items": [{"id": "a", "text": "t"}],
        }
    )
    assert rule_for(shorthand) == StopRule("agree", 5, window=3)
    assert rule_for(voting_job()) is None


def test_weighted_votes_carry_their_models_weight() -> None:
    job = voting_job(
        {"method": "adaptive", "max_votes": 4},
        models=["sim:seed=1", "sim:seed=2"],
        aggregate={
            "strategy": "weighted",
            "field": "label",
            "weights": {"sim:seed=2": 2.5},
            "stop": {"method": "adaptive", "max_votes": 4},
        },
    )
    assert job.vote_count == 4
    assert vote_weights(job, "sim") == [1.0, 2.5, 1.0, 2.5]


@pytest.mark.parametrize(
    ("stop", "fields", "message"),
    [
        ({"method": "window"}, {}, "aggregate.stop.window: required for method 'window'"),
        ({"method": "window", "window": 8}, {}, "aggregate.stop.window: 8 must be fewer than the 8 votes"),
        ({"method": "adaptive", "window": 3}, {}, "aggregate.stop.window: only for method 'window'"),
        ({"method": "window", "window": 3, "threshold": 0.9}, {}, "aggregate.stop.threshold: only for method 'adaptive'"),
        ({"method": "adaptive", "threshold": 1.5}, {}, "aggregate.stop.threshold"),
        ({"method": "adaptive", "max_votes": 6}, {"votes": 5}, "aggregate.stop.max_votes: 6 differs from votes (5)"),
        ({"method": "adaptive", "max_votes": 40}, {}, "votes: 40 votes exceed limits.max_votes (25)"),
        ({"method": "sometimes"}, {}, "aggregate.stop.method"),
        ({"method": "adaptive"}, {"aggregate": {"strategy": "judge", "field": "label"}}, "aggregate.stop: only for"),
    ],
)
def test_stop_options_are_checked(stop: dict[str, Any], fields: dict[str, Any], message: str) -> None:
    if "aggregate" in fields:
        fields["aggregate"] = {**fields["aggregate"], "stop": stop}
    with pytest.raises(InvalidJob) as raised:
        voting_job(stop, **fields)
    assert str(raised.value).startswith(message), str(raised.value)


def test_stop_and_its_shorthand_are_not_both_given() -> None:
    with pytest.raises(InvalidJob, match="either 'stop' or its shorthand"):
        voting_job(aggregate={"field": "label", "stop_when_agree": 3, "stop": {"method": "adaptive"}})


# through run_batch


def batch_for(job: Job, items: list[dict[str, Any]]) -> dict[str, Any]:
    """The job's one batch, built as Plan builds it (an item's votes together, its inputs once)."""
    batches = first_run_batches(
        job.model_copy(update={"limits": job.limits.model_copy(update={"batch_size": 10_000})}), items, "sim"
    )
    assert len(batches) == 1
    return dict(batches[0])


ITEMS = [{"id": f"i{n}", "text": "t", "expected": LABELS[n % 3]} for n in range(150)]
SIM = {"latency_ms": 0, "jitter_ms": 0, "accuracy": 0.75, "difficulty": 4, "seed": 5}


class ThrottledFirstVotes:
    """The simulator, except that the first votes of every other item are throttled while ``on``."""

    name = "sim"

    def __init__(self) -> None:
        self.inner = Simulator(SIM)
        self.on = True

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        item, _, slot = request.task_id.rpartition("#")
        if self.on and slot in ("v1", "v2") and int(item[1:]) % 2 == 0:
            raise ModelError("ThrottlingException", "slow down", "throttled")
        return self.inner.invoke(request, attempt)


@pytest.mark.parametrize(
    "stop",
    [{"method": "window", "window": 3}, {"method": "adaptive", "threshold": 0.95}, {"method": "adaptive", "threshold": 0.8}],
)
def test_stopping_saves_calls_and_keeps_one_record_per_task(stop: dict[str, Any]) -> None:
    # Given 150 items of 8 votes on a simulator whose items differ in difficulty
    job = voting_job(stop, items=ITEMS)
    store = MemoryRunStore()

    # When the batch runs
    outcome = run_batch(batch_for(job, ITEMS), store=store, provider_for=lambda _: Simulator(SIM), threads=8)

    # Then some votes were not asked, every task has one record, and the result counts the saved calls
    saved = outcome.counts["stopped_early"]
    assert 150 < saved < 1200 - 150 * 2
    assert outcome.counts["model_calls"] == 1200 - saved
    assert len(store.records) == 1200
    result = aggregate(job, ITEMS, list(store.records.values()))
    assert result["status"] == "complete"
    assert result["usage"]["calls_saved"] == saved
    assert result["usage"]["model_calls"] == 1200 - saved


@pytest.mark.parametrize("stop", [{"method": "window", "window": 3}, {"method": "adaptive", "threshold": 0.95}])
def test_throttling_on_the_first_votes_saves_the_same_calls_as_no_faults(stop: dict[str, Any]) -> None:
    job = voting_job(stop, items=ITEMS)
    policy = RetryPolicy(max_attempts=2)

    # Given the same batch run without faults
    clean = MemoryRunStore()
    run_batch(batch_for(job, ITEMS), store=clean, provider_for=lambda _: Simulator(SIM), threads=8)

    # When its first votes are throttled past their budget on every other item (the batch fails and is retried)
    faulty = MemoryRunStore()
    provider = ThrottledFirstVotes()
    with pytest.raises(ModelThrottled):
        run_batch(
            batch_for(job, ITEMS), store=faulty, provider_for=lambda _: provider, threads=8, policy=policy, sleep=lambda s: None
        )
    provider.on = False
    run_batch(
        batch_for(job, ITEMS), store=faulty, provider_for=lambda _: provider, threads=8, policy=policy, sleep=lambda s: None
    )

    # Then the retry decided from the votes the first attempt recorded: the same votes were skipped
    def skipped(store: MemoryRunStore) -> set[str]:
        return {r["task_id"] for r in store.records.values() if r["status"] == "skipped"}

    assert skipped(faulty) == skipped(clean) and skipped(clean)
    saved = [aggregate(job, ITEMS, list(s.records.values()))["usage"]["calls_saved"] for s in (clean, faulty)]
    assert saved[0] == saved[1] == len(skipped(clean))
