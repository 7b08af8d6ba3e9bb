"""The pacer and the budget on a fake clock: a given quota is kept exactly, a learned one is found and followed,
waiting is not an attempt, and the budget admits no call that could pass it."""

from __future__ import annotations

import heapq
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from fanout_core.catalog import Rates
from fanout_core.errors import BatchIncomplete
from fanout_core.pacing import Budget, BudgetSpent, Gate, Pacer, Quota, output_burndown
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest
from fanout_core.runner import RetryPolicy, run_batch
from tests.factories import batch_for, vote_tasks
from tests.fakes import MemoryRunStore


@dataclass
class FakeClock:
    t: float = 0.0
    slept: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds


class Service:
    """A Bedrock-like token bucket on the fake clock: a call takes input + max_tokens, refused when it holds less."""

    def __init__(self, clock: FakeClock, per_window: float, window: float = 60.0) -> None:
        self.clock, self.capacity, self.rate = clock, per_window, per_window / window
        self.level, self.last = per_window, clock.t
        self.refused = self.served = 0

    def call(self, reserve: int, used: int) -> bool:
        now = self.clock.t
        self.level = min(self.capacity, self.level + self.rate * (now - self.last))
        self.last = now
        if self.level < reserve:
            self.refused += 1
            return False
        self.level -= reserve - (reserve - used)  # a call that ends at once gives back its unused part at once
        self.served += 1
        return True


def reply(tokens_in: int, tokens_out: int) -> ModelReply:
    return ModelReply(output="ok", input_tokens=tokens_in, output_tokens=tokens_out, model="bedrock:m")


def drive(pacer: Pacer, service: Service, calls: int, reserve: int = 100, used: int = 40) -> None:
    """Calls one after another through the pacer against the service, each retried until it is answered."""
    for _ in range(calls):
        while True:
            ticket = pacer.acquire(reserve)
            if service.call(reserve, used):
                pacer.settle(ticket, reply(used - 10, 10), "bedrock:m")
                break
            pacer.refused(ticket)


def test_a_given_quota_is_kept_exactly_no_refusal_against_a_bucket_of_that_size() -> None:
    # Given a service with 6,000 tokens a minute and a pacer told the same quota
    clock = FakeClock()
    service = Service(clock, 6000)
    pacer = Pacer(Quota(tokens_per_minute=6000), clock)
    # When 600 calls of 40 net tokens (100 reserved) go through it
    drive(pacer, service, 600)
    # Then none is refused, and they took as long as the quota needs and no longer: (net - bucket) / refill
    assert service.refused == 0
    floor = (600 * 40 - 6000) / 100
    assert floor <= clock.t <= floor * 1.02


def test_a_pacer_told_more_than_the_quota_is_refused_so_the_exact_size_matters() -> None:
    clock = FakeClock()
    service = Service(clock, 6000)
    drive(Pacer(Quota(tokens_per_minute=9000), clock), service, 600)
    assert service.refused > 0


def test_a_batch_share_of_the_quota_sizes_its_bucket() -> None:
    clock = FakeClock()
    pacer = Pacer(Quota(tokens_per_minute=6000, share=0.25), clock)
    assert pacer.capacity == pytest.approx(1500)
    assert pacer.rate == pytest.approx(25.0)


def test_the_unused_part_of_a_reservation_is_given_back() -> None:
    clock = FakeClock()
    pacer = Pacer(Quota(tokens_per_minute=1000), clock)
    full = pacer.level
    ticket = pacer.acquire(600)
    assert pacer.level == pytest.approx(full - 600)
    pacer.settle(ticket, reply(50, 50), "bedrock:m")
    assert pacer.level == pytest.approx(full - 100)


def test_a_learned_quota_is_found_within_seconds_with_few_refusals() -> None:
    # Given a service whose quota the pacer is not told (6,000 a window of 6 s: 1,000 tokens a second)
    clock = FakeClock()
    service = Service(clock, 6000, window=6.0)
    pacer = Pacer(Quota(window_seconds=6.0), clock)
    # When 600 calls go through it
    drive(pacer, service, 600)
    # Then its pace ends near the true refill rate, few calls were refused, and the run is near the floor
    assert pacer.rate == pytest.approx(1000, rel=0.15)
    assert service.refused / (service.served + service.refused) <= 0.10
    floor = (600 * 40 - 6000) / 1000
    assert clock.t <= floor * 1.25
    # and those refusals were taken as the quota's (the pacer goes on holding refused calls for its bucket)
    assert pacer.holds_refusals


