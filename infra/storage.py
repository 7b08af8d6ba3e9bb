"""Buckets: job uploads come into the input bucket; task records and results go to the results bucket."""

from __future__ import annotations

from typing import cast

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_s3 as s3
from constructs import Construct

from infra.config import FanoutConfig

JOBS_PREFIX = "jobs/"
RUNS_PREFIX = "runs/"
RESULTS_PREFIX = "results/"


class Storage(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: FanoutConfig) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        self.input_bucket = self._build_input_bucket()
        self.results_bucket = self._build_results_bucket()

    def _build_input_bucket(self) -> s3.Bucket:
        bucket = s3.Bucket(
            self,
            "InputBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            # retained on `cdk destroy`: job files are the user's data, not the stack's
            removal_policy=RemovalPolicy.RETAIN,
        )
        # an object put under jobs/ starts an execution through an EventBridge rule; set natively in
        # CloudFormation, where event_bridge_enabled=True would add a custom resource and its own Lambda
        cast(s3.CfnBucket, bucket.node.default_child).notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
        )
        return bucket

    def _build_results_bucket(self) -> s3.Bucket:
        return s3.Bucket(
            self,
            "ResultsBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            versioned=True,
            lifecycle_rules=[
                # task records are only needed to resume or re-aggregate a recent run; results/ is kept
                s3.LifecycleRule(
                    id="ExpireRunRecords",
                    prefix=RUNS_PREFIX,
                    expiration=Duration.days(self._config.runs_expiration_days),
                    noncurrent_version_expiration=Duration.days(self._config.runs_expiration_days),
                ),
            ],
            # retained on `cdk destroy`: results outlive the stack that produced them
            removal_policy=RemovalPolicy.RETAIN,
        )
