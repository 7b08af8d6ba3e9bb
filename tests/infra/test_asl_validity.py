"""The ASL checked by an independent validator (the npm package asl-validator), as CreateStateMachine would.

moto, cfn-lint and cdk-nag accept definitions that Step Functions refuses (a state name used twice, say);
asl-validator checks the ASL specification itself. It runs on the file with plausible ARNs in place of its
placeholders, and on the definition the synthesized template deploys, with its substitutions resolved.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from cdk_synth import REPO, Synthesized

ASL_FILE = REPO / "statemachine" / "fanout.asl.json"
VALIDATOR = REPO / "node_modules" / ".bin" / "asl-validator"
ACCOUNT, REGION = "111122223333", "us-east-1"
PLAUSIBLE = {
    "PlanFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-plan",
    "SubtaskFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-subtask",
    "AggregateFunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fanout-aggregate",
    "ChildExecutionType": "EXPRESS",
    "BatchInferenceRoleArn": f"arn:aws:iam::{ACCOUNT}:role/fanout-batch-inference",
}
# the Lambda service errors to retry, as the Step Functions Developer Guide lists them on "Handle Lambda service
# exceptions" (bp-lambda-serviceexception); Lambda.Unknown (out of memory, timeouts) is a function error, not one of them
COPY_NOTE = re.compile(r" \(The distributed copy of \w+[:.][^)]*\)$")
LAMBDA_SERVICE_ERRORS = {
    "Lambda.ClientExecutionTimeoutException",
    "Lambda.ServiceException",
    "Lambda.AWSLambdaException",
    "Lambda.SdkClientException",
}


def validate(definition: dict[str, Any], where: Path) -> subprocess.CompletedProcess[str]:
    assert VALIDATOR.exists(), f"{VALIDATOR} is missing: run `make test` (it runs npm ci) or `npm ci`"
    where.write_text(json.dumps(definition))
    return subprocess.run([str(VALIDATOR), "--json-path", str(where)], capture_output=True, text=True, timeout=60)


def substituted(text: str, values: dict[str, str]) -> dict[str, Any]:
    filled = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text)
    assert "${" not in filled
    definition: dict[str, Any] = json.loads(filled)
    return definition


def test_the_asl_file_is_valid(tmp_path: Path) -> None:
    # Given the ASL file with plausible values for its placeholders
    definition = substituted(ASL_FILE.read_text(), PLAUSIBLE)

    # When asl-validator checks it
    checked = validate(definition, tmp_path / "fanout.json")

    # Then it finds nothing
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "is valid" in checked.stdout


def test_the_definition_the_template_deploys_is_valid(default_stack: Synthesized, tmp_path: Path) -> None:
    # Given the definition the template deploys: the staged file with the template's substitutions resolved
    machine = next(iter(default_stack.resources_of_type("AWS::StepFunctions::StateMachine").values()))["Properties"]
    staged = _staged_file(default_stack, machine["DefinitionS3Location"]["Key"])
    values = {k: _resolve(v) for k, v in machine["DefinitionSubstitutions"].items()}
    definition = substituted(staged.read_text(), values)
    assert definition["States"]["Plan"]["Parameters"]["FunctionName"].startswith(f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:")

    # When asl-validator checks it
    checked = validate(definition, tmp_path / "deployed.json")

    # Then it finds nothing
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_validator_refuses_a_state_name_used_twice(tmp_path: Path) -> None:
    # Given the definition as it was before the distributed Map's states had names of their own
    definition = substituted(ASL_FILE.read_text(), PLAUSIBLE)
    inline = definition["States"]["RunBatches"]["ItemProcessor"]
    definition["States"]["RunBatchesDistributed"]["ItemProcessor"]["StartAt"] = inline["StartAt"]
    definition["States"]["RunBatchesDistributed"]["ItemProcessor"]["States"] = copy.deepcopy(inline["States"])

    # When asl-validator checks it
    checked = validate(definition, tmp_path / "duplicate.json")

    # Then it is refused, as CreateStateMachine refuses it
    assert checked.returncode != 0
    assert "DUPLICATE_STATE_NAMES" in checked.stdout + checked.stderr


def test_every_state_name_is_unique_in_the_whole_state_machine() -> None:
    names = _state_names(json.loads(ASL_FILE.read_text()))
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_the_two_map_bodies_are_the_same_apart_from_their_names() -> None:
    # Given the inline and the distributed Map of the definition
    states = json.loads(ASL_FILE.read_text())["States"]
    inline, distributed = states["RunBatches"], states["RunBatchesDistributed"]

    # When the distributed one's state names (and the comments that say they are copies) are mapped back
    renamed = _strip_suffix(distributed["ItemProcessor"], "Distributed")

    # Then the processors do the same thing, and so do the Map states around them
    assert renamed["States"] == _without_copy_notes(inline["ItemProcessor"]["States"])
    assert renamed["StartAt"] == inline["ItemProcessor"]["StartAt"]
    assert inline["ItemProcessor"]["ProcessorConfig"] == {"Mode": "INLINE"}
    assert distributed["ItemProcessor"]["ProcessorConfig"] == {"Mode": "DISTRIBUTED", "ExecutionType": "${ChildExecutionType}"}
    shared = ("ItemSelector", "MaxConcurrencyPath", "ResultPath", "Next", "Catch")
    assert {k: inline.get(k) for k in shared} == {k: distributed.get(k) for k in shared}


def test_the_second_pass_runs_its_batches_as_the_first_pass_does() -> None:
    # Given the first pass's Maps and the second pass's (judge, escalation, synthesis batches)
    states = json.loads(ASL_FILE.read_text())["States"]
    renames = {"RunPassBatch": "RunBatch", "RecordPassBatchFailure": "RecordBatchFailure"}

    for first, second in (("RunBatches", "RunSecondPass"), ("RunBatchesDistributed", "RunSecondPassDistributed")):
        # When the second pass's state names are mapped back to the first's
        text = json.dumps(states[second]["ItemProcessor"])
        for new, old in renames.items():
            text = text.replace(f'"{new}', f'"{old}')
        renamed = json.loads(text)

        # Then each batch goes through the same RunBatch task, retries and failure record; only comments differ
        def bare(processor: dict[str, Any]) -> dict[str, Any]:
            return {
                **processor,
                "States": {n: {k: v for k, v in s.items() if k != "Comment"} for n, s in processor["States"].items()},
            }

        assert bare(renamed) == bare(states[first]["ItemProcessor"])
        assert set(states[second]["ItemSelector"]) == set(states[first]["ItemSelector"])
        # and both passes' Maps go back to Aggregate, whether they finished or failed
        for name in (first, second):
            assert states[name]["Next"] == "Aggregate", name
            assert [c["Next"] for c in states[name]["Catch"]] == ["Aggregate"], name


def test_the_second_pass_is_decided_in_the_choice_after_aggregate() -> None:
    # Given the states from the first pass's Maps to the end
    states = json.loads(ASL_FILE.read_text())["States"]

    # Then no state stands between the first Map and Aggregate (a job without a second pass enters none more)
    assert not {"NeedsSecondPass", "StartSecondPass", "PlanSecondPass", "ChooseSecondPass"} & set(states)
    # and Aggregate tells the aggregate function whether a second pass follows and which stage ran last,
    # starting from Plan's "no stage yet", keeping the plan in the state for the loop and the lease's release
    assert states["Plan"]["ResultSelector"]["step"] == {"result": {"status": "planned", "stage": 0}}
    aggregate = states["Aggregate"]
    assert aggregate["Parameters"]["FunctionName"] == "${AggregateFunctionArn}"
    payload = aggregate["Parameters"]["Payload"]
    assert (payload["second_pass.$"], payload["stage.$"]) == ("$.plan.second_pass", "$.step.result.stage")
    assert (aggregate["ResultSelector"], aggregate["ResultPath"]) == ({"result.$": "$.Payload"}, "$.step")
    assert aggregate["TimeoutSeconds"] == 900 and aggregate["Catch"][0]["Next"] == "ReleaseLease"
    # and CheckStatus routes on its result: failed, a stage to run (inline or distributed), no stage left, the summary
    second = {"Variable": "$.step.result.status", "StringEquals": "second_pass"}
    assert states["CheckStatus"]["Choices"] == [
        {"Variable": "$.step.result.status", "StringEquals": "failed", "Next": "JobFailed"},
        # (And stops at its first false rule: done and mode are read of a second-pass stage only)
        {"And": [second, {"Variable": "$.step.result.done", "BooleanEquals": True}], "Next": "Aggregate"},
        {
            "And": [second, {"Variable": "$.step.result.mode", "StringEquals": "distributed"}],
            "Next": "RunSecondPassDistributed",
        },
        {**second, "Next": "RunSecondPass"},
    ]
    assert states["CheckStatus"]["Default"] == "Done"
    # and the execution's output is the summary alone; JobFailed's cause is read where both ways in put it
    assert {k: v for k, v in states["Done"].items() if k != "Comment"} == {"Type": "Succeed", "OutputPath": "$.step.result"}
    assert states["ReadAggregateFailure"]["ResultPath"] == "$.step.result"
    assert states["JobFailed"]["CausePath"] == "$.step.result.message"


def test_every_lambda_task_retries_every_lambda_service_error() -> None:
    tasks = [s for s in _all_states(json.loads(ASL_FILE.read_text())) if s.get("Resource") == "arn:aws:states:::lambda:invoke"]
    assert len(tasks) == 7  # plan, a batch in each of the four Maps, the batch inference join, aggregate
    for task in tasks:
        retried = {error for retrier in task.get("Retry", []) for error in retrier["ErrorEquals"]}
        assert retried >= LAMBDA_SERVICE_ERRORS, task["Comment"]


def _strip_suffix(processor: dict[str, Any], suffix: str) -> dict[str, Any]:
    text = json.dumps(processor)
    for name in _state_names(processor):
        text = text.replace(f'"{name}"', f'"{name.removesuffix(suffix)}"')
    renamed: dict[str, Any] = json.loads(text)
    renamed["States"] = _without_copy_notes(renamed["States"])
    return renamed


def _without_copy_notes(states: dict[str, Any]) -> dict[str, Any]:
    """The states with the note that says which copy a state is taken out of their Comment."""
    return {name: {**state, "Comment": COPY_NOTE.sub("", state["Comment"])} for name, state in states.items()}


def _state_names(definition: dict[str, Any]) -> list[str]:
    names = []
    for name, state in definition["States"].items():
        names.append(name)
        for inner in [state.get("ItemProcessor") or state.get("Iterator"), *state.get("Branches", [])]:
            if inner:
                names.extend(_state_names(inner))
    return names


def _all_states(definition: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for state in definition["States"].values():
        found.append(state)
        for inner in [state.get("ItemProcessor") or state.get("Iterator"), *state.get("Branches", [])]:
            if inner:
                found.extend(_all_states(inner))
    return found


def _resolve(value: Any) -> str:
    """A CloudFormation string expression with plausible values: GetAtt X.Arn of a function, pseudo parameters."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Fn::GetAtt" and arg[1] == "Arn":
            return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{arg[0]}"
        if fn == "Ref":
            return {"AWS::Partition": "aws", "AWS::Region": REGION, "AWS::AccountId": ACCOUNT}.get(arg, arg)
        if fn == "Fn::Join":
            return str(arg[0]).join(_resolve(part) for part in arg[1])
        if fn == "Fn::Sub" and isinstance(arg, str):
            return arg.replace("${AWS::Partition}", "aws").replace("${AWS::Region}", REGION).replace("${AWS::AccountId}", ACCOUNT)
    raise AssertionError(f"cannot resolve {value!r}")


def _staged_file(synthesized: Synthesized, object_key: str) -> Path:
    manifest = json.loads((synthesized.outdir / f"{synthesized.stack.artifact_id}.assets.json").read_text())
    for asset in manifest["files"].values():
        if any(dest["objectKey"] == object_key for dest in asset["destinations"].values()):
            return synthesized.outdir / asset["source"]["path"]
    raise AssertionError(f"no asset is uploaded as {object_key}")
