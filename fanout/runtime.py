"""Run the real state machine on this machine: moto's Step Functions interpreter, in-process Lambdas.

The ASL file in ``statemachine/`` is created as-is in moto with the same
substitution keys the CDK stack uses. Every ``lambda:invoke`` it makes is
answered by the real handler through a botocore ``before-send`` hook
registered first on the default session; an unhandled exception becomes a
``FunctionError`` response whose ``errorType`` is the exception's class
name, as Lambda reports it, so Retry and Catch behave as in the cloud.
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import logging
import os
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import boto3
from botocore.awsrequest import AWSResponse

from fanout.local_batch_jobs import LocalBatchJobs
from fanout.raw_body import RawBody
from fanout.resources import project_file

ROOT = Path(__file__).resolve().parent.parent
ASL_PATH = project_file("statemachine/fanout.asl.json")
REGION = "us-east-1"
ACCOUNT = "123456789012"
INPUT_BUCKET = "fanout-local-input"
RESULTS_BUCKET = "fanout-local-results"
FUNCTIONS = {
    "fanout-plan": "fanout_core.handlers.plan",
    "fanout-subtask": "fanout_core.handlers.subtask",
    "fanout-aggregate": "fanout_core.handlers.aggregate",
}
SUBSTITUTIONS = {
    "PlanFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-plan",
    "SubtaskFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-subtask",
    "AggregateFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-aggregate",
    # moto's interpreter rejects EXPRESS children; the stack's default is STANDARD too (fanout:childExecutionType)
    "ChildExecutionType": "STANDARD",
    # the role Bedrock's batch inference jobs run with (answered in-process: fanout.local_batch_jobs)
    "BatchInferenceRoleArn": f"arn:aws:iam::{ACCOUNT}:role/fanout-batch-inference",
}
# the Bedrock control-plane requests of model invocation jobs: answered by fanout.local_batch_jobs, never sent
BATCH_JOB_URLS = r"https://bedrock\.[a-z0-9-]+\.amazonaws\.com/model-invocation-job.*"
# a local run takes a job's max_concurrency as it is, up to this
LOCAL_CONCURRENCY_CAP = 1000
# how long each local invocation may run, as a function's Timeout does in the cloud (the stack gives the subtask
# function 900 s, the most Lambda allows: "Configure Lambda function timeout"); the context reports what is left of it
LAMBDA_TIMEOUT_ENV = "FANOUT_LOCAL_LAMBDA_TIMEOUT_SECONDS"
DEFAULT_LAMBDA_TIMEOUT_SECONDS = 900.0
_LOCAL_ENV = {
    "AWS_DEFAULT_REGION": REGION,
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "FANOUT_RESULTS_BUCKET": RESULTS_BUCKET,
    "FANOUT_DEFAULT_MODEL": "sim",
    "FANOUT_MAX_CONCURRENCY": str(LOCAL_CONCURRENCY_CAP),
    # a local batch inference job ends at once: its poll loop does not wait
    "FANOUT_BATCH_POLL_SECONDS": "0",
    # a record reaches S3 within 0.5 s and --out DIR within 0.25 s more (fanout.local_records): a kill loses
    # at most the calls in flight and the last second's records
    "FANOUT_RECORD_FLUSH_SECONDS": "0.5",
    # every batch of a run runs in this process: they share one pacer per model and one budget
    "FANOUT_PACING_SHARED": "true",
    "POWERTOOLS_TRACE_DISABLED": "true",
    "POWERTOOLS_METRICS_DISABLED": "true",
    # the CLI reports what went wrong itself, in one line; handler logs would repeat it on stdout
    "POWERTOOLS_LOG_LEVEL": "ERROR",
    "POWERTOOLS_DEV": "false",
    # moto keeps an object's body in memory up to this size and in a temporary file above it (moto's own
    # setting): batch files and record chunks are 100 KB and more, so a million-task run's ~700 MB of run
    # data sits on disk, not in the process (bench.scale row (i) prints the peak)
    "MOTO_S3_DEFAULT_KEY_BUFFER_SIZE": str(64 * 1024),
}
# gc.collect(1) collects generations 0 and 1, not the oldest (2)
YOUNG_GENERATIONS, OLDEST_GENERATION = 1, 2
# the oldest generation is collected before a freeze once it grew by this much since the last freeze that did
OLDEST_GROWTH_COLLECTED = 0.25
# the objects frozen by this process's first freeze or its last freeze after a full collection (0: none yet)
_frozen_after_full = [0]
# each body moto keeps in a temporary file holds a file descriptor: about 3 per 1,000 tasks
OPEN_FILES_WANTED = 1 << 16


@dataclass(frozen=True)
class _Context:
    """What a handler reads of the Lambda context: the time left counts down from the invocation's start."""

    function_name: str
    aws_request_id: str
    memory_limit_in_mb: int = 1024
    invoked_function_arn: str = ""
    log_group_name: str = "local"
    log_stream_name: str = "local"
    ends_at: float = float("inf")  # time.monotonic() when the invocation's timeout would end it

    def get_remaining_time_in_millis(self) -> int:
        left = self.ends_at - time.monotonic()
        return 900_000 if left == float("inf") else max(0, int(left * 1000))


