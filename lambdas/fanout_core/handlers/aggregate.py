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
    if event.get("step") == "second_pass":
        # which judge, escalation and synthesis calls come next, written as batches for the second Map
        planned = steps.plan_second_pass(event, s3=s3(), settings=settings())
        logger.info("second pass planned", extra={"stage": planned["stage"], "counts": planned["counts"]})
        return planned
    # Aggregate calls no model: the second pass's calls ran as batches, and are records like the first ones
    summary = steps.run_aggregate(event, s3=s3())
    count(f"jobs_{summary['status']}")
    logger.info("aggregated", extra={"status": summary["status"], "counts": summary["counts"]})
    return summary
