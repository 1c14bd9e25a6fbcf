"""Where the controller's tick work runs: on one thread beside the event loop, or inline.

Engine work (``TickEngine.step``/``finish``, the link timeline, ``encode_state``) goes through a
:class:`TickRunner`. Off the loop it runs on a single thread, so the engine's calls keep their
order (the link tracker diffs each state against the one before it) while the event loop stays
free to publish states, read control commands and serve the live page. Most of a tick is the
routing kernel (numba, ``nogil``) and numpy, which release the GIL, so the loop wakes within a
few ms of its timers instead of after the whole tick (bench/controller.py measures it). What
still holds the loop back is Python between the calls and the one SGP4 call, which keeps the GIL
throughout (~11 ms for Gen1's 4,408 satellites on the shared 2-core machine).

Inline is for event loops on virtual time (tests/virtual_time.py): a loop that jumps its clock
whenever it would block would jump past a tick still computing on a thread, so the result would
depend on the thread's speed. Inline, the work runs where it is asked for, as before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from orbitmesh.core.engine import Tick
from orbitmesh.protocol.messages import LinksNotice
from orbitmesh.protocol.state import encode_state

T = TypeVar("T")


@dataclass(frozen=True)
class Prepared:
    """A computed tick with its state snapshot and links notice encoded, ready to publish."""

    tick: Tick
    seq: int
    state: bytes
    links: bytes

    @classmethod
    def of(cls, tick: Tick, seq: int) -> Prepared:
        """Encode ``tick`` as snapshot number ``seq`` (off the loop: it takes ms for Gen1)."""
        d = tick.diff
        return cls(tick, seq, encode_state(seq, tick.state, tick.routes, tick.overlay,
                                           tick.blocked, tick.blame),
                   LinksNotice(tick.t_s, len(d.up), len(d.down_a), len(d.delay_changed),
                               tick.handovers, tick.route_changes).encode())


class TickRunner:
    """Runs engine jobs one at a time, in the order asked, on a thread off the loop or inline."""

    def __init__(self, off_loop: bool) -> None:
        self.off_loop = off_loop
        self.lock = asyncio.Lock()
        """Held from a job's inputs being read on the loop to its result being committed there;
        jobs that change the engine's state follow each other in that order."""
        self._pool: ThreadPoolExecutor | None = None

    async def call(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` off the loop (or inline); the caller holds :attr:`lock`."""
        if not self.off_loop:
            return fn(*args)
        future = self._submit(fn, *args)
        return await asyncio.wrap_future(future)

    def call_now(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` and wait for it here, after any job still running off the loop.

        For work asked for outside :meth:`Controller.run` (a worker lost after the last tick):
        the loop waits, as it did for every tick before the work moved off it.
        """
        if self._pool is None:
            return fn(*args)
        return self._submit(fn, *args).result()

    def _submit(self, fn: Callable[..., T], *args: object) -> Future[T]:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="orbitmesh-tick")
        return self._pool.submit(fn, *args)

    def close(self) -> None:
        """Wait for the job still running (a cancelled run leaves at most one) and stop the
        thread; later calls run inline."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        self.off_loop = False
