"""The S3 upload rule: its pattern and input transformer in the template, against S3's documented event, into Plan."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import aws_cdk as cdk
import boto3
import pytest
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk.assertions import Template
from moto import mock_aws

from infra import job_rule
from infra.trigger import JobTrigger

BUCKET = "amzn-s3-demo-bucket1"
RESULTS = "fanout-results"

# the "Object Created" event of the S3 user guide (EventBridge event message structure), with a job's key
DOCUMENTED_EVENT: dict[str, Any] = {
    "version": "0",
    "id": "17793124-05d4-b198-2fde-7ededc63b103",
    "detail-type": "Object Created",
    "source": "aws.s3",
    "account": "111122223333",
    "time": "2021-11-12T00:00:00Z",
    "region": "ca-central-1",
    "resources": [f"arn:aws:s3:::{BUCKET}"],
    "detail": {
        "version": "0",
        "bucket": {"name": BUCKET},
        "object": {
            "key": "jobs/ticket-triage.json",
            "size": 5,
            "etag": "b1946ac92492d2347c6235b4d2611184",
            "version-id": "IYV3p45BT0ac8hjHg1houSdS1a.Mro8e",
            "sequencer": "617f08299329d189",
        },
        "request-id": "N4N7GDK58NMKJ12R",
        "requester": "123456789012",
        "source-ip-address": "1.2.3.4",
        "reason": "PutObject",
    },
}


def event_with(key: str | None = None, **top: Any) -> dict[str, Any]:
    event = copy.deepcopy(DOCUMENTED_EVENT)
    if key is not None:
        event["detail"]["object"]["key"] = key
    event.update(top)
    return event


@pytest.fixture(scope="module")
def rule() -> tuple[dict[str, Any], dict[str, str]]:
    """The rule's properties as synthesized, and the logical ids of its bucket and state machine."""
    stack = cdk.Stack()
    bucket = s3.Bucket(stack, "Input")
    machine = sfn.StateMachine(stack, "Machine", definition_body=sfn.DefinitionBody.from_chainable(sfn.Pass(stack, "P")))
    JobTrigger(stack, "Trigger", input_bucket=bucket, state_machine=machine)
    template = Template.from_stack(stack)
    template.resource_count_is("AWS::Events::Rule", 1)
    ((_, found),) = template.find_resources("AWS::Events::Rule").items()
    ids = {
        "bucket": next(iter(template.find_resources("AWS::S3::Bucket"))),
        "machine": next(iter(template.find_resources("AWS::StepFunctions::StateMachine"))),
    }
    return found["Properties"], ids


def test_the_template_holds_the_shared_pattern_and_a_bucket_and_key_transformer(
    rule: tuple[dict[str, Any], dict[str, str]],
) -> None:
    properties, ids = rule

    # the pattern is the one `fanout serve` evaluates, with the input bucket's name
    assert properties["EventPattern"] == job_rule.event_pattern({"Ref": ids["bucket"]})  # type: ignore[arg-type]
    assert properties["EventPattern"]["detail"]["object"]["key"] == [{"wildcard": "jobs/*.json"}]

    # and its one target starts the state machine with {"bucket", "key"} taken from the event
    (target,) = properties["Targets"]
    assert target["Arn"] == {"Ref": ids["machine"]}
    transformer = target["InputTransformer"]
    assert sorted(transformer["InputPathsMap"].values()) == sorted(job_rule.INPUT_PATHS.values())
    assert json.loads(render_input_transformer(transformer, DOCUMENTED_EVENT)) == {
        "bucket": BUCKET,
        "key": "jobs/ticket-triage.json",
    }


def test_the_pattern_matches_the_documented_object_created_event() -> None:
    assert job_rule.matches(job_rule.event_pattern(BUCKET), DOCUMENTED_EVENT)


