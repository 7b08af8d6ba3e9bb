"""JSON from outside (job files, items, execution inputs) decoded and checked as data that may be hostile.

Python's ``json`` accepts what later breaks a run far from the input: a
lone surrogate (``"\\ud800"``) that no UTF-8 writer can encode, an integer
of more digits than ``int`` will print (4,300), ``NaN`` and ``Infinity``
(not JSON; a strict reader refuses the result), ``1e400`` (read as
infinity), and nesting deep enough to exhaust the interpreter's stack.
:func:`loads` never raises on those: it leaves a marker where the value
was, and :func:`check_document` (run on every job and item, however it
arrived) refuses the first problem by its path, e.g.
``items[3].text: contains a lone surrogate (\\ud800)``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# deeper than any job, item or schema needs, and far from the ~1,000 frames at which Python's json, pydantic and
# jsonschema give up
MAX_DEPTH = 64
# CPython's default int_max_str_digits: a longer integer cannot be printed (json.dumps raises ValueError)
MAX_INT_DIGITS = 4300
_MAX_INT_BITS = int(MAX_INT_DIGITS * math.log2(10))
_SURROGATE = re.compile("[\ud800-\udfff]")
# a key shown as it is in a path (as pydantic's locations show them); any other in brackets, ASCII-escaped
_PLAIN_KEY = re.compile(r"^[!#-Z\\^-~][ !#-Z\\^-~]*$")


class NotData:
    """A value the decoder read but no later step can use; ``problem`` says why."""

    __slots__ = ("problem",)

    def __init__(self, problem: str) -> None:
        self.problem = problem

    def __repr__(self) -> str:
        return f"NotData({self.problem!r})"


def _parse_int(text: str) -> Any:
    digits = len(text.lstrip("-"))
    if digits > MAX_INT_DIGITS:
        return NotData(f"an integer of {digits} digits (at most {MAX_INT_DIGITS}); write it as a string")
    return int(text)


def _parse_float(text: str) -> Any:
    value = float(text)
    if not math.isfinite(value):
        return NotData(f"{text[:40]} is outside the range of a 64-bit float; write it as a string")
    return value


def _parse_constant(text: str) -> Any:
    return NotData(f"{text} is not a JSON number; use null or a string")


class TooDeep(ValueError):
    """The text nests deeper than :data:`MAX_DEPTH`, at ``path`` (line ``line``)."""

    def __init__(self, path: str, line: int) -> None:
        super().__init__(path)
        self.path, self.line = path, line


def loads(text: str) -> Any:
    """``json.loads`` with markers for what is not data; raises ``json.JSONDecodeError`` or :class:`TooDeep`."""
    try:
        return json.loads(text, parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant)
    except RecursionError:
        path, line = _deep_path(text)
        raise TooDeep(path, line) from None


def problem(value: Any, where: str = "") -> tuple[str, str] | None:
    """(path, message) of the first value in a decoded document that is not data, or None.

    Checked without recursion: a lone surrogate in a key or a string, a
    :class:`NotData` marker, a float that is not finite, an integer longer
    than :data:`MAX_INT_DIGITS` digits, nesting deeper than :data:`MAX_DEPTH`.
    """
    stack: list[tuple[Any, int, str]] = [(value, 0, where)]
    while stack:
        node, depth, path = stack.pop()
        if isinstance(node, str):
            if not node.isascii() and _SURROGATE.search(node):
                return path, f"contains a lone surrogate ({_first_surrogate(node)}), which is not text; remove it"
        elif isinstance(node, dict):
            if depth >= MAX_DEPTH:
                return path, f"nested deeper than {MAX_DEPTH} levels; flatten it"
            children: list[tuple[Any, int, str]] = []
            for key, child in node.items():
                at = key_path(path, key)
                if not isinstance(key, str):  # a decoded execution input has string keys; a Python caller may not
                    return at, "keys must be strings"
                if not key.isascii() and _SURROGATE.search(key):
                    return at, f"the key contains a lone surrogate ({_first_surrogate(key)}), which is not text; rename it"
                children.append((child, depth + 1, at))
            stack.extend(reversed(children))
        elif isinstance(node, (list, tuple)):
            if depth >= MAX_DEPTH:
                return path, f"nested deeper than {MAX_DEPTH} levels; flatten it"
            stack.extend((child, depth + 1, f"{path}[{n}]") for n, child in reversed(list(enumerate(node))))
        elif isinstance(node, NotData):
            return path, node.problem
        elif isinstance(node, float):
            if not math.isfinite(node):
                return path, f"{node} is not a JSON number; use null or a string"
        elif isinstance(node, int) and not isinstance(node, bool):
            if node.bit_length() > _MAX_INT_BITS:
                return path, f"an integer of more than {MAX_INT_DIGITS} digits; write it as a string"
        elif node is not None and not isinstance(node, bool):
            return path, f"a {type(node).__name__} is not a JSON value"
    return None


def key_path(path: str, key: Any) -> str:
    """``path.key``, or ``path["key"]`` (ASCII-escaped) when the key is not a plain name."""
    if isinstance(key, str) and _PLAIN_KEY.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key if isinstance(key, str) else repr(key))}]"


def _first_surrogate(text: str) -> str:
    found = _SURROGATE.search(text)
    return f"\\u{ord(found.group()):04x}" if found else ""


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:,]', re.S)


def _deep_path(text: str) -> tuple[str, int]:
    """The path at which ``text`` first nests :data:`MAX_DEPTH` levels deep, and its line (text json could not read)."""
    # one frame per open bracket: [kind, path, index or the last key seen, whether a key is awaited]
    frames: list[list[Any]] = []
    pending_key: str | None = None
    for match in _TOKEN.finditer(text):
        token = match.group()
        if token in "[{":
            path = _child_path(frames, pending_key)
            if len(frames) >= MAX_DEPTH:
                return path, text.count("\n", 0, match.start()) + 1
            frames.append([token, path, 0])
            pending_key = None
        elif token in "]}":
            if frames:
                frames.pop()
        elif token == ",":
            if frames and frames[-1][0] == "[":
                frames[-1][2] += 1
            pending_key = None
        elif token == ":":
            pass
        elif frames and frames[-1][0] == "{" and pending_key is None:
            try:
                pending_key = json.loads(token)
            except ValueError:
                pending_key = "?"
    return "job", 1


def _child_path(frames: list[list[Any]], key: str | None) -> str:
    if not frames:
        return ""
    kind, path, index = frames[-1]
    if kind == "[":
        return f"{path}[{index}]"
    return key_path(path, key if key is not None else "?")
