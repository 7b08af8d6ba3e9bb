import time
from typing import Any

from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout_core import steps
from fanout_core.handlers._clients import s3, settings
from fanout_core.observability import logger, metrics, tracer
from fanout_core.providers.registry import provider_for


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    logger.append_keys(job_id=event["job_id"], batch=event["batch"]["index"])
    # no call starts once too little time is left for it to finish and its records to be written
    margin = settings().model_timeout_seconds + 30
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000 - margin
    result = steps.run_subtask(event, s3=s3(), provider_for=provider_for, deadline=deadline)
    for name in ("ok", "invalid", "failed"):
        metrics.add_metric(name=f"tasks_{name}", unit=MetricUnit.Count, value=result["counts"][name])
    return result
