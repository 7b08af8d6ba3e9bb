"""Fixtures shared by the infrastructure tests."""

from __future__ import annotations

from typing import Any

import pytest
from cdk_synth import EVERYTHING_ON, Synthesized, cdk_json_context, synthesize


@pytest.fixture(scope="session")
def context() -> dict[str, Any]:
    return cdk_json_context()


@pytest.fixture(scope="session")
def default_stack(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The stack as cdk.json configures it (no asset bundling)."""
    return synthesize(tmp_path_factory.mktemp("default"), bundle=False)


@pytest.fixture(scope="session")
def everything_on_stack(tmp_path_factory: pytest.TempPathFactory) -> Synthesized:
    """The stack with every optional setting on (no asset bundling)."""
    return synthesize(tmp_path_factory.mktemp("everything-on"), bundle=False, **EVERYTHING_ON)
