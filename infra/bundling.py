"""The Lambda code asset: lambdas/fanout_core plus its pinned wheels, bundled on this machine (never in Docker).

It holds runtime code only: the wheels of lambdas/requirements.txt for the Lambda platform and the fanout_core
package (with its data, models.json). Nothing of the local side (fanout/, moto), the tests or the CDK, no
bytecode from this machine, no console scripts, no test suites of the dependencies, and not the AWS SDK:
the runtime provides boto3, and a second botocore pulled in by aws-xray-sdk would pair with the runtime's
boto3 instead of its own.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import BundlingOptions, DockerImage, ILocalBundling
from aws_cdk import aws_lambda as lambda_

LAMBDAS_DIR = Path(__file__).resolve().parent.parent / "lambdas"
PACKAGE = "fanout_core"

# wheels are fetched for the functions' architecture, whatever machine runs the synth; pip does not widen
# an explicit --platform, so both tags are named: some pinned wheels (rapidfuzz) are built for glibc 2.28 only,
# which the python3.12+ runtimes (Amazon Linux 2023, glibc 2.34) satisfy
ARCHITECTURE = lambda_.Architecture.X86_64
PIP_PLATFORMS = ("manylinux2014_x86_64", "manylinux_2_28_x86_64")

_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")

# distributions the Lambda Python runtime provides, removed from the bundle when a dependency pulls them in
RUNTIME_PROVIDED = ("boto3", "botocore", "s3transfer")
# what pip --target leaves besides packages, and the test suites some wheels ship: not runtime code
NOT_RUNTIME_CODE = ("bin",)
TEST_DIRS = ("tests", "test")

# part of the asset hash: a change to how the bundle is made must not reuse a bundle made the old way
_RECIPE = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


@jsii.implements(ILocalBundling)
class PipLocalBundling:
    """Installs lambdas/requirements.txt as binary wheels for the Lambda platform, then copies fanout_core."""

    def __init__(self, source_dir: Path, python_version: str) -> None:
        self._source_dir = source_dir
        self._python_version = python_version

    # jsii passes the BundlingOptions fields as keywords; none of them is needed here
    def try_bundle(self, output_dir: str, *, image: DockerImage, **_options: Any) -> bool:
        command = [
            sys.executable, "-m", "pip", "install",
            "-r", str(self._source_dir / "requirements.txt"),
            *(arg for platform in PIP_PLATFORMS for arg in ("--platform", platform)),
            "--only-binary=:all:",
            "--python-version", self._python_version,
            "--implementation", "cp",
            "--target", output_dir,
            # bytecode compiled by this interpreter would not match the Lambda runtime's
            "--no-compile",
            "--disable-pip-version-check",
            "--quiet",
        ]  # fmt: skip
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            raise RuntimeError(f"bundling the Lambda code failed: {' '.join(command)}\n{completed.stdout}{completed.stderr}")
        prune(Path(output_dir))
        shutil.copytree(self._source_dir / PACKAGE, Path(output_dir) / PACKAGE, ignore=_IGNORED, dirs_exist_ok=True)
        return True


def prune(target: Path) -> None:
    """Remove from a pip --target directory what is not runtime code (see the module docstring)."""
    for dist_info in target.glob("*.dist-info"):
        name = dist_info.name.split("-")[0].lower().replace("_", "-")
        if name in RUNTIME_PROVIDED:
            _remove_distribution(target, dist_info)
    for name in NOT_RUNTIME_CODE:
        shutil.rmtree(target / name, ignore_errors=True)
    for directory in sorted(p for p in target.rglob("*") if p.is_dir() and p.name in TEST_DIRS):
        shutil.rmtree(directory, ignore_errors=True)


def _remove_distribution(target: Path, dist_info: Path) -> None:
    """Every file a distribution installed (its RECORD), then the directories left empty."""
    emptied: set[Path] = set()
    for line in (dist_info / "RECORD").read_text().splitlines():
        path = (target / line.split(",")[0]).resolve()
        if path.is_file() and path.is_relative_to(target.resolve()):
            path.unlink()
            emptied.update(path.parents)
    # deepest first, so a package directory goes once its subpackages have
    for directory in sorted(emptied, key=lambda p: len(p.parts), reverse=True):
        if directory.is_relative_to(target.resolve()) and directory != target.resolve() and not any(directory.iterdir()):
            directory.rmdir()
    shutil.rmtree(dist_info, ignore_errors=True)


def lambda_code(runtime: lambda_.Runtime, python_version: str) -> lambda_.AssetCode:
    """One asset for all three functions; build it once and pass it to each of them."""
    return lambda_.Code.from_asset(
        str(LAMBDAS_DIR),
        # keeps the source hash stable when tests or a local run leave bytecode behind
        exclude=["**/__pycache__", "**/*.pyc"],
        bundling=BundlingOptions(
            # required by the API but never pulled: local bundling always succeeds or raises
            image=runtime.bundling_image,
            local=PipLocalBundling(LAMBDAS_DIR, python_version),
            # not read by the local bundling: it only makes the asset hash follow this module
            environment={"FANOUT_BUNDLE_RECIPE": _RECIPE},
        ),
    )
