"""Every place the local side reaches into moto's internals, in one module, for one moto version.

moto has no public API for these, so each is a patch of (or a read from) a
private name. They are written against ``MOTO_VERSION`` (pinned in
requirements.txt): ``check_version`` refuses any other, with the fix named,
rather than letting a renamed internal fail halfway through a job. Every
patch returns its undo, so whoever applies one can restore what it changed;
tests/local/test_moto_patches.py has one test per entry here.

- ``cache_jsonpath_parsing``: the interpreter re-parses every JSONPath on every evaluation.
- ``cache_asl_parse_trees``: a state machine's definition is parsed on CreateStateMachine and again on every
  StartExecution.
- ``hook_s3_eventbridge``: S3 -> EventBridge notifications handed to ``serve``'s rule bridge.
- ``name_nameless_executions``: a StartExecution without a name gets a UUID, as in Step Functions.
- ``atomic_conditional_writes``: a conditional PutObject checks and writes in one step, as in S3.
- ``stopped_executions_stay_stopped``: an execution stopped while a Map runs ends ABORTED, as in Step Functions.
- ``execution_status`` / ``execution_status_reader``: an execution's status without serialising its input
  (DescribeExecution does); the reader looks the execution up once for a poll loop.
- ``history_summary``: the states an execution entered and its span, without copying its history (the
  GetExecutionHistory API deep-copies every event, then serialises it).
- ``new_objects``: the bodies of new (or rewritten) objects under a prefix, read from moto's S3 backend.
- ``reuse_lambda_clients``: the interpreter builds a new boto3 client for every Lambda task it runs.
- ``cache_s3_urls``: moto re-imports its S3 URL table on every S3 request; it changes only with two settings.
- ``share_error_lookups``: moto rebuilds a service's table of error shapes for every error response it sends.
- ``aws_sdk_member_casing``: an aws-sdk task's PascalCase parameters reach the SDK by their member names, and
  its response comes back PascalCase, as in Step Functions (for services whose members are camelCase: Bedrock).
"""

from __future__ import annotations

import datetime
import functools
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

MOTO_VERSION = "5.2.5"

Undo = Callable[[], None]


class MotoVersionError(RuntimeError):
    """The installed moto is not the one the patches were written against."""


def check_version(installed: str | None = None) -> None:
    """Refuse a moto other than ``MOTO_VERSION``: its private names may have moved."""
    if installed is None:
        import moto

        installed = str(moto.__version__)
    if installed != MOTO_VERSION:
        raise MotoVersionError(
            f"fanout's local runtime patches moto internals written for moto {MOTO_VERSION}, but moto {installed} "
            f"is installed; install moto=={MOTO_VERSION} (requirements.txt), or re-check fanout/moto_patches.py "
            "against the new version and its tests (tests/unit/test_moto_patches.py) before changing MOTO_VERSION"
        )


def cache_jsonpath_parsing() -> Undo:
    """Parsed JSONPath expressions are immutable: cache them (the interpreter parses one on every evaluation)."""
    check_version()
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    originals: dict[Any, Any] = {}
    for module in (json_path, result_path):
        if not hasattr(module.parse, "cache_info"):
            originals[module] = module.parse
            module.parse = functools.lru_cache(maxsize=4096)(module.parse)  # type: ignore[attr-defined]

    def undo() -> None:
        for module, parse in originals.items():
            module.parse = parse

    return undo


# the parse trees of the definitions parsed last (fanout's own ASL is one; tests make a few more)
ASL_TREES_KEPT = 8


@functools.lru_cache(maxsize=ASL_TREES_KEPT)
def _asl_parse_tree(definition: str) -> Any:
    """The ANTLR parse tree of a definition, as ``AmazonStateLanguageParser.parse`` builds it; raises its
    ``ASLParserException`` for a definition with syntax errors (an exception is not cached)."""
    from antlr4 import CommonTokenStream, InputStream
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLLexer import ASLLexer
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser
    from moto.stepfunctions.parser.asl.parse.asl_parser import ASLParserException, SyntaxErrorListener

    errors = SyntaxErrorListener()
    parser = ASLParser(CommonTokenStream(ASLLexer(InputStream(definition))))
    parser.removeErrorListeners()
    parser.addErrorListener(errors)
    tree = parser.state_machine()
    if errors.errors:
        raise ASLParserException(errors=errors.errors)
    return tree