def lambda_timeout_seconds() -> float:
    """The local functions' timeout: ``FANOUT_LOCAL_LAMBDA_TIMEOUT_SECONDS``, else Lambda's 900 s."""
    value = os.environ.get(LAMBDA_TIMEOUT_ENV, "").strip()
    return float(value) if value else DEFAULT_LAMBDA_TIMEOUT_SECONDS


@dataclass
class Execution:
    arn: str
    status: str
    output: dict[str, Any] | None
    error: str | None
    cause: str | None
    state_transitions: int
    wall_seconds: float


class LocalRuntime:
    """The stack's buckets and state machine inside moto, with the handlers answering Lambda calls."""

    def __init__(self, timeout_seconds: float | None = None) -> None:
        self.timeout_seconds = lambda_timeout_seconds() if timeout_seconds is None else timeout_seconds
        self.state_machine_arn = ""
        self.invocations: dict[str, int] = {}
        self.busy_seconds: dict[str, float] = {}
        self.model_calls: Counter[str] = Counter()
        # signalled after every invocation, so waiting for an execution costs no polling while it runs
        self._activity = threading.Condition()
        self._generation = 0
        self._lock = threading.Lock()
        self._session: Any = None
        self.batch_jobs: LocalBatchJobs | None = None

    # -- set-up ---------------------------------------------------------------
    def install(self) -> None:
        """Create the resources; call inside an active moto mock (or against a moto server)."""
        self._session = boto3._get_default_session()
        self._session.events.register_first("before-send.lambda.Invoke", self._route)
        from fanout_core.handlers import _clients as clients

        # Bedrock's model invocation jobs (moto has none), run through the run's providers
        self.batch_jobs = LocalBatchJobs(
            lambda spec: clients.providers().provider_for(spec), lambda: boto3.client("s3", region_name=REGION), REGION, ACCOUNT
        )
        self.batch_jobs.install(self._session)
        for module in FUNCTIONS.values():
            _handler_module(module)  # a warm container: imports are not part of any invocation
        from fanout_core.handlers import _clients

        _clients.s3()  # the handlers' client, built once per container as in Lambda
        # one invocation through a fresh client, as the interpreter makes them, so the first real one is warm too
        boto3.client("lambda", region_name=REGION).invoke(
            FunctionName=SUBSTITUTIONS["PlanFunctionArn"], Payload=b'{"warmup": true}'
        )
        s3 = boto3.client("s3", region_name=REGION)
        for bucket in (INPUT_BUCKET, RESULTS_BUCKET):
            s3.create_bucket(Bucket=bucket)
        sfn = boto3.client("stepfunctions", region_name=REGION)
        self.state_machine_arn = sfn.create_state_machine(
            name="fanout",
            definition=definition(),
            roleArn=f"arn:aws:iam::{ACCOUNT}:role/fanout-state-machine",
        )["stateMachineArn"]

    def uninstall(self) -> None:
        """Stop answering Lambda calls (the resources go with the moto mock or server they were made in)."""
        if self._session is not None:
            self._session.events.unregister("before-send.lambda.Invoke", self._route)
            if self.batch_jobs is not None:
                self.batch_jobs.uninstall(self._session)
            self._session = None

    # -- lambda:invoke answered in-process ------------------------------------
    def _route(self, request: Any, **_: Any) -> AWSResponse:
        name = unquote(request.url.split("/functions/")[1].split("/")[0])
        name = name.split(":function:")[-1].split(":")[0]
        event = json.loads(request.body or b"{}")
        if event == {"warmup": True}:
            return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, RawBody(b"{}"))
        with self._lock:
            self.invocations[name] = self.invocations.get(name, 0) + 1
        context = _Context(
            function_name=name,
            aws_request_id=f"local-{time.monotonic_ns()}",
            invoked_function_arn=SUBSTITUTIONS.get(name, ""),
            ends_at=time.monotonic() + self.timeout_seconds,
        )
        headers = {"Content-Type": "application/json", "X-Amz-Executed-Version": "$LATEST"}
        started = time.perf_counter()
        try:
            payload = _handler_module(FUNCTIONS[name]).lambda_handler(event, context)
        except Exception as exc:
            payload = {
                "errorMessage": str(exc),
                "errorType": type(exc).__name__,
                "stackTrace": traceback.format_tb(exc.__traceback__)[-5:],
            }
            headers["X-Amz-Function-Error"] = "Unhandled"
        with self._lock:
            self.busy_seconds[name] = self.busy_seconds.get(name, 0.0) + time.perf_counter() - started
        with self._activity:
            self._generation += 1
            self._activity.notify_all()
        return AWSResponse(request.url, 200, headers, RawBody(json.dumps(payload).encode()))

    # -- executions -------------------------------------------------------------
    def start(self, job_input: Any, name: str) -> str:
        sfn = boto3.client("stepfunctions", region_name=REGION)
        return str(
            sfn.start_execution(stateMachineArn=self.state_machine_arn, name=name, input=json.dumps(job_input))["executionArn"]
        )

    def wait(self, execution_arn: str, on_poll: Callable[[], None] | None = None, poll_seconds: float = 0.5) -> Execution:
        """Until the execution ends: a quick look after each invocation, a slow one otherwise."""
        from fanout import moto_patches

        sfn = boto3.client("stepfunctions", region_name=REGION)
        started = time.monotonic()
        seen, quick = self._generation, 0
        # not DescribeExecution: moto serialises the whole execution input into each answer
        status_of = moto_patches.execution_status_reader(ACCOUNT, REGION, execution_arn)
        while True:
            status = status_of()
            if on_poll is not None:
                on_poll()
            if status != "RUNNING":
                break
            with self._activity:
                if self._generation == seen and not quick:
                    self._activity.wait(timeout=poll_seconds)
                if self._generation != seen:
                    seen, quick = self._generation, 10  # the states after an invocation follow within milliseconds
            if quick:
                quick -= 1
                time.sleep(0.01)
        waited = time.monotonic() - started
        described = sfn.describe_execution(executionArn=execution_arn)  # once, for the output
        output = json.loads(described["output"]) if described.get("output") else None
        # states entered, as Step Functions bills them, and the span from ExecutionStarted to the last event: what
        # the service reports as the duration (it leaves out moto's parse of the definition before each execution)
        transitions, span = moto_patches.history_summary(ACCOUNT, REGION, execution_arn)
        return Execution(
            arn=execution_arn,
            status=described["status"],
            output=output,
            error=described.get("error"),
            cause=described.get("cause"),
            state_transitions=transitions,
            wall_seconds=span if span is not None else waited,
        )


