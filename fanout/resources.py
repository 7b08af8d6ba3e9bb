"""Files of the project that the local side reads: the ASL definition, cdk.json, the S3 upload rule.

In a checkout they are read where they live in the repository. An installed package (a wheel, ``pip
install .``) carries copies in ``fanout/_project/``, made by the build (setup.py) from the same files, so
the local runtime runs the very definition the stack deploys either way.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

PACKAGED = Path(__file__).resolve().parent / "_project"
CHECKOUT = Path(__file__).resolve().parent.parent
# what the build copies into the package, as paths relative to the repository root
PROJECT_FILES = ("statemachine/fanout.asl.json", "cdk.json", "infra/job_rule.py")


def project_file(relative: str) -> Path:
    """The packaged copy when installed, else the repository's file."""
    packaged = PACKAGED / relative
    return packaged if packaged.is_file() else CHECKOUT / relative


def job_rule_module() -> ModuleType:
    """``infra.job_rule`` (plain data, no CDK import), from the checkout or from the packaged copy."""
    packaged = PACKAGED / "infra" / "job_rule.py"
    if not packaged.is_file():
        from infra import job_rule

        return job_rule
    # the packaged copy first: an unrelated top-level ``infra`` elsewhere on the path must not stand in for it
    spec = importlib.util.spec_from_file_location("fanout._project.job_rule", packaged)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
