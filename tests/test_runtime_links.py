"""The runtime's live links, updated by difference (nodes/link_slots.py), against the states.

Random link states over a few nodes — links that come, go and come back, delays that change,
the same links in the same order, an empty state — applied one after another: after each, every
pair's ``link()`` must be exactly what that state says (or None), and slots are reused, so
their number stays at the most links ever live at once.
"""

from __future__ import annotations

import random

import numpy as np

from nodes.link_slots import LinkSlots

N_NODES = 12


class Book(LinkSlots):
    """LinkSlots on its own."""

    def __init__(self, n_nodes: int) -> None:
        self.n_nodes = n_nodes
        self._init_links()


def random_state(rng: random.Random, n_links: int) -> tuple[np.ndarray, ...]:
    """``n_links`` distinct pairs a < b in a random order, with random delays and kinds."""
    pairs = rng.sample([(a, b) for a in range(N_NODES) for b in range(a + 1, N_NODES)], n_links)
    a = np.array([p[0] for p in pairs], dtype=np.int64)
    b = np.array([p[1] for p in pairs], dtype=np.int64)
    kind = np.array([rng.randrange(3) for _ in pairs], dtype=np.int8)
    delay_s = np.array([rng.uniform(1e-4, 0.02) for _ in pairs])
    return a, b, kind, delay_s


def expected(state: tuple[np.ndarray, ...]) -> dict[tuple[int, int], tuple[float, int]]:
    """The state as the old runtime held it: {(a, b): (delay_s, kind)}."""
    a, b, kind, delay_s = state
    return dict(zip(zip(a.tolist(), b.tolist(), strict=True),
                    zip(delay_s.tolist(), kind.tolist(), strict=True), strict=True))


def test_links_follow_every_state_exactly() -> None:
    rng = random.Random(11)
    book = Book(N_NODES)
    most = 0
    states: list[tuple[np.ndarray, ...]] = []
    for step in range(300):
        n_links = 0 if step % 37 == 5 else rng.randrange(1, 30)
        state = random_state(rng, n_links)
        if step % 5 == 3 and states:  # same links, same order, new delays: the fast path
            a, b, kind, _d = states[-1]
            state = (a, b, kind, np.array([rng.uniform(1e-4, 0.02) for _ in a]))
        states.append(state)
        book._set_links(*state)
        most = max(most, len(state[0]))
        want = expected(state)
        for u in range(N_NODES):
            for v in range(N_NODES):
                if u == v:
                    continue
                key = (u, v) if u < v else (v, u)
                assert book.link(u, v) == want.get(key), (step, u, v)
        assert set(book.links) == set(want)
        assert book._n_slots == most  # freed slots are taken again before new ones
