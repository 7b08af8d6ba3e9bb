"""Build a provider from a model spec; one provider per spec per container."""

from __future__ import annotations

import threading

from fanout_core.providers.base import Provider
from fanout_core.providers.simulator import Simulator
from fanout_core.providers.spec import parse_model_spec

_cache: dict[str, Provider] = {}
_lock = threading.Lock()


def provider_for(spec_text: str) -> Provider:
    """The provider answering a model spec (cached: clients are built once per container)."""
    with _lock:
        provider = _cache.get(spec_text)
        if provider is None:
            provider = _build(spec_text)
            _cache[spec_text] = provider
        return provider


def _build(spec_text: str) -> Provider:
    spec = parse_model_spec(spec_text)
    if spec.provider == "sim":
        return Simulator(spec.options)
    raise NotImplementedError(f"model provider '{spec.provider}' is not available in this build")
