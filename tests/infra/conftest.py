"""Fixtures shared by the infrastructure tests."""

from __future__ import annotations

from typing import Any

import pytest
from cdk_synth import cdk_json_context


@pytest.fixture(scope="session")
def context() -> dict[str, Any]:
    return cdk_json_context()
