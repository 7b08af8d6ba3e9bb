from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout_core import steps
from fanout_core.handlers._clients import s3, settings
from fanout_core.observability import logger, metrics, tracer


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    plan = steps.plan(event["input"], event.get("execution", "job"), s3=s3(), settings=settings())
    logger.append_keys(job_id=plan["job_id"])
    metrics.add_metric(name="tasks_planned", unit=MetricUnit.Count, value=plan["counts"]["tasks"])
    logger.info("planned", extra={"counts": plan["counts"], "threads": plan["threads"]})
    return plan
