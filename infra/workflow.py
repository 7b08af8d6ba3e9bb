"""The state machine: statemachine/fanout.asl.json as it is, with function ARNs and the child execution type
substituted in, and a role that allows exactly what the definition does."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

from aws_cdk import Aws, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from constructs import Construct

from fanout_core import layout
from infra.config import FanoutConfig
from infra.functions import (
    LEASES,
    MODEL_ANY_REGION,
    RUN_DATA,
    RUN_LEASE,
    Functions,
    bedrock_model_arns,
    data_key_statement,
)
from infra.nag import nag_reads, suppress, suppress_wildcards, template_arn

# the one definition, also run by the local runtime
ASL_FILE = Path(__file__).resolve().parent.parent / "statemachine" / "fanout.asl.json"

# what CDK adds for tracing and for logging to CloudWatch Logs, on every resource because AWS allows no other
AWS_REQUIRES_ANY_RESOURCE = (
    "X-Ray (PutTraceSegments, PutTelemetryRecords, GetSamplingRules, GetSamplingTargets) and CloudWatch Logs "
    "vended log delivery (CreateLogDelivery and the rest, which Step Functions logging needs) have no "
    "resource-level permissions"
)
CHILD_EXECUTIONS = (
    "the Distributed Map's child executions are named <state machine>/<map run label>:<generated id>; the "
    "grant names this state machine and the label of its Distributed Map, the id cannot be known"
)
# a job's batch inference files (fanout_core.batch_inference): runs/<job_id>/inference/<n>/
INFERENCE_DATA = layout.INFERENCE_ANY
BATCH_INFERENCE_DATA = (
    "a batch inference job reads its input and writes its output under runs/<job_id>/inference/; the job id is "
    "chosen per job at run time"
)
BATCH_JOBS = "a model invocation job's id is chosen by Bedrock when it is created; the grant names this account and region"
LOGGING_WITHOUT_DATA = (
    "logs ERROR events without execution data by default (fanout:stateMachineLogLevel, fanout:logContent): state "
    "input and output carry job items, and ALL would log every transition of every batch; execution history "
    "and X-Ray traces cover the rest"
)


def distributed_map_labels(definition: dict[str, Any]) -> list[str]:
    """The Label of each Distributed Map of a definition (nested ones included); "*" for one without a label."""
    labels: list[str] = []
    for state in definition["States"].values():
        processor = state.get("ItemProcessor") or state.get("Iterator")
        if state["Type"] == "Map" and processor and processor.get("ProcessorConfig", {}).get("Mode") == "DISTRIBUTED":
            labels.append(state.get("Label", "*"))
        for inner in [processor, *state.get("Branches", [])]:
            if inner:
                labels.extend(distributed_map_labels(inner))
    return list(dict.fromkeys(labels))


class Workflow(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FanoutConfig,
        functions: Functions,
        results_bucket: s3.IBucket,
        data_key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._functions = functions
        self._results_bucket = results_bucket
        self.log_group = self._build_log_group()
        self.batch_inference_role = self._build_batch_inference_role(data_key)
        self.state_machine = self._build_state_machine()
        # a definition read from a file is opaque to the L2, so it grants nothing on its own
        self._grant_invoke()
        self._grant_run_data()
        self._grant_child_executions()
        self._grant_batch_inference()
        if data_key is not None:
            self.state_machine.add_to_role_policy(data_key_statement(data_key))
        suppress_wildcards(self.state_machine.role, {"*": AWS_REQUIRES_ANY_RESOURCE})
        if config.state_machine_log_level != "ALL":
            suppress(self.state_machine, "AwsSolutions-SF1", LOGGING_WITHOUT_DATA)

    def _substitutions(self) -> dict[str, str]:
        # keys match the ${...} placeholders of the ASL file
        return {
            "PlanFunctionArn": self._functions.plan.function_arn,
            "SubtaskFunctionArn": self._functions.subtask.function_arn,
            "AggregateFunctionArn": self._functions.aggregate.function_arn,
            "ChildExecutionType": self._config.child_execution_type,
            "BatchInferenceRoleArn": self.batch_inference_role.role_arn,
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
            # errors only, and no state input/output in the logs unless fanout:logContent says so: job items
            # and model answers stay in S3
            logs=sfn.LogOptions(
                destination=self.log_group,
                level=sfn.LogLevel[self._config.state_machine_log_level],
                include_execution_data=self._config.log_content,
            ),
            tracing_enabled=True,
        )

    def _grant_invoke(self) -> None:
        # the definition invokes each function by its unqualified ARN: no version or alias (":*") is granted
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(actions=["lambda:InvokeFunction"], resources=[fn.function_arn for fn in self._functions.all])
        )

    def _grant_run_data(self) -> None:
        # RecordBatchFailure writes runs/<job>/failures/; the Distributed Map reads its batch list and writes
        # its results (multipart) under runs/<job>/
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:GetObject", "s3:PutObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload"],
                resources=[self._results_bucket.arn_for_objects(layout.RUNS_ANY)],
            )
        )
        # ReleaseLease frees the job_id when Aggregate failed for good: delete the lease, nothing else
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:DeleteObject"], resources=[self._results_bucket.arn_for_objects(LEASES)])
        )
        suppress_wildcards(
            self.state_machine.role,
            {
                template_arn(self._results_bucket, "/" + layout.RUNS_ANY): RUN_DATA,
                template_arn(self._results_bucket, f"/{LEASES}"): RUN_LEASE,
            },
        )

    def _build_batch_inference_role(self, data_key: kms.IKey | None) -> iam.Role:
        """The service role Bedrock's batch inference jobs run with ("Create a custom service role for batch
        inference", batch-iam-sr.html): assumed by Bedrock for this account's model invocation jobs only; it reads
        the jobs' input and writes their output under runs/<job_id>/inference/, and invokes the configured models."""
        jobs = f"arn:{Aws.PARTITION}:bedrock:{Aws.REGION}:{Aws.ACCOUNT_ID}:model-invocation-job/*"
        role = iam.Role(
            self,
            "BatchInferenceRole",
            assumed_by=iam.ServicePrincipal(
                "bedrock.amazonaws.com",
                conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}, "ArnEquals": {"aws:SourceArn": jobs}},
            ),
            description="fanout: Bedrock batch inference jobs read their input and write their output in the run data",
        )
        inference = self._results_bucket.arn_for_objects(INFERENCE_DATA)
        role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject", "s3:PutObject"], resources=[inference]))
        role.add_to_policy(
            iam.PolicyStatement(
                actions=["s3:ListBucket"],
                resources=[self._results_bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [INFERENCE_DATA]}},
            )
        )
        arns = bedrock_model_arns(self._config.models)
        role.add_to_policy(iam.PolicyStatement(actions=["bedrock:InvokeModel"], resources=arns))
        if data_key is not None:
            role.add_to_policy(data_key_statement(data_key))
        reasons = {template_arn(self._results_bucket, f"/{INFERENCE_DATA}"): BATCH_INFERENCE_DATA}
        reasons.update({nag_reads(arn): MODEL_ANY_REGION for arn in arns if ":bedrock:*:" in arn})
        suppress_wildcards(role, reasons)
        return role

    def _grant_batch_inference(self) -> None:
        # tier batch: the state machine creates, watches and stops this account's model invocation jobs, with the
        # service role above passed to Bedrock and to nothing else
        jobs = f"arn:{Aws.PARTITION}:bedrock:{Aws.REGION}:{Aws.ACCOUNT_ID}:model-invocation-job/*"
        models = bedrock_model_arns(self._config.models)
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(actions=["bedrock:CreateModelInvocationJob"], resources=[jobs, *models])
        )
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(actions=["bedrock:GetModelInvocationJob", "bedrock:StopModelInvocationJob"], resources=[jobs])
        )
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["iam:PassRole"],
                resources=[self.batch_inference_role.role_arn],
                conditions={"StringEquals": {"iam:PassedToService": "bedrock.amazonaws.com"}},
            )
        )
        reasons = {nag_reads(jobs): BATCH_JOBS}
        reasons.update({nag_reads(arn): MODEL_ANY_REGION for arn in models if ":bedrock:*:" in arn})
        suppress_wildcards(self.state_machine.role, reasons)

    def _grant_child_executions(self) -> None:
        # the Distributed Map runs each batch as a child execution of this same state machine; its ARNs are built
        # from the fixed name, since a reference to the state machine from its own role would be circular
        name = self._config.name_prefix
        prefix = f"arn:{Aws.PARTITION}:states:{Aws.REGION}:{Aws.ACCOUNT_ID}"
        children = [f"{prefix}:execution:{name}/{label}:*" for label in distributed_map_labels(json.loads(ASL_FILE.read_text()))]
        if not children:
            return
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(actions=["states:StartExecution"], resources=[f"{prefix}:stateMachine:{name}"])
        )
        # watch and stop the children of a map run, and rerun its failed ones when the parent is redriven
        self.state_machine.add_to_role_policy(
            iam.PolicyStatement(
                actions=["states:DescribeExecution", "states:StopExecution", "states:RedriveExecution"], resources=children
            )
        )
        suppress_wildcards(self.state_machine.role, {nag_reads(arn): CHILD_EXECUTIONS for arn in children})
