"""The shared part of an item's prompts, which a prompt cache holds once for all of the item's tasks."""

from __future__ import annotations

from fanout_core.sharing import MIN_SHARED_CHARS, first_of_each_item, shared_span, spans_by_task

DOC = "Product brief: a tracker for small shops, sold monthly. " * 10


def test_identical_prompts_share_all_of_it() -> None:
    assert shared_span([DOC, DOC, DOC]) == (len(DOC), 0)


def test_a_document_after_each_question_is_shared_from_after_the_colon() -> None:
    prompts = [f"Evaluate competitors' pricing for: {DOC}", f"Analyse customer preferences for: {DOC}"]

    prefix, suffix = shared_span(prompts)

    # the shared end starts at the document, not inside the questions' common words ("for: ")
    assert prefix == 0 and prompts[0][len(prompts[0]) - suffix :] == DOC


def test_a_document_before_each_question_is_shared_up_to_a_word_boundary() -> None:
    prompts = [f"{DOC}\nList the competitors.", f"{DOC}\nList the customers."]

    prefix, suffix = shared_span(prompts)

    assert suffix == 0 and prompts[0][:prefix] == f"{DOC}\nList the "


def test_short_coincidences_and_single_prompts_share_nothing() -> None:
    assert shared_span([DOC]) == (0, 0)
    assert shared_span(["Is this spam: buy now", "Is this ham: buy now"]) == (0, 0)
    assert len(": buy now") < MIN_SHARED_CHARS


def test_spans_group_by_item_and_model_and_the_first_of_each_item_goes_first() -> None:
    tasks = [
        {"task_id": f"{item}#{slot}", "item_id": item, "model": "m", "prompt": f"{slot} for: {DOC}{item}"}
        for item in ("a", "b")
        for slot in ("one", "two")
    ] + [{"task_id": "c#one", "item_id": "c", "model": "m", "prompt": "alone"}]

    spans = spans_by_task(tasks)
    first, rest = first_of_each_item(tasks, spans)

    assert set(spans) == {"a#one", "a#two", "b#one", "b#two"}
    assert [t["task_id"] for t in first] == ["a#one", "b#one"]
    assert [t["task_id"] for t in rest] == ["a#two", "b#two", "c#one"]
