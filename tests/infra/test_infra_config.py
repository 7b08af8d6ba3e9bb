"""FanoutConfig: the stack's settings from cdk.json context, with -c overrides and clear errors."""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
import pytest

from infra.config import FanoutConfig


def _config(context: dict[str, Any], **overrides: Any) -> FanoutConfig:
    return FanoutConfig.from_node(cdk.App(context={**context, **overrides}).node)


def test_cdk_json_context_is_a_valid_config(context: dict[str, Any]) -> None:
    config = _config(context)
    assert config.stack_name == context["fanout:stackName"]
    assert config.models == tuple(context["fanout:models"])
    assert config.python_version == context["fanout:lambdaRuntime"].removeprefix("python")


def test_command_line_strings_are_parsed(context: dict[str, Any]) -> None:
    # Given values as `-c key=value` passes them: always strings
    config = _config(
        context,
        **{
            "fanout:maxConcurrency": "100",
            "fanout:models": "amazon.nova-lite-v1:0, us.amazon.nova-lite-v1:0",
            "fanout:defaultModel": "bedrock:amazon.nova-lite-v1:0",
        },
    )
    # Then numbers and comma-separated lists are understood
    assert config.max_concurrency == 100
    assert config.models == ("amazon.nova-lite-v1:0", "us.amazon.nova-lite-v1:0")


def test_child_execution_type_defaults_to_standard_and_may_be_express(context: dict[str, Any]) -> None:
    # an EXPRESS child stops at 5 minutes, shorter than a batch may run, so it is opt-in
    assert _config({k: v for k, v in context.items() if k != "fanout:childExecutionType"}).child_execution_type == "STANDARD"
    assert _config(context, **{"fanout:childExecutionType": "express"}).child_execution_type == "EXPRESS"


def test_caps_become_the_functions_environment(context: dict[str, Any]) -> None:
    config = _config(context, **{"fanout:caps": '{"max_items": 50, "max_votes": 7}'})
    assert config.cap_environment() == {"FANOUT_CAP_MAX_ITEMS": "50", "FANOUT_CAP_MAX_VOTES": "7"}


def test_json_list_on_the_command_line(context: dict[str, Any]) -> None:
    config = _config(context, **{"fanout:models": '["amazon.nova-lite-v1:0"]', "fanout:defaultModel": "sim"})
    assert config.models == ("amazon.nova-lite-v1:0",)


@pytest.mark.parametrize(
    ("overrides", "names"),
    [
        ({"fanout:defaultModel": "bedrock:amazon.titan-text-v1"}, "fanout:models"),
        ({"fanout:logRetentionDays": 31}, "fanout:logRetentionDays"),
        ({"fanout:maxConcurrency": "many"}, "fanout:maxConcurrency"),
        ({"fanout:maxConcurrency": 0}, "fanout:maxConcurrency"),
        ({"fanout:lambdaRuntime": "python3.11"}, "fanout:lambdaRuntime"),
        ({"fanout:models": ["arn:aws:bedrock:us-east-1::foundation-model/x"]}, "fanout:models"),
        ({"fanout:namePrefix": ""}, "fanout:namePrefix"),
        ({"fanout:childExecutionType": "SOMETIMES"}, "fanout:childExecutionType"),
        ({"fanout:kmsKeyArn": "alias/fanout"}, "fanout:kmsKeyArn"),
        ({"fanout:kmsKeyArn": "1234abcd-12ab-34cd-56ef-1234567890ab"}, "fanout:kmsKeyArn"),
        ({"fanout:alarmEmail": "oncall"}, "fanout:alarmEmail"),
        ({"fanout:logContent": "maybe"}, "fanout:logContent"),
        ({"fanout:stateMachineLogLevel": "DEBUG"}, "fanout:stateMachineLogLevel"),
        ({"fanout:caps": {"max_itmes": 5}}, "fanout:caps"),
        ({"fanout:caps": {"max_items": 0}}, "fanout:caps.max_items"),
        ({"fanout:caps": "not json"}, "fanout:caps"),
    ],
)
def test_bad_context_is_refused_naming_the_key(context: dict[str, Any], overrides: dict[str, Any], names: str) -> None:
    with pytest.raises(ValueError, match=names):
        _config(context, **overrides)


def test_optional_settings_are_off_by_default_and_read_from_command_line_strings(context: dict[str, Any]) -> None:
    # Given cdk.json as it is: the optional keys present but empty, the debug switch off
    config = _config(context)
    assert (config.kms_key_arn, config.alarm_email, config.log_content) == (None, None, False)
    assert config.state_machine_log_level == "ERROR"

    # When each is set as `-c key=value` sets it
    key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    config = _config(
        context,
        **{
            "fanout:kmsKeyArn": key,
            "fanout:alarmEmail": "oncall@example.com",
            "fanout:logContent": "true",
            "fanout:stateMachineLogLevel": "all",
        },
    )

    # Then the values are understood
    assert (config.kms_key_arn, config.alarm_email, config.log_content) == (key, "oncall@example.com", True)
    assert config.state_machine_log_level == "ALL"


def test_an_end_of_life_default_model_fails_the_synth_with_one_message(context: dict[str, Any]) -> None:
    # Given a default past its published end-of-life date (models.json), listed in fanout:models as required
    old = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
    overrides = {"fanout:defaultModel": f"bedrock:{old}", "fanout:models": [*context["fanout:models"], old]}

    # Then the synth stops with one message naming the keys, the model and its replacement
    with pytest.raises(ValueError) as raised:
        _config(context, **overrides)
    message = str(raised.value)
    assert message.startswith(
        f"end-of-life Bedrock models in the context: fanout:defaultModel: 'bedrock:{old}' (Claude 3.5 Haiku)"
    )
    assert f"fanout:models: 'bedrock:{old}'" in message
    assert "use bedrock:us.anthropic.claude-haiku-5-5" in message


def test_an_end_of_life_entry_in_the_allowed_models_fails_the_synth(context: dict[str, Any]) -> None:
    models = [*context["fanout:models"], "anthropic.claude-3-haiku-20240307-v1:0"]
    with pytest.raises(
        ValueError, match=r"^end-of-life Bedrock models in the context: fanout:models: .*Claude 3 Haiku.*2026-09-10"
    ):
        _config(context, **{"fanout:models": models})


def test_the_job_bytes_cap_flows_from_cdk_json_to_the_plan_settings(
    context: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given cdk.json's fanout:caps, as the stack reads it; When its environment reaches a function
    from fanout_core.settings import Settings

    environment = _config(context).cap_environment()
    for name, value in {**environment, "FANOUT_RESULTS_BUCKET": "results"}.items():
        monkeypatch.setenv(name, value)

    # Then the function's settings cap limits.max_job_bytes at cdk.json's figure
    assert Settings.from_env().caps["max_job_bytes"] == context["fanout:caps"]["max_job_bytes"]


def test_the_job_bytes_cap_may_be_set_on_the_command_line(context: dict[str, Any]) -> None:
    config = _config(context, **{"fanout:caps": '{"max_job_bytes": 1000}'})
    assert config.cap_environment() == {"FANOUT_CAP_MAX_JOB_BYTES": "1000"}
