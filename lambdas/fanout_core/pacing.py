"""Admission gates in front of every model call of a batch: the model's quota (tokens and requests per minute) and
the job's cost budget.

**The quota.** Bedrock meters on-demand inference per model in tokens per
minute, input and output together ("Quotas for the bedrock-runtime
endpoint", quotas-runtime.html), and a request takes its input tokens plus
``maxTokens`` from that quota when it starts; what it did not use is given
back when it ends, and some models burn their output tokens faster than
one for one ("How tokens are counted in Amazon Bedrock",
quotas-token-burndown.html). A :class:`Pacer` mirrors that bucket on the
client, one per model, shared by every thread of a batch (and in the local
runtime by every batch of a run): a call waits until the bucket holds its
reservation (estimated input + ``max_tokens``), takes it, and gives back
the difference to what the reply says it used (a call that was in flight
when a refusal set the mirror to the service's empty bucket gives back
only what the service gets back: the unused part of ``max_tokens``). The
bucket holds one window's quota and refills it over ``window_seconds``
(60: a minute).

- **Given quota** (``limits.tokens_per_minute`` / ``requests_per_minute``):
  the bucket has exactly that size, times the batch's planned share of the
  job's parallel batches. The mirror is never ahead of the service's bucket
  (it reserves before the request leaves and gets the unused part back after
  the reply arrives), so a job alone on its quota is not refused.
- **Learned quota** (none given): no limit until the first refusal, which
  means the service's bucket is empty; from then on the bucket mirrors it.
  Until then a slow start: a few calls at once, one more after each reply,
  spread over a call's time (replies that come together would otherwise
  send a burst past the point where a small bucket runs out). Every refusal
  empties the mirror (the service just said it is empty) and measures the
  refill rate as the tokens taken from the bucket (reservations less what
  came back) between two refusals over the time between them (both
  refusals found the bucket near empty, so what was taken in between is
  what was refilled, whatever the window and the calls in flight); the pace
  is set to that, and rises while no refusal comes by a share of itself per
  reply (multiplicative decrease, additive increase, in the spirit of
  botocore's adaptive retry mode): per reply, not per second, so the pace
  finds the quota's edge again after about as many calls at a small quota
  as at a large one, and the share of calls refused does not grow as the
  quota shrinks. A pace that is only a guess (the first refusal's, or a
  measurement over a time the pace was far too low, when the service's
  bucket may have filled and refilled more than it counted) rises by a
  share of itself per second instead, so a guess far too low is left
  within seconds. A given quota is learned the same way below its ceiling
  when other workloads share it.

Waiting for the bucket is not an attempt: only the service's refusals spend
a task's retry budget. A refusal with ``Retry-After`` (OpenAI-compatible
servers) holds every call of the model for that long; ``x-ratelimit-remaining-tokens``
lowers the mirror to what the server says is left.

**The budget** (``limits.max_cost_usd``): a :class:`Budget` admits a call
only while the spend counted so far plus every call in flight at its full
``max_tokens`` stays within the budget; a call it refuses is not made and
its task is recorded ``failed`` with the reason ``budget``.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fanout_core.catalog import Rates
from fanout_core.providers.base import ModelError, ModelReply, ModelRequest

DEFAULT_WINDOW_SECONDS = 60.0
# learned pace: the measured refill rate (times this), rising by this share of itself with each reply while no refusal
# comes, and faster once QUIET_CALLS replies came without one. Counted in replies, not seconds: a small quota answers
# few calls a second, and a pace rising per second would find its ceiling (one refusal) after as few calls, a larger
# share of them refused than at a large quota; per reply, a refusal comes after about as many calls at any quota
PACE_MARGIN = 1.0
INCREASE_PER_CALL = 0.002
QUIET_CALLS = 64
# a pace not yet measured (the first refusal's guess, which leans on the window) rises by this share of itself per
# second, faster once no refusal came for 5 measuring spans: a guess far too low climbs back within seconds
INCREASE_PER_SECOND = 0.02
# without a second refusal to measure from, each refusal cuts the pace by this factor (at most once per cut gap)
DECREASE = 0.7
# the refill rate is measured between refusals at least this far apart (shorter spans are mostly noise)
MEASURE_SPAN_SECONDS = 0.5
# before the first refusal (nothing known yet) this many calls go at once, one more after each reply (a slow start,
# so the first wave does not empty a small quota many times over)
FIRST_CALLS = 8
# Is it the pace? Every cut is a trial: the calls sent after it say whether it helped. A quota's refusals track the
# send rate (a pace under the refill rate is hardly refused); a service that refuses at random refuses as often at any
# pace. A trial judges after this many answers to calls sent at the cut pace:
TRIAL_CALLS = 16
# refusals this common in a trial are not the pace's when the calls answered did not rise with the cut: a quota
# answers 1/c times as large a share at c times the pace; answers that rose less than halfway to that are not a quota's
# (judged on cuts to at most DEEP_CUT of the pace before)
RANDOM_SHARE = 0.2
DEEP_CUT = 0.8
# The first refusal's trial does not wait for calls at the cut pace when they would take more than PROBE_AFTER_WINDOWS
# quota windows to judge it (more than a bucket at the cut pace holds: a pace cut to a tiny quota would take minutes; a
# window, not seconds, so a scaled minute behaves as the real one): while calls wait for the bucket, calls go past it
# as probes, one at a time (or as many as serve twice BEYOND_QUOTA times the cut pace in a call's time). A quota's
# empty bucket refuses probes one after another once what the calls in flight gave back is spent: this many refused in
# a row (or this many probes in all) end the probing. Once the service has answered more than a bucket refilling at
# BEYOND_QUOTA times the cut pace could have (with what the calls in flight gave back), while it still refuses some
# calls, its refusals are not a quota's.
PROBE_AFTER_WINDOWS = 1.0
# ... and never more than this: a service that refuses at random from its first calls leaves a first guess far under
# what it serves (a few calls' tokens over a whole window), and waiting out a trial at that pace takes minutes (a
# 120-call job at 30% random refusals and a 60 s window: 200 s instead of 13 s); a few refused probes cost less
PROBE_AFTER_SECONDS = 15.0
PROBE_RUN = 5
PROBE_MAX = 64
BEYOND_QUOTA = 3.0
PROBE_MIN_REFUSALS = 2
# the refusals since the service was judged random are watched over this many calls: a share this far above the one
# judged (a quota now binds as well) makes the pace learn again
WATCH_CALLS = 32
WATCH_RISE = 0.3
# our bucket counts as full this much under the service's
FULL_MARGIN = 0.03
# the pace never falls under this share of its first figure
FLOOR_SHARE = 0.02
# a sleeping call looks again at least this often (a give-back may have refilled the bucket)
MAX_NAP_SECONDS = 0.25
# the first estimate of a prompt's tokens (characters per token); the observed ratio replaces it after replies
FIRST_CHARS_PER_TOKEN = 3.0
# Claude 3.7 and later count each output token five times against the quota (quotas-token-burndown.html)
_FIVE_TIMES_OUTPUT = re.compile(r"anthropic\.claude-(3-7|sonnet-4|opus-4|haiku-4|[a-z]+-4-)")


class Clock(Protocol):
    def now(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass(frozen=True)
class Quota:
    """What a batch may use of one model's quota: the job's limits times the batch's planned share."""

    tokens_per_minute: int | None = None
    requests_per_minute: int | None = None
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    share: float = 1.0


