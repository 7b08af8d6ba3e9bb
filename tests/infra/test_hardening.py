"""What a security reviewer checks: cdk-nag and cfn-lint findings, every suppression's reason, encryption in both
modes (SSE-S3, and SSE-KMS with fanout:kmsKeyArn), and the state machine's logging settings."""

from __future__ import annotations

from typing import Any

import pytest
from aws_cdk.assertions import Annotations, Match
from cdk_synth import EVERYTHING_ON, Synthesized
from cfnlint.api import ManualArgs, lint_file

# cdk-nag rules acknowledged somewhere in the stack; each acknowledgement carries its reason (infra/nag.py)
ACKNOWLEDGED_RULES = {
    "AwsSolutions-S1",  # server access logs (storage.py)
    "AwsSolutions-L1",  # runtime from fanout:lambdaRuntime (functions.py)
    "AwsSolutions-IAM5",  # each wildcard resource, one by one (functions.py, workflow.py)
    "AwsSolutions-SF1",  # ERROR-level state machine logs (workflow.py), unless fanout:stateMachineLogLevel is ALL
    "AwsSolutions-SNS2",  # alarm topic without a customer key (observability.py), only with fanout:alarmEmail
}
# cfn-lint warnings accepted: CDK writes DependsOn on a role the resource already references through GetAtt
ACCEPTED_CFN_LINT_WARNINGS = {"W3005"}
# Bedrock regions the template is checked against, besides the default
LINT_REGIONS = ["us-east-1", "us-west-2", "eu-central-1"]


@pytest.fixture(scope="module", params=["default", "everything_on"])
def synthesized(request: pytest.FixtureRequest) -> Synthesized:
    stack: Synthesized = request.getfixturevalue(f"{request.param}_stack")
    return stack


# ---------------------------------------------------------------- cdk-nag


def test_cdk_nag_reports_no_unacknowledged_finding(synthesized: Synthesized) -> None:
    # Given the stack with the AwsSolutions checks applied, as app.py applies them
    annotations = Annotations.from_stack(synthesized.stack)

    # Then no finding is left: neither an error (which fails `cdk synth`) nor a warning
    errors = annotations.find_error("*", Match.string_like_regexp("AwsSolutions-.*"))
    warnings = annotations.find_warning("*", Match.string_like_regexp("AwsSolutions-.*"))
    assert [(e.id, e.entry.data) for e in errors] == []
    assert [(w.id, w.entry.data) for w in warnings] == []


def test_every_acknowledgement_is_specific_and_says_why(synthesized: Synthesized) -> None:
    # Given the cdk-nag acknowledgements written into the template's metadata
    acknowledged = [
        (logical_id, rule)
        for logical_id, resource in synthesized.template_json["Resources"].items()
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    ]
    assert acknowledged, "cdk-nag acknowledgements should be in the template metadata"

    for logical_id, rule in acknowledged:
        # Then each names a known rule and explains itself in a sentence, not a word
        assert rule["id"] in ACKNOWLEDGED_RULES, f"{logical_id}: {rule['id']} is acknowledged; review it and list it here"
        assert len(rule["reason"]) >= 60, f"{logical_id}: {rule['id']} needs a specific reason, got {rule['reason']!r}"
        # and a wildcard is acknowledged one resource at a time, never for the whole policy
        if rule["id"] == "AwsSolutions-IAM5":
            applies_to = rule.get("applies_to", [])
            assert len(applies_to) == 1 and applies_to[0].startswith("Resource::"), f"{logical_id}: {rule}"


def test_logging_all_events_needs_no_acknowledgement(everything_on_stack: Synthesized) -> None:
    acknowledged = {
        rule["id"]
        for resource in everything_on_stack.template_json["Resources"].values()
        for rule in resource.get("Metadata", {}).get("cdk_nag", {}).get("rules_to_suppress", [])
    }
    assert "AwsSolutions-SF1" not in acknowledged


# ---------------------------------------------------------------- cfn-lint


