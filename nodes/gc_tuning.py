"""The garbage collector of a worker process: set up once, so it never pauses a loop turn long.

A worker builds its topology, imports numpy/scipy (and numba for the batched plane) and
schedules its nodes before the run starts: a few hundred thousand long-lived objects. With
Python's defaults every full collection walks all of them again — 107 ms on Gen1, measured with
bench/runtime_turns.py — and every frame due during that pause is handled late.
:func:`settle_heap` moves what exists at set-up into the permanent generation (``gc.freeze``),
so collections only walk what the run itself allocates, and spaces out the young collections,
which on the hop path find almost nothing to free (frames are lists that die by reference
count).
"""

from __future__ import annotations

import gc

GEN0_THRESHOLD = 50_000
"""Allocations between young collections (Python's default: 700)."""


def settle_heap(gen0_threshold: int = GEN0_THRESHOLD) -> None:
    """Collect once, freeze what survives set-up, and space out the young collections."""
    gc.collect()
    gc.freeze()
    _g0, g1, g2 = gc.get_threshold()
    gc.set_threshold(gen0_threshold, g1, g2)
