"""Prompt templates over an item's fields.

``{name}`` (or ``{a.b}`` for a nested field) is replaced by the item's value;
``{{name}}`` is the literal text ``{name}``; every other brace stays as
written, so a prompt may show JSON examples, nested ones included. Substitution is one pass over the template:
item text is inserted as data and never parsed, so braces, ``%s``, quotes or
emoji inside an item cannot break rendering or pull in other fields.

Item text is data, also to the model: when a template wraps fields in
XML-style delimiters (``<ticket>{text}</ticket>``), a value that contains
one of the template's own tags has its ``<`` written as ``&lt;``, so an
item cannot close the delimiter and speak as the instructions.
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


_TAG = re.compile(r"</?([A-Za-z][A-Za-z0-9_-]*)>")


def render(template: str, item: dict[str, Any]) -> str:
    """Fill a template from an item; a missing field raises KeyError (jobs are checked before this)."""
    tags = {m.group(1).lower() for m in _TAG.finditer(template)}
    guard = re.compile(r"<(/?(?:" + "|".join(map(re.escape, sorted(tags))) + r")\s*>)", re.I) if tags else None

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "{" + match.group(1) + "}"
        value: Any = item
        for part in match.group(2).split("."):
            value = value[part]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        return guard.sub(r"&lt;\1", text) if guard is not None else text

    return _TOKEN.sub(substitute, template)
