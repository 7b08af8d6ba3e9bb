"""The three Lambda functions (plan, subtask, aggregate), sharing one code asset, each with least-privilege IAM."""

from __future__ import annotations

from typing import cast

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.bundling import ARCHITECTURE, lambda_code
from infra.config import INFERENCE_PROFILE_PREFIXES, FanoutConfig
from infra.storage import RESULTS_PREFIX, RUNS_PREFIX

HANDLERS = "fanout_core.handlers"


def bedrock_model_arns(models: tuple[str, ...]) -> list[str]:
    """ARNs the functions may invoke: each foundation model in any region, each inference profile in this
    account and region, and for a profile also the foundation model it routes to, in any region."""
    arns: list[str] = []
    for model in models:
        profile_prefix = next((p for p in INFERENCE_PROFILE_PREFIXES if model.startswith(p)), None)
        if profile_prefix is None:
            arns.append(_foundation_model_arn(model))
            continue
        arns.append(f"arn:{Aws.PARTITION}:bedrock:{Aws.REGION}:{Aws.ACCOUNT_ID}:inference-profile/{model}")
        # a cross-region profile sends the call to the model in another region of its geography
        arns.append(_foundation_model_arn(model.removeprefix(profile_prefix)))
    return list(dict.fromkeys(arns))


def _foundation_model_arn(model_id: str) -> str:
    return f"arn:{Aws.PARTITION}:bedrock:*::foundation-model/{model_id}"


class Functions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FanoutConfig,
        input_bucket: s3.IBucket,
        results_bucket: s3.IBucket,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._input_bucket = input_bucket
        self._results_bucket = results_bucket
        self._runtime = lambda_.Runtime(config.lambda_runtime, lambda_.RuntimeFamily.PYTHON)
        self._code = lambda_code(self._runtime, config.python_version)

        self.plan = self._build_plan()
        self.subtask = self._build_subtask()
        self.aggregate = self._build_aggregate()

    def _build_plan(self) -> lambda_.Function:
        fn = self._build_function("Plan", "plan", memory_mb=512, timeout=Duration.seconds(300))
        # job files and items_uri objects may sit anywhere in the input bucket, not only under jobs/
        self._allow_read(fn, self._input_bucket, "*")
        self._allow_read(fn, self._results_bucket, f"{RUNS_PREFIX}*")
        self._allow_write(fn, self._results_bucket, f"{RUNS_PREFIX}*")
        return fn

    def _build_subtask(self) -> lambda_.Function:
        fn = self._build_function("Subtask", "subtask", memory_mb=1024, timeout=Duration.seconds(900))
        self._allow_read(fn, self._results_bucket, f"{RUNS_PREFIX}*")
        self._allow_write(fn, self._results_bucket, f"{RUNS_PREFIX}*")
        self._allow_bedrock(fn)
        return fn

    def _build_aggregate(self) -> lambda_.Function:
        fn = self._build_function("Aggregate", "aggregate", memory_mb=2048, timeout=Duration.seconds(900))
        self._allow_read(fn, self._results_bucket, f"{RUNS_PREFIX}*")
        self._allow_write(fn, self._results_bucket, f"{RESULTS_PREFIX}*")
        # the optional synthesis call of a sectioning job
        self._allow_bedrock(fn)
        return fn

    def _build_function(self, construct_id: str, name: str, *, memory_mb: int, timeout: Duration) -> lambda_.Function:
        function_name = f"{self._config.name_prefix}-{name}"
        log_group = logs.LogGroup(
            self,
            f"{construct_id}Logs",
            log_group_name=f"/aws/lambda/{function_name}",
            # a retained group with this fixed name would make the next deploy after `cdk destroy` fail
            removal_policy=RemovalPolicy.DESTROY,
        )
        # the L2 takes retention as an enum only; context holds a day count (checked in FanoutConfig)
        cast(logs.CfnLogGroup, log_group.node.default_child).retention_in_days = self._config.log_retention_days
        return lambda_.Function(
            self,
            construct_id,
            function_name=function_name,
            description=f"fanout {name}",
            runtime=self._runtime,
            architecture=ARCHITECTURE,
            code=self._code,
            handler=f"{HANDLERS}.{name}.lambda_handler",
            memory_size=memory_mb,
            timeout=timeout,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            environment={
                "POWERTOOLS_SERVICE_NAME": "fanout",
                "POWERTOOLS_METRICS_NAMESPACE": "Fanout",
                "LOG_LEVEL": "INFO",
                "FANOUT_RESULTS_BUCKET": self._results_bucket.bucket_name,
                "FANOUT_DEFAULT_MODEL": self._config.default_model,
                "FANOUT_MAX_CONCURRENCY": str(self._config.max_concurrency),
            },
        )

    def _allow_read(self, fn: lambda_.Function, bucket: s3.IBucket, key_pattern: str) -> None:
        fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects(key_pattern)]))
        # listing lets a run find the records it can reuse, and makes a missing key a 404 (NoSuchKey)
        # rather than a 403; a prefix condition would not apply to GetObject and so would lose the 404
        fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))

    def _allow_write(self, fn: lambda_.Function, bucket: s3.IBucket, key_pattern: str) -> None:
        fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:PutObject"], resources=[bucket.arn_for_objects(key_pattern)]))

    def _allow_bedrock(self, fn: lambda_.Function) -> None:
        fn.add_to_role_policy(
            iam.PolicyStatement(actions=["bedrock:InvokeModel"], resources=bedrock_model_arns(self._config.models))
        )
