"""One S3 layout: the ASL's States.Format keys, the stack's prefixes and IAM resources, and the code's keys agree."""

from __future__ import annotations

import json
import re
from fnmatch import fnmatchcase
from typing import Any

import pytest
from cdk_synth import REPO, Synthesized
from test_stack import _all_allow_statements, _of_type, _resources

from fanout_core import layout

ASL_FILE = REPO / "statemachine" / "fanout.asl.json"
FORMAT = re.compile(r"^States\.Format\('([^']*)',\s*(.*)\)$")


def _key_parameters(node: Any, path: str = "$") -> list[tuple[str, str, str]]:
    """Every (where, field, value) of a Key/Prefix parameter anywhere in a definition."""
    found: list[tuple[str, str, str]] = []
    if isinstance(node, dict):
        for field, value in node.items():
            if field in ("Key", "Key.$", "Prefix", "Prefix.$") and isinstance(value, str):
                found.append((path, field, value))
            else:
                found.extend(_key_parameters(value, f"{path}.{field}"))
    elif isinstance(node, list):
        for n, value in enumerate(node):
            found.extend(_key_parameters(value, f"{path}[{n}]"))
    return found


def _states_format(template: str, *values: object) -> str:
    """Step Functions' States.Format: each {} replaced by the next argument."""
    parts = template.split("{}")
    assert len(parts) == len(values) + 1
    return "".join(p + (str(v) if n < len(values) else "") for n, (p, v) in enumerate(zip(parts, [*values, ""], strict=True)))


def test_the_asl_builds_its_keys_with_the_layouts_templates() -> None:
    # Given every S3 key or prefix the definition names
    definition = json.loads(ASL_FILE.read_text())
    keys = _key_parameters(definition)

    # When the States.Format ones are split into template and arguments
    formats = {}
    for where, field, value in keys:
        assert field.endswith(".$"), f"{where}.{field}: a fixed key {value!r} (keys depend on the job_id)"
        match = FORMAT.match(value)
        if match:
            formats.setdefault(match.group(1), set()).add(match.group(2))
        else:
            # otherwise a key comes from the plan (or a second-pass stage's), which takes it from the layout
            assert value in (
                "$.plan.manifest_key",
                "$.plan.map_results_prefix",
                "$.step.result.manifest_key",
                "$.step.result.map_results_prefix",
            ), f"{where}.{field}: {value}"

    # Then the templates are exactly the layout's, with the arguments they are meant for
    assert formats == {
        layout.FAILURE_FORMAT: {"$.job_id, $.batch.index"},
        layout.LEASE_FORMAT: {"$.plan.job_id"},
    }
    # and a key the state machine writes is the key the code reads
    written = _states_format(layout.FAILURE_FORMAT, "job-1", 7)
    assert written == layout.failure_key("job-1", 7)
    assert written.startswith(layout.run_key("job-1", layout.FAILURES_DIR))
    assert layout.failure_batch(written) == 7
    assert _states_format(layout.LEASE_FORMAT, "job-1") == layout.lease_key("job-1")


def test_the_stacks_prefixes_and_iam_resources_are_the_layouts(default_stack: Synthesized) -> None:
    resources: dict[str, Any] = default_stack.template_json["Resources"]
    buckets = _of_type(resources, "AWS::S3::Bucket")
    results_id = next(i for i in buckets if "ResultsBucket" in i)
    input_id = next(i for i in buckets if "InputBucket" in i)

    # Given the results bucket's lifecycle rules: they expire run data and replaced results by the layout's prefixes
    rules = buckets[results_id]["Properties"]["LifecycleConfiguration"]["Rules"]
    assert {r["Prefix"] for r in rules} == {layout.RUNS, layout.RESULTS}

    # When every IAM resource on the results bucket's objects is listed
    results_arn = f"${{{results_id}.Arn}}/"
    granted = {
        r.removeprefix(results_arn)
        for _, statement in _all_allow_statements(resources)
        for r in _resources(statement)
        if r.startswith(results_arn)
    }

    # Then each is one of the layout's patterns, and each pattern is used
    assert granted == {layout.RUNS_ANY, layout.RESULTS_ANY, layout.FAILURES_ANY, layout.LEASES_ANY, layout.INFERENCE_ANY}

    # and the upload rule starts executions for the layout's job files
    (rule,) = _of_type(resources, "AWS::Events::Rule").values()
    pattern = rule["Properties"]["EventPattern"]["detail"]
    assert pattern["bucket"]["name"] == [{"Ref": input_id}]
    assert pattern["object"]["key"] == [{"wildcard": f"{layout.JOBS}*{layout.JOB_SUFFIX}"}]


@pytest.mark.parametrize("job_id", ["job-1", "a.b_c-9"])
def test_every_key_of_a_run_falls_under_the_grant_meant_for_it(job_id: str) -> None:
    # Given the keys of one run, as the code builds them
    run_files = [
        layout.run_key(job_id, layout.JOB_FILE),
        layout.plan_key(job_id),
        layout.manifest_key(job_id),
        layout.run_key(job_id, layout.batch_name(3)),
        layout.run_key(job_id, layout.batch_records_dir(3)) + "abc-00001.jsonl",
        layout.map_results_prefix(job_id) + "/manifest.json",
        layout.failure_key(job_id, 3),
        layout.lease_key(job_id),
    ]

    # Then each is run data; a failure and a lease also match the narrow delete grants, and nothing else does
    for key in run_files:
        assert fnmatchcase(key, layout.RUNS_ANY), key
        assert fnmatchcase(key, layout.FAILURES_ANY) == (key == layout.failure_key(job_id, 3)), key
        assert fnmatchcase(key, layout.LEASES_ANY) == (key == layout.lease_key(job_id)), key
        assert not fnmatchcase(key, layout.RESULTS_ANY), key
    for name in layout.RESULT_FILES:
        assert fnmatchcase(layout.result_key(job_id, name), layout.RESULTS_ANY)
        assert not fnmatchcase(layout.result_key(job_id, name), layout.RUNS_ANY)
    # the batch inference service role's grant covers a job's input, tasks and output, and no other run file
    inference = layout.run_key(job_id, layout.inference_dir(2))
    for key in (inference + layout.INFERENCE_INPUT, inference + layout.INFERENCE_TASKS, inference + "output/j/x.jsonl.out"):
        assert fnmatchcase(key, layout.INFERENCE_ANY) and fnmatchcase(key, layout.RUNS_ANY), key
    assert not any(fnmatchcase(key, layout.INFERENCE_ANY) for key in run_files)
    # an upload under items/ never starts an execution
    assert not fnmatchcase(layout.items_key("job.json"), f"{layout.JOBS}*{layout.JOB_SUFFIX}")
