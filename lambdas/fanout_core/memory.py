"""Pausing Python's cyclic garbage collector around allocation-heavy work."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Aggregating records or running a batch allocates hundreds of thousands of small dicts and makes few
    reference cycles; the generational collector kept re-scanning them (a third of aggregation time).
    Reference counting still frees memory meanwhile; cycles wait for the collector to resume."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