def test_a_learned_pace_goes_down_after_refusals_and_back_up_after_they_stop() -> None:
    clock = FakeClock()
    pacer = Pacer(Quota(window_seconds=6.0), clock)
    service = Service(clock, 6000, window=6.0)
    drive(pacer, service, 400)
    found = pacer.rate
    assert found is not None and found < 2000  # down from unlimited to about the service's 1,000 a second
    # the service's quota is raised (another workload stopped): no more refusals, and the pace climbs
    service.capacity, service.rate, service.level = 24000, 4000, 24000
    drive(pacer, service, 2000)
    assert pacer.rate is not None and pacer.rate > found * 1.5


class RandomService:
    """A service without a quota that refuses a constant share of calls at random (a faulty server, not a bucket)."""

    def __init__(self, share: float, seed: int = 3) -> None:
        self.rng, self.share = random.Random(seed), share
        self.refused = self.served = 0

    def call(self, reserve: int, used: int) -> bool:
        if self.rng.random() < self.share:
            self.refused += 1
            return False
        self.served += 1
        return True


def test_random_refusals_at_a_constant_share_are_told_from_a_quota_and_the_pace_does_not_collapse() -> None:
    # Given a service that refuses 30% of calls whatever the pace, and a pacer not told any quota
    clock = FakeClock()
    service = RandomService(0.3)
    pacer = Pacer(Quota(window_seconds=60.0), clock)
    # When 300 calls go through it one after another (each refused call tried again)
    drive(pacer, service, 300)  # type: ignore[arg-type]
    # Then the refusals are judged random: no pace is kept and refused calls back off instead of waiting for a bucket
    assert not pacer.holds_refusals
    assert pacer.rate is None
    # and the calls hardly waited: a pace cut to the first refusal's quota (what it took over a 60 s window, a few
    # calls a minute) would have made these 300 calls wait for hours of the fake clock
    assert clock.t < 1.0
    assert service.refused / (service.refused + service.served) == pytest.approx(0.3, abs=0.06)


def test_a_quota_too_small_to_judge_by_its_own_pace_is_probed_and_still_learned_as_a_quota() -> None:
    # Given Bedrock's one-minute window and a quota of six calls' reservations a minute: a trial at the cut pace would
    # take minutes, so the first refusal's cut is probed past the bucket
    clock = FakeClock()
    service = Service(clock, 600, window=60.0)
    pacer = Pacer(Quota(window_seconds=60.0), clock)
    # When 120 calls go through it
    drive(pacer, service, 120)
    # Then the probes found an empty bucket: the refusals are the quota's (refused calls still wait for the bucket),
    # few calls were refused, and the run is near the quota's floor
    assert pacer.holds_refusals
    assert service.refused / (service.served + service.refused) <= 0.10
    floor = (120 * 40 - 600) / 10
    assert clock.t <= floor * 1.25


# -- many threads at once, on a virtual clock ----------------------------------------------------------------------


