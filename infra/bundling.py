"""The Lambda code asset: lambdas/fanout_core plus its pinned wheels, bundled on this machine (never in Docker)."""

from __future__ import annotations

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
        shutil.copytree(self._source_dir / PACKAGE, Path(output_dir) / PACKAGE, ignore=_IGNORED, dirs_exist_ok=True)
        return True


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
        ),
    )
