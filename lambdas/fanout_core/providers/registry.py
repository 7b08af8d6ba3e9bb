"""Build a provider from a model spec; one provider (and one client) per spec per registry.

A ``ProviderRegistry`` is an object its owner passes around: the handlers
use the one of their container (``handlers._clients.providers()``), the
local runtime installs its own for a run (with the caller's Bedrock session
and a call counter) and puts the previous one back afterwards.
"""

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

DEFAULT_TIMEOUT_SECONDS = 120.0


class ProviderRegistry:
    """Providers by model spec, built on first use and kept (clients are built once)."""

    def __init__(
        self,
        *,
        bedrock_session: Any = None,
        call_counter: Counter[str] | None = None,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
    ) -> None:
        # bedrock_session: call Bedrock with this boto3 session (the local runtime passes the caller's credentials)
        # call_counter: every model call counted by spec into it (the local runtime's run figures)
        self.bedrock_session = bedrock_session
        self.call_counter = call_counter
        self.timeout_seconds = timeout_seconds
        self._cache: dict[str, Provider] = {}
        self._lock = threading.Lock()

    def configure(self, model_timeout_seconds: float) -> None:
        """The read timeout of every model call (from the function's settings); rebuilds clients if it changed."""
        with self._lock:
            if model_timeout_seconds != self.timeout_seconds:
                self.timeout_seconds = model_timeout_seconds
                self._cache.clear()

    def provider_for(self, spec_text: str) -> Provider:
        """The provider answering a model spec (cached: clients are built once per registry)."""
        with self._lock:
            provider = self._cache.get(spec_text)
            if provider is None:
                provider = self._build(spec_text)
                if self.call_counter is not None:
                    provider = _Counted(provider, spec_text, self.call_counter)
                self._cache[spec_text] = provider
            return provider

    def _build(self, spec_text: str) -> Provider:
        spec = parse_model_spec(spec_text)
        timeout = self.timeout_seconds
        if spec.provider == "sim":
            return Simulator(spec.options)
        if spec.provider == "bedrock":
            session = self.bedrock_session or boto3.Session()
            client = session.client("bedrock-runtime", config=client_config(read_timeout=timeout))
            return BedrockProvider(spec.model_id, client)
        return OpenAICompatibleProvider(spec.base_url, spec.model_id, timeout=timeout)


class _Counted:
    def __init__(self, inner: Provider, spec: str, counter: Counter[str]) -> None:
        self.inner, self.spec, self.counter = inner, spec, counter
        self.name = inner.name
        self.calls = itertools.count(counter.get(spec, 0) + 1)

    def invoke(self, request: ModelRequest, attempt: int) -> ModelReply:
        self.counter[self.spec] = next(self.calls)  # itertools.count: atomic, no lock on the hot path
        return self.inner.invoke(request, attempt)
