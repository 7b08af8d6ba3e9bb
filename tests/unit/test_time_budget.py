"""The batch deadline on a fake clock: no attempt starts and no backoff sleep ends past it; the retry finishes the rest."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from fanout_core.errors import BatchIncomplete
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest
from fanout_core.runner import RetryPolicy, run_batch
from tests.fakes import MemoryRunStore
from tests.unit.test_runner import make_batch

POLICY = RetryPolicy(max_attempts=8, base_seconds=2.0, cap_seconds=8.0, timeout_retries=1)


class FakeClock:
    """Time that moves only when a call takes time or the retry loop sleeps; every start and wake-up is noted."""

    def __init__(self) -> None:
        self.now = 0.0
        self.starts: list[float] = []
        self.wakes: list[float] = []
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.now += seconds
            self.wakes.append(self.now)


class SlowProvider:
    """Each call takes ``seconds`` on the fake clock; tasks listed in ``throttle`` are throttled on every attempt."""

    name = "slow"

    def __init__(self, clock: FakeClock, seconds: float, throttle: set[str] | None = None, kind: str = "throttled") -> None:
        self.clock, self.seconds, self.throttle, self.kind = clock, seconds, throttle or set(), kind
        self.calls: dict[str, int] = {}

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        self.clock.starts.append(self.clock.now)
        self.calls[request.task_id] = self.calls.get(request.task_id, 0) + 1
        self.clock.now += self.seconds
        if request.task_id in self.throttle:
            raise ModelError("ThrottlingException", "slow down", self.kind)
        return ModelReply(output={"label": "yes"}, input_tokens=10, output_tokens=3, model="slow")


def run(batch: dict[str, Any], store: MemoryRunStore, provider: SlowProvider, clock: FakeClock, deadline: float) -> Any:
    return run_batch(
        batch,
        store=store,
        provider_for=lambda _: provider,
        threads=1,
        policy=POLICY,
        sleep=clock.sleep,
        deadline=deadline,
        clock=clock,
    )


def test_a_throttled_task_never_starts_an_attempt_or_sleeps_past_the_deadline() -> None:
    # Given a task throttled on every attempt, calls of 2 s, and a deadline 10 s away (8 attempts would take 16 s)
    clock = FakeClock()
    batch = make_batch(["a"], votes=2)
    store = MemoryRunStore()
    provider = SlowProvider(clock, 2.0, throttle={"a#v2"})

    # When the batch runs
    with pytest.raises(BatchIncomplete) as caught:
        run(batch, store, provider, clock, deadline=10.0)

    # Then every attempt started and every backoff ended by the deadline, and the batch is handed back as out of time
    # (not as throttled: its retry continues the task at once), with the finished task recorded
    assert clock.starts and max(clock.starts) <= 10.0
    assert not clock.wakes or max(clock.wakes) <= 10.0
    assert provider.calls["a#v2"] < POLICY.max_attempts
    assert "1 of 2 tasks not finished" in str(caught.value)
    assert set(store.records) == {("a", "v1")}


def test_the_retry_of_an_incomplete_batch_calls_only_the_tasks_left() -> None:
    # Given three tasks of 4 s each run one at a time with a deadline at 5 s
    clock = FakeClock()
    batch = make_batch(["a", "b", "c"], votes=2)
    store = MemoryRunStore()
    provider = SlowProvider(clock, 4.0)

    # When the batch runs, then is retried with a fresh deadline (the state machine's BatchIncomplete retry)
    with pytest.raises(BatchIncomplete):
        run(batch, store, provider, clock, deadline=5.0)
    first = set(store.records)
    run(batch, store, provider, clock, deadline=clock.now + 1000.0)

    # Then the first invocation started no call after 5 s, and the retry called only the tasks without a record
    assert len(first) == 2 and all(start <= 5.0 for start in clock.starts[:2])
    assert sorted(provider.calls.values()) == [1] * 6
    assert len(store.records) == 6


def test_a_timeout_is_not_retried_when_the_retry_would_start_past_the_deadline() -> None:
    # Given a call that times out after 6 s with the deadline at 6 s: its one timeout retry would start after it
    clock = FakeClock()
    provider = SlowProvider(clock, 6.0, throttle={"a#v1"}, kind="timeout")
    store = MemoryRunStore()

    # When the batch runs with that deadline
    with pytest.raises(BatchIncomplete):
        run_batch(
            make_batch(["a"], votes=2),
            store=store,
            provider_for=lambda _: provider,
            threads=1,
            policy=RetryPolicy(base_seconds=2.0),
            sleep=clock.sleep,
            deadline=6.0,
            clock=clock,
        )

    # Then the task stops after one attempt, without sleeping, and is left to the batch's retry (no record, no
    # second call); the other task, started at the deadline itself, is answered and recorded
    assert provider.calls == {"a#v1": 1, "a#v2": 1}
    assert clock.wakes == [] and set(store.records) == {("a", "v2")}