def output_burndown(model: str) -> int:
    """How many times each output token counts against the model's tokens-per-minute quota."""
    return 5 if _FIVE_TIMES_OUTPUT.search(model) else 1


@dataclass
class Ticket:
    """One admitted call: what it reserved, how long it waited."""

    tokens: int
    waited: float
    prompt_chars: int
    at: float
    input_tokens: int = 0  # the estimated input part of ``tokens`` (the rest is max_tokens)
    probe: bool = False  # sent past the bucket to test a cut (the first refusal's trial)


class NoTimeLeft(Exception):
    """The batch's deadline came while a call waited for its model's quota: the call is not made."""


class Pacer:
    """The token (and request) bucket of one model, shared by the threads that call it."""

    def __init__(self, quota: Quota, clock: Clock | None = None, *, learned_rate: float | None = None) -> None:
        self.clock = clock or RealClock()
        self.window = quota.window_seconds
        share = quota.share
        self.ceiling = quota.tokens_per_minute * share / self.window if quota.tokens_per_minute else None
        self.request_rate = quota.requests_per_minute * share / self.window if quota.requests_per_minute else None
        self.lock = threading.Lock()
        now = self.clock.now()
        self.started = now
        self.last = now
        self.last_increase = now
        self.quiet_calls = 0  # replies since the latest refusal
        self.measured = False  # the pace was set from a measured refill rate (see _increase)
        # tokens per second; None: no limit yet (nothing given, nothing learned)
        self.rate: float | None = self.ceiling
        if learned_rate is not None:
            self.rate = learned_rate if self.ceiling is None else min(learned_rate, self.ceiling)
        # a batch started again after refusals does not start with a full bucket: the service's is near empty
        self.level = 0.0 if learned_rate is not None else (self.capacity or 0.0) * (1 - FULL_MARGIN)
        self.requests = 0.0 if learned_rate is not None else (self.request_capacity or 0.0)
        self.hold_until = 0.0
        self.last_cut = -math.inf
        # when the mirror was last set to the service's level (a refusal: empty); see _given_back
        self.emptied_at = -math.inf
        # the current trial of a cut (None: none running): see TRIAL_CALLS
        self.trial: _Trial | None = None
        # answers to the latest calls (True: refused), probes left out: the share of refusals before a cut
        self.outcomes: deque[bool] = deque(maxlen=WATCH_CALLS)
        # the service was judged to refuse at random: no pace, the callers back off (see holds_refusals)
        self.random = False
        self.random_share = 0.0
        self.taken = 0.0  # tokens taken from the bucket so far, less what was given back (as _given_back counts it)
        # (time, tokens taken so far, the pace it left)
        self.refusals: deque[tuple[float, float, float | None]] = deque(maxlen=256)
        self.used = 0.0  # tokens the service counted for the calls answered so far
        self.latency = 0.0  # a call's usual time, from acquire to reply (moving average)
        self.floor_rate = 0.0
        self.outstanding = 0
        self.outstanding_input = 0
        self.slow_start = FIRST_CALLS
        self.last_sent = -math.inf
        self.attempts = 0
        self.chars_per_token = FIRST_CHARS_PER_TOKEN
        # what the batch reports
        self.throttled = 0
        self.waited = 0.0
        self.served_tokens = 0
        self.calls = 0

    @property
    def capacity(self) -> float | None:
        return None if self.rate is None else self.rate * self.window

    @property
    def request_capacity(self) -> float | None:
        return None if self.request_rate is None else self.request_rate * self.window

    @property
    def learned(self) -> bool:
        return self.ceiling is None

    @property
    def holds_refusals(self) -> bool:
        """Whether a refused call waits for this bucket to admit it again (the bucket is the backoff); False once the
        service's refusals were judged random: then a refused call backs off as an unpaced one does."""
        with self.lock:
            return not self.random

    def reservation(self, request: ModelRequest, model: str) -> tuple[int, int]:
        """(tokens to reserve, prompt characters) for a request: its estimated input plus max_tokens, as Bedrock counts."""
        chars = len(request.system or "") + len(request.prompt)
        if request.output_schema is not None:
            chars += len(str(request.output_schema))
        with self.lock:
            ratio = self.chars_per_token
        return math.ceil(chars / ratio) + request.max_tokens * output_burndown(model), chars

    def acquire(
        self, tokens: int, prompt_chars: int = 0, input_tokens: int = 0, may_start: Callable[[], bool] | None = None
    ) -> Ticket:
        """Wait until the bucket holds ``tokens`` (and a request), take them; the wait is not an attempt.

        ``may_start`` is asked after every nap: once it says no (the batch's deadline came while the call waited),
        NoTimeLeft is raised and nothing is taken.
        """
        asked = self.clock.now()
        napped = False
        while True:
            if napped and may_start is not None and not may_start():
                raise NoTimeLeft()
            with self.lock:
                now = self.clock.now()
                self._refill(now)
                wait = self._wait(tokens, now)
                probe = wait > 0 and self._may_probe(now)
                if wait <= 0 or probe:
                    self.attempts += 1
                    self.last_sent = now
                    self.outstanding += 1
                    self.outstanding_input += input_tokens
                    self.level -= tokens
                    if self.request_rate is not None:
                        self.requests -= 1
                    self.taken += tokens
                    waited = now - asked
                    self.waited += waited
                    if probe:
                        assert self.trial is not None
                        self.trial.probing += 1
                    return Ticket(tokens, waited, prompt_chars, now, input_tokens, probe)
            self.clock.sleep(min(wait, MAX_NAP_SECONDS))
            napped = True

    def settle(self, ticket: Ticket, reply: ModelReply, model: str) -> None:
        """A reply: the tokens it used replace what was reserved (the rest goes back), and the pace may rise."""
        used_input = reply.input_tokens + reply.cache_read_tokens + reply.cache_write_tokens
        used_output = reply.output_tokens * output_burndown(model)
        used = used_input + used_output
        with self.lock:
            now = self.clock.now()
            self._refill(now)
            given_back = self._given_back(ticket, used, used_output)
            self.level += given_back
            self.taken -= given_back
            self.served_tokens += used
            self.used += used
            self.calls += 1
            self.outstanding -= 1
            self.outstanding_input -= ticket.input_tokens
            self.slow_start += 1
            took = now - ticket.at
            self.latency = took if self.calls == 1 else 0.9 * self.latency + 0.1 * took
            if ticket.prompt_chars and reply.input_tokens:
                # the most tokens per character seen, so a reservation does not fall short of the service's count
                self.chars_per_token = min(self.chars_per_token, ticket.prompt_chars / reply.input_tokens)
            if reply.rate_limit and reply.rate_limit.get("remaining_tokens") is not None:
                self.level = min(self.level, float(reply.rate_limit["remaining_tokens"]))
            if not ticket.probe:
                self.outcomes.append(False)
            trial = self.trial
            if trial is not None:
                if ticket.at >= trial.at:
                    trial.answered(ticket, refused=False, used=used)
                else:  # a call sent before the cut gave back what it did not use: the service's bucket got that too
                    trial.given_back += given_back
                self._judge(now)
            if self.random:
                return
            self.quiet_calls += 1
            if self.trial is not None:  # a trial is judged at the cut pace: it does not rise meanwhile
                self.last_increase = now
                return
            self._increase(now)

    def refused(self, ticket: Ticket, retry_after: float | None = None) -> None:
        """The service refused the call (throttled): it took nothing. A quota's refusal says its bucket is empty: the
        pace is cut to what it refills, and the cut is put on trial; refusals judged random cut nothing."""
        with self.lock:
            now = self.clock.now()
            self._refill(now)
            self.level += ticket.tokens
            self.taken -= ticket.tokens
            self.outstanding -= 1
            self.outstanding_input -= ticket.input_tokens
            self.throttled += 1
            self.quiet_calls = 0
            if retry_after is not None and retry_after > 0:
                self.hold_until = max(self.hold_until, now + retry_after)
            measured, steady = self._measure(now)
            self._after_refusal(ticket, now, measured, steady)
            # with the pace it left (until the next refusal the pace only rises): what _measure checks a span by
            self.refusals.append((now, self.taken, self.rate))

    def release(self, ticket: Ticket) -> None:
        """A call that failed for another reason: the service took nothing."""
        with self.lock:
            if ticket.at >= self.emptied_at:  # (before, the mirror was set to the service's level without it)
                self.level += ticket.tokens
            self.taken -= ticket.tokens
            self.outstanding -= 1
            self.outstanding_input -= ticket.input_tokens
            if ticket.probe and self.trial is not None and ticket.at >= self.trial.at:
                self.trial.probing -= 1  # it said nothing of the quota: another call may probe

    def state(self) -> dict[str, Any]:
        """What a later run of the batch starts from, and what the batch reports."""
        with self.lock:
            return {
                "rate_tokens_per_second": self.rate,
                "learned": self.learned,
                "throttled": self.throttled,
                "waited_seconds": round(self.waited, 3),
                "served_tokens": self.served_tokens,
            }

    # -- inside the lock ------------------------------------------------------
    def _after_refusal(self, ticket: Ticket, now: float, measured: float | None, steady: bool) -> None:
        """What a refusal says (inside the lock): evidence for the trial running, or a cut of the pace put on trial."""
        if not ticket.probe:
            self.outcomes.append(True)
        trial = self.trial
        if trial is not None and ticket.at >= trial.at:
            trial.answered(ticket, refused=True, used=0)
        if self.random:
            self._watch(now, measured)
            return
        if trial is not None:
            # refusals during a trial are its evidence, not new cuts (else refusals that come whatever the pace
            # would cut it again and again); a quota's still empties the mirror
            self._empty(now, keep_debt=True)
            self._judge(now)
            return
        span = self._span()
        before, first = self.rate, self.rate is None
        if self.rate is None:
            # the first refusal: the service's bucket, full at the start, is empty; what was taken since is a
            # window's quota plus what refilled meanwhile (exact when the window is right and the quota all ours)
            elapsed = max(now - self.started, 1e-3)
            burst = max(self.taken, float(ticket.tokens))
            self.rate = burst / (elapsed + self.window)
            self.floor_rate = self.rate * FLOOR_SHARE
            self.measured = False  # a guess: it leans on the window
            before = burst / elapsed
        elif measured is not None and now - self.last_cut >= span / 4:
            self.rate = measured * PACE_MARGIN
            # what was taken between two refusals is what the service refilled only if its bucket never filled in
            # between, which a pace far under it for a while may have let it do (it then refilled more than it
            # counted): such a measurement is a floor, and the pace climbs from it by time, as from a guess
            self.measured = steady
        elif measured is None and now - self.last_cut >= span / 2:
            self.rate *= DECREASE
        assert self.rate is not None
        self.rate = max(self.rate, self.floor_rate, 1e-3)
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)
        if before is not None and self.rate < before:
            # the calls a trial needs, at what a call uses (so far), at the cut pace: long enough to probe?
            per_call = self.used / self.calls if self.calls else float(ticket.tokens)
            judging = TRIAL_CALLS * per_call / self.rate
            probes = first and judging > min(self.window * PROBE_AFTER_WINDOWS, PROBE_AFTER_SECONDS)
            self._cut(now, before, probes=probes)
        # the service's bucket is empty now (it refuses rather than go below zero); the replies in flight will
        # give back to both what they did not use
        self._empty(now)
        self.last_increase = now

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self.last)
        self.last = now
        if self.rate is not None and self.capacity is not None:
            # the service's bucket is full at its size with its own reservations taken out; ours may be larger by the
            # input estimates of the calls in flight, so ours is full that much sooner (else it would run ahead)
            # (and a little under: replies reach us after the service gave back, so near full it loses refill ours
            # would not)
            self.level = min(self._full(), self.level + self.rate * elapsed)
        if self.request_rate is not None and self.request_capacity is not None:
            self.requests = min(self.request_capacity, self.requests + self.request_rate * elapsed)

    def _wait(self, tokens: int, now: float) -> float:
        wait = self.hold_until - now
        if self.rate is None and self.ceiling is None:
            if self.outstanding >= self.slow_start:
                wait = max(wait, 0.01)
            elif self.latency > 0 and not self.random:
                # the slow start's calls go evenly spread over a call's time, not in a burst as replies come together:
                # the call that finds the service's bucket empty is refused at once, before many more follow it
                wait = max(wait, self.last_sent + self.latency / self.slow_start - now)
        if self.rate is not None and self.capacity is not None:
            # a call larger than the whole bucket waits for a full one (and leaves it below zero)
            need = min(float(tokens), self._full())
            if self.level < need:  # (a microsecond more, so a refill computed to the token is not short by a rounding)
                wait = max(wait, (need - self.level) / max(self.rate, 1e-9) + 1e-6)
        if self.request_rate is not None and self.requests < 1:
            wait = max(wait, (1 - self.requests) / self.request_rate + 1e-6)
        return wait

    def _cut(self, now: float, before: float | None, probes: bool = False) -> None:
        """Put a cut on trial: the calls sent after it are its evidence (the first refusal's trial also probes)."""
        self.last_cut = now
        assert self.rate is not None
        share = sum(self.outcomes) / len(self.outcomes) if len(self.outcomes) >= TRIAL_CALLS else None
        if before is None or self.rate > DEEP_CUT * before:
            share = None  # too shallow a cut to tell a quota by
        cut = self.rate / before if before else 1.0
        self.trial = _Trial(at=now, rate=self.rate, share_before=share, cut=cut, probes=probes)

    def _may_probe(self, now: float) -> bool:
        trial = self.trial
        return (
            trial is not None
            and trial.probes
            and trial.probing < self._probes_at_once()
            and trial.probe_run < PROBE_RUN
            and trial.probes_sent < PROBE_MAX
            and now >= self.hold_until
        )

    def _probes_at_once(self) -> int:
        """Probes out at once: one, or enough to serve twice BEYOND_QUOTA times the cut pace in a call's time (else a
        service that answers most probes would show it is beyond the cut only slowly or never, while the probes, taken
        from the bucket, starve the trial's calls)."""
        if not self.calls or self.rate is None:
            return 1
        per_call = self.used / self.calls
        return min(PROBE_RUN, 1 + int(2 * BEYOND_QUOTA * self.rate * self.latency / max(per_call, 1.0)))

    def _judge(self, now: float) -> None:
        """The trial's verdict, once its evidence suffices: the refusals are the quota's (the cut stands, the trial
        ends) or not (random: no pace, refused calls back off)."""
        trial = self.trial
        assert trial is not None
        answered, refused = trial.calls + trial.probes_sent, trial.refused + trial.probes_refused
        # what a bucket refilling at BEYOND_QUOTA times the cut pace, empty at the cut, could have served since
        most = BEYOND_QUOTA * trial.rate * (now - trial.at) + trial.given_back + 2 * trial.largest
        beyond = trial.used > most
        if beyond and refused >= PROBE_MIN_REFUSALS and refused / answered >= RANDOM_SHARE / 2:
            self._random(now, refused / answered)
        elif trial.calls >= TRIAL_CALLS:
            share = trial.refused / trial.calls
            if trial.share_before is not None and share >= RANDOM_SHARE:
                answered_before = 1 - trial.share_before
                quota_would = min(1.0, answered_before / trial.cut)  # a quota's answered share at the cut pace
                if 1 - share <= answered_before + (quota_would - answered_before) / 2:
                    self._random(now, share)
                    return
            self.trial = None  # the cut helped: the refusals are the quota's

    def _random(self, now: float, share: float) -> None:
        """The refusals come whatever the pace: stop pacing (a learned pace has no limit, a given one its ceiling)
        and let refused calls back off; the refusals go on being watched (_watch)."""
        self.random, self.random_share, self.trial = True, share, None
        self.rate = self.ceiling
        self.outcomes.clear()
        self.last_increase = now

    def _watch(self, now: float, measured: float | None) -> None:
        """Refusals judged random grown much more common (a quota binds too): learn the pace again, from the rate the
        service served between refusals, on trial."""
        if len(self.outcomes) < WATCH_CALLS:
            return
        share = sum(self.outcomes) / len(self.outcomes)
        if share < max(0.5, self.random_share + WATCH_RISE):
            return
        self.random = False
        if measured:
            self.rate = measured * PACE_MARGIN if self.ceiling is None else min(measured * PACE_MARGIN, self.ceiling)
            self.floor_rate = self.rate * FLOOR_SHARE
            self._empty(now)
            self.measured = True
            self._cut(now, None)
        else:  # nothing to measure from: as at the start, the next refusal sets the pace
            self.rate, self.started, self.taken = self.ceiling, now, 0.0
            self.level = (self.capacity or 0.0) * (1 - FULL_MARGIN)

    def _empty(self, now: float, keep_debt: bool = False) -> None:
        """The service refused: its bucket is empty, and so is the mirror from now (or below, with ``keep_debt``)."""
        self.level = min(self.level, 0.0) if keep_debt else 0.0
        self.emptied_at = now

    def _given_back(self, ticket: Ticket, used: float, used_output: float) -> float:
        """What an answered call gives back to the mirror. A call sent since the mirror was last emptied took its
        reservation from it and gives back the rest of it. A call sent before gives back what it gives back to the
        service: the unused part of its output reservation. Its input estimate was taken from a level since set to
        the service's, which never held that estimate but the tokens it counted: giving the estimate's excess back
        (input estimated high, or prompts of many sizes) would put the mirror ahead of the service, and the calls
        it then lets through find the service's bucket empty (refusals in a cut's trial that look random). What was
        taken from the bucket (what _measure counts) goes down by the same: counting the excess back would measure
        the refill rate short by it, half the quota when many calls are in flight."""
        if ticket.at >= self.emptied_at:
            return ticket.tokens - used
        return (ticket.tokens - ticket.input_tokens) - used_output

    def _full(self) -> float:
        assert self.capacity is not None
        return max(1.0, self.capacity * (1 - FULL_MARGIN) - self.outstanding_input)

    def _span(self) -> float:
        # long enough that the calls in flight at either end weigh little against what was served in between
        return max(MEASURE_SPAN_SECONDS, 3 * self.latency)

    def _measure(self, now: float) -> tuple[float | None, bool]:
        """The refill rate: the tokens taken from the bucket (reservations less what came back) since the latest refusal
        at least a measuring span ago, per second. Both refusals found the service's bucket holding less than a call,
        so what was taken in between is what it refilled, within a call's reservation (whatever the calls in flight
        at either end); counting the replies' tokens instead would count the calls in flight at the first refusal
        twice. Also whether the pace stayed steady over that span (never far under what was measured: see _after_refusal)."""
        span = self._span()
        lowest = math.inf
        for at, taken, pace in reversed(self.refusals):
            lowest = min(lowest, math.inf if pace is None else pace)
            if now - at >= span:
                measured = max(0.0, self.taken - taken) / (now - at)
                return measured, lowest >= DECREASE * measured
        return None, False

    def _increase(self, now: float) -> None:
        """Additive increase, faster the longer no refusal came (a pace found too low climbs back within seconds)."""
        if self.rate is None:
            return
        elapsed = now - self.last_increase
        self.last_increase = now
        if self.measured:
            quiet = self.quiet_calls
            self.rate += self.rate * INCREASE_PER_CALL * (1 + max(0, quiet - QUIET_CALLS) / QUIET_CALLS)
        else:
            span = self._span()
            quiet_s = now - self.refusals[-1][0] if self.refusals else 0.0
            self.rate += self.rate * INCREASE_PER_SECOND * (1 + max(0.0, quiet_s - 5 * span) / span) * elapsed
        if self.ceiling is not None:
            self.rate = min(self.rate, self.ceiling)


