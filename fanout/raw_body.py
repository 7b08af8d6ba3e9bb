"""The raw stream botocore reads a response body from, for the responses the local runtime answers in-process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class RawBody:
    """A whole body, read once: by ``stream()`` (as botocore reads it) or by ``read()``."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._read = False

    def stream(self, **_: Any) -> Iterator[bytes]:
        if not self._read:
            self._read = True
            yield self._body

    def read(self, *_: Any) -> bytes:
        if self._read:
            return b""
        self._read = True
        return self._body
