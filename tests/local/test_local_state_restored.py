"""The local runtime and ``serve`` put back everything they change in the process (patches, env, providers)."""

from __future__ import annotations

import os
from typing import Any

from fanout_core.handlers import _clients


def process_state() -> dict[str, Any]:
    from moto.core.config import default_user_config
    from moto.s3 import notifications
    from moto.stepfunctions.parser.asl.utils import json_path
    from moto.stepfunctions.parser.models import StepFunctionsParserBackend

    return {
        "env": dict(os.environ),
        "providers": _clients.providers(),
        "jsonpath": json_path.parse,
        "start_execution": StepFunctionsParserBackend.start_execution,
        "eventbridge": notifications._send_event_bridge_message,
        "stepfunctions_config": default_user_config.get("stepfunctions"),
    }


def test_a_local_run_uses_its_own_providers_and_restores_the_process() -> None:
    from fanout.runtime import local_aws

    # Given the process as it is
    before = process_state()

    # When a local runtime runs
    with local_aws() as runtime:
        during = _clients.providers()
        assert during is not before["providers"]
        assert during.call_counter is runtime.model_calls  # the run's calls are counted by its own registry

    # Then everything it changed is as it was
    assert process_state() == before


def test_serve_restores_the_process_when_it_stops() -> None:
    from fanout.serve import LocalEndpoint

    before = process_state()
    endpoint = LocalEndpoint(0, emit=lambda _: None)
    try:
        endpoint.start()
        assert os.environ["AWS_ENDPOINT_URL_S3"] == endpoint.endpoint_url
        assert _clients.providers() is not before["providers"]
    finally:
        endpoint.stop()
    assert process_state() == before