@dataclass
class _Trial:
    """A cut on trial: what the calls sent after it got."""

    at: float
    rate: float  # the pace it was cut to
    share_before: float | None  # refusals among the calls just before it (None: too few, or too shallow a cut)
    cut: float  # the pace after it over the pace before
    probes: bool = False  # probes may go past the bucket
    probing: int = 0  # probes out
    calls: int = 0  # calls sent after the cut (probes aside) answered or refused
    refused: int = 0
    probes_sent: int = 0  # probes answered or refused
    probes_refused: int = 0
    probe_run: int = 0  # probes refused in a row, the latest last
    used: float = 0.0  # tokens the service counted for the calls sent since the cut (probes too)
    given_back: float = 0.0  # what calls sent before the cut gave back since
    largest: int = 0  # the largest reservation since the cut

    def answered(self, ticket: Ticket, refused: bool, used: float) -> None:
        self.largest = max(self.largest, ticket.tokens)
        self.used += used
        if ticket.probe:
            self.probing -= 1
            self.probes_sent += 1
            self.probes_refused += refused
            self.probe_run = self.probe_run + 1 if refused else 0
        else:
            self.calls += 1
            self.refused += refused


class BudgetSpent(ModelError):
    """A call the budget does not admit: it is not made."""

    def __init__(self, message: str) -> None:
        super().__init__("BudgetExceeded", message, "permanent")


