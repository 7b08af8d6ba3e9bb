"""The three Lambda functions (plan, subtask, aggregate), sharing one code asset, each with a role of its own
that allows what its step does and nothing more: its log group, its S3 prefixes, the configured models."""

from __future__ import annotations

from typing import cast

from aws_cdk import Aws, Duration, RemovalPolicy, Size
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fanout_core import layout
from infra.bundling import ARCHITECTURE, lambda_code
from infra.config import INFERENCE_PROFILE_PREFIXES, FanoutConfig
from infra.nag import nag_reads, suppress, suppress_wildcards, template_arn

HANDLERS = "fanout_core.handlers"
# where the handlers' Powertools Metrics publish (fanout_core.observability); the alarms and dashboard read them
METRICS_NAMESPACE = "Fanout"
SERVICE = "fanout"
# each function's memory, from its peak at a million tasks (bench.scale row (k) prints both)
PLAN_MEMORY_MB = 2048
AGGREGATE_MEMORY_MB = 1024

# why each wildcard resource is there: cdk-nag reports every one, and these are the reasons it is acknowledged
X_RAY_ANY_RESOURCE = "X-Ray PutTraceSegments and PutTelemetryRecords have no resource-level permissions (active tracing)"
INPUT_ANY_KEY = (
    "plan reads the job file or items_uri object wherever the user put it in the input bucket (StartExecution "
    "takes any key, the upload rule only jobs/*.json); read-only, and the bucket holds nothing but user input"
)
INPUT_DOCUMENTS = (
    "a batch reads the PDF and office files of its items (an s3:// prefix of documents) from wherever the user put "
    "them in the input bucket; read-only, and the bucket holds nothing but user input"
)
RUN_DATA = "run data is keyed runs/<job_id>/...; the job id is chosen per job at run time, so the prefix is the fixed part"
RUN_FAILURES = "delete only the failures/ a batch left under runs/<job_id>/: a re-run of the job clears the earlier run's"
RUN_LEASE = "delete only runs/<job_id>/lease.json, the lease one run of a job holds from Plan to Aggregate"
LEASES = layout.LEASES_ANY
LEASE_HOLDERS = (
    "plan asks whether the execution that holds a job_id's lease still runs; the grant names this state machine, "
    "the execution's name is chosen per start"
)
EARLIER_BATCH_JOBS = (
    "plan stops the batch inference jobs an earlier run of a job_id left running; a job's id is chosen by Bedrock "
    "when it is created, the grant names this account and region"
)
UNFINISHED_BATCH_JOBS = (
    "the join step stops, and watches while they stop, the batch inference jobs of its run the state machine did not "
    "see end; a job's id is chosen by Bedrock when it is created, the grant names this account and region"
)
LIST_BATCH_JOBS = (
    "plan finds an earlier run's batch inference jobs by name, the join step its own run's; ListModelInvocationJobs "
    "lists the account's jobs and names no job ARN to scope it to (an action without a resource type takes '*', "
    "Service Authorization Reference); read-only"
)
RESULT_FILES = "results are written to results/<job_id>/; the job id is chosen per job at run time"
MODEL_ANY_REGION = (
    "a cross-region inference profile sends each call to its foundation model in any region of its geography; "
    "the model id is fixed, the region cannot be"
)
RUNTIME_FROM_CONTEXT = (
    "the runtime is fanout:lambdaRuntime (python3.12 or later, checked by FanoutConfig) because the bundled wheels "
    "are built for that Python version; it moves forward in cdk.json together with the wheels, not by this check"
)


