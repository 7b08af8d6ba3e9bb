"""Start an execution when a job file (jobs/*.json) is uploaded to the input bucket."""

from __future__ import annotations

from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra import job_rule


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
        # the pattern and transformer live in infra/job_rule.py, which `fanout serve` evaluates locally too
        pattern = job_rule.event_pattern(self._input_bucket.bucket_name)
        return events.Rule(
            self,
            "JobUploaded",
            description=f"start fanout for each {job_rule.KEY_WILDCARD} object created in the input bucket",
            event_pattern=events.EventPattern(
                source=pattern["source"],
                detail_type=pattern["detail-type"],
                detail=pattern["detail"],
            ),
            targets=[targets.SfnStateMachine(self._state_machine, input=self._execution_input())],
        )

    @staticmethod
    def _execution_input() -> events.RuleTargetInput:
        # {"bucket": ..., "key": ...}: Plan loads the job from that object; the target names each execution
        return events.RuleTargetInput.from_object(
            {name: events.EventField.from_path(path) for name, path in job_rule.INPUT_PATHS.items()}
        )