class Budget:
    """limits.max_cost_usd in flight: spent so far plus every call in flight at its full max_tokens."""

    def __init__(self, limit_usd: float, rates_for: Callable[[str], Rates | None]) -> None:
        self.limit = limit_usd
        self.rates_for = rates_for
        self.spent = 0.0
        self.held = 0.0
        self.refused = 0
        self.lock = threading.Lock()

    def hold(self, model: str, input_tokens: int, max_tokens: int) -> float:
        """Reserve the most a call can cost; raise BudgetSpent when that would pass the budget."""
        rates = self.rates_for(model)
        if rates is None:
            raise BudgetSpent(f"the price of {model} is not known, so limits.max_cost_usd cannot be kept; add it to 'prices'")
        most = (input_tokens * max(rates.input, rates.cache_write) + max_tokens * rates.output) / 1e6
        with self.lock:
            if self.spent + self.held + most > self.limit + 1e-12:
                self.refused += 1
                raise BudgetSpent(
                    f"not called: limits.max_cost_usd ({self.limit:g} USD) would be passed (spent {self.spent:.6f}, "
                    f"in flight {self.held:.6f}, this call up to {most:.6f}); raise the budget and run again to finish it"
                )
            self.held += most
        return most

    def settle(self, held: float, model: str, reply: ModelReply | None) -> float:
        """The call ended: its hold is replaced by what it cost (nothing when it was refused or failed)."""
        cost = 0.0
        rates = self.rates_for(model)
        if reply is not None and rates is not None:
            cost = (
                reply.input_tokens * rates.input
                + reply.output_tokens * rates.output
                + reply.cache_read_tokens * rates.cache_read
                + reply.cache_write_tokens * rates.cache_write
            ) / 1e6
        with self.lock:
            self.held -= held
            self.spent += cost
        return cost

    def state(self) -> dict[str, Any]:
        with self.lock:
            return {"limit_usd": self.limit, "spent_usd": round(self.spent, 6), "calls_refused": self.refused}


