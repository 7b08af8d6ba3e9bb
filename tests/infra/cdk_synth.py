"""Synthesis for the infrastructure tests: the stack as app.py builds it, from cdk.json context, with cdk-nag.

A module of its own (not conftest) so that test modules can import it by a name no other test folder uses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aws_cdk as cdk
from aws_cdk import cx_api
from cdk_nag import AwsSolutionsChecks

from infra.config import FanoutConfig
from infra.stack import FanoutStack

REPO = Path(__file__).resolve().parents[2]

# every optional setting on: a customer KMS key, an alarm address, the debug logging of content, ALL events
EVERYTHING_ON: dict[str, Any] = {
    "fanout:kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab",
    "fanout:alarmEmail": "oncall@example.com",
    "fanout:logContent": True,
    "fanout:stateMachineLogLevel": "ALL",
}


@dataclass(frozen=True)
class Synthesized:
    stack: FanoutStack
    assembly: cx_api.CloudAssembly
    outdir: Path

    @property
    def template_json(self) -> dict[str, Any]:
        template: dict[str, Any] = self.assembly.get_stack_by_name(self.stack.stack_name).template
        return template

    @property
    def template_file(self) -> Path:
        return self.outdir / self.assembly.get_stack_by_name(self.stack.stack_name).template_file

    def resources_of_type(self, type_name: str) -> dict[str, Any]:
        return {k: v for k, v in self.template_json["Resources"].items() if v["Type"] == type_name}

    def role_statements(self) -> dict[str, list[dict[str, Any]]]:
        """Every statement of every role's inline and attached policies, by role logical id."""
        resources = self.template_json["Resources"]
        found: dict[str, list[dict[str, Any]]] = {}
        for role_id, role in self.resources_of_type("AWS::IAM::Role").items():
            policies = role["Properties"].get("Policies", [])
            found[role_id] = [s for p in policies for s in p["PolicyDocument"]["Statement"]]
        for policy in (r for r in resources.values() if r["Type"] == "AWS::IAM::Policy"):
            for role in policy["Properties"].get("Roles", []):
                found[role["Ref"]].extend(policy["Properties"]["PolicyDocument"]["Statement"])
        return found


def cdk_json_context() -> dict[str, Any]:
    context: dict[str, Any] = json.loads((REPO / "cdk.json").read_text())["context"]
    return context


def synthesize(outdir: Path, *, bundle: bool, **overrides: Any) -> Synthesized:
    """Synthesize FanoutStack into outdir; without bundle the Lambda asset is neither built nor staged."""
    context = {**cdk_json_context(), **overrides}
    if not bundle:
        # an empty list bundles no stack: the asset gets a source hash, and these tests take seconds, not a minute
        context["aws:cdk:bundling-stacks"] = []
    app = cdk.App(context=context, outdir=str(outdir))
    config = FanoutConfig.from_node(app.node)
    stack = FanoutStack(app, config.stack_name, config=config)
    cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    return Synthesized(stack=stack, assembly=app.synth(), outdir=outdir)
