"""The Bedrock provider against botocore's Stubber, which checks every request against the real Converse model."""

from __future__ import annotations

from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from fanout_core.errors import ModelThrottled
from fanout_core.providers.base import ModelError, ModelRequest
from fanout_core.providers.bedrock import BedrockProvider, client_config
from fanout_core.runner import RetryPolicy, run_batch
from tests.fakes import MemoryRunStore

MODEL = "us.amazon.nova-lite-v1:0"
SCHEMA = {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["yes", "no"]}}}


@pytest.fixture
def client() -> Any:
    return boto3.client(
        "bedrock-runtime",
        region_name="us-east-1",
        aws_access_key_id="x",
        aws_secret_access_key="x",
        config=client_config(pool=4),
    )


def text_reply(text: str, tokens: tuple[int, int] = (11, 3)) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": [{"text": text}]}},
        "stopReason": "end_turn",
        "usage": {"inputTokens": tokens[0], "outputTokens": tokens[1], "totalTokens": sum(tokens)},
        "metrics": {"latencyMs": 120},
    }


def tool_reply(data: dict[str, Any], tokens: tuple[int, int] = (40, 9)) -> dict[str, Any]:
    return {
        "output": {
            "message": {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t1", "name": "record_output", "input": data}}],
            }
        },
        "stopReason": "tool_use",
        "usage": {"inputTokens": tokens[0], "outputTokens": tokens[1], "totalTokens": sum(tokens)},
        "metrics": {"latencyMs": 150},
    }


def test_text_output_with_system_and_inference_settings(client: Any) -> None:
    expected = {
        "modelId": MODEL,
        "messages": [{"role": "user", "content": [{"text": "Say hi"}]}],
        "system": [{"text": "Be brief."}],
        "inferenceConfig": {"maxTokens": 64, "temperature": 0.2, "topP": 0.9},
    }
    with Stubber(client) as stub:
        stub.add_response("converse", text_reply("hi"), expected)
        reply = BedrockProvider(MODEL, client).invoke(
            ModelRequest(task_id="a#v1", prompt="Say hi", system="Be brief.", max_tokens=64, temperature=0.2, top_p=0.9), 1
        )
        stub.assert_no_pending_responses()
    assert reply.output == "hi"
    assert (reply.input_tokens, reply.output_tokens) == (11, 3)
    assert reply.model == f"bedrock:{MODEL}"


def test_structured_output_forces_the_schema_tool(client: Any) -> None:
    expected = {
        "modelId": MODEL,
        "messages": ANY,
        "inferenceConfig": {"maxTokens": 512},
        "toolConfig": {
            "tools": [{"toolSpec": {"name": "record_output", "description": ANY, "inputSchema": {"json": SCHEMA}}}],
            "toolChoice": {"tool": {"name": "record_output"}},
        },
    }
    with Stubber(client) as stub:
        stub.add_response("converse", tool_reply({"label": "yes"}), expected)
        reply = BedrockProvider(MODEL, client).invoke(ModelRequest(task_id="a#v1", prompt="?", output_schema=SCHEMA), 1)
    assert reply.output == {"label": "yes"}


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ThrottlingException", 429, "throttled"),
        ("ServiceUnavailableException", 503, "transient"),
        ("ModelNotReadyException", 429, "transient"),
        ("InternalServerException", 500, "transient"),
        ("ModelTimeoutException", 408, "timeout"),
        ("ValidationException", 400, "permanent"),
        ("AccessDeniedException", 403, "permanent"),
        ("ResourceNotFoundException", 404, "permanent"),
    ],
)
def test_errors_map_to_retry_kinds(client: Any, code: str, status: int, kind: str) -> None:
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code=code, service_message="nope", http_status_code=status)
        with pytest.raises(ModelError) as raised:
            BedrockProvider(MODEL, client).invoke(ModelRequest(task_id="a#v1", prompt="?"), 1)
    assert raised.value.kind == kind
    assert raised.value.code == code


MemoryStore = MemoryRunStore


