from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout_core import steps
from fanout_core.handlers._clients import providers, s3, settings
from fanout_core.observability import ModelCalls, correlate, count, logger, metrics, tracer


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    correlate(event["job_id"], event.get("execution"))
    # the optional synthesis call is a model call like the batches' ones
    config = settings()
    registry = providers()
    registry.configure(config.model_timeout_seconds)
    calls = ModelCalls(log_content=config.log_content)
    try:
        summary = steps.run_aggregate(event, s3=s3(), provider_for=calls.observe(registry.provider_for))
    finally:
        calls.publish()
    count(f"jobs_{summary['status']}")
    logger.info("aggregated", extra={"status": summary["status"], "counts": summary["counts"]})
    return summary
