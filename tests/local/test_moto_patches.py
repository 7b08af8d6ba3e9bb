"""One test per reach into moto's internals (fanout/moto_patches.py): each does what it says, and its undo undoes it."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from moto import mock_aws

from fanout import moto_patches

ACCOUNT, REGION = "123456789012", "us-east-1"
PASS_MACHINE = json.dumps({"StartAt": "Done", "States": {"Done": {"Type": "Pass", "End": True}}})


@pytest.fixture
def aws() -> Iterator[None]:
    with mock_aws(config={"stepfunctions": {"execute_state_machine": True}}):  # type: ignore[typeddict-item]
        yield


def pass_machine() -> tuple[Any, str]:
    sfn = boto3.client("stepfunctions", region_name=REGION)
    arn = sfn.create_state_machine(name="m", definition=PASS_MACHINE, roleArn=f"arn:aws:iam::{ACCOUNT}:role/r")["stateMachineArn"]
    return sfn, arn


def test_the_version_guard_refuses_another_moto_and_names_the_fix() -> None:
    moto_patches.check_version()  # the installed one is the one pinned

    with pytest.raises(moto_patches.MotoVersionError) as refused:
        moto_patches.check_version("5.3.0")

    assert f"moto=={moto_patches.MOTO_VERSION}" in str(refused.value)
    assert "5.3.0" in str(refused.value)


def test_the_pinned_moto_is_the_one_the_requirements_install() -> None:
    from fanout.runtime import ROOT

    pins = (ROOT / "requirements.txt").read_text()
    assert re.search(rf"^moto\[[^\]]*\]=={re.escape(moto_patches.MOTO_VERSION)}$", pins, re.MULTILINE)


def test_jsonpath_parsing_is_cached_and_the_undo_restores_the_parser() -> None:
    from moto.stepfunctions.parser.asl.component.common.path import result_path
    from moto.stepfunctions.parser.asl.utils import json_path

    before = (json_path.parse, result_path.parse)
    undo = moto_patches.cache_jsonpath_parsing()
    try:
        # parsing one path twice gives the very same (immutable) parsed expression
        assert json_path.parse("$.a.b[0]") is json_path.parse("$.a.b[0]")
        assert result_path.parse("$.x") is result_path.parse("$.x")
    finally:
        undo()
    assert (json_path.parse, result_path.parse) == before


def test_s3_eventbridge_notifications_reach_the_hook_until_undone(aws: None) -> None:
    # Given a bucket that sends its events to EventBridge, and the hook on
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="jobs-in")
    s3.put_bucket_notification_configuration(Bucket="jobs-in", NotificationConfiguration={"EventBridgeConfiguration": {}})
    seen: list[tuple[str, str, str | None]] = []

    def deliver(account: str, bucket: Any, event_name: Any, key: Any) -> None:
        seen.append((bucket.name, key.name, moto_patches.s3_detail_type(event_name)))

    undo = moto_patches.hook_s3_eventbridge(deliver)

    # When an object is put, then the hook is undone and another is put
    s3.put_object(Bucket="jobs-in", Key="jobs/a.json", Body=b"{}")
    undo()
    s3.put_object(Bucket="jobs-in", Key="jobs/b.json", Body=b"{}")

    # Then only the first reached the hook, with the detail type S3 sends EventBridge
    assert ("jobs-in", "jobs/a.json", "Object Created") in seen
    assert {key for _, key, _ in seen} == {"jobs/a.json"}


def test_an_execution_started_without_a_name_gets_a_uuid_until_undone(aws: None) -> None:
    _, machine = pass_machine()
    undo = moto_patches.name_nameless_executions()
    try:
        from moto.stepfunctions.parser.models import stepfunctions_parser_backends

        backend = stepfunctions_parser_backends[ACCOUNT][REGION]
        execution = backend.start_execution(machine)
        assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", execution.name)
    finally:
        undo()
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    assert not getattr(StepFunctionsParserBackend.start_execution, "_fanout_names", False)


def test_the_status_read_agrees_with_describe_execution_and_never_serialises_the_input(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an execution with a large input
    sfn, machine = pass_machine()
    arn = sfn.start_execution(stateMachineArn=machine, name="e1", input=json.dumps({"items": ["x" * 100] * 1000}))["executionArn"]
    deadline = time.monotonic() + 10
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.01)

    # When its status is read while serialising the input would fail
    from moto.stepfunctions.parser.backend import execution as execution_module

    def no_serialising(*_: Any, **__: Any) -> Any:
        raise AssertionError("the status read serialised the execution")

    described = sfn.describe_execution(executionArn=arn)["status"]
    monkeypatch.setattr(execution_module.Execution, "to_describe_output", no_serialising)
    status = moto_patches.execution_status(ACCOUNT, REGION, arn)

    # Then it is the status DescribeExecution reports
    assert status == described == "SUCCEEDED"


def test_new_objects_yields_each_new_or_rewritten_object_under_the_prefix_once(aws: None) -> None:
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="results")
    s3.put_object(Bucket="results", Key="runs/j/records/b00000/w-00001.jsonl", Body=b'{"a":1}\n')
    s3.put_object(Bucket="results", Key="runs/other/records/b00000/w-00001.jsonl", Body=b"x\n")
    seen: dict[str, Any] = {}

    first = list(moto_patches.new_objects(ACCOUNT, "results", "runs/j/", seen))
    s3.put_object(Bucket="results", Key="runs/j/records/b00001/w-00001.jsonl", Body=b'{"b":2}\n')
    s3.put_object(Bucket="results", Key="runs/j/records/b00000/w-00001.jsonl", Body=b'{"a":3}\n')
    second = list(moto_patches.new_objects(ACCOUNT, "results", "runs/j/", seen))

    assert first == [("runs/j/records/b00000/w-00001.jsonl", b'{"a":1}\n')]
    assert sorted(second) == [
        ("runs/j/records/b00000/w-00001.jsonl", b'{"a":3}\n'),
        ("runs/j/records/b00001/w-00001.jsonl", b'{"b":2}\n'),
    ]
    assert list(moto_patches.new_objects(ACCOUNT, "results", "runs/j/", seen)) == []
    assert list(moto_patches.new_objects(ACCOUNT, "missing-bucket", "runs/", seen)) == []


def test_conditional_writes_are_atomic_until_undone(aws: None) -> None:
    # Given moto's write made slow, so that two writers would both pass its precondition check unpatched
    from moto.s3.models import S3Backend
    from moto.s3.responses import S3Response

    s3 = boto3.client("s3", region_name="us-east-1")
    s3.create_bucket(Bucket="leases")
    original_write, original_put = S3Backend.put_object, S3Response.put_object

    def slow_write(self: Any, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)  # after the precondition was checked, before the object is there
        return original_write(self, *args, **kwargs)

    S3Backend.put_object = slow_write  # type: ignore[method-assign]
    undo = moto_patches.atomic_conditional_writes()
    try:
        # When two writers create one key at the same moment, each only where there is none
        outcomes: list[str] = []

        def create(body: str) -> None:
            try:
                s3.put_object(Bucket="leases", Key="lease.json", Body=body.encode(), IfNoneMatch="*")
                outcomes.append("won")
            except s3.exceptions.ClientError as exc:
                outcomes.append(exc.response["Error"]["Code"])

        threads = [threading.Thread(target=create, args=(name,)) for name in ("a", "b")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        # Then exactly one wins and the other is told its precondition failed
        assert sorted(outcomes) == ["PreconditionFailed", "won"]
    finally:
        undo()
        S3Backend.put_object = original_write  # type: ignore[method-assign]
    assert S3Response.put_object is original_put


MAP_OF_WAITS = json.dumps(
    {
        "StartAt": "Each",
        "States": {
            "Each": {
                "Type": "Map",
                "ItemsPath": "$.items",
                "MaxConcurrency": 1,
                "ItemProcessor": {
                    "ProcessorConfig": {"Mode": "INLINE"},
                    "StartAt": "Pause",
                    "States": {"Pause": {"Type": "Wait", "Seconds": 1, "End": True}},
                },
                "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "After"}],
                "Next": "After",
            },
            "After": {"Type": "Pass", "End": True},
        },
    }
)


@pytest.mark.parametrize("patched", [True, False])
def test_an_execution_stopped_inside_a_map_ends_aborted_with_the_patch(aws: None, patched: bool) -> None:
    # Given an execution in the middle of an inline Map
    sfn = boto3.client("stepfunctions", region_name=REGION)
    machine = sfn.create_state_machine(name="maps", definition=MAP_OF_WAITS, roleArn=f"arn:aws:iam::{ACCOUNT}:role/r")
    undo = moto_patches.stopped_executions_stay_stopped() if patched else (lambda: None)
    try:
        arn = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name="x", input='{"items": [1, 2, 3]}')[
            "executionArn"
        ]
        time.sleep(1.5)

        # When it is stopped
        sfn.stop_execution(executionArn=arn, cause="by hand")
        deadline = time.monotonic() + 10
        while (status := moto_patches.execution_status(ACCOUNT, REGION, arn)) == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.05)

        # Then it ends ABORTED, as in Step Functions (moto alone ends it FAILED, with States.Runtime)
        assert status == ("ABORTED" if patched else "FAILED")
    finally:
        undo()


GET_JOB_MACHINE = json.dumps(
    {
        "StartAt": "Get",
        "States": {
            "Get": {
                "Type": "Task",
                "Resource": "arn:aws:states:::aws-sdk:bedrock:getModelInvocationJob",
                "Parameters": {"JobIdentifier": "job-1"},
                "ResultSelector": {"status.$": "$.Status"},
                "End": True,
            }
        },
    }
)


@pytest.mark.parametrize("patched", [True, False])
def test_an_aws_sdk_bedrock_task_reaches_the_sdk_by_member_name_with_the_patch(patched: bool) -> None:
    # Given a Bedrock endpoint answered in-process, and a state machine calling it with Step Functions' PascalCase
    asked: list[str] = []

    def answer(request: Any, **_: Any) -> Any:
        from botocore.awsrequest import AWSResponse

        asked.append(request.url)
        body = json.dumps({"jobArn": "arn:aws:bedrock:us-east-1:1:model-invocation-job/job-1", "status": "Completed"})
        return AWSResponse(request.url, 200, {"Content-Type": "application/json"}, _Body(body.encode()))

    urls = [r"https://bedrock\..*"]
    config: Any = {"stepfunctions": {"execute_state_machine": True}, "core": {"passthrough": {"urls": urls, "services": []}}}
    with mock_aws(config=config):
        session = boto3._get_default_session()
        session.events.register_first("before-send.bedrock.GetModelInvocationJob", answer)
        undo = moto_patches.aws_sdk_member_casing() if patched else (lambda: None)
        try:
            sfn = boto3.client("stepfunctions", region_name=REGION)
            machine = sfn.create_state_machine(name="get", definition=GET_JOB_MACHINE, roleArn=f"arn:aws:iam::{ACCOUNT}:role/r")
            arn = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name="x", input="{}")["executionArn"]
            deadline = time.monotonic() + 10
            while (status := moto_patches.execution_status(ACCOUNT, REGION, arn)) == "RUNNING" and time.monotonic() < deadline:
                time.sleep(0.05)
            described = sfn.describe_execution(executionArn=arn)
        finally:
            undo()
            session.events.unregister("before-send.bedrock.GetModelInvocationJob", answer)

    if patched:
        # Then the SDK got jobIdentifier (in the URL) and the state read the response's Status, as in Step Functions
        assert status == "SUCCEEDED" and json.loads(described["output"]) == {"status": "Completed"}
        assert asked and asked[0].endswith("/model-invocation-job/job-1")
    else:
        # moto alone passes JobIdentifier through unchanged: the SDK has no jobIdentifier and the task fails
        assert status == "FAILED" and not asked


class _Body:
    def __init__(self, body: bytes) -> None:
        self._body, self._read = body, False

    def stream(self, **_: Any) -> Any:
        if not self._read:
            self._read = True
            yield self._body

    def read(self, *_: Any) -> bytes:
        if self._read:
            return b""
        self._read = True
        return self._body


def test_the_s3_url_table_is_built_once_per_setting_until_undone(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given moto's S3 backend, which reloads moto.s3.urls on every request unpatched
    from moto.s3 import models
    from moto.s3.models import s3_backends

    backend = s3_backends[ACCOUNT]["aws"]
    reloads: list[str] = []
    reload = models.reload
    monkeypatch.setattr(models, "reload", lambda module: reloads.append(module.__name__) or reload(module))
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="url-table")
    undo = moto_patches.cache_s3_urls()
    try:
        # When objects are written and read with the patch
        before = len(reloads)
        for n in range(5):
            s3.put_object(Bucket="url-table", Key=f"k{n}", Body=b"x")
            assert s3.get_object(Bucket="url-table", Key=f"k{n}")["Body"].read() == b"x"
        # Then the table was built at most once for the ten requests, and is the one moto builds
        assert len(reloads) - before <= 2  # one build reloads the module for urls and url_bases
        assert backend.urls is backend.urls
        # And a changed setting gets a table of its own, with the custom endpoint in it
        monkeypatch.setenv("MOTO_S3_CUSTOM_ENDPOINTS", "https://s3.fanout.test")
        assert any("fanout" in url for url in backend.urls)
        monkeypatch.delenv("MOTO_S3_CUSTOM_ENDPOINTS")
        assert not any("fanout" in url for url in backend.urls)
    finally:
        undo()
    # When undone, each request reloads the module again
    before = len(reloads)
    s3.put_object(Bucket="url-table", Key="after", Body=b"x")
    assert len(reloads) - before >= 1
    assert backend.urls is not backend.urls


def test_the_status_reader_follows_one_execution_to_its_end_without_looking_it_up_again(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an execution that waits a moment, and a reader made while it runs
    sfn = boto3.client("stepfunctions", region_name=REGION)
    waiting = json.dumps({"StartAt": "Wait", "States": {"Wait": {"Type": "Wait", "Seconds": 1, "End": True}}})
    machine = sfn.create_state_machine(name="w", definition=waiting, roleArn=f"arn:aws:iam::{ACCOUNT}:role/r")["stateMachineArn"]
    arn = sfn.start_execution(stateMachineArn=machine, name="e-wait", input="{}")["executionArn"]
    status_of = moto_patches.execution_status_reader(ACCOUNT, REGION, arn)
    assert status_of() == "RUNNING"

    # When it is polled while the backend refuses any further lookup
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    def no_lookup(*_: Any, **__: Any) -> Any:
        raise AssertionError("the reader looked the execution up again")

    monkeypatch.setattr(StepFunctionsParserBackend, "describe_execution", no_lookup)
    deadline = time.monotonic() + 10
    while (status := status_of()) == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.02)
    monkeypatch.undo()

    # Then it saw the end DescribeExecution reports
    assert status == sfn.describe_execution(executionArn=arn)["status"] == "SUCCEEDED"


def test_the_history_summary_counts_what_get_execution_history_lists(aws: None) -> None:
    # Given an execution of three states, one of them a Wait, that has ended
    sfn = boto3.client("stepfunctions", region_name=REGION)
    states = {
        "A": {"Type": "Pass", "Next": "W"},
        "W": {"Type": "Wait", "Seconds": 1, "Next": "B"},
        "B": {"Type": "Pass", "End": True},
    }
    definition = json.dumps({"StartAt": "A", "States": states})
    machine = sfn.create_state_machine(name="h", definition=definition, roleArn=f"arn:aws:iam::{ACCOUNT}:role/r")
    arn = sfn.start_execution(stateMachineArn=machine["stateMachineArn"], name="e-h", input="{}")["executionArn"]
    deadline = time.monotonic() + 10
    while sfn.describe_execution(executionArn=arn)["status"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.02)

    # When its summary is read in place
    entered, span = moto_patches.history_summary(ACCOUNT, REGION, arn)

    # Then it is what the API's pages give: the states entered, and the span from the first event to the last
    events = [e for page in sfn.get_paginator("get_execution_history").paginate(executionArn=arn) for e in page["events"]]
    assert entered == sum(e["type"].endswith("StateEntered") for e in events) == 3
    assert span is not None and span >= 1.0
    assert span == pytest.approx((events[-1]["timestamp"] - events[0]["timestamp"]).total_seconds(), abs=1e-3)


def test_the_interpreter_reuses_one_lambda_client_per_region_until_undone(aws: None) -> None:
    # Given the interpreter's client factory for Lambda tasks, patched
    from moto.stepfunctions.parser.asl.component.state.exec.state_task import lambda_eval_utils

    original = lambda_eval_utils.boto_client_for
    undo = moto_patches.reuse_lambda_clients()
    try:
        # When it is asked for clients, as it is once per Lambda task
        first = lambda_eval_utils.boto_client_for(region=REGION, service="lambda", state_credentials=None)
        again = lambda_eval_utils.boto_client_for(region=REGION, service="lambda", state_credentials=None)
        elsewhere = lambda_eval_utils.boto_client_for(region="eu-west-1", service="lambda", state_credentials=None)
        # Then one client serves a region's tasks, built as moto builds it, and another region gets its own
        assert first is again and elsewhere is not first
        assert first.meta.region_name == REGION and elsewhere.meta.region_name == "eu-west-1"
        assert first.meta.config.retries["total_max_attempts"] == 1
    finally:
        undo()
    # And once undone, moto's own factory builds a new client per task again
    assert lambda_eval_utils.boto_client_for is original
    assert original(REGION, "lambda") is not original(REGION, "lambda")


def test_error_shapes_are_looked_up_in_one_table_until_undone(aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given moto, which builds a service's table of error shapes anew for every error response unpatched
    from botocore.exceptions import ClientError
    from moto.core import errors

    builds: list[str] = []
    build = errors.ErrorLookupFactory._create_error_lut

    def counted(model: Any) -> Any:
        builds.append(model.service_name)
        return build(model)

    monkeypatch.setattr(errors.ErrorLookupFactory, "_create_error_lut", staticmethod(counted))
    s3 = boto3.client("s3", region_name=REGION)
    s3.create_bucket(Bucket="errors")

    def missing() -> dict[str, Any]:
        with pytest.raises(ClientError) as raised:
            s3.get_object(Bucket="errors", Key="missing")
        return dict(raised.value.response["Error"])

    unpatched = missing()
    undo = moto_patches.share_error_lookups()
    try:
        # When three reads of a missing key are answered with the patch
        before = len(builds)
        answers = [missing() for _ in range(3)]
        # Then the table was built once, and each answer is the error moto sends unpatched
        assert len(builds) - before <= 1
        assert answers == [unpatched] * 3 and unpatched["Code"] == "NoSuchKey"
    finally:
        undo()
    # When undone, each error builds the table again
    before = len(builds)
    missing(), missing()
    assert len(builds) - before >= 2


def test_a_definition_is_parsed_once_and_every_parse_is_a_new_program_until_undone(
    aws: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from moto.stepfunctions.parser.asl.antlr.runtime.ASLParser import ASLParser
    from moto.stepfunctions.parser.asl.parse.asl_parser import AmazonStateLanguageParser, ASLParserException

    # Given a definition no other test parsed, and a count of the grammar's parses
    parses: list[int] = []
    real = ASLParser.state_machine
    monkeypatch.setattr(ASLParser, "state_machine", lambda self: parses.append(1) or real(self))
    definition = json.dumps(
        {"StartAt": "Tree", "States": {"Tree": {"Type": "Pass", "Result": {"tree": time.time_ns()}, "End": True}}}
    )
    sfn = boto3.client("stepfunctions", region_name=REGION)
    undo = moto_patches.cache_asl_parse_trees()
    try:
        # When a state machine is created with it and run twice
        arn = sfn.create_state_machine(name="tree", definition=definition, roleArn=f"arn:aws:iam::{ACCOUNT}:role/r")[
            "stateMachineArn"
        ]
        outputs = []
        for n in range(2):
            execution = sfn.start_execution(stateMachineArn=arn, name=f"run-{n}", input="{}")["executionArn"]
            while (described := sfn.describe_execution(executionArn=execution))["status"] == "RUNNING":
                time.sleep(0.01)
            outputs.append(json.loads(described["output"]))

        # Then both executions ran it, from one parse of the grammar
        assert outputs == [json.loads(definition)["States"]["Tree"]["Result"]] * 2
        assert len(parses) == 1
        # And each parse is a new program, from the same tree
        (first, tree), (second, again) = AmazonStateLanguageParser.parse(definition), AmazonStateLanguageParser.parse(definition)
        assert first is not second and tree is again
        # And a definition with a syntax error is refused on every parse, as before
        for _ in range(2):
            with pytest.raises(ASLParserException):
                AmazonStateLanguageParser.parse('{"StartAt": "A", "States": {"A": {"Type": "Pass"')
        # And a second application changes nothing
        moto_patches.cache_asl_parse_trees()()
        AmazonStateLanguageParser.parse(definition)
        assert len(parses) == 3  # the two refused parses, no more
    finally:
        undo()

    # When undone, every parse parses again
    AmazonStateLanguageParser.parse(definition)
    assert len(parses) == 4
