"""Keeping Python's cyclic garbage collector out of bulk work on run records.

Listing thousands of runs (the store's read cache, the records, the dashboard's rows) makes
millions of small objects, none in a reference cycle. The cyclic collector would only walk them
again and again while they are made (a third of a cold listing at 10,000 runs); reference
counting still frees whatever is dropped. Objects that then live as long as the process are
frozen (``gc.freeze``), so later collections do not walk them either; that is done once, for a
large store: a garbage cycle that exists at that moment is kept for good.
"""

from __future__ import annotations

import gc
from contextlib import contextmanager
from typing import Iterator

# Freeze only what a store of at least this many runs loads: below it, collections are cheap.
FREEZE_MIN_RUNS = 1000


@contextmanager
def cyclic_gc_paused() -> Iterator[None]:
    """No cyclic collection inside the block (nested blocks are fine)."""
    collecting = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if collecting:
            gc.enable()


def freeze_long_lived() -> None:
    """Move every object alive now out of the cyclic collector's sight, for good."""
    gc.freeze()
