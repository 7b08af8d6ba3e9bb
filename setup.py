"""The build copies the project files the local runtime reads (fanout.resources.PROJECT_FILES) into the package.

Everything else about the package is declared in pyproject.toml.
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PROJECT_FILES = ("statemachine/fanout.asl.json", "cdk.json", "infra/job_rule.py")


class BuildWithProjectFiles(build_py):
    def run(self) -> None:
        super().run()
        root = Path(__file__).resolve().parent
        for relative in PROJECT_FILES:
            target = Path(self.build_lib) / "fanout" / "_project" / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / relative, target)


setup(cmdclass={"build_py": BuildWithProjectFiles})