@dataclass
class Gate:
    """What a task's calls pass through before they go: the model's pacer and the job's budget (either may be absent)."""

    model: str
    pacer: Pacer | None = None
    budget: Budget | None = None
    # what this batch saw (a pacer may be shared with other batches of the process)
    throttled: int = 0
    waited: float = 0.0
    served_tokens: int = 0
    budget_stopped: int = 0
    spent: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def enter(self, request: ModelRequest, may_start: Callable[[], bool] | None = None) -> Pass:
        tokens, chars = self.pacer.reservation(request, self.model) if self.pacer else (0, 0)
        held = 0.0
        input_estimate = tokens - request.max_tokens * output_burndown(self.model) if self.pacer else len(request.prompt)
        if self.budget is not None:
            try:
                held = self.budget.hold(self.model, max(input_estimate, 1), request.max_tokens)
            except BudgetSpent:
                with self.lock:
                    self.budget_stopped += 1
                raise
        try:
            ticket = self.pacer.acquire(tokens, chars, input_estimate, may_start) if self.pacer else None
        except NoTimeLeft:
            if self.budget is not None:
                self.budget.settle(held, self.model, None)  # the call is not made: its hold goes back
            raise
        if ticket is not None:
            with self.lock:
                self.waited += ticket.waited
        return Pass(ticket, held)

    def done(self, entry: Pass, reply: ModelReply) -> None:
        if self.pacer is not None and entry.ticket is not None:
            self.pacer.settle(entry.ticket, reply, self.model)
            with self.lock:
                self.served_tokens += reply.input_tokens + reply.output_tokens
        if self.budget is not None:
            cost = self.budget.settle(entry.held, self.model, reply)
            with self.lock:
                self.spent += cost

    def failed(self, entry: Pass, error: ModelError) -> None:
        if self.pacer is not None and entry.ticket is not None:
            if error.kind == "throttled":
                self.pacer.refused(entry.ticket, error.retry_after)
                with self.lock:
                    self.throttled += 1
            else:
                self.pacer.release(entry.ticket)
        if self.budget is not None:
            self.budget.settle(entry.held, self.model, None)


