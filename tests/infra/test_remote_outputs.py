"""The stack's outputs are what `fanout submit --stack NAME` reads from DescribeStacks."""

from __future__ import annotations

from cdk_synth import Synthesized

from fanout.remote import STACK_OUTPUTS


def test_the_stack_outputs_name_the_state_machine_and_both_buckets(default_stack: Synthesized) -> None:
    template = default_stack.template_json
    outputs = template["Outputs"]
    assert set(STACK_OUTPUTS) <= set(outputs)
    resources = template["Resources"]

    def referenced(name: str) -> str:
        value = outputs[name]["Value"]
        return value["Ref"] if "Ref" in value else value["Fn::GetAtt"][0]

    assert resources[referenced("StateMachineArn")]["Type"] == "AWS::StepFunctions::StateMachine"
    assert {resources[referenced(n)]["Type"] for n in ("InputBucketName", "ResultsBucketName")} == {"AWS::S3::Bucket"}
    assert referenced("InputBucketName") != referenced("ResultsBucketName")