def definition() -> str:
    """The ASL file with the local substitutions (the stack fills the same keys)."""
    text = ASL_PATH.read_text()
    for key, value in SUBSTITUTIONS.items():
        text = text.replace("${" + key + "}", value)
    return text


@functools.cache
def _handler_module(path: str) -> Any:
    return importlib.import_module(path)


def caller_session() -> Any | None:
    """The caller's AWS session when credentials are configured, else None.

    Only local sources are consulted (environment, config and credential
    files, SSO cache): no instance-metadata or container endpoint is probed.
    """
    import botocore.session

    core = botocore.session.get_session()
    resolver = core.get_component("credential_provider")
    for name in ("container-role", "iam-role"):
        if resolver.get_provider(name) is not None:
            resolver.remove(name)
    try:
        credentials = core.get_credentials()
    except Exception:
        return None
    if credentials is None:
        return None
    return boto3.Session(botocore_session=core, region_name=core.get_config_variable("region") or REGION)


def raise_open_files_limit(wanted: int = OPEN_FILES_WANTED) -> int:
    """The soft limit on open files raised towards ``wanted`` (never above the hard limit); returns the limit now.

    moto keeps each large object body in a temporary file, open while the object exists; a million-task run
    holds ~3,000 of them, over the 1,024 (Linux) or 256 (macOS) a shell starts with.
    """
    try:
        import resource
    except ImportError:  # not on POSIX: the limit is not the process's to raise
        return wanted
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        for limit in (target, 10_240):  # macOS refuses more than kern.maxfilesperproc
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
                return limit
            except (ValueError, OSError):
                continue
    return soft


