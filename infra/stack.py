"""FanoutStack: storage, functions, workflow, trigger and observability, with the outputs a user needs to start a job.

cdk-nag (AwsSolutionsChecks, applied in app.py) checks it; each construct acknowledges its own findings next to
the grant or setting that causes them, with the reason (infra/nag.py).
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Stack
from constructs import Construct

from infra.config import FanoutConfig
from infra.functions import Functions
from infra.observability import Observability
from infra.storage import Storage
from infra.trigger import JobTrigger
from infra.workflow import Workflow


class FanoutStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: FanoutConfig, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.storage = Storage(self, "Storage", config=config)
        self.functions = Functions(
            self,
            "Functions",
            config=config,
            input_bucket=self.storage.input_bucket,
            results_bucket=self.storage.results_bucket,
            data_key=self.storage.data_key,
        )
        self.workflow = Workflow(
            self,
            "Workflow",
            config=config,
            functions=self.functions,
            results_bucket=self.storage.results_bucket,
            data_key=self.storage.data_key,
        )
        self.trigger = JobTrigger(
            self,
            "Trigger",
            input_bucket=self.storage.input_bucket,
            state_machine=self.workflow.state_machine,
        )
        self.observability = Observability(
            self,
            "Observability",
            config=config,
            functions=self.functions,
            state_machine=self.workflow.state_machine,
        )
        self._build_outputs()

    def _build_outputs(self) -> None:
        CfnOutput(self, "StateMachineArn", value=self.workflow.state_machine.state_machine_arn)
        CfnOutput(self, "InputBucketName", value=self.storage.input_bucket.bucket_name)
        CfnOutput(self, "ResultsBucketName", value=self.storage.results_bucket.bucket_name)
        CfnOutput(self, "DashboardName", value=self.observability.dashboard.dashboard_name)
