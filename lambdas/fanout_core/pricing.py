"""Token cost from list prices: a known model gets a figure, an unknown one gets None, never a guess."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

_PROFILE_PREFIXES = ("us-gov.", "us.", "eu.", "apac.", "global.", "jp.", "au.", "ca.")


@functools.cache
def list_prices() -> dict[str, tuple[float, float]]:
    data = json.loads((Path(__file__).parent / "prices.json").read_text())
    return {model: (float(p[0]), float(p[1])) for model, p in data["models"].items()}


def base_model_id(model: str) -> str:
    """``bedrock:us.anthropic.x`` or an inference-profile ARN -> ``anthropic.x``."""
    model = model.removeprefix("bedrock:")
    if model.startswith("arn:"):
        model = model.rsplit("/", 1)[-1]
    for prefix in _PROFILE_PREFIXES:
        if model.startswith(prefix):
            return model[len(prefix) :]
    return model


def price_of(model: str, overrides: dict[str, Any] | None = None) -> tuple[float, float] | None:
    """(input, output) USD per 1M tokens, or None when the model's price is not known."""
    if model == "sim" or model.startswith("sim:"):
        return (0.0, 0.0)
    for key in (model, model.removeprefix("bedrock:"), base_model_id(model)):
        if overrides and key in overrides:
            entry = overrides[key]
            return (float(entry["input_per_million"]), float(entry["output_per_million"]))
    return list_prices().get(base_model_id(model))


def estimate_cost(by_model: dict[str, dict[str, int]], overrides: dict[str, Any] | None = None) -> float | None:
    """Total USD for the usage per model; None when any model with tokens has no known price."""
    total = 0.0
    for model, usage in by_model.items():
        tokens_in, tokens_out = usage.get("input_tokens", 0), usage.get("output_tokens", 0)
        if not tokens_in and not tokens_out:
            continue
        price = price_of(model, overrides)
        if price is None:
            return None
        total += tokens_in / 1e6 * price[0] + tokens_out / 1e6 * price[1]
    return round(total, 6)
