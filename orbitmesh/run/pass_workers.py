"""The pass search's chunks scanned in forked worker processes, a few chunks ahead of the writer.

The sgp4 library holds the GIL while it propagates, and propagation plus the scan of each chunk
(:func:`orbitmesh.core.passes.iter_pass_tables`) depend on nothing but the chunk's own samples,
so ``orbitmesh contacts`` hands whole chunks to worker processes: each propagates and scans the
chunks it is given with the same code the search would run itself (so the values are the same
bits) and sends back only the events, a few hundred kB; this process pairs them into passes and
writes them in order. At most ``ahead`` chunks are in flight. The scan closes over Satrec
objects, which cannot be pickled, so workers must be forked; where fork is not available the
chunks are scanned here.
"""

from __future__ import annotations

import multiprocessing
import sys
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from orbitmesh.core.passes import ChunkEvents, ChunkRunner, load_kernel, run_here
from orbitmesh.errors import RunError

_WORKER: dict[str, Callable[[int], ChunkEvents]] = {}  # a worker's scan, inherited at fork


def _start_worker(scan: Callable[[int], ChunkEvents]) -> None:
    _WORKER["scan"] = scan
    load_kernel()  # numba's start, without the scipy import it would make (see load_kernel)


def _scan(k: int) -> ChunkEvents:
    return _WORKER["scan"](k)


def forking_available() -> bool:
    """Whether worker processes can be forked here (Linux and the like)."""
    return sys.platform != "win32" and "fork" in multiprocessing.get_all_start_methods()


def forked_runner(workers: int = 2, ahead: int = 4, *, preload: bool = False) -> ChunkRunner:
    """A :data:`ChunkRunner` on ``workers`` forked processes (0, or no fork: this process).

    ``preload`` loads the compiled scan here before forking, so the workers inherit it: about
    1.5 s less CPU in all (numba's start costs that per process) but this process then holds
    numba's ~130 MB too. By default each worker loads it (in parallel), and this process, which
    only pairs and writes, stays small.
    """
    if workers < 1 or not forking_available():
        return run_here

    def run(scan: Callable[[int], ChunkEvents], count: int) -> Iterator[ChunkEvents]:
        if preload:
            load_kernel()
        pool = ProcessPoolExecutor(min(workers, count), mp_context=multiprocessing.get_context(
            "fork"), initializer=_start_worker, initargs=(scan,))
        waiting: deque[Future[ChunkEvents]] = deque()
        todo = iter(range(count))
        ok = False
        try:
            for k in todo:
                waiting.append(pool.submit(_scan, k))
                if len(waiting) >= ahead:
                    break
            while waiting:
                try:
                    result = waiting.popleft().result()
                except BrokenProcessPool as exc:
                    raise RunError("a pass-search worker process died (killed, or out of "
                                   "memory?): the output is cut short after the passes "
                                   "written so far; run the command again") from exc
                for k in todo:
                    waiting.append(pool.submit(_scan, k))
                    break
                yield result
            ok = True
        finally:
            # On an error (or Ctrl-C, or a reader that stopped) do not wait for chunks nobody
            # will read.
            pool.shutdown(wait=ok, cancel_futures=True)

    return run
