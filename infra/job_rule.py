"""The S3 upload rule as plain data: its EventBridge pattern and input transformer, and how to apply them.

One definition for both sides: the CDK trigger deploys it, and ``python -m fanout serve`` evaluates it on
the S3 events of its local endpoint (moto's EventBridge cannot target Step Functions). No CDK import here,
so the local side can use it without the CDK installed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fanout_core import layout

JOBS_PREFIX = layout.JOBS
JOB_SUFFIX = layout.JOB_SUFFIX
# EventBridge ANDs the fields of a pattern but ORs the filters listed for one field, so "under jobs/ AND
# ending in .json" is one wildcard filter; its "*" matches any characters, "/" included (jobs/a/b.json)
KEY_WILDCARD = f"{JOBS_PREFIX}*{JOB_SUFFIX}"

# the input transformer: execution input field -> JSONPath into the event; Plan reads {"bucket", "key"}
INPUT_PATHS = {"bucket": "$.detail.bucket.name", "key": "$.detail.object.key"}


def event_pattern(input_bucket_name: str) -> dict[str, Any]:
    """The rule's pattern: an object created in the input bucket under jobs/ whose key ends in .json."""
    return {
        "source": ["aws.s3"],
        "detail-type": ["Object Created"],
        "detail": {
            "bucket": {"name": [input_bucket_name]},
            "object": {"key": [{"wildcard": KEY_WILDCARD}]},
        },
    }


def matches(pattern: Mapping[str, Any], event: Mapping[str, Any]) -> bool:
    """Whether an event matches a pattern, for the part of EventBridge's syntax used here.

    Exact values, ``prefix``, ``suffix`` and ``wildcard``; fields are ANDed, the filters of one field
    ORed; a field the event lacks never matches; an array in the event matches when any element does.
    """
    for field, condition in pattern.items():
        if field not in event:
            return False
        value = event[field]
        if isinstance(condition, Mapping):
            if not isinstance(value, Mapping) or not matches(condition, value):
                return False
        elif not any(_matches_value(f, v) for f in condition for v in (value if isinstance(value, list) else [value])):
            return False
    return True


def transform(event: Mapping[str, Any]) -> dict[str, Any]:
    """The execution input the rule's target sends for an event, as EventBridge's input transformer builds it."""
    return {name: _at(event, path) for name, path in INPUT_PATHS.items()}


def _matches_value(condition: Any, value: Any) -> bool:
    if not isinstance(condition, Mapping):
        return bool(condition == value)
    ((operator, operand),) = condition.items()
    if not isinstance(value, str):
        return False
    if operator == "prefix":
        return value.startswith(operand)
    if operator == "suffix":
        return value.endswith(operand)
    if operator == "wildcard":
        return _wildcard_regex(operand).fullmatch(value) is not None
    raise ValueError(f"event pattern filter {operator!r} is not supported by this matcher")


def _wildcard_regex(wildcard: str) -> re.Pattern[str]:
    """EventBridge's wildcard: "*" is any run of characters; a backslash escapes "*" or "\\"."""
    parts: list[str] = []
    literal = ""
    chars = iter(wildcard)
    for char in chars:
        if char == "\\":
            literal += next(chars, "\\")
        elif char == "*":
            parts.extend([re.escape(literal), ".*"])
            literal = ""
        else:
            literal += char
    parts.append(re.escape(literal))
    return re.compile("".join(parts), re.DOTALL)


def _at(event: Mapping[str, Any], path: str) -> Any:
    """The value at a simple JSONPath ($.a.b.c)."""
    value: Any = event
    for name in path.removeprefix("$.").split("."):
        value = value[name]
    return value
