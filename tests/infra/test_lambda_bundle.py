"""The Lambda code asset, really bundled on this machine: pip wheels for the Lambda platform plus fanout_core.

Slow (pip resolves and downloads the pinned wheels, ~30-60 s the first time): deselect with -m "not slow".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cdk_synth import REPO, synthesize


@pytest.mark.slow
def test_bundle_holds_the_handlers_and_runtime_dependencies_only(tmp_path: Path) -> None:
    # Given a synth that bundles, as `cdk synth` and `cdk deploy` do (no Docker on this machine)
    synthesized = synthesize(tmp_path, bundle=True)

    # When the staged asset directories are listed
    asset_dirs = [p for p in tmp_path.glob("asset.*") if p.is_dir()]

    # Then the three functions share the one asset, and it is the directory that was bundled
    assert len(asset_dirs) == 1, f"expected one shared Lambda asset, found {[p.name for p in asset_dirs]}"
    bundle = asset_dirs[0]
    keys = {
        r["Properties"]["Code"]["S3Key"]
        for r in synthesized.template_json["Resources"].values()
        if r["Type"] == "AWS::Lambda::Function"
    }
    assert keys == {bundle.name.removeprefix("asset.") + ".zip"}

    # and it holds the handlers and the runtime dependencies, built for the Lambda platform
    for name in ("plan", "subtask", "aggregate"):
        assert (bundle / "fanout_core" / "handlers" / f"{name}.py").is_file()
    for package in (
        "pydantic",
        "pydantic_core",
        "jsonschema",
        "aws_lambda_powertools",
        "aws_xray_sdk",
        "rapidfuzz",
        "openai",
        "re2",
    ):
        assert (bundle / package).is_dir(), f"{package}/ missing from the bundle"
    assert list((bundle / "pydantic_core").glob("*cpython-312-x86_64-linux-gnu.so")), "pydantic_core is not the Linux wheel"

    # and the data the code reads
    assert json.loads((bundle / "fanout_core" / "models.json").read_text()), "fanout_core/models.json is missing"

    # and fanout_core exactly as in lambdas/, file for file (no bytecode, nothing left over from a local run)
    source = REPO / "lambdas" / "fanout_core"
    shipped = {p.relative_to(bundle / "fanout_core") for p in (bundle / "fanout_core").rglob("*") if p.is_file()}
    expected = {p.relative_to(source) for p in source.rglob("*") if p.is_file() and "__pycache__" not in p.parts}
    assert shipped == expected

    # and nothing of the local side, the tests, the CDK or the build tools
    for unwanted in ("tests", "fanout", "moto", "aws_cdk", "cdk_nag", "cfnlint", "jsii", "constructs", "pytest", "bin"):
        assert not (bundle / unwanted).exists(), f"{unwanted}/ should not be shipped to Lambda"
    # nor the AWS SDK, which the runtime provides: a bundled botocore would pair with the runtime's boto3
    for sdk in ("boto3", "botocore", "s3transfer"):
        assert not (bundle / sdk).exists() and not list(bundle.glob(f"{sdk}-*.dist-info")), f"{sdk} is in the bundle"
    # nor the test suites some wheels ship, nor bytecode from this machine
    assert not [p for p in bundle.rglob("*") if p.is_dir() and p.name in ("tests", "test")], "test suites are shipped"
    assert not list(bundle.rglob("__pycache__")) and not list(bundle.rglob("*.pyc")), "bytecode should not be shipped"

    # and the asset manifest zips that directory
    manifest = json.loads((tmp_path / f"{synthesized.stack.artifact_id}.assets.json").read_text())
    packaging = {a["source"]["path"]: a["source"].get("packaging") for a in manifest["files"].values()}
    assert packaging[bundle.name] == "zip"
