"""Model specs: ``bedrock:<id|profile|arn>``, ``openai:<base-url>#<model>``, ``sim[:key=value,...]``."""

from __future__ import annotations

from dataclasses import dataclass, field

SIM_KEYS = {
    "latency_ms": float,
    "jitter_ms": float,
    "throttle_rate": float,
    "error_rate": float,
    "invalid_rate": float,
    "timeout_rate": float,
    "accuracy": float,
    "difficulty": float,
    "seed": int,
}
_RATES = ("throttle_rate", "error_rate", "invalid_rate", "timeout_rate", "accuracy")


@dataclass(frozen=True)
class ModelSpec:
    provider: str  # "bedrock" | "openai" | "sim"
    model_id: str = ""
    base_url: str = ""
    options: dict[str, float | int] = field(default_factory=dict)
    text: str = ""


def parse_model_spec(text: str) -> ModelSpec:
    """Parse a model spec string; ValueError says what is wrong and what a good spec looks like."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("model spec is empty; use 'sim', 'bedrock:<model-id>' or 'openai:<base-url>#<model>'")
    provider, _, rest = text.partition(":")
    if provider == "sim":
        return ModelSpec("sim", model_id="sim", options=_sim_options(rest), text=text)
    if provider == "bedrock":
        if not rest.strip():
            raise ValueError("'bedrock:' needs a model id, inference profile id or ARN, e.g. bedrock:amazon.nova-lite-v1:0")
        return ModelSpec("bedrock", model_id=rest, text=text)
    if provider == "openai":
        base_url, _, model = rest.partition("#")
        if not base_url.startswith(("http://", "https://")) or not model:
            raise ValueError("use openai:<base-url>#<model>, e.g. openai:http://127.0.0.1:11434/v1#llama3.2")
        return ModelSpec("openai", model_id=model, base_url=base_url, text=text)
    raise ValueError(
        f"unknown model provider '{provider}' in '{text}'; use 'sim', 'bedrock:<model-id>' or 'openai:<base-url>#<model>'"
    )


def _sim_options(rest: str) -> dict[str, float | int]:
    options: dict[str, float | int] = {}
    for pair in filter(None, (p.strip() for p in rest.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or key not in SIM_KEYS:
            raise ValueError(f"sim option '{pair}' is not key=value with a key from {sorted(SIM_KEYS)}")
        try:
            number = SIM_KEYS[key](value)
        except ValueError:
            raise ValueError(f"sim option '{key}' needs a number, got '{value}'") from None
        if key in _RATES and not 0.0 <= float(number) <= 1.0:
            raise ValueError(f"sim option '{key}' must be between 0 and 1, got {value}")
        if key == "difficulty" and not 0 < float(number) <= 1e6:
            raise ValueError(f"sim option 'difficulty' is the Beta concentration K, above 0 (e.g. 4), got {value}")
        if key in ("latency_ms", "jitter_ms") and float(number) < 0:
            raise ValueError(f"sim option '{key}' must be 0 or more, got {value}")
        options[key] = number
    return options