def cache_asl_parse_trees() -> Undo:
    """moto parses a state machine's definition with its ANTLR grammar on CreateStateMachine (to validate it) and
    again on every StartExecution: 0.2 to 0.4 s each for fanout's ASL on a 2-core machine. Until undone, the parse
    tree of a definition is built once and kept (the last ``ASL_TREES_KEPT``); each parse still turns it into a new
    program (moto's ``Preprocessor``, which only reads the tree: ~0.06 s), so no execution shares a component
    with another."""
    check_version()
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser
    from moto.stepfunctions.parser.asl.parse.preprocessor import Preprocessor

    original = AmazonStateLanguageParser.__dict__["parse"]
    if getattr(original.__func__, "_fanout_cached", False):
        return lambda: None

    def parse(definition: str) -> tuple[Any, Any]:
        tree = _asl_parse_tree(definition)
        return Preprocessor().visit(tree), tree

    parse._fanout_cached = True  # type: ignore[attr-defined]
    AmazonStateLanguageParser.parse = staticmethod(parse)  # type: ignore[method-assign]

    def undo() -> None:
        AmazonStateLanguageParser.parse = original  # type: ignore[method-assign]

    return undo


def hook_s3_eventbridge(deliver: Callable[[Any, Any, str, Any], None]) -> Undo:
    """Also call ``deliver(account_id, bucket, event_name, key)`` for every S3 -> EventBridge notification."""
    check_version()
    from moto.s3 import notifications

    original = notifications._send_event_bridge_message

    def send(account_id: str, bucket: Any, event_name: str, key: Any) -> None:
        original(account_id, bucket, event_name, key)
        deliver(account_id, bucket, event_name, key)

    notifications._send_event_bridge_message = send

    def undo() -> None:
        notifications._send_event_bridge_message = original

    return undo


def s3_detail_type(event_name: Any) -> str | None:
    """The EventBridge detail-type moto gives an S3 notification event, or None for one it does not send."""
    from moto.s3 import notifications

    try:
        return str(notifications._detail_type(event_name))
    except ValueError:
        return None


def is_put_of_multipart(event_name: Any, key: Any) -> bool:
    """moto completes a multipart upload with an inner put, which S3 does not notify (it sends only the completion)."""
    from moto.s3 import notifications

    return bool(event_name == notifications.S3NotificationEvent.OBJECT_CREATED_PUT_EVENT and getattr(key, "multipart", None))


def name_nameless_executions() -> Undo:
    """Step Functions names an execution started without a name with a UUID; moto would name it "None"."""
    check_version()
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    start = StepFunctionsParserBackend.start_execution
    if getattr(start, "_fanout_names", False):
        return lambda: None

    def start_execution(self: Any, state_machine_arn: str, name: Any = None, *args: Any, **kwargs: Any) -> Any:
        return start(self, state_machine_arn, name or str(uuid.uuid4()), *args, **kwargs)

    start_execution._fanout_names = True  # type: ignore[attr-defined]
    StepFunctionsParserBackend.start_execution = start_execution  # type: ignore[method-assign]

    def undo() -> None:
        StepFunctionsParserBackend.start_execution = start  # type: ignore[method-assign]

    return undo


def atomic_conditional_writes() -> Undo:
    """S3 checks a conditional write's precondition (If-Match, If-None-Match) and writes in one step; moto checks,
    then writes. One lock around moto's conditional PutObject makes the pair atomic, as in S3, so two runs that
    race for a job_id's lease (fanout_core.lease) cannot both win here either."""
    check_version()
    from moto.s3.responses import S3Response

    put = S3Response.put_object
    if getattr(put, "_fanout_atomic", False):
        return lambda: None
    lock = threading.Lock()

    def put_object(self: Any) -> Any:
        if self.headers.get("If-Match") or self.headers.get("If-None-Match"):
            with lock:
                return put(self)
        return put(self)

    put_object._fanout_atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = put_object  # type: ignore[method-assign]

    def undo() -> None:
        S3Response.put_object = put  # type: ignore[method-assign]

    return undo


def reuse_lambda_clients() -> Undo:
    """moto's interpreter builds a boto3 client (~8 ms: the service model, endpoint rules, the session's handlers
    copied) for every Lambda task it runs, one per batch. Until undone, one client per region is built and reused:
    the client holds the session's handlers as they were when it was built, so the undo drops them all and the next
    runtime (its own before-send hook) builds its own."""
    check_version()
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    build = lambda_eval_utils.boto_client_for
    if getattr(build, "_fanout_reused", False):
        return lambda: None
    clients: dict[tuple[Any, ...], Any] = {}
    lock = threading.Lock()

    def reused(region: str, service: str, state_credentials: Any = None) -> Any:
        from moto.core.models import botocore_stubber
        from moto.settings import moto_server_port

        key = (region, service, botocore_stubber.enabled, moto_server_port())  # what the client is built from
        with lock:
            client = clients.get(key)
            if client is None:
                client = clients[key] = build(region, service, state_credentials)
        return client

    reused._fanout_reused = True  # type: ignore[attr-defined]
    lambda_eval_utils.boto_client_for = reused

    def undo() -> None:
        lambda_eval_utils.boto_client_for = build
        clients.clear()

    return undo


