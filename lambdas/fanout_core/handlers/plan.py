from typing import Any

from aws_lambda_powertools.utilities.typing import LambdaContext

from fanout_core import steps
from fanout_core.errors import InvalidJob
from fanout_core.handlers._clients import bedrock, s3, settings, sfn
from fanout_core.observability import JOBS_INVALID, TASKS_PLANNED, correlate, count, logger, metrics, tracer


@logger.inject_lambda_context(log_event=False, clear_state=True)
@metrics.log_metrics
@tracer.capture_lambda_handler(capture_response=False)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    execution = event.get("execution")
    correlate(None, execution)
    try:
        plan = steps.plan(
            event["input"],
            execution or "job",
            s3=s3(),
            settings=settings(),
            execution_arn=event.get("execution_arn"),
            sfn=sfn(),
            bedrock=bedrock,
        )
    except InvalidJob as exc:
        # the user's mistake, reported in the execution's Fail state; the field only, the message may quote the job
        count(JOBS_INVALID)
        logger.warning("invalid job", extra={"field": exc.field})
        raise
    correlate(plan["job_id"])
    count(TASKS_PLANNED, plan["counts"]["tasks"])
    logger.info("planned", extra={"mode": plan["mode"], "counts": plan["counts"], "threads": plan["threads"]})
    return dict(plan)
