#!/usr/bin/env python3
"""CDK app: one FanoutStack, configured by the `fanout:*` context in cdk.json. Synth needs no credentials or Docker.

cdk-nag's AwsSolutions checks run on every synth: an unacknowledged finding is an error and fails `cdk synth`.
"""

from __future__ import annotations

import os

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from infra.config import FanoutConfig
from infra.stack import FanoutStack


def _environment() -> cdk.Environment | None:
    # pinned only when the CLI knows the target (credentials or AWS_REGION); otherwise env-agnostic
    account = os.environ.get("CDK_DEFAULT_ACCOUNT")
    region = os.environ.get("CDK_DEFAULT_REGION")
    if account and region:
        return cdk.Environment(account=account, region=region)
    return None


def main() -> None:
    app = cdk.App()
    config = FanoutConfig.from_node(app.node)
    FanoutStack(
        app,
        config.stack_name,
        config=config,
        env=_environment(),
        description="fanout: parallel LLM workflows on Step Functions, Lambda and Bedrock",
    )
    cdk.Aspects.of(app).add(AwsSolutionsChecks(verbose=True))
    app.synth()


if __name__ == "__main__":
    main()
