"""Configuration of the functions, read from the environment once, in the handler modules only."""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class Settings:
    results_bucket: str
    default_model: str = "sim"
    max_concurrency_cap: int = 50
    model_timeout_seconds: float = 120.0

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            results_bucket=os.environ["FANOUT_RESULTS_BUCKET"],
            default_model=os.environ.get("FANOUT_DEFAULT_MODEL", "sim"),
            max_concurrency_cap=int(os.environ.get("FANOUT_MAX_CONCURRENCY", "50")),
            model_timeout_seconds=float(os.environ.get("FANOUT_MODEL_TIMEOUT_SECONDS", "120")),
        )
