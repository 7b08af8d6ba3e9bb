"""Names, limits and defaults of the stack, read once from the `fanout:*` keys of cdk.json context."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from constructs import Node

import fanout  # noqa: F401 - puts lambdas/ on the path, where the model data lives
from fanout_core.catalog import eol_models

CONTEXT_PREFIX = "fanout:"

# cross-region inference profile ids start with one of these; the rest of the id is the foundation model
INFERENCE_PROFILE_PREFIXES = ("us.", "eu.", "apac.", "global.")

# children of the Distributed Map: an EXPRESS execution stops at 5 minutes, shorter than a RunBatch task may
# take (900 s, plus retries), so STANDARD is the default when cdk.json does not set fanout:childExecutionType
DEFAULT_CHILD_EXECUTION_TYPE = "STANDARD"
CHILD_EXECUTION_TYPES = ("STANDARD", "EXPRESS")

# the state machine's CloudWatch Logs level: ERROR by default (see Workflow); ALL for a closer look
STATE_MACHINE_LOG_LEVELS = ("ALL", "ERROR", "FATAL", "OFF")
DEFAULT_STATE_MACHINE_LOG_LEVEL = "ERROR"

# a key ARN, not an alias: IAM grants and bucket encryption both need the key itself
KMS_KEY_ARN = re.compile(r"arn:aws[a-z-]*:kms:[a-z0-9-]+:\d{12}:key/[A-Za-z0-9-]+")

# the only values CloudWatch Logs accepts for a retention period
LOG_RETENTION_DAYS = (
    1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731,
    1096, 1827, 2192, 2557, 2922, 3288, 3653,
)  # fmt: skip


# a job's limits the deployment caps (fanout:caps), as the functions read them (FANOUT_CAP_<NAME>). max_job_bytes
# bounds what Plan holds (every item at once; max_items x max_item_bytes would be 40 GB): cdk.json's 200,000,000
# is what Plan was measured to hold in its PLAN_MEMORY_MB (README "Scale", bench.scale --rows k --item-bytes)
CAPPED_LIMITS = ("max_items", "max_tasks", "max_votes", "max_item_bytes", "max_job_bytes", "max_prompt_bytes")


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
    # SSE-KMS with this key for both buckets; None: S3-managed keys (SSE-S3)
    kms_key_arn: str | None = None
    # an address subscribed to the alarms (through an SNS topic); None: alarms without actions
    alarm_email: str | None = None
    # the debug setting: prompts and outputs in the function logs, execution data in the state machine logs
    log_content: bool = False
    state_machine_log_level: str = DEFAULT_STATE_MACHINE_LOG_LEVEL
    # ceilings for a job's limits: a job may lower them, never raise them
    caps: tuple[tuple[str, int], ...] = ()

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
            kms_key_arn=_optional(node, "kmsKeyArn"),
            alarm_email=_optional(node, "alarmEmail"),
            log_content=_as_bool(node, "logContent"),
            state_machine_log_level=(_optional(node, "stateMachineLogLevel") or DEFAULT_STATE_MACHINE_LOG_LEVEL).upper(),
            caps=_as_caps(node.try_get_context(CONTEXT_PREFIX + "caps")),
        )
        config.validate()
        return config

    def cap_environment(self) -> dict[str, str]:
        return {f"FANOUT_CAP_{name.upper()}": str(value) for name, value in self.caps}

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
        self._refuse_end_of_life_models()
        if self.max_concurrency < 1:
            raise ValueError(f"context {CONTEXT_PREFIX}maxConcurrency must be >= 1, got {self.max_concurrency}")
        if self.runs_expiration_days < 1:
            raise ValueError(f"context {CONTEXT_PREFIX}runsExpirationDays must be >= 1, got {self.runs_expiration_days}")
        if self.child_execution_type not in CHILD_EXECUTION_TYPES:
            raise ValueError(
                f"context {CONTEXT_PREFIX}childExecutionType is {self.child_execution_type!r}: "
                f"use one of {', '.join(CHILD_EXECUTION_TYPES)}"
            )
        if self.kms_key_arn is not None and not KMS_KEY_ARN.fullmatch(self.kms_key_arn):
            raise ValueError(
                f"context {CONTEXT_PREFIX}kmsKeyArn is {self.kms_key_arn!r}: give the ARN of a KMS key "
                "(arn:aws:kms:<region>:<account>:key/<key-id>), not an alias or a key id, or leave it empty for SSE-S3"
            )
        if self.alarm_email is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", self.alarm_email):
            raise ValueError(
                f"context {CONTEXT_PREFIX}alarmEmail is {self.alarm_email!r}: give one e-mail address, or leave it empty"
            )
        if self.state_machine_log_level not in STATE_MACHINE_LOG_LEVELS:
            raise ValueError(
                f"context {CONTEXT_PREFIX}stateMachineLogLevel is {self.state_machine_log_level!r}: "
                f"use one of {', '.join(STATE_MACHINE_LOG_LEVELS)}"
            )
        if self.log_retention_days not in LOG_RETENTION_DAYS:
            raise ValueError(
                f"context {CONTEXT_PREFIX}logRetentionDays is {self.log_retention_days}: "
                f"use one of {', '.join(map(str, LOG_RETENTION_DAYS))}"
            )

    def _refuse_end_of_life_models(self) -> None:
        """A deployment whose default or allowed models no longer answer on Bedrock fails at synth, not at the first job."""
        named = [(f"{CONTEXT_PREFIX}defaultModel", self.default_model)] if self.default_model.startswith("bedrock:") else []
        named += [(f"{CONTEXT_PREFIX}models", model) for model in self.models]
        problems = [f"{key}: {message}" for key, spec in named for message in eol_models([spec])]
        if problems:
            raise ValueError("end-of-life Bedrock models in the context: " + "; ".join(problems) + " (fanout_core/models.json)")


def _require(node: Node, key: str) -> Any:
    value = node.try_get_context(CONTEXT_PREFIX + key)
    if value is None or value == "":
        raise ValueError(f"context {CONTEXT_PREFIX}{key} is missing: set it in cdk.json or with -c {CONTEXT_PREFIX}{key}=...")
    return value


def _optional(node: Node, key: str) -> str | None:
    # cdk.json lists optional keys with "" so they can be found; "" and a missing key both mean unset
    value = node.try_get_context(CONTEXT_PREFIX + key)
    if value is None:
        return None
    return str(value).strip() or None


def _as_bool(node: Node, key: str) -> bool:
    value = node.try_get_context(CONTEXT_PREFIX + key)
    if value is None or value == "" or isinstance(value, bool):
        return bool(value)
    # -c on the command line passes a string
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"context {CONTEXT_PREFIX}{key} must be true or false, got {value!r}")


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


def _as_caps(value: object) -> tuple[tuple[str, int], ...]:
    """fanout:caps as an object (cdk.json) or JSON text (-c): {"max_items": 100000, ...}."""
    if value in (None, ""):
        return ()
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise ValueError(f'context {CONTEXT_PREFIX}caps is not JSON: give an object like {{"max_items": 100000}}') from None
    if not isinstance(value, dict):
        raise ValueError(f'context {CONTEXT_PREFIX}caps must be an object like {{"max_items": 100000}}')
    caps = []
    for name, cap in value.items():
        if name not in CAPPED_LIMITS:
            raise ValueError(f"context {CONTEXT_PREFIX}caps has {name!r}: use {', '.join(CAPPED_LIMITS)}")
        if not isinstance(cap, int) or isinstance(cap, bool) or cap < 1:
            raise ValueError(f"context {CONTEXT_PREFIX}caps.{name} must be a whole number of 1 or more, got {cap!r}")
        caps.append((name, cap))
    return tuple(sorted(caps))
