"""An asyncio event loop on virtual time, for choreography tests that must take seconds, not the
minutes their scenarios last.

The loop's clock starts at 0 and never waits: whenever it would block, it moves its clock to the
next timer instead. Everything that sleeps or times out through asyncio follows it. Code that
reads wall time is given :class:`LoopWall`, a wall clock derived from the loop's, so both clocks
agree.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any


class _Selector(selectors.DefaultSelector):
    """Polls without waiting; a wait becomes a jump of the owning loop's clock."""

    loop: VirtualTimeLoop

    def select(self, timeout: float | None = None) -> list[Any]:
        events = super().select(0)
        if not events and timeout is not None and timeout > 0:
            self.loop.virtual_s += timeout
        return events


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """A selector event loop whose time is virtual (see the module docstring)."""

    def __init__(self) -> None:
        self.virtual_s = 0.0
        selector = _Selector()
        selector.loop = self
        super().__init__(selector)

    def time(self) -> float:
        """The virtual clock."""
        return self.virtual_s


class LoopWall:
    """A wall clock (``WallSource``) that runs with a loop's clock."""

    def __init__(self, loop: asyncio.AbstractEventLoop, start_wall: float = 1.8e9) -> None:
        self.loop = loop
        self.start_wall = start_wall

    def now_wall(self) -> float:
        """``start_wall`` plus the loop's time."""
        return self.start_wall + self.loop.time()