@pytest.mark.parametrize("key", ["jobs/a.json", "jobs/team-a/2026/triage.json", "jobs/with space & ünïcode.json", "jobs/.json"])
def test_json_objects_anywhere_under_jobs_match(key: str) -> None:
    assert job_rule.matches(job_rule.event_pattern(BUCKET), event_with(key))


@pytest.mark.parametrize(
    ("event", "why"),
    [
        (event_with("ticket-triage.json"), "outside jobs/"),
        (event_with("uploads/jobs/ticket-triage.json"), "jobs/ not at the start"),
        (event_with("jobs/ticket-triage.txt"), "not .json"),
        (event_with("jobs/ticket-triage.json.bak"), "not ending in .json"),
        (event_with("jobs/ticket-triage.JSON"), "suffixes are case-sensitive in EventBridge"),
        (event_with("jobs/"), "a folder marker"),
        (event_with(**{"detail-type": "Object Deleted"}), "not a creation"),
        (event_with(source="aws.s3-outposts"), "another source"),
    ],
)
def test_the_pattern_refuses(event: dict[str, Any], why: str) -> None:
    assert not job_rule.matches(job_rule.event_pattern(BUCKET), event), why


def test_the_pattern_refuses_other_buckets() -> None:
    assert not job_rule.matches(job_rule.event_pattern("another-bucket"), DOCUMENTED_EVENT)


def test_wildcard_escapes_follow_eventbridge() -> None:
    # a backslash makes "*" (and itself) literal
    pattern = {"k": [{"wildcard": "a\\*b*"}]}
    assert job_rule.matches(pattern, {"k": "a*bc"})
    assert not job_rule.matches(pattern, {"k": "aXbc"})


def test_plan_accepts_the_transformer_output_and_names_the_object_when_the_job_is_bad(
    rule: tuple[dict[str, Any], dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fanout_core import steps
    from fanout_core.errors import InvalidJob
    from fanout_core.settings import Settings

    # Given the execution input the deployed transformer produces for an upload of a valid and of a broken job
    transformer = rule[0]["Targets"][0]["InputTransformer"]
    good = json.loads(render_input_transformer(transformer, event_with("jobs/ticket-triage.json")))
    bad = json.loads(render_input_transformer(transformer, event_with("jobs/team-a/broken.json")))
    assert good == job_rule.transform(event_with("jobs/ticket-triage.json"))
    job = {"pattern": "voting", "votes": 3, "prompt": "{text}", "items": [{"id": "t-1", "text": "Refund took weeks."}]}
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(name, "testing")
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        for bucket in (BUCKET, RESULTS):
            client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=BUCKET, Key="jobs/ticket-triage.json", Body=json.dumps(job))
        client.put_object(Bucket=BUCKET, Key="jobs/team-a/broken.json", Body=json.dumps({**job, "votes": 1}))

        # When Plan runs on each
        planned = steps.plan(good, "execution-name", s3=client, settings=Settings(results_bucket=RESULTS))
        with pytest.raises(InvalidJob) as refused:
            steps.plan(bad, "execution-name", s3=client, settings=Settings(results_bucket=RESULTS))

    # Then the good job is planned under its key's stem, and the bad one is refused naming the object and the field
    assert planned["job_id"] == "ticket-triage"
    assert planned["counts"]["tasks"] == 3
    assert str(refused.value).startswith(f"s3://{BUCKET}/jobs/team-a/broken.json: votes: ")


def render_input_transformer(transformer: dict[str, Any], event: dict[str, Any]) -> str:
    """What EventBridge sends for an event: each <placeholder> of the template replaced by its path's value as JSON."""
    values = {name: _at(event, path) for name, path in transformer["InputPathsMap"].items()}
    return re.sub(r"<([\w-]+)>", lambda m: json.dumps(values[m.group(1)]), transformer["InputTemplate"])


def _at(event: dict[str, Any], path: str) -> Any:
    value: Any = event
    for name in path.removeprefix("$.").split("."):
        value = value[name]
    return value
