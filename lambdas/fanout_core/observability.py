"""One Logger, Tracer and Metrics shared by the handlers (Powertools), and what the handlers see of model calls.

Logs carry the job id (and the execution name when the event has it) as correlation keys, never an event
whole, a prompt or an output, unless FANOUT_LOG_CONTENT says so (Settings.log_content). Metrics go out as
EMF in the Fanout namespace with one dimension (service=fanout); infra/observability.py charts and alarms on
the names below. The local runtime sets POWERTOOLS_METRICS_DISABLED and POWERTOOLS_TRACE_DISABLED.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.metrics.functions import is_metrics_disabled

from fanout_core.providers.base import ModelError, ModelReply, ModelRequest, Provider

SERVICE = "fanout"
NAMESPACE = "Fanout"

logger = Logger(service=SERVICE)
tracer = Tracer(service=SERVICE)
metrics = Metrics(namespace=NAMESPACE, service=SERVICE)

TASKS_PLANNED = "tasks_planned"  # plan
# task outcomes of a batch (subtask)
TASKS_OK = "tasks_ok"
TASKS_INVALID = "tasks_invalid"
TASKS_FAILED = "tasks_failed"
# model calls (subtask, and aggregate's synthesis call)
MODEL_CALLS = "model_calls"
THROTTLES = "throttles"  # calls the model refused with a throttling error
RETRIES = "retries"  # calls that repeat one that failed, within a batch's retry budget
INPUT_TOKENS = "input_tokens"
OUTPUT_TOKENS = "output_tokens"
CALL_LATENCY = "call_latency"  # milliseconds, one value per call
# errors raised by design, which the state machine handles: the error alarms subtract them
JOBS_INVALID = "jobs_invalid"  # plan refused the job (InvalidJob)
BATCHES_THROTTLED = "batches_throttled"  # a batch ran out of throttling budget (ModelThrottled)
BATCHES_INCOMPLETE = "batches_incomplete"  # a batch ran out of Lambda time (BatchIncomplete)
BATCH_RETRIES = "batch_retries"  # the state machine's retries of a batch
METRIC_NAMES = frozenset(
    {
        TASKS_PLANNED,
        TASKS_OK,
        TASKS_INVALID,
        TASKS_FAILED,
        MODEL_CALLS,
        THROTTLES,
        RETRIES,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
        CALL_LATENCY,
        JOBS_INVALID,
        BATCHES_THROTTLED,
        BATCHES_INCOMPLETE,
        BATCH_RETRIES,
    }
)

ProviderFactory = Callable[[str], Provider]


def correlate(job_id: str | None, execution: str | None = None, **keys: Any) -> None:
    """Tag this invocation's log lines and trace with the job id and the execution name."""
    found = {"job_id": job_id, "execution": execution, **keys}
    found = {key: value for key, value in found.items() if value is not None}
    logger.append_keys(**found)
    for key in ("job_id", "execution"):
        if key in found:
            tracer.put_annotation(key=key, value=str(found[key]))


def count(name: str, value: float = 1) -> None:
    # disabled metrics are never flushed, so they would pile up until Powertools prints its 100-value set to stdout
    if is_metrics_disabled():
        return
    metrics.add_metric(name=name, unit=MetricUnit.Count, value=value)


class ModelCalls:
    """Counts, times and traces the model calls of one invocation, across the threads of a batch.

    ``observe(provider_for)`` is the factory the steps get: each provider it returns reports its calls here;
    ``publish()`` adds them to the metrics once the step is done (or has raised).
    """

    def __init__(self, *, log_content: bool = False) -> None:
        self._log_content = log_content
        self._lock = threading.Lock()
        self._failed_last: set[str] = set()  # task ids whose latest call raised: their next call is a retry
        self.calls = 0
        self.throttles = 0
        self.retries = 0
        self.input_tokens = 0
        self.output_tokens = 0
        self.latencies_ms: list[float] = []

    def observe(self, provider_for: ProviderFactory) -> ProviderFactory:
        return lambda spec: _Observed(provider_for(spec), spec, self)

    def _record(self, request: ModelRequest, latency_ms: float, reply: ModelReply | None, error: ModelError | None) -> None:
        with self._lock:
            self.calls += 1
            self.latencies_ms.append(latency_ms)
            if request.task_id in self._failed_last:
                self.retries += 1
            if error is None:
                self._failed_last.discard(request.task_id)
            else:
                self._failed_last.add(request.task_id)
                if error.kind == "throttled":
                    self.throttles += 1
            if reply is not None:
                self.input_tokens += reply.input_tokens
                self.output_tokens += reply.output_tokens

    def publish(self) -> None:
        if not self.calls or is_metrics_disabled():
            return
        for name, value in (
            (MODEL_CALLS, self.calls),
            (THROTTLES, self.throttles),
            (RETRIES, self.retries),
            (INPUT_TOKENS, self.input_tokens),
            (OUTPUT_TOKENS, self.output_tokens),
        ):
            count(name, value)
        for latency in self.latencies_ms:
            metrics.add_metric(name=CALL_LATENCY, unit=MetricUnit.Milliseconds, value=latency)


class _Observed:
    """A provider whose calls are timed, counted and traced; the request and reply pass through untouched."""

    def __init__(self, inner: Provider, spec: str, calls: ModelCalls) -> None:
        self.inner, self.spec, self.calls = inner, spec, calls
        self.name = inner.name

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        if tracer.disabled:  # no segment to open: the call's hot path without a context manager around it
            return self._timed(request, attempt, None)
        with _model_call_segment(self.spec, attempt) as segment:
            return self._timed(request, attempt, segment)

    def _timed(self, request: ModelRequest, attempt: int, segment: Any) -> ModelReply:
        started = time.perf_counter()
        reply: ModelReply | None = None
        error: ModelError | None = None
        try:
            reply = self.inner.invoke(request, attempt)
            return reply
        except ModelError as exc:
            error = exc
            if segment is not None:
                segment.put_annotation("error_kind", exc.kind)
            raise
        finally:
            self.calls._record(request, (time.perf_counter() - started) * 1000, reply, error)
            if self.calls._log_content:
                _log_content(request, reply, error)


@contextlib.contextmanager
def _model_call_segment(spec: str, attempt: int) -> Iterator[Any]:
    """An X-Ray subsegment per model call, annotated with the model spec and attempt; no prompt, no output."""
    if tracer.disabled:
        yield None
        return
    with tracer.provider.in_subsegment(name="## model_call") as segment:
        segment.put_annotation("model", spec)
        segment.put_annotation("attempt", str(attempt))
        yield segment


def _log_content(request: ModelRequest, reply: ModelReply | None, error: ModelError | None) -> None:
    # only with FANOUT_LOG_CONTENT=true: the prompt and the output are the user's data
    logger.info(
        "model call content",
        extra={
            "task_id": request.task_id,
            "system": request.system,
            "prompt": request.prompt,
            "output": reply.output if reply is not None else None,
            "error": str(error) if error is not None else None,
        },
    )
