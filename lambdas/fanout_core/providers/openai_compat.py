"""Any OpenAI-compatible server (Ollama, vLLM, llama.cpp, ...) through the official ``openai`` client.

With an ``output_schema`` the request asks for a JSON-schema response
format; a server that refuses that option gets the schema in the system
prompt instead (remembered for the rest of the run), and the output is
validated afterwards either way. Errors map as for Bedrock: 429 is
throttled, 5xx and connection errors transient, a timeout is retried once,
other 4xx fail the task. The client's own retries are off.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from fanout_core.providers.base import ErrorKind, ModelError, ModelReply, ModelRequest

_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


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

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        import openai

        structured = request.output_schema is not None
        use_format = structured and self._schema_format_supported
        try:
            response = self.client.chat.completions.create(**self._params(request, use_format))
        except openai.BadRequestError as exc:
            said = str(exc).lower()
            if use_format and ("response_format" in said or "json_schema" in said):
                self._schema_format_supported = False
                return self.invoke(request, attempt)
            raise ModelError("BadRequest", _message(exc), "permanent") from exc
        except openai.RateLimitError as exc:
            raise ModelError("RateLimited", _message(exc), "throttled") from exc
        except openai.APITimeoutError as exc:
            raise ModelError("Timeout", _message(exc), "timeout") from exc
        except openai.APIConnectionError as exc:
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
        )

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


def _parse_json(text: str) -> Any:
    stripped = text.strip()
    fenced = _FENCE.match(stripped)
    if fenced:
        stripped = fenced.group(1)
    try:
        return json.loads(stripped)
    except json.JSONDecodeError:
        return text


def _message(exc: Exception) -> str:
    return str(getattr(exc, "message", None) or exc)[:500]
