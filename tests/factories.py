"""The one factory tests build batch files with, through contracts.py: the form Plan writes.

A test that needs a batch of given tasks (their ids, models and prompts) gets it from ``batch_for``: each item's
tasks under the item, a stub per task with its request key (planning.request_key), and templates that render each
task's prompt exactly. A test that starts from a job uses ``steps.first_run_batches``, Plan's own batching.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from fanout_core.contracts import BatchFile, BatchItem, Kind, TaskStub, batch_file, batch_item, expand, vote_slot
from fanout_core.planning import request_key


def batch_for(tasks: Iterable[Mapping[str, Any]], *, index: int = 0, job_id: str = "j", **shared: Any) -> BatchFile:
    """A batch file holding ``tasks`` (dicts with task_id, item_id, slot, kind, model, prompt; expected, document
    and key optional), with the fields every task shares (``shared``: inference, output_schema, tier, stop ...).

    ``contracts.expand`` of the result gives back the tasks, prompts as given, each with a request key.
    """
    given = list(tasks)
    kinds = {t["kind"] for t in given} or {"vote"}
    if len(kinds) != 1:
        raise ValueError(f"a batch file holds one kind of task, not {sorted(kinds)}")
    (kind,) = kinds
    kind_: Kind = kind
    # one template per prompt a batch renders: the votes' one, or each section's; each is one field of the item
    fields: dict[str, str] = {}
    for task in given:
        fields.setdefault(vote_slot(kind_, task["slot"]), f"prompt_{len(fields)}")
    templates = {which: "{" + field + "}" for which, field in fields.items()}
    inference = shared.get("inference") or {}
    items: dict[str, tuple[dict[str, Any], list[TaskStub]]] = {}
    for task in given:
        item, stubs = items.setdefault(task["item_id"], ({"id": task["item_id"]}, []))
        field = fields[vote_slot(kind_, task["slot"])]
        if item.setdefault(field, task["prompt"]) != task["prompt"]:
            raise ValueError(f"the votes of item {task['item_id']} are asked one prompt, not several")
        for name in ("expected", "document"):
            if name in task:
                item[name] = task[name]
        key = task.get("key") or request_key(
            task["item_id"],
            task["slot"],
            task["model"],
            shared.get("system"),
            task["prompt"],
            inference,
            shared.get("output_schema"),
        )
        stubs.append({"slot": task["slot"], "model": task["model"], "key": key})
    entries: list[BatchItem] = [batch_item(n, item, stubs) for n, (item, stubs) in enumerate(items.values())]
    batch = batch_file(index, entries, job_id=job_id, kind=kind_, templates=templates, shared=shared)
    for task, expanded in zip(given, expand(batch), strict=True):
        assert (expanded["task_id"], expanded["prompt"]) == (task["task_id"], task["prompt"]), "task ids are item#slot"
    return batch


def vote_tasks(count: int, model: str, prompt: str = "item {n}", votes: int = 1) -> list[dict[str, Any]]:
    """``count`` items' votes v1..v<votes> on ``model``, item n asked ``prompt`` with {n} filled in."""
    return [
        {
            "task_id": f"i{n}#v{v}",
            "item_id": f"i{n}",
            "slot": f"v{v}",
            "kind": "vote",
            "model": model,
            "prompt": prompt.format(n=n),
        }
        for n in range(count)
        for v in range(1, votes + 1)
    ]
