"""Names, limits and defaults of the stack, read once from the `fanout:*` keys of cdk.json context."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from constructs import Node

CONTEXT_PREFIX = "fanout:"

# cross-region inference profile ids start with one of these; the rest of the id is the foundation model
INFERENCE_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "global.")

# children of the Distributed Map: an EXPRESS execution stops at 5 minutes, shorter than a RunBatch task may
# take (900 s, plus retries), so STANDARD is the default when cdk.json does not set fanout:childExecutionType
DEFAULT_CHILD_EXECUTION_TYPE = "STANDARD"
CHILD_EXECUTION_TYPES = ("STANDARD", "EXPRESS")

# the only values CloudWatch Logs accepts for a retention period
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731,
    1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip


@dataclass(frozen=True)
class FanoutConfig:
    stack_name: str
    name_prefix: str
    default_model: str
    models: tuple[str, ...]
    max_concurrency: int
    runs_expiration_days: int
    lambda_runtime: str
    log_retention_days: int
    child_execution_type: str = DEFAULT_CHILD_EXECUTION_TYPE

    @property
    def python_version(self) -> str:
        """The runtime's Python version ("python3.12" -> "3.12"), for pip's --python-version."""
        return self.lambda_runtime.removeprefix("python")

    @classmethod
    def from_node(cls, node: Node) -> FanoutConfig:
        """Build the config from context; `-c fanout:key=value` on the CLI overrides cdk.json."""
        config = cls(
            stack_name=str(_require(node, "stackName")),
            name_prefix=str(_require(node, "namePrefix")),
            default_model=str(_require(node, "defaultModel")),
            models=_as_list(_require(node, "models")),
            max_concurrency=_as_int(node, "maxConcurrency"),
            runs_expiration_days=_as_int(node, "runsExpirationDays"),
            lambda_runtime=str(_require(node, "lambdaRuntime")),
            log_retention_days=_as_int(node, "logRetentionDays"),
            child_execution_type=str(
                node.try_get_context(CONTEXT_PREFIX + "childExecutionType") or DEFAULT_CHILD_EXECUTION_TYPE
            ).upper(),
        )
        config.validate()
        return config

    def validate(self) -> None:
        minor = self.lambda_runtime.removeprefix("python3.")
        # python3.12+ runs on Amazon Linux 2023, which the bundled manylinux_2_28 wheels need
        if not self.lambda_runtime.startswith("python3.") or not minor.isdigit() or int(minor) < 12:
            raise ValueError(
                f"context {CONTEXT_PREFIX}lambdaRuntime is {self.lambda_runtime!r}: "
                "set a Python Lambda runtime of 3.12 or later, such as 'python3.12'"
            )
        if not self.models:
            raise ValueError(
                f"context {CONTEXT_PREFIX}models is empty: list the Bedrock model or inference profile ids "
                "the functions may invoke"
            )
        for model in self.models:
            if model.startswith(("arn:", "bedrock:")):
                raise ValueError(
                    f"context {CONTEXT_PREFIX}models has {model!r}: list bare model or inference profile ids "
                    "(e.g. 'us.amazon.nova-lite-v1:0'), not ARNs or model specs"
                )
        default_id = self.default_model.removeprefix("bedrock:")
        if self.default_model.startswith("bedrock:") and default_id not in self.models:
            raise ValueError(
                f"context {CONTEXT_PREFIX}defaultModel is {self.default_model!r} but {default_id!r} is not in "
                f"{CONTEXT_PREFIX}models: add it there, or the functions may not invoke it"
            )
        if self.max_concurrency < 1:
            raise ValueError(f"context {CONTEXT_PREFIX}maxConcurrency must be >= 1, got {self.max_concurrency}")
        if self.runs_expiration_days < 1:
            raise ValueError(f"context {CONTEXT_PREFIX}runsExpirationDays must be >= 1, got {self.runs_expiration_days}")
        if self.child_execution_type not in CHILD_EXECUTION_TYPES:
            raise ValueError(
                f"context {CONTEXT_PREFIX}childExecutionType is {self.child_execution_type!r}: "
                f"use one of {', '.join(CHILD_EXECUTION_TYPES)}"
            )
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ValueError(
                f"context {CONTEXT_PREFIX}logRetentionDays is {self.log_retention_days}: "
                f"use one of {', '.join(map(str, LOG_RETENTION_DAYS))}"
            )


def _require(node: Node, key: str) -> Any:
    value = node.try_get_context(CONTEXT_PREFIX + key)
    if value is None or value == "":
        raise ValueError(f"context {CONTEXT_PREFIX}{key} is missing: set it in cdk.json or with -c {CONTEXT_PREFIX}{key}=...")
    return value


def _as_int(node: Node, key: str) -> int:
    value = _require(node, key)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ValueError(f"context {CONTEXT_PREFIX}{key} must be a whole number, got {value!r}") from None


def _as_list(value: Any) -> tuple[str, ...]:
    # -c on the command line passes a string: accept a JSON list or comma-separated ids
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            value = value.split(",")
    if isinstance(value, str):
        value = [value]
    return tuple(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))
