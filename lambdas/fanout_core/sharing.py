"""The part of an item's prompts its tasks share, so a prompt cache can hold it once for all of them.

The votes of an item send one prompt; the sections of an item usually send
one document after (or before) each section's own question. The shared
part is the longest common beginning or end of the item's prompts, cut at
a boundary so a sentence is not split:

- a common beginning ends at the last line break or space inside it;
- a common end starts after its first ``": "`` or line break (``...for:
  <document>`` shares ``<document>``), else after its first space.

A provider with a prompt cache sends the shared part first and a cache
checkpoint after it (``providers/bedrock.py``); other providers send the
prompt as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

# a shared end shorter than this is a coincidence of wording, not a document
MIN_SHARED_CHARS = 200
_LEAD_WINDOW = 200


def shared_span(prompts: list[str]) -> tuple[int, int]:
    """(shared prefix chars, shared suffix chars) of prompts; at most one is non-zero; (0, 0) for one prompt."""
    if len(prompts) < 2:
        return 0, 0
    first = prompts[0]
    if all(p == first for p in prompts):
        return len(first), 0
    prefix = _common_start(prompts)
    shortest = min(len(p) for p in prompts)
    suffix = _common_start([p[::-1] for p in prompts])
    suffix = min(suffix, shortest - prefix)
    if prefix >= suffix:
        cut = max(first.rfind("\n", 0, prefix), first.rfind(" ", 0, prefix)) + 1
        return (cut, 0) if cut >= MIN_SHARED_CHARS else (0, 0)
    tail = first[len(first) - suffix :]
    lead = tail[:_LEAD_WINDOW]
    marks = [i + len(m) for m in (": ", "\n") if (i := lead.find(m)) >= 0]
    start = min(marks) if marks else lead.find(" ") + 1
    length = suffix - start
    return (0, length) if length >= MIN_SHARED_CHARS else (0, 0)


def _common_start(texts: list[str]) -> int:
    """How many leading characters all the texts have in common."""
    low, high = min(texts), max(texts)  # the lexical extremes differ first where any pair does
    n = 0
    for a, b in zip(low, high, strict=False):
        if a != b:
            break
        n += 1
    return n


def spans_by_task(tasks: Iterable[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """The shared span of each task's prompt among the tasks of its item (and model) in the same batch."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for task in tasks:
        groups.setdefault((task["item_id"], task["model"]), []).append(task)
    spans: dict[str, tuple[int, int]] = {}
    for group in groups.values():
        span = shared_span([t["prompt"] for t in group])
        if span != (0, 0):
            for task in group:
                spans[task["task_id"]] = span
    return spans


def first_of_each_item(tasks: list[dict[str, Any]], sharing: dict[str, tuple[int, int]]) -> tuple[list[Any], list[Any]]:
    """The first task of every item that shares a prefix, then the rest: the first writes the cache the rest read."""
    seen: set[str] = set()
    first, rest = [], []
    for task in tasks:
        if task["task_id"] in sharing and task["item_id"] not in seen:
            seen.add(task["item_id"])
            first.append(task)
        else:
            rest.append(task)
    return first, rest
