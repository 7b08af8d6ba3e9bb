import time
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout_core import steps
from fanout_core.errors import BatchIncomplete, ModelThrottled
from fanout_core.handlers._clients import bedrock, providers, s3, settings
from fanout_core.observability import (
    BATCH_RETRIES,
    BATCHES_INCOMPLETE,
    BATCHES_THROTTLED,
    TASKS_FAILED,
    TASKS_INVALID,
    TASKS_OK,
    ModelCalls,
    correlate,
    count,
    logger,
    metrics,
    tracer,
)


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    if event.get("step") == "join_inference":
        # after a job's Bedrock batch inference jobs: their outputs become records, the rest falls back on-demand
        correlate(event["job_id"], event.get("execution"))
        joined = steps.join_inference(event, s3=s3(), bedrock=bedrock)
        logger.info("batch inference joined", extra={"pending": joined["pending"], "joined": joined["batch_inference"]})
        return joined
    correlate(event["job_id"], event.get("execution"), batch=event["batch"]["index"])
    config = settings()
    registry = providers()
    registry.configure(config.model_timeout_seconds)
    if event.get("retry"):
        count(BATCH_RETRIES)
    # no call starts once too little time is left for it to finish and its records to be written
    margin = config.model_timeout_seconds + 30
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - margin
    calls = ModelCalls(log_content=config.log_content)
    try:
        result = steps.run_subtask(
            event,
            s3=s3(),
            provider_for=calls.observe(registry.provider_for),
            deadline=deadline,
            flush_seconds=config.record_flush_seconds,
            pacing=config.pacing,
        )
    except (ModelThrottled, BatchIncomplete) as exc:
        # handed back to the state machine, whose Retry continues the batch: an error by design
        count(BATCHES_THROTTLED if isinstance(exc, ModelThrottled) else BATCHES_INCOMPLETE)
        logger.warning("batch handed back for a retry", extra={"error": type(exc).__name__})
        raise
    finally:
        calls.publish()
    for name, key in ((TASKS_OK, "ok"), (TASKS_INVALID, "invalid"), (TASKS_FAILED, "failed")):
        count(name, result["counts"][key])
    logger.info("batch done", extra={"counts": result["counts"]})
    return result
