"""Amazon Bedrock through the Converse API: structured output, prompt caching, cut-off answers.

``maxTokens`` is always sent: Bedrock reserves tokens-per-minute quota
from it. With an ``output_schema`` the request asks for the schema in the
way the model supports (``fanout_core.catalog``, models.json):

- ``json_schema``: Converse ``outputConfig.textFormat`` (type
  ``json_schema``, the schema as a JSON string; "Get validated JSON results
  from models" and the API reference's OutputFormat / JsonSchemaDefinition),
  and the reply's text is the JSON output;
- ``tool``: one tool whose ``inputSchema`` is the schema and a
  ``toolChoice`` forcing it, so the tool input is the output.

A client whose service model predates ``outputConfig`` (an older boto3 in
a Lambda runtime) gets the forced tool, so no request is refused for it;
a schema the output format refuses (``ValidationException``: it takes a
subset of JSON Schema) is asked again with the forced tool, and that
schema keeps the tool from then on.

Prompt caching ("Prompt caching for faster model inference";
CachePointBlock): a ``cachePoint`` block may follow content in ``system``,
in a message's ``content`` and in ``tools``. When the model caches and the
shared prefix (system prompt, then the part of the prompt the item's other
tasks share) reaches the model's minimum tokens per checkpoint, one
``cachePoint`` is sent right after it: in the message when a part of the
prompt is shared, else after the system prompt. A shared part at the end
of the prompt (a document after a section's question) is sent first, so
the prefix is the same for every task of the item. ``stopReason``
``max_tokens`` marks the reply truncated.

Errors map to the runner's retry kinds (one table, also in the README):

====================================  =========  ==============================
Bedrock error                         kind       what happens
====================================  =========  ==============================
ThrottlingException                   throttled  backoff + retry in the batch,
                                                 then ModelThrottled (the state
                                                 machine retries the batch)
ServiceUnavailableException,          transient  backoff + retry, then failed
ModelNotReadyException,
InternalServerException,
ModelErrorException, HTTP 5xx,
connection errors
ModelTimeoutException, read timeout   timeout    retried once, then failed
ValidationException,                  permanent  failed at once, with the code
AccessDeniedException,                           and message
ResourceNotFoundException, other 4xx
====================================  =========  ==============================

botocore's own retries are off for this client, so the two never multiply.
"""

from __future__ import annotations

import json
from typing import Any

from botocore.config import Config
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    ReadTimeoutError,
)

from fanout_core.catalog import cache_plan, info
from fanout_core.providers.base import ErrorKind, ModelError, ModelReply, ModelRequest

TOOL_NAME = "record_output"

ERROR_KINDS: dict[str, ErrorKind] = {
    "ThrottlingException": "throttled",
    "ServiceUnavailableException": "transient",
    "ModelNotReadyException": "transient",
    "InternalServerException": "transient",
    "ModelErrorException": "transient",
    "ModelTimeoutException": "timeout",
    "ValidationException": "permanent",
    "AccessDeniedException": "permanent",
    "ResourceNotFoundException": "permanent",
    "ServiceQuotaExceededException": "permanent",
}


def client_config(pool: int = 64, read_timeout: float = 120.0) -> Config:
    """One client per container: a connection per batch thread, no hidden retries, bounded waits."""
    return Config(
        max_pool_connections=pool,
        retries={"total_max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=read_timeout,
    )


class BedrockProvider:
    name = "bedrock"

    def __init__(self, model_id: str, client: Any) -> None:
        self.model_id = model_id
        self.client = client
        found = info(f"bedrock:{model_id}")
        native = found is not None and found.structured_output == "json_schema"
        self.json_schema_output = native and _client_accepts(client, "outputConfig")
        # schemas the JSON-schema output format refused (it takes a subset of JSON Schema): these go by the tool
        self._refused_schemas: set[str] = set()

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        schema_key = json.dumps(request.output_schema, sort_keys=True)
        native = self.json_schema_output and schema_key not in self._refused_schemas
        params = converse_request(self.model_id, request, json_schema_output=native)
        try:
            response = self.client.converse(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "ClientError"))
            if code == "ValidationException" and "outputConfig" in params:
                # a refused request is not billed: ask again at once with the forced tool, and keep to it
                self._refused_schemas.add(schema_key)
                return self.invoke(request, attempt)
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            kind = ERROR_KINDS.get(code) or ("transient" if status >= 500 else "permanent")
            raise ModelError(code, str(error.get("Message", "")), kind) from exc
        except ReadTimeoutError as exc:
            raise ModelError("ReadTimeout", str(exc), "timeout") from exc
        except (ConnectTimeoutError, EndpointConnectionError, ConnectionClosedError) as exc:
            raise ModelError(type(exc).__name__, str(exc), "transient") from exc
        usage = response.get("usage", {})
        return ModelReply(
            # the forced tool's input, or with outputConfig the JSON text of the reply
            output=output_of(response, request.output_schema is not None),
            input_tokens=int(usage.get("inputTokens", 0)),
            output_tokens=int(usage.get("outputTokens", 0)),
            model=f"bedrock:{self.model_id}",
            cache_read_tokens=int(usage.get("cacheReadInputTokens", 0) or 0),
            cache_write_tokens=int(usage.get("cacheWriteInputTokens", 0) or 0),
            truncated=response.get("stopReason") == "max_tokens",
        )


