"""Configuration of the functions, read from the environment once, in the handler modules only."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from fanout_core.job import CAPPED_LIMITS
from fanout_core.pacing import DEFAULT_WINDOW_SECONDS, PacingSettings


@dataclass(frozen=True)
class Settings:
    results_bucket: str
    default_model: str = "sim"
    max_concurrency_cap: int = 50
    model_timeout_seconds: float = 120.0
    # the debug setting: log each model call's prompt and output (FANOUT_LOG_CONTENT, fanout:logContent)
    log_content: bool = False
    # the deployment's ceilings for a job's limits (fanout:caps in cdk.json)
    caps: dict[str, int] = field(default_factory=dict)
    # seconds between two looks at a batch inference job (FANOUT_BATCH_POLL_SECONDS, fanout:batchPollSeconds)
    batch_poll_seconds: int = 1800
    # looks at a batch inference job before it is stopped (FANOUT_BATCH_MAX_POLLS); unset: 30 h of them
    batch_max_polls: int | None = None
    # the longest a finished task's record waits before it is written to S3 (FANOUT_RECORD_FLUSH_SECONDS)
    record_flush_seconds: float = 1.0
    # pacing to the model's quota (fanout_core.pacing): FANOUT_PACING=off turns it off (the bench's fixed-concurrency
    # row), FANOUT_QUOTA_WINDOW_SECONDS scales the quota's minute (the bench only), FANOUT_PACING_SHARED makes the
    # batches of a run in one process share a pacer (the local runtime)
    pacing: PacingSettings = field(default_factory=PacingSettings)

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            results_bucket=os.environ["FANOUT_RESULTS_BUCKET"],
            default_model=os.environ.get("FANOUT_DEFAULT_MODEL", "sim"),
            max_concurrency_cap=int(os.environ.get("FANOUT_MAX_CONCURRENCY", "50")),
            model_timeout_seconds=float(os.environ.get("FANOUT_MODEL_TIMEOUT_SECONDS", "120")),
            log_content=os.environ.get("FANOUT_LOG_CONTENT", "false").strip().lower() in ("true", "1", "yes", "on"),
            batch_poll_seconds=int(os.environ.get("FANOUT_BATCH_POLL_SECONDS", "1800")),
            batch_max_polls=int(os.environ["FANOUT_BATCH_MAX_POLLS"]) if os.environ.get("FANOUT_BATCH_MAX_POLLS") else None,
            record_flush_seconds=float(os.environ.get("FANOUT_RECORD_FLUSH_SECONDS", "1")),
            caps={
                name: int(os.environ[f"FANOUT_CAP_{name.upper()}"])
                for name in CAPPED_LIMITS
                if os.environ.get(f"FANOUT_CAP_{name.upper()}")
            },
            pacing=PacingSettings(
                enabled=_flag(os.environ.get("FANOUT_PACING", "on")),
                window_seconds=float(os.environ.get("FANOUT_QUOTA_WINDOW_SECONDS") or DEFAULT_WINDOW_SECONDS),
                shared=_flag(os.environ.get("FANOUT_PACING_SHARED", "false")),
            ),
        )


def _flag(text: str) -> bool:
    return text.strip().lower() in ("true", "1", "yes", "on")
