"""Any OpenAI-compatible server (Ollama, vLLM, llama.cpp, ...) through the official ``openai`` client.

With an ``output_schema`` the request asks for a JSON-schema response
format; a server that refuses that option gets the schema in the system
prompt instead (remembered for the rest of the run), and the output is
validated afterwards either way. A 400 saying the server cannot compile
the schema into a grammar (llama.cpp: ``Unable to generate parser ... JSON
schema error``) also falls back to the schema in the prompt. Errors map as
for Bedrock: 429 is throttled, 5xx and dropped connections transient, a
timeout is retried once, other 4xx fail the task. The client's own retries
are off.

A server that cannot be reached at all (nothing listens at the URL) fails
its tasks at once, naming the URL, instead of retrying each one; the
provider remembers that for a few seconds, so a batch does not knock on a
closed port once per task. Servers that serve one model whatever the name
after ``#`` (llama.cpp) are detected from ``GET /models`` and warned about
once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any

from fanout_core.providers.base import ErrorKind, ModelError, ModelReply, ModelRequest

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)
# how a 400 says the server cannot use the schema as a response format (not that the request is wrong)
_SCHEMA_REFUSED = ("response_format", "json_schema", "json schema", "unable to generate parser", "grammar")
# a server found unreachable is not asked again for this long (each task fails at once, naming the URL)
DOWN_SECONDS = 10.0
# the longest a 429's Retry-After holds the model's calls
MAX_RETRY_AFTER_SECONDS = 120.0
_log = logging.getLogger("fanout.openai")
# (base URL, model) pairs whose served models were checked in this process: warned about once
_checked: set[tuple[str, str]] = set()


class OpenAICompatibleProvider:
    name = "openai"

    def __init__(self, base_url: str, model: str, client: Any | None = None, timeout: float = 120.0) -> None:
        if client is None:
            from openai import OpenAI

            client = OpenAI(
                base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY") or "not-needed", max_retries=0, timeout=timeout
            )
        self.client = client
        self.model = model
        self.base_url = base_url
        self._schema_format_supported = True
        self._lock = threading.Lock()
        self._model_checked = False
        self._down_until = 0.0
        self._down_reason = ""
        self.warn: Callable[[str], None] = _log.warning

    def served_models(self) -> list[str] | None:
        """The model ids ``GET /models`` lists; None when the server does not say. Raises ModelError when unreachable."""
        import openai

        try:
            listed = self.client.models.list()
        except openai.APIConnectionError as exc:
            raise ModelError("ServerUnreachable", self._unreachable(exc), "permanent") from exc
        except openai.APIError:
            return None
        return [str(getattr(m, "id", "")) for m in getattr(listed, "data", None) or []]

    def check(self) -> list[str]:
        """What a user should know before the first call: warnings; raises ModelError when the server is unreachable."""
        _checked.add((self.base_url, self.model))
        served = self.served_models()
        if served and self.model not in served:
            return [
                f"openai:{self.base_url}#{self.model}: the server serves {', '.join(served)} and ignores the model name "
                f"'{self.model}' after '#'; results and records will name '{self.model}'"
            ]
        return []

    def _check_once(self) -> None:
        with self._lock:
            if self._model_checked or (self.base_url, self.model) in _checked:
                return
            self._model_checked = True
        try:
            warnings = self.check()
        except ModelError:
            return  # the call itself says the server is unreachable
        for warning in warnings:
            self.warn(warning)

    def _unreachable(self, exc: Exception) -> str:
        cause = exc.__cause__ or exc.__context__ or exc
        return (
            f"cannot reach the OpenAI-compatible server at {self.base_url} ({type(cause).__name__}: {str(cause)[:200]}); "
            "start it, or fix the URL in the model spec"
        )

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        import openai

        if time.monotonic() < self._down_until:
            raise ModelError("ServerUnreachable", self._down_reason, "permanent")
        self._check_once()
        structured = request.output_schema is not None
        use_format = structured and self._schema_format_supported
        try:
            response, limits = self._create(self._params(request, use_format))
        except openai.BadRequestError as exc:
            said = str(exc).lower()
            if use_format and any(sign in said for sign in _SCHEMA_REFUSED):
                self._schema_format_supported = False
                return self.invoke(request, attempt)
            raise ModelError("BadRequest", _message(exc), "permanent") from exc
        except openai.RateLimitError as exc:
            # a 429's Retry-After: the pacer holds every call of the model that long (fanout_core.pacing)
            wait = retry_after(getattr(getattr(exc, "response", None), "headers", None))
            wait = None if wait is None else min(wait, MAX_RETRY_AFTER_SECONDS)  # a server cannot stall a run for hours
            raise ModelError("RateLimited", _message(exc), "throttled", retry_after=wait) from exc
        except openai.APITimeoutError as exc:
            raise ModelError("Timeout", _message(exc), "timeout") from exc
        except openai.APIConnectionError as exc:
            if _refused(exc):
                # nothing listens there: fail now, naming the URL, and spare the next tasks the attempt
                self._down_reason = self._unreachable(exc)
                self._down_until = time.monotonic() + DOWN_SECONDS
                raise ModelError("ServerUnreachable", self._down_reason, "permanent") from exc
            raise ModelError("ConnectionError", _message(exc), "transient") from exc
        except openai.APIStatusError as exc:
            kind: ErrorKind = "transient" if exc.status_code >= 500 else "permanent"
            raise ModelError(f"HTTP{exc.status_code}", _message(exc), kind) from exc
        text = response.choices[0].message.content or ""
        usage = response.usage
        return ModelReply(
            output=_parse_json(text) if structured else text,
            input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
            output_tokens=int(getattr(usage, "completion_tokens", 0) or 0),
            model=f"openai:{self.model}",
            rate_limit=limits,
        )

    def _create(self, params: dict[str, Any]) -> tuple[Any, dict[str, float] | None]:
        """The completion and what the server's x-ratelimit-* headers say is left (None without them)."""
        raw_api = getattr(self.client.chat.completions, "with_raw_response", None)
        if raw_api is None:  # a client without raw responses (a test double): no headers to read
            return self.client.chat.completions.create(**params), None
        raw = raw_api.create(**params)
        return raw.parse(), rate_limit_headers(raw.headers)

    def _params(self, request: ModelRequest, use_format: bool) -> dict[str, Any]:
        system = request.system or ""
        if request.output_schema is not None and not use_format:
            system = (system + "\n\n" if system else "") + (
                "Answer with one JSON object only, no prose, matching this JSON Schema:\n" + json.dumps(request.output_schema)
            )
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": request.prompt}]
        params: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": request.max_tokens}
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.top_p is not None:
            params["top_p"] = request.top_p
        if use_format:
            params["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "output", "schema": request.output_schema},
            }
        return params