def _client_accepts(client: Any, member: str) -> bool:
    """Whether the client's own service model has this Converse request member (botocore refuses unknown ones)."""
    try:
        return member in client.meta.service_model.operation_model("Converse").input_shape.members
    except Exception:  # a test double without a service model
        return False


CACHE_POINT: dict[str, Any] = {"cachePoint": {"type": "default"}}


def converse_request(model_id: str, request: ModelRequest, *, json_schema_output: bool = False) -> dict[str, Any]:
    """The Converse parameters for one task."""
    inference: dict[str, Any] = {"maxTokens": request.max_tokens}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    content, shared = _content(request)
    params: dict[str, Any] = {
        "modelId": model_id,
        "messages": [{"role": "user", "content": content}],
        "inferenceConfig": inference,
    }
    if request.system:
        params["system"] = [{"text": request.system}]
    if request.service_tier is not None:
        # "Service tiers for optimizing performance and cost" (service-tiers-inference.html); ServiceTier.type
        params["serviceTier"] = {"type": request.service_tier}
    caching, _ = cache_plan(f"bedrock:{model_id}", request.system, shared)
    if caching and shared:
        content.insert(1, CACHE_POINT)
    elif caching and request.system:
        params["system"].append(CACHE_POINT)
    # documents first: the text (and its cache point) follow, as Converse needs a text block with them
    content[:0] = list(request.documents)
    if request.output_schema is not None and json_schema_output:
        params["outputConfig"] = {
            "textFormat": {
                "type": "json_schema",
                "structure": {"jsonSchema": {"schema": json.dumps(request.output_schema), "name": "output"}},
            }
        }
    elif request.output_schema is not None:
        params["toolConfig"] = {
            "tools": [
                {
                    "toolSpec": {
                        "name": TOOL_NAME,
                        "description": "Record the answer in the required structure.",
                        "inputSchema": {"json": request.output_schema},
                    }
                }
            ],
            "toolChoice": {"tool": {"name": TOOL_NAME}},
        }
    return params


def _content(request: ModelRequest) -> tuple[list[dict[str, Any]], str]:
    """The user message's text blocks, the shared part first, and that shared part ("" when none)."""
    prompt = request.prompt
    if request.shared_prefix > 0:
        shared, own = prompt[: request.shared_prefix], prompt[request.shared_prefix :]
    elif request.shared_suffix > 0:
        shared, own = prompt[-request.shared_suffix :], prompt[: -request.shared_suffix]
    else:
        return [{"text": prompt}], ""
    # Converse refuses an empty text block; a prompt wholly shared (the votes of an item) is one block
    return [{"text": shared}] + ([{"text": own}] if own.strip() else []), shared


def output_of(response: dict[str, Any], structured: bool) -> Any:
    """The forced tool's input when structured, else the reply's text."""
    content = response.get("output", {}).get("message", {}).get("content", [])
    if structured:
        for block in content:
            if "toolUse" in block:
                return block["toolUse"].get("input")
    text = "".join(block.get("text", "") for block in content)
    if structured:
        # a model that answered in text instead of the tool: take JSON if it is JSON, else let validation say so
        try:
            return json.loads(text)
        except (ValueError, RecursionError):  # not JSON, an integer too long to read, nesting too deep
            return text
    return text
