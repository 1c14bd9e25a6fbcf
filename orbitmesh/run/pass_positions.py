"""SGP4 for the pass search in helper processes, a few chunks ahead of the search.

The sgp4 library holds the GIL while it propagates, and propagation is about half of a pass
search's work, so the search (:func:`orbitmesh.core.passes.iter_pass_tables`) takes its positions
from here: forked worker processes compute the chunks with the same function the search would
call itself (:func:`orbitmesh.core.passes.ecef_valid_km`), so the values are the same bits,
while this process screens and refines the chunks already computed. At most ``ahead`` chunks
wait in memory. Satrec objects cannot be pickled, so workers must be forked (they inherit the
satellites); where fork is not available the search propagates in its own process.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from datetime import datetime
from types import TracebackType

import numpy as np
from numpy.typing import NDArray
from sgp4.api import Satrec

from orbitmesh.core.geometry import Propagator
from orbitmesh.core.passes import PositionSource, ecef_valid_km, sequential_positions

FloatArray = NDArray[np.float64]

_WORKER: dict[str, Propagator] = {}  # a worker's satellites, set once when it starts


def _start_worker(satrecs: Sequence[Satrec]) -> None:
    _WORKER["propagator"] = Propagator(satrecs)


def _chunk(ref: datetime, offsets_s: FloatArray) -> FloatArray:
    return ecef_valid_km(_WORKER["propagator"], ref, offsets_s)


class ForkedPositions:
    """A :data:`PositionSource` backed by ``workers`` forked processes; a context manager."""

    def __init__(self, satrecs: Sequence[Satrec], *, workers: int = 2, ahead: int = 3) -> None:
        self._satrecs = list(satrecs)
        self._workers, self._ahead = workers, max(1, ahead)
        self._pool: ProcessPoolExecutor | None = None

    @staticmethod
    def available() -> bool:
        """Whether worker processes can be forked here (Linux and the like)."""
        return sys.platform != "win32" and "fork" in multiprocessing.get_all_start_methods()

    def __enter__(self) -> PositionSource:
        if self._workers < 1 or not self.available():
            return sequential_positions(Propagator(self._satrecs))
        self._pool = ProcessPoolExecutor(self._workers, mp_context=multiprocessing.get_context(
            "fork"), initializer=_start_worker, initargs=(self._satrecs,))
        return self._source

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self._pool is not None:
            # On an error (or Ctrl-C) do not wait for chunks nobody will read.
            self._pool.shutdown(wait=exc_type is None, cancel_futures=True)
            self._pool = None

    def _source(self, ref: datetime, chunks: Sequence[FloatArray]) -> Iterator[FloatArray]:
        pool = self._pool
        assert pool is not None, "ForkedPositions used outside its with block"
        waiting: deque[Future[FloatArray]] = deque()
        todo = iter(chunks)
        try:
            for offsets_s in todo:
                waiting.append(pool.submit(_chunk, ref, offsets_s))
                if len(waiting) >= self._ahead:
                    break
            while waiting:
                result = waiting.popleft().result()
                for offsets_s in todo:
                    waiting.append(pool.submit(_chunk, ref, offsets_s))
                    break
                yield result
        finally:
            for future in waiting:
                future.cancel()
