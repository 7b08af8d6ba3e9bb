"""What is compared when outputs are voted on: the answer's place in an output, and its normalised form."""

from __future__ import annotations

import functools
import string
import unicodedata
from typing import Any

from fanout_core.validation import canonical

_STRIP = string.whitespace + string.punctuation + "\u201c\u201d\u2018\u2019\u00ab\u00bb\u3002\uff0c"


def normalise(value: Any) -> str:
    """The form answers are compared in: Unicode NFKC, case-folded, outer whitespace and punctuation removed."""
    return _normalise_text(value if isinstance(value, str) else canonical(value))


@functools.lru_cache(maxsize=65_536)
def _normalise_text(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold().strip(_STRIP)


def answer_at(output: Any, path: str | None) -> Any:
    """The value at a dotted path of a structured output (the whole output when no path); None when absent."""
    if path is None:
        return output
    node = output
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
