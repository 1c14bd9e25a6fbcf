"""The live links of a runtime, updated from one link state to the next by difference.

Each tick's state lists every live link (Gen1: ~9,200). Rebuilding a ``{(a, b): (delay_s,
kind)}`` dict from it took 3 ms and the scan for idle transmitters of vanished links 2 ms, on the
event loop, every tick (bench/runtime_turns.py; at speed 10 that is a tenth of the wall time,
and every frame due meanwhile is late). Here a link keeps a *slot* for as long as it is live:
``links`` maps the pair to its slot and changes only where links came or went (found with
numpy on ``a * n + b`` keys); delays and kinds are per-slot lists rebuilt by one scatter and
``tolist``. (The runtime's transmitters, :class:`Transmitter`, live in ``NodeRuntime.tx``.)

Links are unique pairs ``a < b`` (the engine's layout); a lookup normalises ``(u, v)`` so.
"""

from __future__ import annotations

from collections import deque

import numpy as np

_EMPTY = np.empty(0, dtype=np.int64)


class Transmitter:
    """One direction of one link: when it is free and which frames are still serialising."""

    __slots__ = ("busy_until", "finishing")

    def __init__(self) -> None:
        self.busy_until = 0.0
        self.finishing: deque[float] = deque()

    def backlog(self, at_wall: float) -> int:
        """Frames queued or serialising at ``at_wall``."""
        finishing = self.finishing
        while finishing and finishing[0] <= at_wall:
            finishing.popleft()
        return len(finishing)


class LinkSlots:
    """Mixin of :class:`nodes.runtime.NodeRuntime`: ``links``, ``link_delay_s`` and
    ``link_kind``, kept on the runtime itself (the per-hop path reads them)."""

    n_nodes: int

    def _init_links(self) -> None:
        self.links: dict[tuple[int, int], int] = {}
        """Live link (a, b) -> its slot in ``link_delay_s`` / ``link_kind``."""
        self.link_delay_s: list[float] = []
        self.link_kind: list[int] = []
        self._n_slots = 0
        self._free_slots: list[int] = []
        self._sorted_keys = _EMPTY
        """``a * n + b`` of the links in force, sorted; ``_sorted_slots`` their slots."""
        self._sorted_slots = _EMPTY
        self._state_keys: np.ndarray | None = None
        """The last state's keys in its own order, and ``_state_slots`` their slots: a state
        with the same links in the same order (most ticks) reuses them as they are."""
        self._state_slots = _EMPTY
        self._kind_slots = _EMPTY
        """The slots and kinds ``link_kind`` was made from (kinds seldom change: kept)."""
        self._kinds = _EMPTY

    def link(self, u: int, v: int) -> tuple[float, int] | None:
        """(delay_s, kind) of the live link u-v, or None."""
        slot = self.links.get((u, v) if u < v else (v, u))
        return None if slot is None else (self.link_delay_s[slot], self.link_kind[slot])

    def _set_links(self, a: np.ndarray, b: np.ndarray, kind: np.ndarray,
                   delay_s: np.ndarray) -> None:
        """Make the links of a state the live ones."""
        keys = np.asarray(a, dtype=np.int64) * self.n_nodes + np.asarray(b, dtype=np.int64)
        last = self._state_keys
        if last is not None and len(last) == len(keys) and np.array_equal(last, keys):
            slots = self._state_slots
        else:
            slots = self._relink(keys)
        by_slot_s = np.zeros(self._n_slots, dtype=np.float64)
        by_slot_s[slots] = delay_s
        self.link_delay_s = by_slot_s.tolist()
        if slots is not self._kind_slots or not np.array_equal(kind, self._kinds):
            by_slot_kind = np.zeros(self._n_slots, dtype=np.int64)
            by_slot_kind[slots] = kind
            self.link_kind = by_slot_kind.tolist()
            self._kind_slots, self._kinds = slots, np.array(kind, copy=True)

    def _relink(self, keys: np.ndarray) -> np.ndarray:
        """Free the slots of links that went, give slots to links that came; every link's slot
        in ``keys`` order."""
        n = self.n_nodes
        order = np.argsort(keys, kind="stable")
        new_keys = keys[order]
        old_keys, old_slots = self._sorted_keys, self._sorted_slots
        if len(old_keys):
            at = np.minimum(np.searchsorted(old_keys, new_keys), len(old_keys) - 1)
            present = old_keys[at] == new_keys
        else:
            at = np.zeros(len(new_keys), dtype=np.int64)
            present = np.zeros(len(new_keys), dtype=bool)
        new_slots = np.empty(len(new_keys), dtype=np.int64)
        new_slots[present] = old_slots[at[present]]
        kept = np.zeros(len(old_keys), dtype=bool)
        kept[at[present]] = True
        links, free = self.links, self._free_slots
        for key in old_keys[~kept].tolist():
            free.append(links.pop(divmod(key, n)))
        added = []
        for key in new_keys[~present].tolist():
            pair = divmod(key, n)
            if free:
                slot = free.pop()
            else:
                slot = self._n_slots
                self._n_slots += 1
            links[pair] = slot
            added.append(slot)
        new_slots[~present] = added
        self._sorted_keys, self._sorted_slots = new_keys, new_slots
        slots = np.empty(len(keys), dtype=np.int64)
        slots[order] = new_slots
        self._state_keys, self._state_slots = keys, slots
        return slots