def freeze_startup_objects() -> bool:
    """Move the objects alive once the runtime is set up (moto, botocore's models, the parsed ASL: ~300,000) out of
    the cyclic collector's reach; True when this call froze them (the caller unfreezes them at the end).

    They live as long as the runtime, yet every full collection during a run walked them all: 1.6 to 2.6 s of a
    100,000-task run's ~20 s, against 0.3 to 0.4 s with them frozen (measured side by side on a 2-core machine).

    The young generations' garbage is collected first, so it is not frozen with them. The oldest generation is
    collected too only when it holds a quarter more objects than the last freeze kept (CPython's own rule for a
    full collection: long-lived objects grown by 25% since the last one): a full collection walks the ~300,000
    objects once more, 0.3 s or more of a run's start. So a process's first runtime never pays it, and in a
    long-lived process (``serve``, a test session) what ended runtimes left (their moto backends: ~50,000
    objects in cycles each) is freed every other runtime or so instead of frozen again and again.
    """
    if gc.get_freeze_count():
        return False  # someone else froze objects: theirs to unfreeze
    gc.collect(YOUNG_GENERATIONS)
    kept = _frozen_after_full[0]
    if kept and len(gc.get_objects(OLDEST_GENERATION)) > kept * (1 + OLDEST_GROWTH_COLLECTED):
        kept = 0
        gc.collect()
    gc.freeze()
    if not kept:
        _frozen_after_full[0] = gc.get_freeze_count()
    return True


# one botocore loader per data path for every local runtime of this process (share_service_models)
_LOADERS: dict[str, Any] = {}


def share_service_models() -> None:
    """Give boto3's default session, when moto has just reset it, the process's one botocore loader.

    A fresh session parses the service models again (S3's, Step Functions', Lambda's, EventBridge's: ~28,000
    OrderedDicts) and the old ones become garbage in cycles only a full collection frees. A long-lived process (a
    test session, ``fanout.run`` called in a loop, the fault matrix) then paid a 0.3-0.5 s full collection every
    other run; with the models shared, an ended runtime leaves ~8,000 such objects instead of ~44,000, and its
    clients are built without reading the JSON again. The loader is what botocore's own session would build
    (``create_loader`` over its ``data_path``); only its cache of parsed models is kept between runtimes.

    Under a mock that was already running (a caller's own ``mock_aws``) moto keeps the caller's session, and so
    does this: it is the caller's to keep.
    """
    import boto3
    import botocore.loaders
    import botocore.session

    if boto3.DEFAULT_SESSION is not None:
        return
    core = botocore.session.get_session()
    data_path = core.get_config_variable("data_path") or ""
    loader = _LOADERS.get(data_path)
    if loader is None:
        loader = _LOADERS[data_path] = botocore.loaders.create_loader(data_path or None)
    core.register_component("data_loader", loader)
    boto3.setup_default_session(botocore_session=core)
    # each boto3 session appends its own data folder to its loader's search paths: once is enough for a shared one
    loader.search_paths[:] = list(dict.fromkeys(loader.search_paths))


