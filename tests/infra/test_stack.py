"""FanoutStack as synthesized from cdk.json: definition and substitutions, functions, buckets, IAM scoping, logging."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path
from typing import Any

import aws_cdk as cdk
import pytest
from aws_cdk.assertions import Match, Template
from cdk_synth import REPO, Synthesized

from infra.functions import bedrock_model_arns

ASL_FILE = REPO / "statemachine" / "fanout.asl.json"
FUNCTIONS = ("plan", "subtask", "aggregate")
PROFILE_PREFIXES = ("us", "eu", "apac", "global")


@pytest.fixture(scope="module")
def synthesized(default_stack: Synthesized) -> Synthesized:
    return default_stack


@pytest.fixture(scope="module")
def template(synthesized: Synthesized) -> Template:
    return Template.from_json(synthesized.template_json)


@pytest.fixture(scope="module")
def resources(synthesized: Synthesized) -> dict[str, Any]:
    found: dict[str, Any] = synthesized.template_json["Resources"]
    return found


@pytest.fixture(scope="module")
def function_ids(resources: dict[str, Any]) -> dict[str, str]:
    """Logical id of each fanout function, by name (plan, subtask, aggregate), found by its handler."""
    ids = {}
    for logical_id, resource in _of_type(resources, "AWS::Lambda::Function").items():
        match = re.fullmatch(r"fanout_core\.handlers\.(\w+)\.lambda_handler", resource["Properties"]["Handler"])
        if match:
            ids[match.group(1)] = logical_id
    return ids


@pytest.fixture(scope="module")
def bucket_ids(resources: dict[str, Any]) -> dict[str, str]:
    buckets = _of_type(resources, "AWS::S3::Bucket")
    assert len(buckets) == 2, f"expected the input and results buckets, found {sorted(buckets)}"
    return {
        "input": next(i for i in buckets if "InputBucket" in i),
        "results": next(i for i in buckets if "ResultsBucket" in i),
    }


@pytest.fixture(scope="module")
def state_machine(resources: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    machines = _of_type(resources, "AWS::StepFunctions::StateMachine")
    assert len(machines) == 1
    return next(iter(machines.items()))


# ---------------------------------------------------------------- definition and substitutions


def test_deployed_definition_is_the_asl_file(synthesized: Synthesized, state_machine: tuple[str, dict[str, Any]]) -> None:
    # Given the state machine's definition location in the template
    _, machine = state_machine
    key = machine["Properties"]["DefinitionS3Location"]["Key"]

    # When the staged asset it names is read from the cloud assembly
    staged = _staged_file(synthesized, key)

    # Then it is the ASL file, unchanged
    assert json.loads(staged.read_text()) == json.loads(ASL_FILE.read_text())
    assert "DefinitionString" not in machine["Properties"]


def test_every_placeholder_has_a_substitution_and_none_is_unused(state_machine: tuple[str, dict[str, Any]]) -> None:
    # Given the ${...} placeholders of the ASL file
    placeholders = set(re.findall(r"\$\{(\w+)\}", ASL_FILE.read_text()))
    assert placeholders, "the ASL file should reference the functions through placeholders"

    # When compared with the substitutions the stack deploys
    substitutions = state_machine[1]["Properties"]["DefinitionSubstitutions"]

    # Then each placeholder is filled and no substitution is left over
    assert placeholders == set(substitutions)


def test_each_task_state_invokes_its_function(state_machine: tuple[str, dict[str, Any]], function_ids: dict[str, str]) -> None:
    # Given the definition after CloudFormation's substitution (values rendered as ${LogicalId.Arn})
    substitutions = {k: _render(v) for k, v in state_machine[1]["Properties"]["DefinitionSubstitutions"].items()}
    text = re.sub(r"\$\{(\w+)\}", lambda m: substitutions[m.group(1)], ASL_FILE.read_text())
    definition = json.loads(text)

    # When every lambda:invoke task is listed with the function it names (a batch once per Map mode)
    invoked = [(name, state["Parameters"]["FunctionName"]) for name, state in _task_states(definition)]

    # Then each step calls the function built for it, by ARN, and each function is called
    step_function = {
        "Plan": "plan",
        "RunBatch": "subtask",
        "RunBatchDistributed": "subtask",
        "RunPassBatch": "subtask",
        "RunPassBatchDistributed": "subtask",
        "JoinInferenceOutputs": "subtask",
        "Aggregate": "aggregate",
    }
    assert {name for name, _ in invoked} == set(step_function)
    for name, arn in invoked:
        assert arn == f"${{{function_ids[step_function[name]]}.Arn}}", f"{name} invokes {arn}"


def test_distributed_map_children_run_as_the_configured_execution_type(
    state_machine: tuple[str, dict[str, Any]], context: dict[str, Any]
) -> None:
    # Given the Map states of the ASL file that run in DISTRIBUTED mode
    maps = [s for s in _all_states(json.loads(ASL_FILE.read_text())) if s["Type"] == "Map"]
    distributed = [
        m["ItemProcessor"]["ProcessorConfig"] for m in maps if m["ItemProcessor"]["ProcessorConfig"]["Mode"] == "DISTRIBUTED"
    ]

    # Then their child type is the substitution, STANDARD unless cdk.json says otherwise
    assert distributed and all(c["ExecutionType"] == "${ChildExecutionType}" for c in distributed)
    substituted = state_machine[1]["Properties"]["DefinitionSubstitutions"]["ChildExecutionType"]
    assert substituted == context.get("fanout:childExecutionType", "STANDARD")


def test_state_machine_is_standard_logs_errors_only_without_data_and_traces(
    template: Template, resources: dict[str, Any], state_machine: tuple[str, dict[str, Any]]
) -> None:
    _, machine = state_machine
    props = machine["Properties"]
    assert props["StateMachineType"] == "STANDARD"
    assert props["TracingConfiguration"] == {"Enabled": True}
    assert props["LoggingConfiguration"]["Level"] == "ERROR"
    assert props["LoggingConfiguration"]["IncludeExecutionData"] is False
    # and the destination is a log group of this stack, under the vendedlogs prefix
    destination = props["LoggingConfiguration"]["Destinations"][0]["CloudWatchLogsLogGroup"]["LogGroupArn"]
    log_group_id = destination["Fn::GetAtt"][0]
    assert resources[log_group_id]["Properties"]["LogGroupName"].startswith("/aws/vendedlogs/states/")


def test_state_machine_role_invokes_only_the_three_functions(
    resources: dict[str, Any], state_machine: tuple[str, dict[str, Any]], function_ids: dict[str, str]
) -> None:
    # Given the statements of the state machine's role
    role_id = state_machine[1]["Properties"]["RoleArn"]["Fn::GetAtt"][0]
    statements = _statements_of_role(resources, role_id)

    # When the lambda actions are collected
    lambda_statements = [s for s in statements if any(a.startswith("lambda:") for a in _actions(s))]
    actions = {a for s in lambda_statements for a in _actions(s)}
    targets = {r for s in lambda_statements for r in _resources(s)}

    # Then it may invoke the three functions by their unqualified ARNs (as the definition does), nothing else
    assert actions == {"lambda:InvokeFunction"}
    assert targets == {f"${{{function_ids[name]}.Arn}}" for name in FUNCTIONS}


def test_state_machine_role_reaches_run_data_and_its_own_children_only(
    resources: dict[str, Any], state_machine: tuple[str, dict[str, Any]], bucket_ids: dict[str, str]
) -> None:
    # Given the state machine's role and name
    _, machine = state_machine
    name = machine["Properties"]["StateMachineName"]
    statements = _statements_of_role(resources, machine["Properties"]["RoleArn"]["Fn::GetAtt"][0])

    # When its s3 and states grants are listed
    results = f"${{{bucket_ids['results']}.Arn}}"
    s3_grants = {(a, r) for s in statements for a in _actions(s) if a.startswith("s3:") for r in _resources(s)}
    states_grants = {(a, r) for s in statements for a in _actions(s) if a.startswith("states:") for r in _resources(s)}

    # Then it reads and writes run data only (failures, the Distributed Map's batch list and results), and may
    # delete a run's lease only (ReleaseLease, when Aggregate failed for good)
    s3_actions = ("s3:GetObject", "s3:PutObject", "s3:ListMultipartUploadParts", "s3:AbortMultipartUpload")
    assert s3_grants == {(a, f"{results}/runs/*") for a in s3_actions} | {("s3:DeleteObject", f"{results}/runs/*/lease.json")}

    # and starts, watches, stops and redrives the child executions of its own Map Run only
    # (children are named <state machine>/<map run label>:<id>; the label is the Distributed Map's in the ASL)
    # (the first pass's Distributed Map and the second pass's, each with its label)
    labels = {m["Label"] for m in _all_states(json.loads(ASL_FILE.read_text())) if m.get("Label")}
    assert labels == {"Batches", "PassBatches"}
    arn = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
    children = {
        (action, f"{arn}:execution:{name}/{label}:*")
        for label in labels
        for action in ("states:DescribeExecution", "states:StopExecution", "states:RedriveExecution")
    }
    assert states_grants == {("states:StartExecution", f"{arn}:stateMachine:{name}")} | children


def test_only_plan_may_ask_about_executions_and_only_about_this_state_machines(
    resources: dict[str, Any], function_ids: dict[str, str], state_machine: tuple[str, dict[str, Any]]
) -> None:
    # Given the state machine's name (a lease names its holder execution; Plan asks whether it still runs)
    name = state_machine[1]["Properties"]["StateMachineName"]
    executions = f"arn:${{AWS::Partition}}:states:${{AWS::Region}}:${{AWS::AccountId}}:execution:{name}:*"

    for function in FUNCTIONS:
        # When each function's states grants are listed
        statements = _function_statements(resources, function_ids[function])
        grants = {(a, r) for s in statements for a in _actions(s) if a.startswith("states:") for r in _resources(s)}

        # Then Plan may describe this state machine's executions, nothing more, and the others nothing at all
        assert grants == ({("states:DescribeExecution", executions)} if function == "plan" else set()), function


# ---------------------------------------------------------------- functions


def test_the_three_functions_exist_and_their_handlers_are_in_lambdas(function_ids: dict[str, str]) -> None:
    assert set(function_ids) == set(FUNCTIONS)
    for name in FUNCTIONS:
        # Given the module the handler string points at
        module = REPO / "lambdas" / "fanout_core" / "handlers" / f"{name}.py"
        assert module.is_file(), f"handler module {module.relative_to(REPO)} is missing"

        # Then it defines lambda_handler at top level
        tree = ast.parse(module.read_text())
        top_level = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "lambda_handler" in top_level, f"{module.relative_to(REPO)} has no top-level lambda_handler"


def test_functions_share_one_code_asset_runtime_and_architecture(
    resources: dict[str, Any], function_ids: dict[str, str], context: dict[str, Any]
) -> None:
    props = [resources[function_ids[name]]["Properties"] for name in FUNCTIONS]
    assert len({p["Code"]["S3Key"] for p in props}) == 1, "the three functions should ship one shared asset"
    for p in props:
        assert p["Runtime"] == context["fanout:lambdaRuntime"]
        # the bundled wheels are x86_64
        assert p["Architectures"] == ["x86_64"]
        assert p["TracingConfig"] == {"Mode": "Active"}


@pytest.mark.parametrize(
    ("name", "memory", "timeout"),
    [("plan", 2048, 300), ("subtask", 1024, 900), ("aggregate", 1024, 900)],
)
def test_function_memory_and_timeout(
    resources: dict[str, Any], function_ids: dict[str, str], name: str, memory: int, timeout: int
) -> None:
    props = resources[function_ids[name]]["Properties"]
    assert (props["MemorySize"], props["Timeout"]) == (memory, timeout)


def test_aggregate_has_room_in_tmp_for_its_spill_files(resources: dict[str, Any], function_ids: dict[str, str]) -> None:
    # streamed aggregation spills the records to /tmp: ~400 MB at a million tasks, more than the default 512 MB
    assert resources[function_ids["aggregate"]]["Properties"]["EphemeralStorage"] == {"Size": 2048}


def test_asl_task_timeouts_leave_room_for_the_function_timeouts(resources: dict[str, Any], function_ids: dict[str, str]) -> None:
    # a task timeout below the function's would abandon calls that are still running
    step_function = {
        "Plan": "plan",
        "RunBatch": "subtask",
        "RunBatchDistributed": "subtask",
        "RunPassBatch": "subtask",
        "RunPassBatchDistributed": "subtask",
        "JoinInferenceOutputs": "subtask",
        "Aggregate": "aggregate",
    }
    for state, task in _task_states(json.loads(ASL_FILE.read_text())):
        assert task["TimeoutSeconds"] >= resources[function_ids[step_function[state]]]["Properties"]["Timeout"], state


def test_function_environment(
    resources: dict[str, Any], function_ids: dict[str, str], bucket_ids: dict[str, str], context: dict[str, Any]
) -> None:
    for name in FUNCTIONS:
        env = resources[function_ids[name]]["Properties"]["Environment"]["Variables"]
        assert env == {
            "POWERTOOLS_SERVICE_NAME": "fanout",
            "POWERTOOLS_METRICS_NAMESPACE": "Fanout",
            "POWERTOOLS_LOG_LEVEL": "INFO",
            # events carry job items: never logged whole; prompts and outputs only with fanout:logContent
            "POWERTOOLS_LOGGER_LOG_EVENT": "false",
            "FANOUT_LOG_CONTENT": "false",
            "FANOUT_RESULTS_BUCKET": {"Ref": bucket_ids["results"]},
            "FANOUT_DEFAULT_MODEL": context["fanout:defaultModel"],
            "FANOUT_MAX_CONCURRENCY": str(context["fanout:maxConcurrency"]),
            # the deployment's ceilings on a job's limits, read by Plan
            **{f"FANOUT_CAP_{name.upper()}": str(cap) for name, cap in context["fanout:caps"].items()},
        }


def test_function_logs_go_to_log_groups_with_the_configured_retention(
    resources: dict[str, Any], function_ids: dict[str, str], context: dict[str, Any]
) -> None:
    for name in FUNCTIONS:
        props = resources[function_ids[name]]["Properties"]
        log_group = resources[props["LoggingConfig"]["LogGroup"]["Ref"]]["Properties"]
        assert log_group["RetentionInDays"] == context["fanout:logRetentionDays"]
        assert log_group["LogGroupName"] == f"/aws/lambda/{props['FunctionName']}"


# ---------------------------------------------------------------- buckets


def test_buckets_block_public_access_and_are_encrypted(resources: dict[str, Any], bucket_ids: dict[str, str]) -> None:
    for bucket_id in bucket_ids.values():
        props = resources[bucket_id]["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True,
            "BlockPublicPolicy": True,
            "IgnorePublicAcls": True,
            "RestrictPublicBuckets": True,
        }
        rules = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert rules[0]["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"


def test_buckets_deny_requests_without_tls(template: Template, bucket_ids: dict[str, str]) -> None:
    for bucket_id in bucket_ids.values():
        template.has_resource_properties(
            "AWS::S3::BucketPolicy",
            {
                "Bucket": {"Ref": bucket_id},
                "PolicyDocument": {
                    "Statement": Match.array_with(
                        [
                            Match.object_like(
                                {
                                    "Effect": "Deny",
                                    "Principal": {"AWS": "*"},
                                    "Action": "s3:*",
                                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                                }
                            )
                        ]
                    )
                },
            },
        )


def test_results_bucket_is_versioned_and_run_records_expire(
    resources: dict[str, Any], bucket_ids: dict[str, str], context: dict[str, Any]
) -> None:
    props = resources[bucket_ids["results"]]["Properties"]
    assert props["VersioningConfiguration"] == {"Status": "Enabled"}
    rules = {r["Prefix"]: r for r in props["LifecycleConfiguration"]["Rules"] if r["Status"] == "Enabled"}
    days = context["fanout:runsExpirationDays"]
    assert set(rules) == {"runs/", "results/"}
    # run records expire, current and noncurrent versions alike, and unfinished multipart uploads are cleared
    assert rules["runs/"]["ExpirationInDays"] == days
    assert rules["runs/"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": days}
    assert rules["runs/"]["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    # results are kept; only the versions a re-run replaced expire
    assert "ExpirationInDays" not in rules["results/"]
    assert rules["results/"]["NoncurrentVersionExpiration"] == {"NoncurrentDays": days}


def test_buckets_are_retained_when_the_stack_is_deleted(resources: dict[str, Any], bucket_ids: dict[str, str]) -> None:
    for bucket_id in bucket_ids.values():
        assert resources[bucket_id]["DeletionPolicy"] == "Retain"
        assert resources[bucket_id]["UpdateReplacePolicy"] == "Retain"


def test_job_upload_under_jobs_starts_the_state_machine(
    resources: dict[str, Any], bucket_ids: dict[str, str], state_machine: tuple[str, dict[str, Any]]
) -> None:
    # Given the input bucket sends its events to EventBridge
    notifications = resources[bucket_ids["input"]]["Properties"]["NotificationConfiguration"]
    assert notifications == {"EventBridgeConfiguration": {"EventBridgeEnabled": True}}

    # When a rule matches .json objects created under jobs/ in that bucket
    rules = _of_type(resources, "AWS::Events::Rule")
    assert len(rules) == 1
    rule = next(iter(rules.values()))["Properties"]
    assert rule["EventPattern"] == {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {"bucket": {"name": [{"Ref": bucket_ids["input"]}]}, "object": {"key": [{"wildcard": "jobs/*.json"}]}},
    }

    # Then its one target is the state machine, through a role that may only start it
    machine_id = state_machine[0]
    (target,) = rule["Targets"]
    assert target["Arn"] == {"Ref": machine_id}
    statements = _statements_of_role(resources, target["RoleArn"]["Fn::GetAtt"][0])
    assert [(_actions(s), _resources(s)) for s in statements] == [(["states:StartExecution"], [f"${{{machine_id}}}"])]


# ---------------------------------------------------------------- IAM


_X_RAY = "X-Ray has no resource-level permissions (active tracing of the functions and the state machine)"
_LOG_DELIVERY = "CloudWatch Logs vended log delivery, which Step Functions logging uses, has no resource-level permissions"
# the only actions granted on every resource (Resource "*"), each with the reason AWS leaves no narrower choice
ANY_RESOURCE_ACTIONS = {
    "xray:PutTraceSegments": _X_RAY,
    "xray:PutTelemetryRecords": _X_RAY,
    "xray:GetSamplingRules": _X_RAY,
    "xray:GetSamplingTargets": _X_RAY,
    **dict.fromkeys(
        [
            "logs:CreateLogDelivery",
            "logs:GetLogDelivery",
            "logs:UpdateLogDelivery",
            "logs:DeleteLogDelivery",
            "logs:ListLogDeliveries",
            "logs:PutResourcePolicy",
            "logs:DescribeResourcePolicies",
            "logs:DescribeLogGroups",
        ],
        _LOG_DELIVERY,
    ),
    # Plan finds an earlier run's batch inference jobs by name, the join step its own run's: the action lists the
    # account's jobs, naming none
    "bedrock:ListModelInvocationJobs": "ListModelInvocationJobs lists the account's jobs and names no job ARN to scope it to",
}


def test_no_wildcard_actions(resources: dict[str, Any]) -> None:
    # neither "*", nor a whole service ("s3:*"), nor a family of actions ("s3:Get*"); and no NotAction/NotResource
    for where, statement in _all_allow_statements(resources):
        assert not {"NotAction", "NotResource"} & set(statement), f"{where} uses NotAction or NotResource"
        for action in _actions(statement):
            assert "*" not in action, f"{where} allows {action}"


def test_every_resource_only_for_actions_aws_allows_no_narrower_resource(resources: dict[str, Any]) -> None:
    for where, statement in _all_allow_statements(resources):
        if "*" in _resources(statement):
            unexplained = set(_actions(statement)) - set(ANY_RESOURCE_ACTIONS)
            assert not unexplained, f"{where} allows {sorted(unexplained)} on every resource"


def test_every_wildcard_resource_is_a_known_scope(
    resources: dict[str, Any], bucket_ids: dict[str, str], state_machine: tuple[str, dict[str, Any]], context: dict[str, Any]
) -> None:
    # Given the scopes a wildcard may stand for: key prefixes of run data and results, any key of the input bucket
    # (job files, items), the region of a profile's model, and the ids of the Map Run's child executions
    inputs, results = (f"${{{bucket_ids[b]}.Arn}}" for b in ("input", "results"))
    name = state_machine[1]["Properties"]["StateMachineName"]
    states = "arn:${AWS::Partition}:states:${AWS::Region}:${AWS::AccountId}"
    models = {m.partition(".")[2] for m in context["fanout:models"] if m.partition(".")[0] in PROFILE_PREFIXES}
    known = {
        "*",
        f"{inputs}/*",
        f"{results}/runs/*",
        f"{results}/runs/*/failures/*",
        f"{results}/runs/*/lease.json",
        f"{results}/results/*",
        f"{results}/runs/*/inference/*",
        "arn:${AWS::Partition}:bedrock:${AWS::Region}:${AWS::AccountId}:model-invocation-job/*",
        f"{states}:execution:{name}/Batches:*",
        f"{states}:execution:{name}/PassBatches:*",
        f"{states}:execution:{name}:*",
        *(f"arn:${{AWS::Partition}}:bedrock:*::foundation-model/{m}" for m in models),
    }

    # When every resource with a wildcard is listed
    found = {r for _, s in _all_allow_statements(resources) for r in _resources(s) if "*" in r}

    # Then each is one of them (and cdk-nag's IAM5 acknowledgements name the same ones, with their reasons)
    assert found <= known, f"unexpected wildcard resources: {sorted(found - known)}"


def test_roles_use_no_managed_policy(resources: dict[str, Any]) -> None:
    # a managed policy would bypass the scoping checked here (AWSLambdaBasicExecutionRole writes to any log group)
    for logical_id, role in _of_type(resources, "AWS::IAM::Role").items():
        assert role["Properties"].get("ManagedPolicyArns", []) == [], logical_id


def test_each_function_writes_only_its_own_log_group(resources: dict[str, Any], function_ids: dict[str, str]) -> None:
    for name in FUNCTIONS:
        props = resources[function_ids[name]]["Properties"]
        log_group = f"${{{props['LoggingConfig']['LogGroup']['Ref']}.Arn}}"
        statements = _function_statements(resources, function_ids[name])
        logs_grants = {(a, r) for s in statements for a in _actions(s) if a.startswith("logs:") for r in _resources(s)}
        assert logs_grants == {("logs:CreateLogStream", log_group), ("logs:PutLogEvents", log_group)}


def test_bedrock_is_invocable_only_on_the_configured_models(
    resources: dict[str, Any], function_ids: dict[str, str], context: dict[str, Any]
) -> None:
    # Given the ARNs cdk.json's model list should grant
    expected = _expected_bedrock_arns(context["fanout:models"])

    for name in FUNCTIONS:
        # When the bedrock statements of each function's role are read
        statements = _function_statements(resources, function_ids[name])
        bedrock = [s for s in statements if any(a.startswith("bedrock:") for a in _actions(s))]
        granted = {r for s in bedrock for r in _resources(s)}

        # Then subtask may call exactly those models; plan and aggregate none (the second pass's calls are batches);
        # plan only finds and stops the batch inference jobs an earlier run left running, and subtask (the join step)
        # finds, stops and looks at its own run's
        grants = {(a, r) for s in bedrock for a in _actions(s) if a.startswith("bedrock:") for r in _resources(s)}
        jobs = {(a, r) for a, r in grants if a != "bedrock:InvokeModel"}
        if name == "aggregate":
            assert bedrock == []
        elif name == "plan":
            assert grants == {
                ("bedrock:ListModelInvocationJobs", "*"),
                ("bedrock:StopModelInvocationJob", _JOBS),
            }
        else:
            assert {r for a, r in grants if a == "bedrock:InvokeModel"} == expected
            assert granted == expected | {"*", _JOBS}
            assert jobs == {
                ("bedrock:ListModelInvocationJobs", "*"),
                ("bedrock:StopModelInvocationJob", _JOBS),
                ("bedrock:GetModelInvocationJob", _JOBS),
            }

    # and besides them only the batch inference service role invokes them (the same models), and the state machine
    # only manages model invocation jobs
    others = [(where, s) for where, s in _all_allow_statements(resources) if any(a.startswith("bedrock:") for a in _actions(s))]
    roles = {_role_of(resources, function_ids[name]) for name in ("subtask", "plan")}
    for where, statement in others:
        role = where.split("/")[0]
        if role in roles:
            continue
        if role.startswith("WorkflowBatchInferenceRole"):
            assert set(_actions(statement)) == {"bedrock:InvokeModel"} and set(_resources(statement)) == expected
        else:
            assert role.startswith("WorkflowStateMachineRole"), role
            assert set(_actions(statement)) <= {
                "bedrock:CreateModelInvocationJob",
                "bedrock:GetModelInvocationJob",
                "bedrock:StopModelInvocationJob",
            }


_JOBS = "arn:${AWS::Partition}:bedrock:${AWS::Region}:${AWS::AccountId}:model-invocation-job/*"


def test_bedrock_arns_for_profiles_of_every_geography() -> None:
    # Given profile ids of each geography and a plain model id
    models = ("global.anthropic.m-v1:0", "eu.amazon.n-v1:0", "apac.amazon.n-v1:0", "us.amazon.n-v1:0", "amazon.n-v1:0")
    stack = cdk.Stack()

    # When the ARNs are derived
    arns = {_render(stack.resolve(arn)) for arn in bedrock_model_arns(models)}

    # Then each profile is granted in this region and account, each model it routes to in any region, and a plain
    # model id in this region only
    assert arns == _expected_bedrock_arns(list(models))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        (
            "plan",
            {
                ("s3:GetObject", "input/*"),
                ("s3:ListBucket", "input"),
                ("s3:GetObject", "results/runs/*"),
                ("s3:PutObject", "results/runs/*"),
                # a re-run clears the failures the earlier run of the job left; a failed plan frees the job_id
                ("s3:DeleteObject", "results/runs/*/failures/*"),
                ("s3:DeleteObject", "results/runs/*/lease.json"),
                ("s3:ListBucket", "results"),
            },
        ),
        (
            "subtask",
            {
                ("s3:GetObject", "results/runs/*"),
                ("s3:PutObject", "results/runs/*"),
                ("s3:ListBucket", "results"),
                # the files of document items, sent to Bedrock as document blocks
                ("s3:GetObject", "input/*"),
            },
        ),
        (
            "aggregate",
            {
                ("s3:GetObject", "results/runs/*"),
                # the second pass's batch files
                ("s3:PutObject", "results/runs/*"),
                ("s3:PutObject", "results/results/*"),
                ("s3:DeleteObject", "results/runs/*/lease.json"),
                ("s3:ListBucket", "results"),
            },
        ),
    ],
)
def test_s3_access_of_each_function(
    resources: dict[str, Any],
    function_ids: dict[str, str],
    bucket_ids: dict[str, str],
    name: str,
    expected: set[tuple[str, str]],
) -> None:
    # Given resource names written as <bucket>[/<key pattern>], bucket being input or results
    readable = {f"${{{logical_id}.Arn}}": bucket for bucket, logical_id in bucket_ids.items()}

    def short(resource: str) -> str:
        for arn, bucket in readable.items():
            if resource.startswith(arn):
                return bucket + resource.removeprefix(arn)
        return resource

    # When the function's s3 statements are listed as (action, resource)
    statements = _function_statements(resources, function_ids[name])
    granted = {
        (action, short(resource))
        for s in statements
        for action in _actions(s)
        if action.startswith("s3:")
        for resource in _resources(s)
    }

    # Then they are exactly the expected ones
    assert granted == expected


# ---------------------------------------------------------------- outputs


def test_outputs_name_the_state_machine_and_buckets(
    synthesized: Synthesized, bucket_ids: dict[str, str], state_machine: tuple[str, dict[str, Any]]
) -> None:
    outputs = synthesized.template_json["Outputs"]
    assert outputs["StateMachineArn"]["Value"] == {"Ref": state_machine[0]}
    assert outputs["InputBucketName"]["Value"] == {"Ref": bucket_ids["input"]}
    assert outputs["ResultsBucketName"]["Value"] == {"Ref": bucket_ids["results"]}


# ---------------------------------------------------------------- helpers


def _of_type(resources: dict[str, Any], type_name: str) -> dict[str, Any]:
    return {k: v for k, v in resources.items() if v["Type"] == type_name}


def _render(value: Any) -> str:
    """A CloudFormation string expression as text: Ref X -> ${X}, GetAtt X.Arn -> ${X.Arn}, Join concatenated."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((fn, arg),) = value.items()
        if fn == "Ref":
            return f"${{{arg}}}"
        if fn == "Fn::GetAtt":
            return f"${{{arg[0]}.{arg[1]}}}"
        if fn == "Fn::Join":
            return str(arg[0]).join(_render(part) for part in arg[1])
        if fn == "Fn::Sub" and isinstance(arg, str):
            return arg
    raise AssertionError(f"cannot render {value!r}")