def test_cfn_lint_finds_no_error(synthesized: Synthesized) -> None:
    # Given the synthesized template file, as `cdk deploy` uploads it
    template = synthesized.template_file

    # When cfn-lint checks it for the regions Bedrock models are commonly used in
    matches = lint_file(template, config=ManualArgs(regions=LINT_REGIONS))

    # Then it finds no error, and no warning besides the accepted ones
    found = [f"{m.rule.id} {m.message} (line {m.linenumber})" for m in matches]
    assert [m for m in found if m.startswith("E")] == []
    assert {m.rule.id for m in matches} <= ACCEPTED_CFN_LINT_WARNINGS, "\n".join(found)


# ---------------------------------------------------------------- buckets and encryption


def test_buckets_disable_acls_and_refuse_tls_older_than_1_2(synthesized: Synthesized) -> None:
    buckets = synthesized.resources_of_type("AWS::S3::Bucket")
    policies = synthesized.resources_of_type("AWS::S3::BucketPolicy").values()
    assert len(buckets) == 2
    for bucket_id, bucket in buckets.items():
        assert bucket["Properties"]["OwnershipControls"] == {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]}
        (policy,) = [p for p in policies if p["Properties"]["Bucket"] == {"Ref": bucket_id}]
        conditions = [s["Condition"] for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert {"NumericLessThan": {"s3:TlsVersion": 1.2}} in conditions
        assert {"Bool": {"aws:SecureTransport": "false"}} in conditions


def test_buckets_use_s3_managed_keys_by_default_and_no_kms(default_stack: Synthesized) -> None:
    for bucket in default_stack.resources_of_type("AWS::S3::Bucket").values():
        (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule["ServerSideEncryptionByDefault"] == {"SSEAlgorithm": "AES256"}
    actions = {a for statements in default_stack.role_statements().values() for s in statements for a in _actions(s)}
    assert not {a for a in actions if a.startswith("kms:")}


def test_buckets_use_the_configured_kms_key_and_every_reader_and_writer_may_use_it(everything_on_stack: Synthesized) -> None:
    key = EVERYTHING_ON["fanout:kmsKeyArn"]
    # Given both buckets encrypt with the key, one data key per bucket (S3 Bucket Keys)
    for bucket in everything_on_stack.resources_of_type("AWS::S3::Bucket").values():
        (rule,) = bucket["Properties"]["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rule == {
            "BucketKeyEnabled": True,
            "ServerSideEncryptionByDefault": {"KMSMasterKeyID": key, "SSEAlgorithm": "aws:kms"},
        }

    # Then every role that touches S3 (the three functions, the state machine and the batch inference service role)
    # may use the key through S3 only
    statements = everything_on_stack.role_statements()
    s3_roles = {role for role, found in statements.items() if any(a.startswith("s3:") for s in found for a in _actions(s))}
    assert len(s3_roles) == 5
    via_s3 = {"StringEquals": {"kms:ViaService": {"Fn::Join": ["", ["s3.", {"Ref": "AWS::Region"}, ".amazonaws.com"]]}}}
    for role in s3_roles:
        kms = [s for s in statements[role] if any(a.startswith("kms:") for a in _actions(s))]
        assert [(sorted(_actions(s)), s["Resource"], s["Condition"]) for s in kms] == [
            (["kms:Decrypt", "kms:GenerateDataKey"], key, via_s3)
        ], role
    # and no other role may
    others = {role for role, found in statements.items() if any(a.startswith("kms:") for s in found for a in _actions(s))}
    assert others == s3_roles


# ---------------------------------------------------------------- logging settings


def test_debug_settings_log_all_events_with_data_and_content(everything_on_stack: Synthesized) -> None:
    (machine,) = everything_on_stack.resources_of_type("AWS::StepFunctions::StateMachine").values()
    logging = machine["Properties"]["LoggingConfiguration"]
    assert (logging["Level"], logging["IncludeExecutionData"]) == ("ALL", True)
    for function in everything_on_stack.resources_of_type("AWS::Lambda::Function").values():
        assert function["Properties"]["Environment"]["Variables"]["FANOUT_LOG_CONTENT"] == "true"


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement.get("Action", [])
    return [action] if isinstance(action, str) else list(action)
