"""Prompt templates over an item's fields.

``{name}`` (or ``{a.b}`` for a nested field) is replaced by the item's value;
``{{name}}`` is the literal text ``{name}``; every other brace stays as
written, so a prompt may show JSON examples, nested ones included. Substitution is one pass over the template:
item text is inserted as data and never parsed, so braces, ``%s``, quotes or
emoji inside an item cannot break rendering or pull in other fields.
"""

from __future__ import annotations

import json
import re
from typing import Any

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_TOKEN = re.compile(r"\{\{(" + _NAME + r")\}\}|\{(" + _NAME + r")\}")


def template_fields(template: str) -> set[str]:
    """The item fields a template uses."""
    return {m.group(2) for m in _TOKEN.finditer(template) if m.group(2)}


def render(template: str, item: dict[str, Any]) -> str:
    """Fill a template from an item; a missing field raises KeyError (jobs are checked before this)."""

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "{" + match.group(1) + "}"
        value: Any = item
        for part in match.group(2).split("."):
            value = value[part]
        return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)

    return _TOKEN.sub(substitute, template)
