"""Buckets: job uploads come into the input bucket; task records and results go to the results bucket.

Both block all public access, deny requests without TLS 1.2+, disable ACLs, and are encrypted with S3-managed
keys, or with the customer key of `fanout:kmsKeyArn` when it is set. Both are retained when the stack is
deleted: they hold the user's jobs and results, not the stack's state (README, "Tearing it down").
"""

from __future__ import annotations

from typing import cast

from aws_cdk import Duration, RemovalPolicy
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from constructs import Construct

from fanout_core import layout
from infra.config import FanoutConfig
from infra.nag import suppress

# the prefixes are the run layout's (fanout_core.layout)
JOBS_PREFIX = layout.JOBS
RUNS_PREFIX = layout.RUNS
RESULTS_PREFIX = layout.RESULTS

# the Distributed Map's ResultWriter uploads in parts; parts of an upload that never completed are billed
ABORT_INCOMPLETE_UPLOADS = Duration.days(1)

_NO_ACCESS_LOGS = (
    "server access logs would need a third, unlogged bucket and grow without bound; object-level access is "
    "audited with CloudTrail S3 data events when the account enables them, and nothing here is public "
    "(public access blocked, TLS-only policy, ACLs disabled)"
)


class Storage(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: FanoutConfig) -> None:
        super().__init__(scope, construct_id)
        self._config = config
        # a key of the user's, imported by ARN: its key policy stays theirs (it must let this account's roles use it)
        self.data_key: kms.IKey | None = kms.Key.from_key_arn(self, "DataKey", config.kms_key_arn) if config.kms_key_arn else None
        self.input_bucket = self._build_input_bucket()
        self.results_bucket = self._build_results_bucket()

    def _bucket(
        self, construct_id: str, *, versioned: bool = False, lifecycle_rules: list[s3.LifecycleRule] | None = None
    ) -> s3.Bucket:
        """A bucket with the settings both share: private, TLS-only, encrypted, retained."""
        bucket = s3.Bucket(
            self,
            construct_id,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            encryption=s3.BucketEncryption.KMS if self.data_key else s3.BucketEncryption.S3_MANAGED,
            encryption_key=self.data_key,
            # one data key per bucket for a while instead of a KMS request per object: cheaper, fewer throttles
            bucket_key_enabled=True if self.data_key else None,
            versioned=versioned,
            lifecycle_rules=lifecycle_rules,
            # retained on `cdk destroy`: jobs and results are the user's data, not the stack's
            removal_policy=RemovalPolicy.RETAIN,
        )
        suppress(bucket, "AwsSolutions-S1", _NO_ACCESS_LOGS)
        return bucket

    def _build_input_bucket(self) -> s3.Bucket:
        bucket = self._bucket("InputBucket")
        # an object put under jobs/ starts an execution through an EventBridge rule; set natively in
        # CloudFormation, where event_bridge_enabled=True would add a custom resource and its own Lambda
        cast(s3.CfnBucket, bucket.node.default_child).notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            event_bridge_configuration=s3.CfnBucket.EventBridgeConfigurationProperty(event_bridge_enabled=True)
        )
        return bucket

    def _build_results_bucket(self) -> s3.Bucket:
        days = Duration.days(self._config.runs_expiration_days)
        return self._bucket(
            "ResultsBucket",
            # an overwritten or deleted result can be recovered for runsExpirationDays
            versioned=True,
            lifecycle_rules=[
                # task records are only needed to resume or re-aggregate a recent run
                s3.LifecycleRule(
                    id="ExpireRunRecords",
                    prefix=RUNS_PREFIX,
                    expiration=days,
                    noncurrent_version_expiration=days,
                    abort_incomplete_multipart_upload_after=ABORT_INCOMPLETE_UPLOADS,
                ),
                # results/ is kept; only the versions a re-run replaced expire
                s3.LifecycleRule(id="ExpireReplacedResults", prefix=RESULTS_PREFIX, noncurrent_version_expiration=days),
            ],
        )
