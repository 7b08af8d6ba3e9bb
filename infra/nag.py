"""cdk-nag suppressions, written one finding at a time with the reason next to the grant that causes it.

cdk-nag names an IAM5 finding after the resource as it reads it in the template: a bucket's ARN is
``<LogicalId.Arn>``, a pseudo parameter ``<AWS::Region>``. Suppressions here name those findings exactly, so
a new wildcard added later is reported, not silently covered.
"""

from __future__ import annotations

from aws_cdk import Aws, CfnElement, Stack
from cdk_nag import NagPackSuppression, NagSuppressions
from constructs import IConstruct


def template_arn(resource: IConstruct, suffix: str = "") -> str:
    """A resource's ARN as cdk-nag writes it in a finding: <LogicalId.Arn> followed by suffix."""
    element = resource.node.default_child
    assert isinstance(element, CfnElement), f"{resource.node.path} has no CloudFormation resource"
    return f"<{Stack.of(resource).get_logical_id(element)}.Arn>{suffix}"


def nag_reads(arn: str) -> str:
    """An ARN built with pseudo parameters as cdk-nag prints it: <AWS::Partition>, <AWS::Region>, <AWS::AccountId>."""
    for token, name in ((Aws.PARTITION, "AWS::Partition"), (Aws.REGION, "AWS::Region"), (Aws.ACCOUNT_ID, "AWS::AccountId")):
        arn = arn.replace(token, f"<{name}>")
    return arn


def suppress_wildcards(scope: IConstruct, findings: dict[str, str]) -> None:
    """Acknowledge AwsSolutions-IAM5 for each wildcard resource (as cdk-nag names it) with its own reason."""
    NagSuppressions.add_resource_suppressions(
        scope,
        [
            NagPackSuppression(id="AwsSolutions-IAM5", reason=reason, applies_to=[f"Resource::{resource}"])
            for resource, reason in findings.items()
        ],
        apply_to_children=True,
    )


def suppress(scope: IConstruct, rule: str, reason: str) -> None:
    """Acknowledge one rule on a construct and its children, with its reason."""
    NagSuppressions.add_resource_suppressions(scope, [NagPackSuppression(id=rule, reason=reason)], apply_to_children=True)