class VirtualClock:
    """Time for many threads that runs one thread at a time: a sleeping thread wakes when every other one sleeps too
    and its time is the earliest, so a run of threads is the same run every time (no real time passes)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.cond = threading.Condition()
        self.queue: list[tuple[float, int, threading.Event]] = []
        self.order = 0
        self.running = 0

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        woken = threading.Event()
        with self.cond:
            self._queue(self.t + max(0.0, seconds), woken)
            self.running -= 1
            self.cond.notify_all()
        woken.wait()

    def _queue(self, at: float, event: threading.Event) -> None:
        self.order += 1
        heapq.heappush(self.queue, (at, self.order, event))

    def run(self, workers: list[Callable[[], None]]) -> None:
        def start(work: Callable[[], None], go: threading.Event) -> None:
            go.wait()
            try:
                work()
            finally:
                with self.cond:
                    self.running -= 1
                    self.cond.notify_all()

        threads = []
        for work in workers:
            go = threading.Event()
            with self.cond:
                self._queue(self.t, go)
            threads.append(threading.Thread(target=start, args=(work, go), daemon=True))
            threads[-1].start()
        while True:
            with self.cond:
                while self.running:
                    self.cond.wait()
                if not self.queue:
                    break
                self.t, _, woken = heapq.heappop(self.queue)
                self.running += 1
            woken.set()
        for thread in threads:
            thread.join()


class Endpoint(Service):
    """The bucket of Service for calls that take time: a call takes its reservation when it arrives and gives back
    what it did not use when it ends."""

    def take(self, reserve: int) -> bool:
        self.level = min(self.capacity, self.level + self.rate * (self.clock.t - self.last))
        self.last = self.clock.t
        if self.level < reserve:
            self.refused += 1
            return False
        self.level -= reserve
        return True

    def give_back(self, reserve: int, used: int) -> None:
        self.level = min(self.capacity, self.level + self.rate * (self.clock.t - self.last)) + reserve - used
        self.last = self.clock.t
        self.served += 1


def run_threads(
    pacer: Pacer, endpoint: Endpoint, clock: VirtualClock, calls: int, threads: int, latency: float,
    reserve: int = 150, tokens_in: int = 60, tokens_out: int = 10, network: float = 0.002,
) -> None:  # fmt: skip
    """``calls`` calls from ``threads`` threads through the pacer to the endpoint, each retried until it is answered
    (as the runner does: a refused call waits for the bucket again, or backs off once the refusals are judged random);
    a request takes ``network`` seconds each way, an answer ``latency`` more."""
    left = [calls]

    def work() -> None:
        while left[0] > 0:
            left[0] -= 1
            while True:
                ticket = pacer.acquire(reserve, 0, reserve - 90)
                clock.sleep(network)
                if endpoint.take(reserve):
                    clock.sleep(latency)
                    endpoint.give_back(reserve, tokens_in + tokens_out)
                    clock.sleep(network)
                    pacer.settle(ticket, reply(tokens_in, tokens_out), "bedrock:m")
                    break
                clock.sleep(network)
                pacer.refused(ticket)
                if not pacer.holds_refusals:
                    clock.sleep(0.1)

    clock.run([work] * threads)


@pytest.mark.parametrize(("per_window", "calls"), [(2000, 150), (8000, 600)], ids=["13-calls", "53-calls"])
def test_a_small_quota_is_learned_by_many_threads_with_as_few_refusals_as_a_large_one(per_window: int, calls: int) -> None:
    # Given a quota of 2,000 tokens per 10 s window (its bucket holds 13 calls' reservations of 150 tokens), or one 4x
    # larger, a job that keeps it busy for about 40 s, and 40 threads calling at once, 0.5 s a call
    clock = VirtualClock()
    endpoint = Endpoint(clock, per_window, window=10.0)  # type: ignore[arg-type]
    pacer = Pacer(Quota(window_seconds=10.0), clock)
    # When the pacer is not told the quota
    run_threads(pacer, endpoint, clock, calls, threads=40, latency=0.5)
    # Then every call was answered once, few were refused (at the small quota as at the large one: the first wave
    # does not run past the small bucket many times over, and the pace does not climb back into it every few calls),
    # the pace ends near the refill rate, and the job took little longer than the quota's floor
    assert endpoint.served == calls
    assert endpoint.refused / (endpoint.served + endpoint.refused) <= 0.05, endpoint.refused
    assert pacer.rate == pytest.approx(per_window / 10.0, rel=0.15)
    floor = (calls * 70 - per_window) / (per_window / 10.0)
    assert clock.t <= floor * 1.15
    assert pacer.holds_refusals


class RandomEndpoint(Endpoint):
    """An endpoint without a quota that refuses a constant share of calls at random."""

    def __init__(self, clock: VirtualClock, share: float, seed: int) -> None:
        super().__init__(clock, 10**9, window=1.0)  # type: ignore[arg-type]
        self.rng, self.share = random.Random(seed), share

    def take(self, reserve: int) -> bool:
        if self.rng.random() < self.share:
            self.refused += 1
            return False
        return True


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize(
    ("window", "calls", "threads", "latency", "within"),
    [(6.0, 300, 30, 0.3, 12.0), (60.0, 120, 8, 0.1, 15.0)],
    ids=["6s-window-30-threads", "minute-window-8-threads"],
)
def test_random_refusals_to_many_threads_are_told_from_a_quota_within_seconds(
    seed: int, window: float, calls: int, threads: int, latency: float, within: float
) -> None:
    # Given an endpoint that refuses 30% of calls whatever the pace, many threads calling it at once, and a quota
    # window: the first refusal's cut (what the first calls took, over a window) is a few calls per call time, more
    # than one probe at a time could show the service to be beyond; at Bedrock's minute, a call every few seconds,
    # so a trial at that pace would take most of a minute
    clock = VirtualClock()
    endpoint = RandomEndpoint(clock, 0.3, seed)
    pacer = Pacer(Quota(window_seconds=window), clock)
    # When the calls go through the pacer
    run_threads(pacer, endpoint, clock, calls, threads=threads, latency=latency)
    # Then the refusals were judged random (refused calls back off instead of waiting for a bucket), soon enough that
    # the job took seconds (about 4 times what its calls take unrefused): probes held past a cut pace never tell it
    assert endpoint.served == calls
    assert not pacer.holds_refusals
    assert clock.t < within


def test_a_given_quota_is_learned_below_its_ceiling_when_the_service_refuses() -> None:
    # another workload uses half the quota: the service refuses, and the pacer settles below what it was told
    clock = FakeClock()
    service = Service(clock, 3000)
    pacer = Pacer(Quota(tokens_per_minute=6000), clock)
    drive(pacer, service, 300)
    assert pacer.rate is not None and pacer.rate < 6000 / 60
    assert pacer.rate <= pacer.ceiling  # type: ignore[operator]


def test_retry_after_holds_every_call() -> None:
    clock = FakeClock()
    pacer = Pacer(Quota(tokens_per_minute=60_000), clock)
    pacer.refused(pacer.acquire(10), retry_after=2.0)
    before = clock.t
    pacer.acquire(10)
    assert clock.t - before >= 2.0


def test_remaining_tokens_from_the_server_lower_the_bucket() -> None:
    clock = FakeClock()
    pacer = Pacer(Quota(tokens_per_minute=6000), clock)
    ticket = pacer.acquire(100)
    limited = ModelReply("ok", 10, 10, "openai:m", rate_limit={"remaining_tokens": 50})
    pacer.settle(ticket, limited, "openai:m")
    assert pacer.level <= 50


def test_claude_4_output_tokens_count_five_times() -> None:
    assert output_burndown("bedrock:us.anthropic.claude-sonnet-4-20250514-v1:0") == 5
    assert output_burndown("bedrock:anthropic.claude-3-7-sonnet-20250219-v1:0") == 5
    assert output_burndown("bedrock:amazon.nova-lite-v1:0") == 1


RATES = Rates(input=1.0, output=2.0, cache_read=0.1, cache_write=1.25)  # USD per million tokens


def test_the_budget_admits_no_call_that_could_pass_it_counting_calls_in_flight_at_max_tokens() -> None:
    budget = Budget(0.001, lambda _: RATES)  # 1,000 micro-dollars
    first = budget.hold("m", 100, 200)  # up to 100 * 1.25 + 200 * 2 = 525
    with pytest.raises(BudgetSpent):
        budget.hold("m", 100, 200)  # 525 + 525 in flight would pass 1,000
    budget.settle(first, "m", reply(100, 50))  # it cost 100 + 100 = 200
    budget.hold("m", 100, 200)  # 200 spent + 525 fits
    assert budget.spent == pytest.approx(200e-6)


# -- the runner with gates -------------------------------------------------------


class Quoted:
    """A provider in front of a Service on a real clock would be slow: this one refuses the first n calls."""

    name = "bedrock"

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.calls = 0
        self.in_flight = 0
        self.most = 0
        self.lock = threading.Lock()

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        with self.lock:
            self.calls += 1
            refuse = self.calls <= self.refusals
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
        try:
            if refuse:
                raise ModelError("ThrottlingException", "slow down", "throttled")
            return ModelReply({"label": "yes"}, 20, 5, "bedrock:amazon.nova-lite-v1:0")
        finally:
            with self.lock:
                self.in_flight -= 1


def batch_of(tasks: int, max_tokens: int = 64) -> dict[str, Any]:
    return dict(batch_for(vote_tasks(tasks, MODEL), inference={"max_tokens": max_tokens}, output_schema=None))


MODEL = "bedrock:amazon.nova-lite-v1:0"


def test_waiting_for_the_quota_is_not_an_attempt_only_refusals_are() -> None:
    # Given a small quota that makes every call wait, and a service that refuses the first 3 calls
    clock = FakeClock()
    pacer = Pacer(Quota(tokens_per_minute=600, window_seconds=6.0), clock)
    provider = Quoted(refusals=3)
    store = MemoryRunStore()
    # When one task after another runs through the gate
    run_batch(
        batch_of(20),
        store=store,
        provider_for=lambda _: provider,
        threads=1,
        policy=RetryPolicy(max_attempts=4),
        sleep=clock.sleep,
        gate_for=lambda model: Gate(model, pacer),
    )
    records = list(store.records.values())
    # Then every task is answered once; the one refused 3 times used 4 attempts, the others 1 however long they waited
    assert len(records) == 20 and all(r["status"] == "ok" for r in records)
    assert sorted(r["attempts"] for r in records) == [1] * 19 + [4]
    assert sum(r.get("quota_wait_ms", 0) for r in records) > 0
    assert provider.calls == 23


def test_pacing_never_exceeds_max_concurrency() -> None:
    pacer = Pacer(Quota(tokens_per_minute=10**9))
    provider = Quoted(refusals=0)
    run_batch(
        batch_of(200), store=MemoryRunStore(), provider_for=lambda _: provider, threads=7, gate_for=lambda m: Gate(m, pacer)
    )
    assert provider.most <= 7
    assert provider.calls == 200


def test_a_task_the_budget_cannot_pay_for_is_not_called_and_says_why() -> None:
    # Given a budget that holds one call at its full 1,000 output tokens plus what 15 calls cost as answered
    provider = Quoted(refusals=0)
    nova = Rates(input=0.06, output=0.24, cache_read=0.015, cache_write=0.06)
    most = (10 * 0.06 + 1000 * 0.24) / 1e6  # a call's hold: its input estimate (the prompt's length) and max_tokens
    cost = (20 * 0.06 + 5 * 0.24) / 1e6  # what an answered call costs (20 tokens in, 5 out)
    budget = Budget(most + 15.5 * cost, lambda _: nova)
    store = MemoryRunStore()
    # When 40 tasks run one at a time
    run_batch(
        batch_of(40, max_tokens=1000), store=store, provider_for=lambda _: provider, threads=1,
        gate_for=lambda m: Gate(m, None, budget),
    )  # fmt: skip
    records = list(store.records.values())
    stopped = [r for r in records if r.get("stopped") == "budget"]
    # Then the calls stop before the budget would be passed, and every task still has its record
    assert len(records) == 40
    assert stopped and all(r["status"] == "failed" and r["attempts"] == 0 for r in stopped)
    assert provider.calls == 40 - len(stopped)
    assert provider.calls == 16  # the 17th would have passed the budget had it used its max_tokens
    assert budget.spent <= budget.limit
    assert "limits.max_cost_usd" in stopped[0]["error"]


# -- the job's limits ------------------------------------------------------------


def voting_job(**limits: Any) -> dict[str, Any]:
    return {
        "pattern": "voting",
        "votes": 2,
        "prompt": "Classify {text}",
        "model": MODEL,
        "inference": {"max_tokens": 512},
        "limits": limits,
        "items": [{"id": "a", "text": "x" * 300}],
    }


@pytest.mark.parametrize(
    ("limits", "field"),
    [
        ({"tokens_per_minute": 0}, "limits.tokens_per_minute"),
        ({"requests_per_minute": "60"}, "limits.requests_per_minute"),
        ({"max_cost_usd": -1.0}, "limits.max_cost_usd"),
        ({"tokens_per_mintue": 100}, "limits"),
    ],
)
def test_bad_pacing_limits_are_refused_naming_the_field(limits: dict[str, Any], field: str) -> None:
    from fanout_core.errors import InvalidJob
    from fanout_core.job import parse_job

    with pytest.raises(InvalidJob) as refused:
        parse_job(voting_job(**limits))
    assert str(refused.value).startswith(field)


def test_a_quota_smaller_than_one_call_and_a_budget_without_a_price_are_refused_before_any_call() -> None:
    from fanout_core.errors import InvalidJob
    from fanout_core.job import parse_job
    from fanout_core.pacing import check_pacing_limits
    from fanout_core.planning import expand_tasks

    job = parse_job(voting_job(tokens_per_minute=400))
    with pytest.raises(InvalidJob, match=r"^limits.tokens_per_minute: 400 is less than one call reserves"):
        check_pacing_limits(job, expand_tasks(job, job.items or [], "sim"))
    fine = parse_job(voting_job(tokens_per_minute=4000))
    check_pacing_limits(fine, expand_tasks(fine, fine.items or [], "sim"))
    unpriced = parse_job({**voting_job(max_cost_usd=1.0), "model": "bedrock:example.unlisted-model-v1:0"})
    with pytest.raises(InvalidJob, match=r"^limits.max_cost_usd: the price of bedrock:example.unlisted-model-v1:0"):
        check_pacing_limits(unpriced, expand_tasks(unpriced, unpriced.items or [], "sim"))


def test_no_call_starts_after_the_deadline_however_long_it_waited_for_the_quota() -> None:
    # Given a quota that makes every call after the second wait ~1.5 s, and a batch deadline 2 s in (one fake clock)
    clock = FakeClock()
    pacer = Pacer(Quota(tokens_per_minute=100, window_seconds=6.0), clock)
    provider = Quoted(refusals=0)
    store = MemoryRunStore()
    started: list[float] = []
    invoke = provider.invoke
    provider.invoke = lambda request, attempt: (started.append(clock.t), invoke(request, attempt))[1]  # type: ignore[method-assign]
    # When the batch runs through the gate
    with pytest.raises(BatchIncomplete):
        run_batch(
            batch_of(20),
            store=store,
            provider_for=lambda _: provider,
            threads=1,
            sleep=clock.sleep,
            deadline=2.0,
            clock=clock.now,
            gate_for=lambda model: Gate(model, pacer),
        )
    # Then the calls that went started before the deadline, the rest were handed back unasked (no record, no call)
    assert started and max(started) <= 2.0
    assert len(store.records) == provider.calls < 20


@pytest.mark.parametrize("seed", [1, 2])
def test_a_learned_quota_with_prompts_of_many_sizes_is_not_mistaken_for_random_refusals(seed: int) -> None:
    # Given a quota of 9,000 tokens per 8 s window, 0.45 s a call, 40 threads, and prompts of many sizes (the service
    # counts 40 to 190 input tokens a call, the pacer estimates each a third more, as it does before it knows the
    # model's characters per token) with 64 output tokens reserved and 8 used
    clock = VirtualClock()
    endpoint = Endpoint(clock, 9000, window=8.0)  # type: ignore[arg-type]
    pacer = Pacer(Quota(window_seconds=8.0), clock)
    rng = random.Random(seed)
    sizes = [rng.randint(40, 190) for _ in range(120) for _vote in range(3)]
    left = list(sizes)

    def work() -> None:
        while left:
            tokens_in = left.pop()
            estimate = tokens_in * 4 // 3
            while True:
                ticket = pacer.acquire(estimate + 64, 0, estimate)
                clock.sleep(0.002)
                if endpoint.take(tokens_in + 64):
                    clock.sleep(0.45)
                    endpoint.give_back(tokens_in + 64, tokens_in + 8)
                    clock.sleep(0.002)
                    pacer.settle(ticket, reply(tokens_in, 8), "bedrock:m")
                    break
                clock.sleep(0.002)
                pacer.refused(ticket)
                if not pacer.holds_refusals:
                    clock.sleep(0.1)

    # When the pacer is not told the quota
    clock.run([work] * 40)
    # Then the refusals were taken as the quota's: the calls that were in flight at a refusal gave back to the mirror
    # what they gave back to the service (the unused output), not their input estimate's excess as well, which would
    # put the mirror ahead of the empty bucket and refuse a share of the trial's calls that looks random; so few calls
    # were refused, and the job took little longer than the quota's floor
    assert endpoint.served == len(sizes)
    assert pacer.holds_refusals
    assert endpoint.refused / (endpoint.served + endpoint.refused) <= 0.05, endpoint.refused
    floor = (sum(sizes) + 8 * len(sizes) - 9000) / (9000 / 8.0)
    assert clock.t <= floor * 1.15