@contextmanager
def local_aws(default_model: str = "sim", bedrock_session: Any | None = None) -> Iterator[LocalRuntime]:
    """An in-process AWS (moto) with fanout's resources created.

    Bedrock calls pass through to the real service (or to
    ``AWS_ENDPOINT_URL_BEDROCK_RUNTIME``) with ``bedrock_session``'s
    credentials; everything else stays in this process.
    """
    from moto import mock_aws

    from fanout import moto_patches
    from fanout_core.handlers import _clients
    from fanout_core.observability import logger as handler_logger
    from fanout_core.providers.registry import ProviderRegistry

    moto_patches.check_version()
    raise_open_files_limit()
    saved = {k: os.environ.get(k) for k in _LOCAL_ENV}
    moto_logger = logging.getLogger("moto")
    saved_level = moto_logger.level
    saved_handler_level = handler_logger.log_level
    os.environ.update({**_LOCAL_ENV, "FANOUT_DEFAULT_MODEL": default_model})
    # the handlers' logger takes POWERTOOLS_LOG_LEVEL when fanout_core.observability is first imported, which may be
    # before this (a module the CLI imports may log): its level is set here, whatever the import order
    handler_logger.setLevel(_LOCAL_ENV["POWERTOOLS_LOG_LEVEL"])
    undo_jsonpath = moto_patches.cache_jsonpath_parsing()
    undo_asl_trees = moto_patches.cache_asl_parse_trees()
    undo_conditional_writes = moto_patches.atomic_conditional_writes()
    undo_stops = moto_patches.stopped_executions_stay_stopped()
    undo_casing = moto_patches.aws_sdk_member_casing()
    undo_s3_urls = moto_patches.cache_s3_urls()
    undo_lambda_clients = moto_patches.reuse_lambda_clients()
    undo_error_lookups = moto_patches.share_error_lookups()
    # the interpreter logs every caught task error at ERROR; the CLI reports failures itself
    moto_logger.setLevel(logging.CRITICAL)
    config: Any = {
        "core": {
            "mock_credentials": True,
            # model invocation jobs are answered in-process (fanout.local_batch_jobs): moto, which has none, lets them be
            "passthrough": {"urls": [BATCH_JOB_URLS], "services": ["bedrockruntime"]},
            "reset_boto3_session": True,
            "service_whitelist": None,
        },
        "stepfunctions": {"execute_state_machine": True},
    }
    try:
        with mock_aws(config=config), warnings.catch_warnings():
            # a batch whose container failed before its first call flushes an empty metric set, which is no fault
            # here: Powertools' warning of it would land in the middle of the run's progress (a deployed function
            # still logs it)
            warnings.filterwarnings("ignore", message="No application metrics to publish", category=UserWarning)
            share_service_models()
            runtime = LocalRuntime()
            providers = ProviderRegistry(bedrock_session=bedrock_session, call_counter=runtime.model_calls)
            with _clients.using_providers(providers):
                runtime.install()
                frozen = freeze_startup_objects()
                try:
                    yield runtime
                finally:
                    if frozen:
                        gc.unfreeze()
                    runtime.uninstall()
    finally:
        undo_error_lookups()
        undo_lambda_clients()
        undo_s3_urls()
        undo_casing()
        undo_stops()
        undo_conditional_writes()
        undo_asl_trees()
        undo_jsonpath()
        moto_logger.setLevel(saved_level)
        handler_logger.setLevel(saved_handler_level)
        for key, previous in saved.items():
            if previous is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = previous