@dataclass
class Pass:
    ticket: Ticket | None
    held: float


# pacers and budgets shared by the batches of one run in this process (the local runtime runs them all here)
_SHARED: dict[tuple[str, ...], Any] = {}
_SHARED_LOCK = threading.Lock()


def shared(key: tuple[str, ...], build: Callable[[], Any]) -> Any:
    """The object kept under ``key`` for this process, built on first use."""
    with _SHARED_LOCK:
        found = _SHARED.get(key)
        if found is None:
            found = _SHARED[key] = build()
            if len(_SHARED) > 256:  # runs of a long-lived process: the oldest go
                del _SHARED[next(iter(_SHARED))]
        return found


@dataclass(frozen=True)
class PacingSettings:
    """How a deployment paces (Settings): on by default, a minute per quota window."""

    enabled: bool = True
    # the quota's window: 60 s in every deployment; the bench scales the minute down (FANOUT_QUOTA_WINDOW_SECONDS)
    window_seconds: float = DEFAULT_WINDOW_SECONDS
    # every batch of a run in this process shares one pacer per model and one budget (the local runtime)
    shared: bool = False


def plan_pacing(job: Any, map_concurrency: int, tasks: int, run: str) -> dict[str, Any]:
    """What Plan gives every batch: the job's quota and budget, and each batch's planned share of the quota."""
    limits = job.limits
    return {
        "run": run,
        "tokens_per_minute": limits.tokens_per_minute,
        "requests_per_minute": limits.requests_per_minute,
        # the batches that run at once split the quota evenly
        "share": 1.0 / max(1, map_concurrency),
        "max_cost_usd": limits.max_cost_usd,
        "prices": {name: price.model_dump() for name, price in (job.prices or {}).items()} or None,
        "tasks": tasks,
    }