def bedrock_model_arns(models: tuple[str, ...]) -> list[str]:
    """ARNs the functions may invoke: each foundation model in this region, each inference profile in this
    account and region, and for a profile also the foundation model it routes to, in any region."""
    arns: list[str] = []
    for model in models:
        profile_prefix = next((p for p in INFERENCE_PROFILE_PREFIXES if model.startswith(p)), None)
        if profile_prefix is None:
            # a model id (not a profile) is called in the functions' own region
            arns.append(_foundation_model_arn(model, Aws.REGION))
            continue
        arns.append(f"arn:{Aws.PARTITION}:bedrock:{Aws.REGION}:{Aws.ACCOUNT_ID}:inference-profile/{model}")
        # a cross-region profile sends the call to the model in another region of its geography
        arns.append(_foundation_model_arn(model.removeprefix(profile_prefix), "*"))
    return list(dict.fromkeys(arns))


def _foundation_model_arn(model_id: str, region: str) -> str:
    return f"arn:{Aws.PARTITION}:bedrock:{region}::foundation-model/{model_id}"


class Functions(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: FanoutConfig,
        input_bucket: s3.IBucket,
        results_bucket: s3.IBucket,
        data_key: kms.IKey | None = None,
    ) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self._input_bucket = input_bucket
        self._results_bucket = results_bucket
        self._data_key = data_key
        self._runtime = lambda_.Runtime(config.lambda_runtime, lambda_.RuntimeFamily.PYTHON)
        self._code = lambda_code(self._runtime, config.python_version)

        self.plan = self._build_plan()
        self.subtask = self._build_subtask()
        self.aggregate = self._build_aggregate()

    @property
    def all(self) -> tuple[lambda_.Function, ...]:
        return (self.plan, self.subtask, self.aggregate)

    def _build_plan(self) -> lambda_.Function:
        # bench.scale row (k) at the caps (--item-bytes 1000 --job-bytes 200200000: 200,000 items of 1,000 bytes,
        # 1,000,000 tasks, max_job_bytes' 200 MB): Plan peaked at 1,340 MB in a clean process, 87% of the 1,536 MB it
        # had, 65% of 2,048 (the target is under 70%); small items at 1,000,000 tasks: 987 MB; 999 items of 200,000
        # bytes (200 MB): 752 MB. Lambda memory: 128 to 10,240 MB ("Configure Lambda function memory")
        fn = self._build_function("Plan", "plan", memory_mb=PLAN_MEMORY_MB, timeout=Duration.seconds(300))
        # job files and items_uri objects may sit anywhere in the input bucket, not only under jobs/
        self._allow_read(fn, self._input_bucket, "*")
        self._allow_read(fn, self._results_bucket, layout.RUNS_ANY)
        self._allow_write(fn, self._results_bucket, layout.RUNS_ANY)
        failures = layout.FAILURES_ANY
        fn.add_to_role_policy(
            iam.PolicyStatement(
                actions=["s3:DeleteObject"],
                resources=[self._results_bucket.arn_for_objects(failures), self._results_bucket.arn_for_objects(LEASES)],
            )
        )
        # a lease names its holder execution; a holder that no longer runs loses it at once. Executions of this
        # state machine only, built from its fixed name: a reference to the state machine would be circular
        holders = f"arn:{Aws.PARTITION}:states:{Aws.REGION}:{Aws.ACCOUNT_ID}:execution:{self._config.name_prefix}:*"
        fn.add_to_role_policy(iam.PolicyStatement(actions=["states:DescribeExecution"], resources=[holders]))
        # tier batch: the batch inference jobs an earlier run of the job_id left running are found by name, and those
        # this run does not adopt are stopped (fanout_core.batch_inference.settle_earlier_jobs)
        self._allow_batch_jobs(fn, ["bedrock:StopModelInvocationJob"], EARLIER_BATCH_JOBS)
        suppress_wildcards(
            _role(fn),
            {
                nag_reads(holders): LEASE_HOLDERS,
                template_arn(self._input_bucket, "/*"): INPUT_ANY_KEY,
                template_arn(self._results_bucket, "/" + layout.RUNS_ANY): RUN_DATA,
                template_arn(self._results_bucket, f"/{failures}"): RUN_FAILURES,
                template_arn(self._results_bucket, f"/{LEASES}"): RUN_LEASE,
            },
        )
        return fn

    def _build_subtask(self) -> lambda_.Function:
        fn = self._build_function("Subtask", "subtask", memory_mb=1024, timeout=Duration.seconds(900))
        self._allow_read(fn, self._results_bucket, layout.RUNS_ANY)
        self._allow_write(fn, self._results_bucket, layout.RUNS_ANY)
        self._allow_bedrock(fn)
        # tier batch: the join step finds its run's jobs the state machine did not see end by name, stops those still
        # running and waits for them to be Stopped (fanout_core.batch_inference.stop_unfinished_jobs)
        self._allow_batch_jobs(fn, ["bedrock:StopModelInvocationJob", "bedrock:GetModelInvocationJob"], UNFINISHED_BATCH_JOBS)
        # a PDF or office item is sent to Bedrock as the file itself, read from where the items came from
        fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[self._input_bucket.arn_for_objects("*")]))
        suppress_wildcards(
            _role(fn),
            {
                template_arn(self._results_bucket, "/" + layout.RUNS_ANY): RUN_DATA,
                template_arn(self._input_bucket, "/*"): INPUT_DOCUMENTS,
            },
        )
        return fn

    def _build_aggregate(self) -> lambda_.Function:
        # bench.scale row (k): streamed aggregation of a 1,000,000-task job (200,000 items) peaked at 463 MB (324 and
        # 334 MB before records were keyed by request) in a clean process, 45% of 1,024 MB: the rest is room for items
        # and outputs larger than the bench's.
        # report.html streams the items back from results.jsonl, holding at most its 10,000 table rows. /tmp holds the
        # records' spill files and the result files (~400 MB at 1M tasks); its size is 512 to 10,240 MB
        # ("EphemeralStorage", Lambda API reference)
        fn = self._build_function(
            "Aggregate", "aggregate", memory_mb=AGGREGATE_MEMORY_MB, timeout=Duration.seconds(900), ephemeral_mb=2048
        )
        self._allow_read(fn, self._results_bucket, layout.RUNS_ANY)
        # planning a second-pass stage (in the Aggregate state) writes its batch files next to the first pass's
        self._allow_write(fn, self._results_bucket, layout.RUNS_ANY)
        self._allow_write(fn, self._results_bucket, layout.RESULTS_ANY)
        # the run's end: its lease on the job_id is released
        fn.add_to_role_policy(
            iam.PolicyStatement(actions=["s3:DeleteObject"], resources=[self._results_bucket.arn_for_objects(LEASES)])
        )
        # no Bedrock: judge, escalation and synthesis calls run as second-pass batches in the subtask function
        suppress_wildcards(
            _role(fn),
            {
                template_arn(self._results_bucket, "/" + layout.RUNS_ANY): RUN_DATA,
                template_arn(self._results_bucket, "/" + layout.RESULTS_ANY): RESULT_FILES,
                template_arn(self._results_bucket, f"/{LEASES}"): RUN_LEASE,
            },
        )
        return fn

    def _build_function(
        self, construct_id: str, name: str, *, memory_mb: int, timeout: Duration, ephemeral_mb: int = 512
    ) -> lambda_.Function:
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
        # a role of its own instead of AWSLambdaBasicExecutionRole, which may write to every log group
        role = iam.Role(
            self,
            f"{construct_id}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"fanout {name} function",
        )
        log_group.grant_write(role)
        fn = lambda_.Function(
            self,
            construct_id,
            function_name=function_name,
            description=f"fanout {name}",
            runtime=self._runtime,
            architecture=ARCHITECTURE,
            code=self._code,
            handler=f"{HANDLERS}.{name}.lambda_handler",
            memory_size=memory_mb,
            ephemeral_storage_size=Size.mebibytes(ephemeral_mb),
            timeout=timeout,
            role=role,
            tracing=lambda_.Tracing.ACTIVE,
            log_group=log_group,
            environment={
                "POWERTOOLS_SERVICE_NAME": SERVICE,
                "POWERTOOLS_METRICS_NAMESPACE": METRICS_NAMESPACE,
                "POWERTOOLS_LOG_LEVEL": "INFO",
                # events are never logged whole: they carry job items (the handlers also say log_event=False)
                "POWERTOOLS_LOGGER_LOG_EVENT": "false",
                "FANOUT_LOG_CONTENT": "true" if self._config.log_content else "false",
                "FANOUT_RESULTS_BUCKET": self._results_bucket.bucket_name,
                "FANOUT_DEFAULT_MODEL": self._config.default_model,
                "FANOUT_MAX_CONCURRENCY": str(self._config.max_concurrency),
                **self._config.cap_environment(),
            },
        )
        if self._data_key is not None:
            self._allow_data_key(fn)
        suppress_wildcards(role, {"*": X_RAY_ANY_RESOURCE})
        suppress(fn, "AwsSolutions-L1", RUNTIME_FROM_CONTEXT)
        return fn

    def _allow_read(self, fn: lambda_.Function, bucket: s3.IBucket, key_pattern: str) -> None:
        fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=[bucket.arn_for_objects(key_pattern)]))
        # listing lets a run find the records it can reuse, and makes a missing key a 404 (NoSuchKey)
        # rather than a 403; a prefix condition would not apply to GetObject and so would lose the 404
        fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:ListBucket"], resources=[bucket.bucket_arn]))

    def _allow_write(self, fn: lambda_.Function, bucket: s3.IBucket, key_pattern: str) -> None:
        fn.add_to_role_policy(iam.PolicyStatement(actions=["s3:PutObject"], resources=[bucket.arn_for_objects(key_pattern)]))

    def _allow_batch_jobs(self, fn: lambda_.Function, actions: list[str], why: str) -> None:
        """Find this account's batch inference jobs by name (ListModelInvocationJobs names no resource: '*'), and
        ``actions`` on its jobs in this region (a job's id is Bedrock's, chosen when it is created)."""
        jobs = f"arn:{Aws.PARTITION}:bedrock:{Aws.REGION}:{Aws.ACCOUNT_ID}:model-invocation-job/*"
        fn.add_to_role_policy(iam.PolicyStatement(actions=["bedrock:ListModelInvocationJobs"], resources=["*"]))
        fn.add_to_role_policy(iam.PolicyStatement(actions=actions, resources=[jobs]))
        suppress_wildcards(_role(fn), {"*": LIST_BATCH_JOBS, nag_reads(jobs): why})

    def _allow_bedrock(self, fn: lambda_.Function) -> None:
        arns = bedrock_model_arns(self._config.models)
        fn.add_to_role_policy(iam.PolicyStatement(actions=["bedrock:InvokeModel"], resources=arns))
        any_region = [arn for arn in arns if ":bedrock:*:" in arn]
        suppress_wildcards(_role(fn), {nag_reads(arn): MODEL_ANY_REGION for arn in any_region})

    def _allow_data_key(self, fn: lambda_.Function) -> None:
        fn.add_to_role_policy(data_key_statement(cast(kms.IKey, self._data_key)))


def data_key_statement(key: kms.IKey) -> iam.PolicyStatement:
    """Use of the buckets' KMS key, only through S3 in this region: read (Decrypt) and write (GenerateDataKey)."""
    return iam.PolicyStatement(
        actions=["kms:Decrypt", "kms:GenerateDataKey"],
        resources=[key.key_arn],
        conditions={"StringEquals": {"kms:ViaService": f"s3.{Aws.REGION}.amazonaws.com"}},
    )


def _role(fn: lambda_.Function) -> iam.IRole:
    assert fn.role is not None, f"{fn.node.path} has no role"
    return fn.role
