"""What every provider takes and returns, and how its errors are classified for retries."""

from __future__ import annotations

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


@dataclass(frozen=True)
class ModelReply:
    output: Any  # the structured object when the request had a schema, else the text
    input_tokens: int
    output_tokens: int
    model: str
    synthetic: bool = False


class ModelError(Exception):
    """A failed model call, with the service's error code and how it may be retried."""

    def __init__(self, code: str, message: str, kind: ErrorKind) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.kind = kind


class Provider(Protocol):
    name: str

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        """One model call; raise ModelError for anything the service refused."""
        ...
