"""Token cost from list prices (``models.json``): a known model gets a figure, an unknown one gets None, never a guess.

Bedrock reports a call's uncached input (``inputTokens``) apart from the
input read from or written to the prompt cache (``cacheReadInputTokens``,
``cacheWriteInputTokens``, Converse ``TokenUsage``); each is priced at its
own rate, and the saving is what the cached tokens would have cost at the
plain input price.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fanout_core.catalog import Rates, base_model_id, info
from fanout_core.tiers import is_simulator, split_tier, tier_factor

__all__ = ["base_model_id", "estimate_cost", "price_of", "price_usage", "rates_of", "usage_cost"]

CACHE_FIELDS = ("cache_read_input_tokens", "cache_write_input_tokens")


def rates_of(model: str, overrides: dict[str, Any] | None = None) -> Rates | None:
    """The model's rates (a job's ``prices`` override first); None when its price is not known.

    A usage key with a tier (``bedrock:x@batch``, fanout_core.tiers) is priced at that tier's share of the rates.
    """
    spec, tier = split_tier(model)
    if tier != "on_demand":
        rates, factor = rates_of(spec, overrides), tier_factor(spec, tier)
        if rates is None or factor is None:
            return None
        return Rates(*(rate * factor for rate in (rates.input, rates.output, rates.cache_read, rates.cache_write)))
    for key in (model, model.removeprefix("bedrock:"), base_model_id(model)):
        if overrides and key in overrides:
            entry = overrides[key]
            given_in = float(entry["input_per_million"])
            return Rates(given_in, float(entry["output_per_million"]), given_in, given_in)
    if is_simulator(model):
        return Rates(0.0, 0.0, 0.0, 0.0)
    found = info(model if model.startswith("bedrock:") else f"bedrock:{model}")
    return None if found is None else found.rates


def price_of(model: str, overrides: dict[str, Any] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens, or None when the model's price is not known."""
    rates = rates_of(model, overrides)
    return None if rates is None else (rates.input, rates.output)


def usage_cost(usage: Mapping[str, Any], rates: Rates) -> tuple[float, float]:
    """(cost, saving from the cache) in USD of one model's usage."""
    tokens_in = usage.get("input_tokens", 0) or 0
    read = usage.get("cache_read_input_tokens", 0) or 0
    write = usage.get("cache_write_input_tokens", 0) or 0
    cost = (
        tokens_in * rates.input
        + (usage.get("output_tokens", 0) or 0) * rates.output
        + read * rates.cache_read
        + write * rates.cache_write
    ) / 1e6
    saving = ((read + write) * rates.input - read * rates.cache_read - write * rates.cache_write) / 1e6
    return cost, saving


def estimate_cost(by_model: dict[str, dict[str, int]], overrides: dict[str, Any] | None = None) -> float | None:
    """Total USD for the usage per model; None when any model with tokens has no known price."""
    total = 0.0
    for model, usage in by_model.items():
        if not any(usage.get(k) for k in ("input_tokens", "output_tokens", *CACHE_FIELDS)):
            continue
        rates = rates_of(model, overrides)
        if rates is None:
            return None
        total += usage_cost(usage, rates)[0]
    return round(total, 6)


def price_usage(usage: dict[str, Any], overrides: dict[str, Any] | None = None) -> None:
    """Fill result.json's usage: ``estimated_cost_usd``, and with cached input the cache tokens and their saving."""
    by_model: dict[str, dict[str, int]] = usage.get("by_model", {})
    usage["estimated_cost_usd"] = estimate_cost(by_model, overrides)
    read = sum(u.get("cache_read_input_tokens", 0) or 0 for u in by_model.values())
    write = sum(u.get("cache_write_input_tokens", 0) or 0 for u in by_model.values())
    if not read and not write:
        return
    usage["cache_read_input_tokens"] = read
    usage["cache_write_input_tokens"] = write
    saving = 0.0
    for model, spent in by_model.items():
        rates = rates_of(model, overrides)
        if rates is None:
            usage["cache_savings_usd"] = None
            return
        saving += usage_cost(spent, rates)[1]
    # what the cached input would have cost at the plain input price, less what it cost (writes may cost more)
    usage["cache_savings_usd"] = round(saving, 6)
