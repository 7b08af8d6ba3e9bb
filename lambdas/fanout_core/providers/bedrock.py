"""Amazon Bedrock through the Converse API, with structured output by a forced tool.

``maxTokens`` is always sent: Bedrock reserves tokens-per-minute quota
from it. With an ``output_schema`` the request carries one tool whose
``inputSchema`` is the schema and a ``toolChoice`` forcing it, so the tool
input is the output; without one, the reply's text is the output.

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

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        try:
            response = self.client.converse(**converse_request(self.model_id, request))
        except ClientError as exc:
            error = exc.response.get("Error", {})
            code = str(error.get("Code", "ClientError"))
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            kind = ERROR_KINDS.get(code) or ("transient" if status >= 500 else "permanent")
            raise ModelError(code, str(error.get("Message", "")), kind) from exc
        except ReadTimeoutError as exc:
            raise ModelError("ReadTimeout", str(exc), "timeout") from exc
        except (ConnectTimeoutError, EndpointConnectionError, ConnectionClosedError) as exc:
            raise ModelError(type(exc).__name__, str(exc), "transient") from exc
        usage = response.get("usage", {})
        return ModelReply(
            output=output_of(response, request.output_schema is not None),
            input_tokens=int(usage.get("inputTokens", 0)),
            output_tokens=int(usage.get("outputTokens", 0)),
            model=f"bedrock:{self.model_id}",
        )


def converse_request(model_id: str, request: ModelRequest) -> dict[str, Any]:
    """The Converse parameters for one task."""
    inference: dict[str, Any] = {"maxTokens": request.max_tokens}
    if request.temperature is not None:
        inference["temperature"] = request.temperature
    if request.top_p is not None:
        inference["topP"] = request.top_p
    params: dict[str, Any] = {
        "modelId": model_id,
        "messages": [{"role": "user", "content": [{"text": request.prompt}]}],
        "inferenceConfig": inference,
    }
    if request.system:
        params["system"] = [{"text": request.system}]
    if request.output_schema is not None:
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
        except json.JSONDecodeError:
            return text
    return text
