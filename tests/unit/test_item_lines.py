"""items_uri JSON Lines read in chunks: the same items as the whole body parsed at once, whatever the cuts."""

from __future__ import annotations

import json

import pytest

from fanout_core.errors import InvalidJob
from fanout_core.loading import parse_item_lines, parse_items

BODY = (
    "\ufeff"
    + json.dumps({"id": "a", "text": "line\u2028separator \u0085 and é"}, ensure_ascii=False)
    + "\r\n\n"
    + json.dumps({"id": "b", "text": "🎉" * 5}, ensure_ascii=False)
    + "\n"
    + json.dumps({"id": "c", "text": "no newline at the end"})
).encode()


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(BODY)])
def test_chunked_json_lines_give_the_items_of_the_whole_body(size: int) -> None:
    # Given the body cut into chunks of any size (cuts inside multibyte characters included)
    chunks = [BODY[n : n + size] for n in range(0, len(BODY), size)]

    # Then the items are those of the body read at once
    assert parse_item_lines(chunks, "items_uri") == parse_items(BODY, "items_uri")
    assert [i["id"] for i in parse_item_lines(chunks, "items_uri")] == ["a", "b", "c"]


def test_chunked_reading_stops_past_max_items_and_names_a_bad_line() -> None:
    with pytest.raises(InvalidJob, match=r"more than limits\.max_items"):
        parse_item_lines([BODY], "items_uri", max_items=2)
    with pytest.raises(InvalidJob, match="line 2 is not valid JSON"):
        parse_item_lines([b'{"id": "a"}\n{"id": \n'], "items_uri")
    with pytest.raises(InvalidJob, match="not UTF-8 text"):
        parse_item_lines([b'{"id": "\xff"}\n'], "items_uri")
