"""Prompt templates over an item's fields.

``{name}`` (or ``{a.b}`` for a nested field) is replaced by the item's value;
``{{name}}`` is the literal text ``{name}``; every other brace stays as
written, so a prompt may show JSON examples, nested ones included. Substitution is one pass over the template:
item text is inserted as data and never parsed, so braces, ``%s``, quotes or
emoji inside an item cannot break rendering or pull in other fields.

Item text is data, also to the model: when a template wraps fields in
XML-style delimiters (``<ticket>{text}</ticket>``, ``<doc:body>``,
``<user.input id="1">``), a value that contains one of the template's own
tag names after a ``<`` has that ``<`` written as ``&lt;``, so an item
cannot close the delimiter and speak as the instructions. What a reader
could take for the tag is caught too: spaces or a slash around the name
(``< /ticket>``, ``</ ticket x>``, ``<ticket/>``), any letter case, no
``>`` at all, full-width or small brackets and angle quotes (``＜/ticket＞``,
``﹤``, ``‹``, ``〈``; written as character references), and full-width
letters in the name. In a template with a CDATA section, ``]]>`` in a value
is written ``]]&gt;``.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

_NAME = r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*"
_TOKEN = re.compile(r"\{\{(" + _NAME + r")\}\}|\{(" + _NAME + r")\}")


def template_fields(template: str) -> set[str]:
    """The item fields a template uses."""
    return {m.group(2) for m in _TOKEN.finditer(template) if m.group(2)}


# an XML name (letters, digits, '_', ':', '.', '-'; "Extensible Markup Language (XML) 1.0", section 2.3 Names)
# after '<' and an optional '/', as a template opens or closes a delimiter
_TAG = re.compile(r"<\s*/?\s*([^\W\d][\w:.\-]*)")
# what a reader could take for '<': small and full-width less-than signs, angle quotes and angle brackets
_OPENERS = "<\ufe64\uff1c\u2039\u3008\u27e8\u2329\u276c\u29fc"
# possessive: a long run of spaces after a '<' is scanned once, never backtracked over
_SPACE = r"[\s\u200b-\u200d\u2060\ufeff]*+"
_SLASH = "[/\uff0f\u2044\u2215]"


def _letter(char: str) -> str:
    """A class matching ``char`` in either case and as its full-width form."""
    forms = {c for c in (char, char.lower(), char.upper()) if len(c) == 1}
    forms |= {chr(ord(c) + 0xFEE0) for c in list(forms) if "!" <= c <= "~"}
    return "[" + "".join(re.escape(c) for c in sorted(forms)) + "]"


@functools.lru_cache(maxsize=256)
def _guard(template: str) -> tuple[re.Pattern[str] | None, bool]:
    """The pattern of the template's tags as an item could write them, and whether the template has CDATA."""
    names = sorted({m.group(1).lower() for m in _TAG.finditer(template)}, key=lambda n: (-len(n), n))
    cdata = "<![CDATA[" in template.upper()
    if not names:
        return None, cdata
    alternatives = "|".join("".join(_letter(c) for c in name) for name in names)
    pattern = f"([{re.escape(_OPENERS)}])(?={_SPACE}(?:{_SLASH}{_SPACE})?(?:{alternatives})(?![\\w:.\\-]))"
    return re.compile(pattern), cdata


def _escape(match: re.Match[str]) -> str:
    opener = match.group(1)
    return "&lt;" if opener == "<" else f"&#x{ord(opener):x};"


def render(template: str, item: dict[str, Any]) -> str:
    """Fill a template from an item; a missing field raises KeyError (jobs are checked before this)."""
    guard, cdata = _guard(template)

    def substitute(match: re.Match[str]) -> str:
        if match.group(1):
            return "{" + match.group(1) + "}"
        value: Any = item
        for part in match.group(2).split("."):
            value = value[part]
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
        if guard is not None:
            text = guard.sub(_escape, text)
        return text.replace("]]>", "]]&gt;") if cdata else text

    return _TOKEN.sub(substitute, template)
