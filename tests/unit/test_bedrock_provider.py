"""The Bedrock provider against botocore's Stubber, which checks every request against the real Converse model."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import boto3
import pytest
from botocore.stub import ANY, Stubber

from fanout_core.errors import ModelThrottled
from fanout_core.providers.base import ModelError, ModelRequest
from fanout_core.providers.bedrock import BedrockProvider, client_config, converse_request
from fanout_core.runner import RetryPolicy, run_batch
from tests.factories import batch_for
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
    return dict(batch_for(tasks, system=None, inference={"max_tokens": 32}, output_schema=SCHEMA, answer_field="label"))


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


HAIKU_45 = "us.anthropic.claude-haiku-4-5-20251001-v1:0"
HAIKU_55 = "us.anthropic.claude-haiku-5-5"
# about 6,000 tokens at 4 characters a token: over Claude Haiku's minimum of 4,096 tokens per cache checkpoint
DOCUMENT = "The launch brief describes the market, its buyers and its rivals. " * 370


def reply(content: list[dict[str, Any]], stop: str = "end_turn", usage: dict[str, int] | None = None) -> dict[str, Any]:
    tokens = usage or {"inputTokens": 10, "outputTokens": 5}
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {**tokens, "totalTokens": sum(tokens.values())},
        "metrics": {"latencyMs": 100},
    }


def test_a_model_with_native_structured_output_gets_the_json_schema_output_format(client: Any) -> None:
    # Given Claude Haiku 4.5, which models.json marks json_schema (outputConfig.textFormat)
    expected = {
        "modelId": HAIKU_45,
        "messages": [{"role": "user", "content": [{"text": "?"}]}],
        "inferenceConfig": {"maxTokens": 512},
        "outputConfig": {
            "textFormat": {"type": "json_schema", "structure": {"jsonSchema": {"schema": json.dumps(SCHEMA), "name": "output"}}}
        },
    }
    with Stubber(client) as stub:
        # botocore's Stubber checks the request against the Converse model, outputConfig included
        stub.add_response("converse", reply([{"text": '{"label": "no"}'}]), expected)
        got = BedrockProvider(HAIKU_45, client).invoke(ModelRequest(task_id="a#v1", prompt="?", output_schema=SCHEMA), 1)
        stub.assert_no_pending_responses()
    assert got.output == {"label": "no"}


def test_a_model_without_native_structured_output_gets_the_forced_tool(client: Any) -> None:
    expected = {"modelId": HAIKU_55, "messages": ANY, "inferenceConfig": ANY, "toolConfig": ANY}
    with Stubber(client) as stub:
        stub.add_response("converse", tool_reply({"label": "yes"}), expected)
        got = BedrockProvider(HAIKU_55, client).invoke(ModelRequest(task_id="a#v1", prompt="?", output_schema=SCHEMA), 1)
    assert got.output == {"label": "yes"}


def test_a_client_whose_service_model_lacks_output_config_falls_back_to_the_tool() -> None:
    class OldClient:
        """A client without botocore's service model (as an older runtime's would lack outputConfig)."""

    assert BedrockProvider(HAIKU_45, OldClient()).json_schema_output is False
    params = converse_request(HAIKU_45, ModelRequest(task_id="a#v1", prompt="?", output_schema=SCHEMA))
    assert "toolConfig" in params and "outputConfig" not in params


def test_a_shared_document_at_the_end_is_sent_first_with_a_cache_point_after_it(client: Any) -> None:
    # Given a section prompt whose last part (the document) the item's other sections share
    own = "Evaluate competitors' pricing and positioning for: "
    prompt = own + DOCUMENT
    request = ModelRequest(task_id="q#competitors", prompt=prompt, system="You are an analyst.", shared_suffix=len(DOCUMENT))
    expected = {
        "modelId": HAIKU_55,
        "messages": [{"role": "user", "content": [{"text": DOCUMENT}, {"cachePoint": {"type": "default"}}, {"text": own}]}],
        "system": [{"text": "You are an analyst."}],
        "inferenceConfig": {"maxTokens": 512},
    }
    usage = {"inputTokens": 20, "outputTokens": 5, "cacheReadInputTokens": 0, "cacheWriteInputTokens": 6000}
    with Stubber(client) as stub:
        stub.add_response("converse", reply([{"text": "ok"}], usage=usage), expected)
        got = BedrockProvider(HAIKU_55, client).invoke(request, 1)
        stub.assert_no_pending_responses()
    # Then the cache tokens come back apart from the uncached input
    assert (got.input_tokens, got.cache_read_tokens, got.cache_write_tokens) == (20, 0, 6000)


def test_identical_vote_prompts_put_the_cache_point_after_the_whole_prompt(client: Any) -> None:
    request = ModelRequest(task_id="t#v2", prompt=DOCUMENT, shared_prefix=len(DOCUMENT))
    expected = {
        "modelId": HAIKU_55,
        "messages": [{"role": "user", "content": [{"text": DOCUMENT}, {"cachePoint": {"type": "default"}}]}],
        "inferenceConfig": {"maxTokens": 512},
    }
    usage = {"inputTokens": 3, "outputTokens": 5, "cacheReadInputTokens": 6000, "cacheWriteInputTokens": 0}
    with Stubber(client) as stub:
        stub.add_response("converse", reply([{"text": "ok"}], usage=usage), expected)
        got = BedrockProvider(HAIKU_55, client).invoke(request, 1)
    assert got.cache_read_tokens == 6000


def test_a_long_system_prompt_alone_gets_the_cache_point_in_system(client: Any) -> None:
    expected = {
        "modelId": HAIKU_55,
        "messages": [{"role": "user", "content": [{"text": "Say hi"}]}],
        "system": [{"text": DOCUMENT}, {"cachePoint": {"type": "default"}}],
        "inferenceConfig": {"maxTokens": 512},
    }
    with Stubber(client) as stub:
        stub.add_response("converse", reply([{"text": "hi"}]), expected)
        BedrockProvider(HAIKU_55, client).invoke(ModelRequest(task_id="a#v1", prompt="Say hi", system=DOCUMENT), 1)
        stub.assert_no_pending_responses()


def test_no_cache_point_under_the_minimum_or_for_a_model_without_caching() -> None:
    short = ModelRequest(task_id="a#v1", prompt="short " * 10, shared_prefix=60)
    assert "cachePoint" not in json.dumps(converse_request(HAIKU_55, short))
    unknown = ModelRequest(task_id="a#v1", prompt=DOCUMENT, shared_prefix=len(DOCUMENT))
    assert "cachePoint" not in json.dumps(converse_request("us.example.model-v1:0", unknown))


def test_stop_reason_max_tokens_marks_the_reply_truncated(client: Any) -> None:
    with Stubber(client) as stub:
        stub.add_response("converse", reply([{"text": "The answer is"}], stop="max_tokens"))
        got = BedrockProvider(MODEL, client).invoke(ModelRequest(task_id="a#v1", prompt="?"), 1)
    assert got.truncated is True


def test_a_truncated_answer_is_asked_again_with_twice_the_budget_never_as_a_repair(client: Any) -> None:
    # Given a first answer cut off at max_tokens (32), then a complete one
    store = MemoryStore()
    provider = BedrockProvider(MODEL, client)
    asked = {"modelId": MODEL, "messages": [{"role": "user", "content": [{"text": "item 0"}]}], "toolConfig": ANY}
    with Stubber(client) as stub:
        cut = tool_reply({"label": "y"}, (10, 32))
        cut["stopReason"] = "max_tokens"
        stub.add_response("converse", cut, {**asked, "inferenceConfig": {"maxTokens": 32}})
        # the re-ask sends the same prompt (not the cut-off output) with twice the budget
        stub.add_response("converse", tool_reply({"label": "yes"}, (10, 40)), {**asked, "inferenceConfig": {"maxTokens": 64}})
        outcome = run(store, provider, 1)
        stub.assert_no_pending_responses()
    record = store.records[("i0", "v1")]
    assert record["status"] == "ok" and record["output"] == {"label": "yes"}
    assert record["reasked_truncated"] == 64 and "repaired" not in record
    assert record["usage"] == {"input_tokens": 20, "output_tokens": 72}
    assert outcome.counts["model_calls"] == 2


def test_an_answer_truncated_twice_is_its_own_outcome_and_is_not_repaired(client: Any) -> None:
    store = MemoryStore()
    provider = BedrockProvider(MODEL, client)
    with Stubber(client) as stub:
        for tokens in ((10, 32), (10, 64)):
            cut = tool_reply({"label": "y"}, tokens)
            cut["stopReason"] = "max_tokens"
            stub.add_response("converse", cut)
        outcome = run(store, provider, 1)
        stub.assert_no_pending_responses()
    record = store.records[("i0", "v1")]
    assert record["status"] == "invalid" and record["truncated"] is True and record["output"] is None
    assert record["error"].startswith("truncated: ") and "max_tokens" in record["error"]
    assert outcome.counts["truncated"] == 1 and outcome.counts["model_calls"] == 2
    assert record["usage"] == {"input_tokens": 20, "output_tokens": 96}


def test_the_repair_is_asked_once_at_the_jobs_own_budget(client: Any) -> None:
    store = MemoryStore()
    provider = BedrockProvider(MODEL, client)
    with Stubber(client) as stub:
        stub.add_response(
            "converse",
            tool_reply({"label": "maybe"}),
            {"modelId": MODEL, "messages": ANY, "inferenceConfig": {"maxTokens": 32}, "toolConfig": ANY},
        )
        stub.add_response(
            "converse",
            tool_reply({"label": "perhaps"}),
            {"modelId": MODEL, "messages": ANY, "inferenceConfig": {"maxTokens": 32}, "toolConfig": ANY},
        )
        outcome = run(store, provider, 1)
        stub.assert_no_pending_responses()
    record = store.records[("i0", "v1")]
    assert record["status"] == "invalid" and record["repaired"] is False
    assert outcome.counts["model_calls"] == 2


def section_batch(model: str, sections: tuple[str, ...] = ("competitors", "customers", "regions")) -> dict[str, Any]:
    tasks = [
        {
            "task_id": f"q3#{name}",
            "item_id": "q3",
            "slot": name,
            "kind": "section",
            "model": f"bedrock:{model}",
            "prompt": f"Analyse the {name} for: {DOCUMENT}",
            "expected": None,
        }
        for name in sections
    ]
    shared = {"system": "You are an analyst.", "inference": {"max_tokens": 32}, "output_schema": None, "answer_field": None}
    return dict(batch_for(tasks, **shared))


def test_an_items_first_section_writes_the_cache_before_its_siblings_read_it(client: Any) -> None:
    # Given three sections over one long document, answered by a model that caches, on three threads
    store = MemoryStore()
    order: list[tuple[str, str]] = []
    first_done = threading.Event()
    provider = BedrockProvider(HAIKU_55, client)
    real_converse = client.converse

    def converse(**params: Any) -> Any:
        task = params["messages"][0]["content"][2]["text"]
        order.append(("start", task))
        if len(order) > 1:
            # Then no sibling starts before the first call has come back
            assert first_done.is_set(), "a sibling started before the first call returned"
        result = real_converse(**params)
        if len(order) == 1:
            time.sleep(0.3)  # the first call is slow: siblings run alongside it unless they wait for it
        first_done.set()
        return result

    with Stubber(client) as stub:
        write = {"inputTokens": 12, "outputTokens": 5, "cacheReadInputTokens": 0, "cacheWriteInputTokens": 6000}
        read = {"inputTokens": 12, "outputTokens": 5, "cacheReadInputTokens": 6000, "cacheWriteInputTokens": 0}
        for usage in (write, read, read):
            stub.add_response("converse", reply([{"text": "findings"}], usage=usage))
        client.converse = converse
        outcome = run_batch(section_batch(HAIKU_55), store=store, provider_for=lambda _: provider, threads=3,
                            policy=RetryPolicy(max_attempts=1, base_seconds=0), sleep=lambda s: None)  # fmt: skip
    # every request carried the document first and a cachePoint after it
    assert outcome.counts["ok"] == 3 and order[0][1].startswith("Analyse the competitors")
    usages = [store.records[("q3", name)]["usage"] for name in ("competitors", "customers", "regions")]
    assert usages[0]["cache_write_input_tokens"] == 6000
    assert [u["cache_read_input_tokens"] for u in usages[1:]] == [6000, 6000]


def test_a_schema_the_output_format_refuses_is_asked_again_with_the_tool_and_keeps_it(client: Any) -> None:
    # Given a model with native structured output, and a schema its output format refuses
    provider = BedrockProvider(HAIKU_45, client)
    request = ModelRequest(task_id="a#v1", prompt="?", output_schema=SCHEMA)
    with Stubber(client) as stub:
        native = {"modelId": HAIKU_45, "messages": ANY, "inferenceConfig": ANY, "outputConfig": ANY}
        tool = {"modelId": HAIKU_45, "messages": ANY, "inferenceConfig": ANY, "toolConfig": ANY}
        stub.add_client_error("converse", service_error_code="ValidationException", http_status_code=400, expected_params=native)
        stub.add_response("converse", tool_reply({"label": "yes"}), tool)
        # Then the next call with that schema goes straight to the tool
        stub.add_response("converse", tool_reply({"label": "no"}), tool)

        first = provider.invoke(request, 1)
        second = provider.invoke(request, 1)
        stub.assert_no_pending_responses()
    assert (first.output, second.output) == ({"label": "yes"}, {"label": "no"})


def test_the_re_ask_stays_within_the_models_output_limit(client: Any) -> None:
    # Given Nova Lite (5K output tokens at most) and a budget already at that limit
    from fanout_core.runner import reask_budget

    assert reask_budget(f"bedrock:{MODEL}", 4000) == 5000
    assert reask_budget(f"bedrock:{MODEL}", 5000) is None
    job = batch(1)
    job["inference"] = {"max_tokens": 5000}
    store = MemoryStore()
    with Stubber(client) as stub:
        cut = tool_reply({"label": "y"}, (10, 5000))
        cut["stopReason"] = "max_tokens"
        stub.add_response("converse", cut)
        outcome = run_batch(job, store=store, provider_for=lambda _: BedrockProvider(MODEL, client), threads=1)
        stub.assert_no_pending_responses()

    # Then it is not asked again (a larger budget would be refused): the task is truncated at once
    record = store.records[("i0", "v1")]
    assert record["truncated"] is True and outcome.counts["model_calls"] == 1
    assert "(5000, the model's output limit)" in record["error"]