def cache_s3_urls() -> Undo:
    """moto's S3 backend reloads ``moto.s3.urls`` (an ``importlib.reload``) and rebuilds its URL table on every S3
    request, so that a changed ``MOTO_S3_CUSTOM_ENDPOINTS`` is seen: about 1 ms of each ~7 ms local PutObject.
    The table is kept per value of the two settings it is built from (custom endpoints, ISO regions), so a changed
    setting still gets its own table."""
    check_version()
    import os

    from moto.s3.models import S3Backend

    urls = S3Backend.__dict__.get("urls")  # None: the one S3Backend inherits (BaseBackend's)
    if getattr(getattr(urls, "fget", None), "_fanout_cached", False):
        return lambda: None
    build = next(k.__dict__["urls"] for k in S3Backend.__mro__ if "urls" in k.__dict__).fget
    tables: dict[tuple[str | None, str | None], Any] = {}

    def cached(self: Any) -> Any:
        setting = (os.environ.get("MOTO_S3_CUSTOM_ENDPOINTS"), os.environ.get("MOTO_ENABLE_ISO_REGIONS"))
        table = tables.get(setting)
        if table is None:
            table = tables[setting] = build(self)
        return table

    cached._fanout_cached = True  # type: ignore[attr-defined]
    S3Backend.urls = property(cached)  # type: ignore[assignment,method-assign]

    def undo() -> None:
        if urls is None:
            del S3Backend.urls
        else:
            S3Backend.urls = urls  # type: ignore[method-assign]

    return undo


def share_error_lookups() -> Undo:
    """moto answers every error (a GetObject of a missing key: a batch's first look for its pace) through a new
    ``ErrorLookupFactory``, whose cache of a service's error shapes is so built again for each response (a 404
    GetObject took 2.7 ms, 1.9 ms with the patch). The table depends on the service model alone (moto's botocore data), so one
    factory is shared until undone; the error sent is the same."""
    check_version()
    from moto.core import errors

    factory = errors.ErrorLookupFactory
    if getattr(factory, "_fanout_shared", False):
        return lambda: None
    shared = factory()

    def shared_factory() -> Any:
        return shared

    shared_factory._fanout_shared = True  # type: ignore[attr-defined]
    errors.ErrorLookupFactory = shared_factory  # type: ignore[assignment,misc]

    def undo() -> None:
        errors.ErrorLookupFactory = factory  # type: ignore[misc]

    return undo


def stopped_executions_stay_stopped() -> Undo:
    """StopExecution is final: an execution stopped while a Map runs ends ABORTED in Step Functions. moto 5.2.5
    turns the Map's abort of its iterations into a runtime error (States.Runtime) that overwrites the stop and
    ends the execution FAILED; an error raised after the stop is dropped here instead."""
    check_version()
    from moto.stepfunctions.parser.asl.eval.environment import Environment
    from moto.stepfunctions.parser.asl.eval.program_state import ProgramStopped

    set_error = Environment.set_error
    if getattr(set_error, "_fanout_stays_stopped", False):
        return lambda: None

    def set_error_unless_stopped(self: Any, error: Any) -> None:
        if isinstance(self.program_state(), ProgramStopped):
            return
        set_error(self, error)

    set_error_unless_stopped._fanout_stays_stopped = True  # type: ignore[attr-defined]
    Environment.set_error = set_error_unless_stopped  # type: ignore[method-assign]

    def undo() -> None:
        Environment.set_error = set_error  # type: ignore[method-assign]

    return undo


def execution_status(account: str, region: str, execution_arn: str) -> str:
    """RUNNING, SUCCEEDED, FAILED, ... read from moto's backend in this process.

    DescribeExecution would do, but moto serialises the whole execution input
    into every answer: polled through a long run, that is quadratic in the job.
    """
    return execution_status_reader(account, region, execution_arn)()


def execution_status_reader(account: str, region: str, execution_arn: str) -> Callable[[], str]:
    """``execution_status`` of one execution as a function to poll: the execution is looked up once (moto builds
    its account's backend and checks the ARN on every lookup, ~0.8 ms), then each call reads its status as it
    changes in place."""
    check_version()
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    execution = stepfunctions_parser_backends[account][region].describe_execution(execution_arn)

    def status() -> str:
        found = getattr(execution, "exec_status", None) or execution.status
        return str(getattr(found, "value", found))

    return status


