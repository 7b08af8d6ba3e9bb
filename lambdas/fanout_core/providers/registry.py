"""Build a provider from a model spec; one provider (and one client) per spec per container."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from typing import Any

import boto3

from fanout_core.providers.base import ModelReply, ModelRequest, Provider
from fanout_core.providers.bedrock import BedrockProvider, client_config
from fanout_core.providers.openai_compat import OpenAICompatibleProvider
from fanout_core.providers.simulator import Simulator
from fanout_core.providers.spec import parse_model_spec

_cache: dict[str, Provider] = {}
_lock = threading.Lock()
_bedrock_session: Any = None
_call_counter: Counter[str] | None = None
_timeout_seconds = 120.0


def configure(model_timeout_seconds: float) -> None:
    """The read timeout of every model call (from the function's settings); rebuilds clients if it changed."""
    global _timeout_seconds
    with _lock:
        if model_timeout_seconds != _timeout_seconds:
            _timeout_seconds = model_timeout_seconds
            _cache.clear()


def count_calls(counter: Counter[str] | None) -> None:
    """Count every model call by spec into ``counter`` (the local runtime's run figures); None stops."""
    global _call_counter
    with _lock:
        _call_counter = counter
        _cache.clear()


def use_bedrock_session(session: Any) -> None:
    """Call Bedrock with this boto3 session (the local runtime passes the caller's real credentials)."""
    global _bedrock_session
    with _lock:
        _bedrock_session = session
        for key in [k for k in _cache if k.startswith("bedrock:")]:
            del _cache[key]


def provider_for(spec_text: str) -> Provider:
    """The provider answering a model spec (cached: clients are built once per container)."""
    with _lock:
        provider = _cache.get(spec_text)
        if provider is None:
            provider = _build(spec_text)
            if _call_counter is not None:
                provider = _Counted(provider, spec_text, _call_counter)
            _cache[spec_text] = provider
        return provider


class _Counted:
    def __init__(self, inner: Provider, spec: str, counter: Counter[str]) -> None:
        self.inner, self.spec, self.counter = inner, spec, counter
        self.name = inner.name
        self.calls = itertools.count(counter.get(spec, 0) + 1)

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        self.counter[self.spec] = next(self.calls)  # itertools.count: atomic, no lock on the hot path
        return self.inner.invoke(request, attempt)


def _build(spec_text: str) -> Provider:
    spec = parse_model_spec(spec_text)
    timeout = _timeout_seconds
    if spec.provider == "sim":
        return Simulator(spec.options)
    if spec.provider == "bedrock":
        session = _bedrock_session or boto3.Session()
        client = session.client("bedrock-runtime", config=client_config(read_timeout=timeout))
        return BedrockProvider(spec.model_id, client)
    return OpenAICompatibleProvider(spec.base_url, spec.model_id, timeout=timeout)
