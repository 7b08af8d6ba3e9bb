from collections.abc import Mapping
from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout_core import steps
from fanout_core.handlers._clients import s3, settings
from fanout_core.observability import correlate, count, logger, metrics, tracer


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> Mapping[str, Any]:
    correlate(event["job_id"], event.get("execution"))
    # the next second-pass stage (judge, escalation and synthesis calls, written as batches), or the result;
    # Aggregate calls no model: the second pass's calls ran as batches, and are records like the first ones
    outcome = steps.aggregate_step(event, s3=s3(), settings=settings())
    if outcome["status"] == "second_pass":
        logger.info("second pass planned", extra={"stage": outcome["stage"], "counts": outcome["counts"]})
        return outcome
    count(f"jobs_{outcome['status']}")
    logger.info("aggregated", extra={"status": outcome["status"], "counts": outcome["counts"]})
    return outcome