def _actions(statement: dict[str, Any]) -> list[str]:
    action = statement.get("Action", [])
    return [action] if isinstance(action, str) else list(action)


def _resources(statement: dict[str, Any]) -> list[str]:
    resource = statement.get("Resource", [])
    return [_render(r) for r in (resource if isinstance(resource, list) else [resource])]


def _statements_of_role(resources: dict[str, Any], role_id: str) -> list[dict[str, Any]]:
    statements = [
        s for policy in resources[role_id]["Properties"].get("Policies", []) for s in policy["PolicyDocument"]["Statement"]
    ]
    for policy in _of_type(resources, "AWS::IAM::Policy").values():
        if {"Ref": role_id} in policy["Properties"].get("Roles", []):
            statements.extend(policy["Properties"]["PolicyDocument"]["Statement"])
    return statements


def _role_of(resources: dict[str, Any], function_id: str) -> str:
    role_id: str = resources[function_id]["Properties"]["Role"]["Fn::GetAtt"][0]
    return role_id


def _function_statements(resources: dict[str, Any], function_id: str) -> list[dict[str, Any]]:
    return _statements_of_role(resources, _role_of(resources, function_id))


def _all_allow_statements(resources: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every Allow statement of every role in the stack, with '<role id>/<n>' to say where it is."""
    found = []
    for role_id in _of_type(resources, "AWS::IAM::Role"):
        for n, statement in enumerate(_statements_of_role(resources, role_id)):
            if statement["Effect"] == "Allow":
                found.append((f"{role_id}/{n}", statement))
    assert found, "the stack should have IAM statements to check"
    return found


def _expected_bedrock_arns(models: list[str]) -> set[str]:
    arns = set()
    for model in models:
        geography, _, underlying = model.partition(".")
        if geography in PROFILE_PREFIXES:
            arns.add(f"arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}:${{AWS::AccountId}}:inference-profile/{model}")
            arns.add(f"arn:${{AWS::Partition}}:bedrock:*::foundation-model/{underlying}")
        else:
            # a model id (not a profile) is called in the functions' own region
            arns.add(f"arn:${{AWS::Partition}}:bedrock:${{AWS::Region}}::foundation-model/{model}")
    return arns


def _all_states(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """Every state of a definition, with those nested in Map and Parallel states."""
    found = []
    for state in definition["States"].values():
        found.append(state)
        for inner in [state.get("ItemProcessor") or state.get("Iterator"), *state.get("Branches", [])]:
            if inner:
                found.extend(_all_states(inner))
    return found


def _task_states(definition: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """Every lambda:invoke Task of a definition as (state name, state), nested ones included."""
    found = []
    for name, state in definition["States"].items():
        if state["Type"] == "Task" and state["Resource"] == "arn:aws:states:::lambda:invoke":
            found.append((name, state))
        for inner in [state.get("ItemProcessor") or state.get("Iterator"), *state.get("Branches", [])]:
            if inner:
                found.extend(_task_states(inner))
    return found


def _staged_file(synthesized: Synthesized, object_key: str) -> Path:
    """The file of the cloud assembly that is uploaded as object_key."""
    manifest = json.loads((synthesized.outdir / f"{synthesized.stack.artifact_id}.assets.json").read_text())
    for asset in manifest["files"].values():
        if any(dest["objectKey"] == object_key for dest in asset["destinations"].values()):
            return synthesized.outdir / asset["source"]["path"]
    raise AssertionError(f"no asset is uploaded as {object_key}")


def test_batch_inference_jobs_run_with_a_service_role_only_bedrock_may_assume_and_only_the_state_machine_passes(
    resources: dict[str, Any], state_machine: tuple[str, dict[str, Any]]
) -> None:
    # Given the batch inference service role the definition names
    roles = {k: v for k, v in _of_type(resources, "AWS::IAM::Role").items() if k.startswith("WorkflowBatchInferenceRole")}
    ((role_id, role),) = roles.items()
    substitutions = {k: _render(v) for k, v in state_machine[1]["Properties"]["DefinitionSubstitutions"].items()}
    assert substitutions["BatchInferenceRoleArn"] == f"${{{role_id}.Arn}}"

    # Then only Bedrock assumes it, for this account's model invocation jobs
    (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert trust["Principal"] == {"Service": "bedrock.amazonaws.com"}
    assert set(trust["Condition"]) == {"StringEquals", "ArnEquals"}
    assert _render(trust["Condition"]["ArnEquals"]["aws:SourceArn"]).endswith(":model-invocation-job/*")
    # and its S3 access is the run's inference folders
    s3_grants = {
        r for s in _statements_of_role(resources, role_id) if any(a.startswith("s3:") for a in _actions(s)) for r in _resources(s)
    }
    assert {r for r in s3_grants if r.endswith("/*")} == {r for r in s3_grants if r.endswith("/runs/*/inference/*")}
    # and the one iam:PassRole in the stack passes this role, to Bedrock only
    passes = [(where, s) for where, s in _all_allow_statements(resources) if "iam:PassRole" in _actions(s)]
    ((where, statement),) = passes
    assert where.startswith("WorkflowStateMachineRole")
    assert _resources(statement) == [f"${{{role_id}.Arn}}"]
    assert statement["Condition"] == {"StringEquals": {"iam:PassedToService": "bedrock.amazonaws.com"}}