def batch(n: int) -> dict[str, Any]:
    tasks = [
        {
            "task_id": f"i{k}#v1",
            "item_id": f"i{k}",
            "slot": "v1",
            "kind": "vote",
            "model": f"bedrock:{MODEL}",
            "prompt": f"item {k}",
            "expected": None,
        }
        for k in range(n)
    ]
    return {
        "index": 0,
        "job_id": "j",
        "system": None,
        "inference": {"max_tokens": 32},
        "output_schema": SCHEMA,
        "answer_field": "label",
        "tasks": tasks,
    }


def run(store: MemoryRunStore, provider: BedrockProvider, tasks: int) -> Any:
    """One batch of ``tasks`` on one thread (so the stubbed replies keep their order), without sleeping."""
    return run_batch(
        batch(tasks),
        store=store,
        provider_for=lambda _: provider,
        threads=1,
        policy=RetryPolicy(max_attempts=3, base_seconds=0),
        sleep=lambda s: None,
    )


def test_throttled_then_success_and_usage_summed(client: Any) -> None:
    # Given one throttle, then a valid answer for each of two tasks (one thread keeps the order)
    store = MemoryStore()
    provider = BedrockProvider(MODEL, client)
    with Stubber(client) as stub:
        stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        stub.add_response("converse", tool_reply({"label": "yes"}, (10, 2)))
        stub.add_response("converse", tool_reply({"label": "no"}, (12, 3)))

        # When the batch runs
        outcome = run(store, provider, 2)

    # Then both tasks are ok, the first after 2 attempts, and usage is the sum of what was served
    assert outcome.counts["ok"] == 2 and outcome.counts["model_calls"] == 3
    assert store.records[("i0", "v1")]["attempts"] == 2
    assert outcome.counts["input_tokens"] == 22 and outcome.counts["output_tokens"] == 5


def test_throttled_past_budget_keeps_finished_records_and_raises(client: Any) -> None:
    store = MemoryStore()
    provider = BedrockProvider(MODEL, client)
    with Stubber(client) as stub:
        stub.add_response("converse", tool_reply({"label": "yes"}))
        for _ in range(3):
            stub.add_client_error("converse", service_error_code="ThrottlingException", http_status_code=429)
        with pytest.raises(ModelThrottled, match="1 of 2 tasks"):
            run(store, provider, 2)
    # the finished task is recorded; the throttled one has no record, so a retry calls only it
    assert list(store.records) == [("i0", "v1")]
    with Stubber(client) as stub:
        stub.add_response("converse", tool_reply({"label": "no"}))
        outcome = run(store, provider, 2)
        stub.assert_no_pending_responses()
    assert outcome.counts["skipped"] == 1 and outcome.counts["ok"] == 1 and outcome.counts["model_calls"] == 1


def test_validation_error_fails_the_task_without_retry(client: Any) -> None:
    store = MemoryStore()
    provider = BedrockProvider(MODEL, client)
    with Stubber(client) as stub:
        stub.add_client_error(
            "converse",
            service_error_code="ValidationException",
            service_message="The model returned the following errors: bad input",
            http_status_code=400,
        )
        outcome = run(store, provider, 1)
        stub.assert_no_pending_responses()
    record = store.records[("i0", "v1")]
    assert outcome.counts["failed"] == 1
    assert record["status"] == "failed" and record["attempts"] == 1
    assert record["error"].startswith("ValidationException: The model returned")


def test_out_of_schema_output_gets_one_repair_request(client: Any) -> None:
    # Given an answer outside the enum, then a repaired one
    store = MemoryStore()
    provider = BedrockProvider(MODEL, client)
    with Stubber(client) as stub:
        stub.add_response("converse", tool_reply({"label": "maybe"}, (10, 2)))
        stub.add_response("converse", tool_reply({"label": "no"}, (30, 2)))
        outcome = run(store, provider, 1)
    record = store.records[("i0", "v1")]
    assert outcome.counts["ok"] == 1
    assert record["output"] == {"label": "no"} and record["repaired"] is True
    assert record["attempts"] == 2 and record["usage"] == {"input_tokens": 40, "output_tokens": 4}
