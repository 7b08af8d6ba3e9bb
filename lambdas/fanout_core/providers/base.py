"""What every provider takes and returns, and how its errors are classified for retries."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, Protocol

# how the runner treats an error: throttled and transient are retried with backoff,
# timeout once, permanent never
ErrorKind = Literal["throttled", "transient", "timeout", "permanent"]


@dataclass(frozen=True)
class ModelRequest:
    task_id: str
    prompt: str
    system: str | None = None
    output_schema: dict[str, Any] | None = None
    max_tokens: int = 512
    temperature: float | None = None
    top_p: float | None = None
    # hints only the simulator reads, so voting and evaluation can be rehearsed for free
    expected: Any = None
    answer_field: str | None = None
    # the part of the prompt the item's other tasks send too (its first or last characters): a provider with a
    # prompt cache sends it first, after the system prompt, followed by a cache checkpoint
    shared_prefix: int = 0
    shared_suffix: int = 0
    # Converse document content blocks (a PDF or office item's file) for providers that take them; every provider
    # also has the item's extracted text in the prompt
    documents: tuple[dict[str, Any], ...] = ()
    # a Bedrock service tier besides standard ("flex", "priority"; fanout_core.tiers), sent as Converse serviceTier
    service_tier: str | None = None


@dataclass(frozen=True)
class ModelReply:
    output: Any  # the structured object when the request had a schema, else the text
    input_tokens: int
    output_tokens: int
    model: str
    synthetic: bool = False
    # input tokens read from / written to the prompt cache, counted apart from input_tokens (Bedrock's usage)
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    # the answer stopped at max_tokens: cut off, not to be repaired or trusted
    truncated: bool = False
    # what the server said of its rate limit (OpenAI-compatible x-ratelimit-* headers): remaining_tokens, ...
    rate_limit: dict[str, float] | None = None


class ModelError(Exception):
    """A failed model call, with the service's error code and how it may be retried."""

    def __init__(self, code: str, message: str, kind: ErrorKind, retry_after: float | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.kind = kind
        # seconds the server asked to wait before the next call (a 429's Retry-After)
        self.retry_after = retry_after


class Provider(Protocol):
    name: str

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        """One model call; raise ModelError for anything the service refused."""
        ...


def schema_in_system(system: str | None, schema: dict[str, Any]) -> str:
    """The system prompt with the output schema spelled out, for a call that cannot bind the schema itself."""
    ask = "Answer with one JSON object only, no prose, matching this JSON Schema:\n" + json.dumps(schema)
    return f"{system}\n\n{ask}" if system else ask