def check_pacing_limits(job: Any, tasks: list[dict[str, Any]]) -> None:
    """Refuse, before any call, a quota one call could never fit in and a budget that cannot be counted."""
    from fanout_core.errors import InvalidJob
    from fanout_core.pricing import rates_of

    limits = job.limits
    overrides = {name: price.model_dump() for name, price in (job.prices or {}).items()}
    if limits.max_cost_usd is not None:
        for model in sorted({t["model"] for t in tasks}):
            if rates_of(model, overrides) is None:
                raise InvalidJob(
                    f"limits.max_cost_usd: the price of {model} is not known, so the budget cannot be kept; "
                    f'give it under \'prices\' ({{"{model}": {{"input_per_million": ..., "output_per_million": ...}}}})',
                    "limits.max_cost_usd",
                )
    if limits.tokens_per_minute is not None and tasks:
        system = len(job.system or "")
        largest = max(tasks, key=lambda t: len(t["prompt"]))
        reserved = math.ceil((system + len(largest["prompt"])) / FIRST_CHARS_PER_TOKEN)
        reserved += job.inference.max_tokens * output_burndown(largest["model"])
        if reserved > limits.tokens_per_minute:
            raise InvalidJob(
                f"limits.tokens_per_minute: {limits.tokens_per_minute} is less than one call reserves "
                f"(about {reserved} tokens: the prompt of item '{largest['item_id']}' plus inference.max_tokens); "
                "Bedrock would refuse that call whatever the pace: lower inference.max_tokens or check the quota",
                "limits.tokens_per_minute",
            )


