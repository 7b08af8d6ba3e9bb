"""Start an execution when a job file is uploaded under jobs/ in the input bucket."""

from __future__ import annotations

from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra.storage import JOBS_PREFIX


class JobTrigger(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        input_bucket: s3.IBucket,
        state_machine: sfn.IStateMachine,
    ) -> None:
        super().__init__(scope, construct_id)
        self._input_bucket = input_bucket
        self._state_machine = state_machine
        self.rule = self._build_rule()

    def _build_rule(self) -> events.Rule:
        return events.Rule(
            self,
            "JobUploaded",
            description=f"start fanout for each object created under {JOBS_PREFIX} in the input bucket",
            event_pattern=events.EventPattern(
                source=["aws.s3"],
                detail_type=["Object Created"],
                detail={
                    "bucket": {"name": [self._input_bucket.bucket_name]},
                    "object": {"key": [{"prefix": JOBS_PREFIX}]},
                },
            ),
            # the whole EventBridge event is the execution input; Plan loads the job from detail.bucket/object
            targets=[targets.SfnStateMachine(self._state_machine)],
        )
