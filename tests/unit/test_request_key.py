"""Request keys: the shared parts encoded once give the key of the whole request encoded at once."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from fanout_core.planning import key_settings, keyed, request_key


def _whole(item_id: str, slot: str, model: str, system: str | None, prompt: str, inference: Any, schema: Any) -> str:
    # the key as every record written so far has it: the request encoded as one JSON list
    body = json.dumps(
        [item_id, slot, model, system, prompt, dict(inference), schema],
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(body.encode("utf-8", "surrogatepass")).hexdigest()[:32]


CASES = [
    ("t-1", "v1", "sim", None, "Classify: refund", {"max_tokens": 16, "temperature": None}, None),
    (
        "ünï/cødé id",
        "competitors",
        "bedrock:us.anthropic.claude-3-5-haiku-20241022-v1:0",
        "You are — an analyst\n",
        'quote " and \\ and \ud800 lone surrogate',
        {"top_p": 0.9, "max_tokens": 512, "temperature": 0.8},
        {"type": "object", "required": ["label"], "properties": {"label": {"enum": ["b", "a"]}, "a": {"x": 1}}},
    ),
    ("", "v12", "openai:http://h#m", "", "", {"odd": object.__name__, "set": 3.5}, {"z": [1, {"b": 2, "a": 1}]}),
]


@pytest.mark.parametrize("case", CASES)
def test_the_key_from_shared_parts_is_the_key_of_the_whole_request(case: tuple[Any, ...]) -> None:
    # Given a request, its shared parts encoded once
    item_id, slot, model, system, prompt, inference, schema = case
    shared = key_settings(system, inference, schema)
    prompt_json = json.dumps(prompt, ensure_ascii=False)
    # When its key is made from them / Then it is the key of the request encoded whole
    assert keyed(item_id, slot, model, prompt_json, shared) == _whole(*case)
    assert request_key(*case) == _whole(*case)