def history_summary(account: str, region: str, execution_arn: str) -> tuple[int, float | None]:
    """(states entered, seconds from the first event to the last) of an execution, read in place.

    GetExecutionHistory hands back a deep copy of every event, each with its state's input and output, and the
    client parses it again: 427 ms once a 100,000-task job's execution had ended (0.8 ms this way, measured in one
    run). This counts the same
    events, under the event list's own lock, without copying them.
    """
    check_version()
    from moto.stepfunctions.parser.models import stepfunctions_parser_backends

    execution = stepfunctions_parser_backends[account][region].describe_execution(execution_arn)
    worker = getattr(execution, "exec_worker", None)
    env = worker.env if worker is not None else None
    if env is None:  # not started
        return 0, None
    manager = env.event_manager
    with manager._mutex:
        events = manager._history_event_list
        entered = sum(1 for event in events if str(event["type"]).endswith("StateEntered"))
        first = events[0]["timestamp"] if events else None
        last = events[-1]["timestamp"] if events else None
    span = (_moment(last) - _moment(first)).total_seconds() if first is not None and last is not None else None
    return entered, span


def _moment(stamp: Any) -> datetime.datetime:
    """An event's timestamp: moto keeps it as ISO 8601 text with milliseconds (the API hands out datetimes)."""
    if isinstance(stamp, datetime.datetime):
        return stamp
    return datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))


def new_objects(account: str, bucket_name: str, prefix: str, seen: dict[str, Any]) -> Iterator[tuple[str, bytes]]:
    """(key, body) of every object under ``prefix`` that is new or rewritten since it was last yielded.

    Read from moto's S3 backend as it stands: listing through the S3 API
    pages 1,000 keys at a time and copies every body over the wire format.
    ``seen`` (key -> the stored version's identity) is updated as keys are yielded.
    """
    check_version()
    from moto.s3.models import s3_backends

    bucket = s3_backends[account]["aws"].buckets.get(bucket_name)
    if bucket is None:
        return
    for key in list(bucket.keys.keys()):
        if not key.startswith(prefix):
            continue
        stored = bucket.keys.get(key)
        if stored is None:
            continue
        # a put makes a new key object: its identity and time tell a rewrite without hashing the body
        version = (id(stored), stored.last_modified)
        if seen.get(key) == version:
            continue
        seen[key] = version
        yield key, bytes(stored.value)


# the aws-sdk integrations whose API members are camelCase: their parameters need the SDK's names
CAMEL_CASE_SDK_SERVICES = ("bedrock",)


def aws_sdk_member_casing(services: tuple[str, ...] = CAMEL_CASE_SDK_SERVICES) -> Undo:
    """``aws-sdk:bedrock:createModelInvocationJob`` with ``JobName`` calls the SDK with ``jobName``, and its
    ``jobArn`` comes back as ``JobArn``, as the Step Functions AWS SDK integrations do; moto's copy of the
    interpreter leaves both hooks empty, so the SDK got no parameters. Other services (S3) are left as they are.
    """
    check_version()
    import botocore.session
    from moto.stepfunctions.parser.asl.component.state.exec.state_task.service import state_task_service_aws_sdk

    cls = state_task_service_aws_sdk.StateTaskServiceAwsSdk
    original_parameters, original_response = cls._normalise_parameters, cls._normalise_response
    models = botocore.session.get_session()

    def operation(task: Any) -> Any:
        service = task._get_boto_service_name()
        if service not in services:
            return None
        model = models.get_service_model(service)
        wanted = task._get_boto_service_action()
        return next((model.operation_model(n) for n in model.operation_names if _snake(n) == wanted), None)

    def normalise_parameters(self: Any, parameters: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        found = operation(self)
        if found is None or found.input_shape is None:
            return original_parameters(self, parameters, *args, **kwargs)
        self._to_boto_request(parameters, found.input_shape)
        return None

    def normalise_response(self: Any, response: Any, *args: Any, **kwargs: Any) -> None:
        found = operation(self)
        if found is None or found.output_shape is None:
            return original_response(self, response, *args, **kwargs)
        self._from_boto_response(response, found.output_shape)
        return None

    cls._normalise_parameters = normalise_parameters  # type: ignore[method-assign]
    cls._normalise_response = normalise_response  # type: ignore[method-assign]

    def undo() -> None:
        cls._normalise_parameters = original_parameters  # type: ignore[method-assign]
        cls._normalise_response = original_response  # type: ignore[method-assign]

    return undo


def _snake(name: str) -> str:
    from moto.stepfunctions.parser.utils import camel_to_snake_case

    return str(camel_to_snake_case(name))