def batch_gates(
    batch: Mapping[str, Any],
    task_count: int,
    settings: PacingSettings,
    saved: dict[str, Any] | None,
    rates_for: Callable[[str], Rates | None],
    clock: Clock | None = None,
) -> Callable[[str], Gate]:
    """The gate of each model of a batch; ``saved`` is what an earlier run of the batch left (its learned pace)."""
    plan = batch.get("pacing") or {}
    run = str(plan.get("run") or batch.get("job_id") or "")
    quota = Quota(
        tokens_per_minute=plan.get("tokens_per_minute"),
        requests_per_minute=plan.get("requests_per_minute"),
        window_seconds=settings.window_seconds,
        share=1.0 if settings.shared else float(plan.get("share") or 1.0),
    )
    given = quota.tokens_per_minute is not None or quota.requests_per_minute is not None
    earlier = (saved or {}).get("models", {})

    def pacer_for(model: str) -> Pacer | None:
        # the simulator has no quota to learn (its throttling is random); it is paced only to a given one
        if not settings.enabled or (not given and (model == "sim" or model.startswith("sim:"))):
            return None
        learned = earlier.get(model, {}).get("rate_tokens_per_second") if earlier.get(model, {}).get("throttled") else None

        def build() -> Pacer:
            return Pacer(quota, clock, learned_rate=learned)

        return shared((run, "pacer", model), build) if settings.shared else build()

    budget: Budget | None = None
    if plan.get("max_cost_usd") is not None:
        limit = float(plan["max_cost_usd"])
        if settings.shared:
            budget = shared((run, "budget"), lambda: Budget(limit, rates_for))
        else:
            # a batch in its own Lambda has its part of the budget, less what its earlier runs spent
            part = limit * task_count / max(1, int(plan.get("tasks") or 1))
            spent = float((saved or {}).get("budget", {}).get("spent_usd") or 0.0)
            budget = Budget(max(0.0, part - spent), rates_for)
    gates: dict[str, Gate] = {}

    def gate_for(model: str) -> Gate:
        if model not in gates:
            gates[model] = Gate(model, pacer_for(model), budget)
        return gates[model]

    gate_for.gates = gates  # type: ignore[attr-defined]
    return gate_for


def batch_report(gates: dict[str, Gate], saved: dict[str, Any] | None, started: float, ended: float) -> dict[str, Any]:
    """What a batch writes next to its records (pacing/<n>.json): its learned pace and its figures, added to an
    earlier run's."""
    before = saved or {}
    models: dict[str, Any] = {}
    for model, gate in gates.items():
        old = before.get("models", {}).get(model, {})
        entry = {
            "throttled": old.get("throttled", 0) + gate.throttled,
            "quota_wait_seconds": round(old.get("quota_wait_seconds", 0.0) + gate.waited, 3),
            "served_tokens": old.get("served_tokens", 0) + gate.served_tokens,
        }
        if gate.pacer is not None:
            state = gate.pacer.state()
            entry["rate_tokens_per_second"] = state["rate_tokens_per_second"]
            entry["learned"] = state["learned"]
            entry["window_seconds"] = gate.pacer.window
        models[model] = entry
    report: dict[str, Any] = {"started": before.get("started", started), "ended": ended, "models": models}
    budgets = {id(g.budget): g.budget for g in gates.values() if g.budget is not None}
    if budgets:
        budget = next(iter(budgets.values()))
        old_budget = before.get("budget", {})
        report["budget"] = {
            "limit_usd": budget.limit,
            "spent_usd": round(float(old_budget.get("spent_usd", 0.0)) + _batch_spend(gates), 6),
            "tasks_stopped": int(old_budget.get("tasks_stopped", 0)) + sum(g.budget_stopped for g in gates.values()),
        }
    return report


def _batch_spend(gates: dict[str, Gate]) -> float:
    return sum(g.spent for g in gates.values())


def pacing_figures(reports: list[dict[str, Any]], max_cost_usd: float | None = None) -> dict[str, Any]:
    """result.json's ``pacing`` (throttled requests, achieved tokens per minute, time waiting for the quota) and,
    with limits.max_cost_usd, its ``budget``; ``reason: budget`` when the budget left tasks uncalled."""
    if not reports:
        return {}
    models: dict[str, dict[str, Any]] = {}
    for report in reports:
        for model, entry in report.get("models", {}).items():
            mine = models.setdefault(model, {"throttled_requests": 0, "quota_wait_seconds": 0.0, "served_tokens": 0})
            mine["throttled_requests"] += entry.get("throttled", 0)
            mine["quota_wait_seconds"] += entry.get("quota_wait_seconds", 0.0)
            mine["served_tokens"] += entry.get("served_tokens", 0)
            if entry.get("rate_tokens_per_second") is not None:
                # the pace the batches ended at, per quota window (a minute)
                paced = entry["rate_tokens_per_second"] * entry.get("window_seconds", DEFAULT_WINDOW_SECONDS)
                mine["paced_tokens_per_minute"] = round(mine.get("paced_tokens_per_minute", 0.0) + paced)
                mine["quota"] = "learned" if entry.get("learned") else "given"
    span = max(r.get("ended", 0.0) for r in reports) - min(r.get("started", 0.0) for r in reports)
    served = sum(m["served_tokens"] for m in models.values())
    for entry in models.values():
        entry["quota_wait_seconds"] = round(entry["quota_wait_seconds"], 3)
    out: dict[str, Any] = {
        "pacing": {
            "throttled_requests": sum(m["throttled_requests"] for m in models.values()),
            # tokens (input + output) the model served per minute of the batches' run
            "tokens_per_minute": round(served / span * 60) if span > 0 else None,
            # summed over calls: time calls spent waiting for the quota before they were sent
            "quota_wait_seconds": round(sum(m["quota_wait_seconds"] for m in models.values()), 3),
            "by_model": models,
        }
    }
    budgets = [r["budget"] for r in reports if r.get("budget")]
    if budgets:
        stopped = sum(b.get("tasks_stopped", 0) for b in budgets)
        out["budget"] = {
            "max_cost_usd": max_cost_usd,
            "spent_usd": round(sum(b.get("spent_usd", 0.0) for b in budgets), 6),
            "tasks_not_called": stopped,
        }
        if stopped:
            out["reason"] = "budget"
    return out