def _refused(exc: Exception) -> bool:
    """Whether a connection error means nothing listens at the address (refused, unknown host), not a dropped call."""
    # the client's HTTP library (httpx, or its successor) names the failure to connect ConnectError
    cause = exc.__cause__
    return cause is not None and any(kind.__name__ == "ConnectError" for kind in type(cause).__mro__)


def _parse_json(text: str) -> Any:
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        return json.loads(stripped)
    except (ValueError, RecursionError):  # not JSON, an integer too long to read, nesting too deep
        return text


def rate_limit_headers(headers: Any) -> dict[str, float] | None:
    """``x-ratelimit-remaining-tokens`` / ``-requests`` (and the limits) as numbers; None when the server sends none."""
    if headers is None:
        return None
    found: dict[str, float] = {}
    for name, key in (
        ("x-ratelimit-remaining-tokens", "remaining_tokens"),
        ("x-ratelimit-remaining-requests", "remaining_requests"),
        ("x-ratelimit-limit-tokens", "limit_tokens"),
        ("x-ratelimit-limit-requests", "limit_requests"),
    ):
        value = headers.get(name)
        try:
            if value is not None:
                found[key] = float(value)
        except (TypeError, ValueError):
            continue
    return found or None


def retry_after(headers: Any) -> float | None:
    """Seconds a 429 asks to wait: ``retry-after-ms``, or ``retry-after`` in seconds or as an HTTP date."""
    if headers is None:
        return None
    try:
        if headers.get("retry-after-ms") is not None:
            return max(0.0, float(headers["retry-after-ms"]) / 1000)
        value = headers.get("retry-after")
        if value is None:
            return None
        try:
            return max(0.0, float(value))
        except ValueError:
            from email.utils import parsedate_to_datetime

            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, OverflowError):
        return None


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc)[:500]
