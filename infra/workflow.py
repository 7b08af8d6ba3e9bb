"""The state machine: statemachine/fanout.asl.json as it is, with function ARNs and the child execution type
substituted in, and a role that allows exactly what the definition does."""

from __future__ import annotations

from pathlib import Path
from typing import cast

from aws_cdk import ArnFormat, RemovalPolicy, Stack
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from infra.config import FanoutConfig
from infra.functions import Functions
from infra.storage import RUNS_PREFIX

# the one definition, also run by the local runtime
ASL_FILE = Path(__file__).resolve().parent.parent / "statemachine" / "fanout.asl.json"


class Workflow(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FanoutConfig,
        functions: Functions,
        results_bucket: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._functions = functions
        self._results_bucket = results_bucket
        self.log_group = self._build_log_group()
        self.state_machine = self._build_state_machine()
        # a definition read from a file is opaque to the L2, so it grants nothing on its own
        self._grant_invoke()
        self._grant_run_data()
        self._grant_child_executions()

    def _substitutions(self) -> dict[str, str]:
        # keys match the ${...} placeholders of the ASL file
        return {
            "PlanFunctionArn": self._functions.plan.function_arn,
            "SubtaskFunctionArn": self._functions.subtask.function_arn,
            "AggregateFunctionArn": self._functions.aggregate.function_arn,
            "ChildExecutionType": self._config.child_execution_type,
        }

    def _build_log_group(self) -> logs.LogGroup:
        log_group = logs.LogGroup(
            self,
            "Logs",
            # the vendedlogs prefix keeps Step Functions from adding to the account's log resource policy
            log_group_name=f"/aws/vendedlogs/states/{self._config.name_prefix}",
            # a retained group with this fixed name would make the next deploy after `cdk destroy` fail
            removal_policy=RemovalPolicy.DESTROY,
        )
        cast(logs.CfnLogGroup, log_group.node.default_child).retention_in_days = self._config.log_retention_days
        return log_group

    def _build_state_machine(self) -> sfn.StateMachine:
        return sfn.StateMachine(
            self,
            "StateMachine",
            state_machine_name=self._config.name_prefix,
            state_machine_type=sfn.StateMachineType.STANDARD,
            definition_body=sfn.DefinitionBody.from_file(str(ASL_FILE)),
            definition_substitutions=self._substitutions(),
            # errors only, and no state input/output in the logs: job items and model answers stay in S3
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ERROR, include_execution_data=False),
            tracing_enabled=True,
        )

    def _grant_invoke(self) -> None:
        functions: tuple[lambda_.Function, ...] = (
            self._functions.plan,
            self._functions.subtask,
            self._functions.aggregate,
        )
        for fn in functions:
            fn.grant_invoke(self.state_machine)

    def _grant_run_data(self) -> None:
        # RecordBatchFailure writes runs/<job>/failures/; the Distributed Map reads its batch list and writes
        # its results (multipart) under runs/<job>/
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                resources=[self._results_bucket.arn_for_objects(f"{RUNS_PREFIX}*")],
            )
        )

    def _grant_child_executions(self) -> None:
        # the Distributed Map runs each batch as a child execution of this same state machine; its ARNs are built
        # from the fixed name, since a reference to the state machine from its own role would be circular
        stack = Stack.of(self)
        name = self._config.name_prefix
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:StartExecution"],
                resources=[
                    stack.format_arn(
                        service="states",
                        resource="stateMachine",
                        resource_name=name,
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:DescribeExecution", "states:StopExecution", "states:RedriveExecution"],
                resources=[
                    stack.format_arn(
                        service="states",
                        resource="execution",
                        resource_name=f"{name}/*",
                        arn_format=ArnFormat.COLON_RESOURCE_NAME,
                    )
                ],
            )
        )
