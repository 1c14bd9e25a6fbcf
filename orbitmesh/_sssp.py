"""Exact shortest-path trees from many sources at once: a compiled bucket kernel, scipy fallback.

Array conventions: the graph is CSR over ``N`` nodes with both directions of every link stored
(``indptr (N+1,)``, ``indices (A,)``, ``weights (A,)``, all weights > 0); the answers are
``(D, N)``, sources first: ``pred[i, u]`` is ``u``'s parent in the tree grown from
``sources[i]`` (the source holds itself, ``-1``: unreachable) and ``dist[i, u]`` the path
weight (``inf``: unreachable).

The kernel is a label-correcting search over a circular array of buckets of width ``width``
(sequential delta-stepping): bucket ``k`` holds nodes whose tentative weight ``d`` has
``floor(d / width) == k``; buckets are emptied in order, each as a stack, and a node whose label
drops is scanned again. With ``width`` at or below the lightest link every node is scanned once,
as in Dijkstra, but in O(1) per node instead of a heap's O(log N).

Why the result is exactly scipy's, bit for bit: both stop at a labelling ``d`` with ``d = 0`` at
the source, ``d[v] == fl(d[pred[v]] + w)`` at every reached node, and no link offering a smaller
``fl(d[u] + w)`` (here: a node whose label drops is always scanned again). While each weight is
more than half the float spacing at the path weights it is added to (weights >= 1e-12 s on paths
below 1e3 s; min-hop weights >= 1), adding a link strictly increases a label, and such a labelling
is unique: of the nodes where two of them differ, take the one with the smallest label ``m`` in
either; its parent there has a smaller label so agrees in both, which gives the node ``m`` in
both. The bucket width changes only the speed, and ``pred`` is a shortest-path parent.
"""

from __future__ import annotations

import importlib.util
import itertools
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.typing import NDArray
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import dijkstra

from orbitmesh.errors import RoutingError

HAVE_NUMBA = importlib.util.find_spec("numba") is not None
"""Whether numba is installed (looked up without importing it: see :func:`_kernel`)."""

BACKEND = "numba" if HAVE_NUMBA else "scipy"
"""Backend used when none is named: the compiled kernel if numba imports, else scipy."""

MAX_SLOTS = 1024
"""Most buckets in the circular array: bounds the empty buckets walked between two labels."""

WIDTH_QUANTILE = 0.01
"""Bucket width = this quantile of the link weights: the lightest few links (co-located
terrestrial hops) are let through at the price of a rare re-scan, instead of shrinking every
bucket to their size."""

FloatArray = NDArray[np.float64]
Int32Array = NDArray[np.int32]


def _grow_forest(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                 sources: NDArray[np.int64], width: float, capacity: int,
                 dist: FloatArray, pred: Int32Array) -> None:
    """One tree per source into the rows of ``dist``/``pred`` (compiled by :func:`_kernel`)."""
    n = indptr.size - 1
    wmax = 0.0
    for arc in range(weights.size):
        wmax = max(wmax, weights[arc])
    inv_width = 1.0 / width
    n_slots = 1
    # Live labels span at most wmax / width + 1 buckets: the circular array never wraps onto one.
    while n_slots < np.int64(wmax * inv_width) + 3:  # +1 for rounding in the product
        n_slots *= 2
    mask = n_slots - 1
    where = np.empty(n, np.int64)  # bucket holding the node's live entry; -1: none
    head = np.empty(n_slots, np.int32)  # first entry of each bucket's stack; -1: empty
    nxt = np.empty(max(capacity, 1), np.int32)  # entry pool: next entry in the same stack ...
    entry_node = np.empty(max(capacity, 1), np.int32)  # ... and the node it files
    for row in range(sources.size):
        source = sources[row]
        d = dist[row]
        parent = pred[row]
        d[:] = np.inf
        parent[:] = -1
        where[:] = -1
        head[:] = -1
        d[source] = 0.0
        parent[source] = source
        entry_node[0] = source
        nxt[0] = -1
        head[0] = 0
        where[source] = 0
        used = 1
        pending = 1
        k = 0
        while pending > 0:
            slot = k & mask
            while head[slot] >= 0:
                e = head[slot]
                head[slot] = nxt[e]
                pending -= 1
                u = entry_node[e]
                if where[u] != k:
                    continue  # stale: the node was filed again in an earlier bucket since
                where[u] = -1
                du = d[u]
                for arc in range(indptr[u], indptr[u + 1]):
                    v = indices[arc]
                    candidate = du + weights[arc]
                    if candidate < d[v]:
                        d[v] = candidate
                        parent[v] = u
                        bucket = np.int64(candidate * inv_width)
                        if where[v] != bucket:
                            if used == nxt.size:  # many re-scans (odd weight mixes): grow
                                nxt = np.concatenate((nxt, np.empty(used, np.int32)))
                                entry_node = np.concatenate((entry_node,
                                                             np.empty(used, np.int32)))
                            where[v] = bucket
                            target = bucket & mask
                            entry_node[used] = v
                            nxt[used] = head[target]
                            head[target] = used
                            used += 1
                            pending += 1
            k += 1


_KERNEL: list[Callable[..., None]] = []
_KERNEL_LOCK = threading.Lock()


def _kernel() -> Callable[..., None]:
    """:func:`_grow_forest` compiled: numba is imported and the machine code loaded on first use,
    so processes that never route (node workers) do not pay for it."""
    with _KERNEL_LOCK:
        if not _KERNEL:
            from numba import njit

            _KERNEL.append(njit(cache=True, nogil=True)(_grow_forest))
        return _KERNEL[0]


def bucket_width(weights: FloatArray, n_slots: int = MAX_SLOTS) -> float:
    """Bucket width for ``weights``: their low quantile, but no less than max / ``n_slots``."""
    if weights.size == 0:
        return 1.0
    k = int(WIDTH_QUANTILE * (weights.size - 1))
    low = float(np.partition(weights, k)[k])
    return max(low, float(weights.max()) / (n_slots - 3))


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


THREADS = min(2, _available_cpus())
"""Threads the kernel splits the sources over by default (the core tick targets 2 cores)."""

MIN_SOURCES_PER_THREAD = 8
"""Fewer sources than this per thread and a hand-off costs more than it saves."""

class _Helpers:
    """The kernel's helper threads: created on first use, forgotten by a forked child."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self._size = 0

    def pool(self, size: int) -> ThreadPoolExecutor:
        """A pool of at least ``size`` threads."""
        with self._lock:
            if self._pool is None or self._size < size:
                if self._pool is not None:
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(max_workers=size,
                                                thread_name_prefix="orbitmesh-sssp")
                self._size = size
            return self._pool

    def forget(self) -> None:
        """Drop the pool without touching it: after fork its threads do not exist."""
        self._lock = threading.Lock()
        self._pool, self._size = None, 0


_HELPERS = _Helpers()
if hasattr(os, "register_at_fork"):  # pragma: no branch
    os.register_at_fork(after_in_child=_HELPERS.forget)


def shortest_path_trees(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                        sources: NDArray[np.int64], backend: str | None = None,
                        threads: int | None = None, width: float | None = None,
                        capacity: int | None = None) -> tuple[Int32Array, FloatArray]:
    """(pred, dist), both (D, N), of the trees grown from ``sources`` over a CSR graph.

    ``backend`` is "numba" or "scipy" (default :data:`BACKEND`). The kernel splits the sources
    over up to ``threads`` threads (default :data:`THREADS`; each tree is grown by one thread, so
    the answer does not depend on it). ``width`` and ``capacity`` (the first size of the kernel's
    entry pool) only tune or test the kernel, never its answer.
    """
    n = indptr.size - 1
    backend = backend or BACKEND
    if backend == "scipy":
        matrix = csr_matrix((weights, indices, indptr), shape=(n, n))
        # Both directions are stored, so directed=True is the undirected answer without scipy
        # symmetrising the matrix again.
        dist, pred = dijkstra(matrix, directed=True, indices=sources, return_predecessors=True)
        pred = pred.astype(np.int32, copy=False)
        pred[pred < 0] = -1
        pred[np.arange(sources.size), sources] = sources
        return pred, dist
    if backend != "numba" or not HAVE_NUMBA:
        raise RoutingError(f"shortest-path backend {backend!r} is not available; use 'scipy', "
                           "or install numba for 'numba'")
    dist = np.empty((sources.size, n), dtype=np.float64)
    pred = np.empty((sources.size, n), dtype=np.int32)
    args = (indptr.astype(np.int32, copy=False), indices.astype(np.int32, copy=False),
            weights.astype(np.float64, copy=False))
    src = np.array(sources, dtype=np.int64)  # a fresh writable array: one compiled signature
    tune = (bucket_width(weights) if width is None else float(width),
            max(1, 2 * (indices.size + n) + 1 if capacity is None else capacity))
    parts = max(1, min(THREADS if threads is None else threads,
                       src.size // MIN_SOURCES_PER_THREAD))
    bounds = [src.size * i // parts for i in range(parts + 1)]
    pieces = [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]
    kernel = _kernel()
    # The kernel releases the GIL: helpers grow the later slices while this thread grows the first.
    futures = [_HELPERS.pool(parts - 1).submit(kernel, *args, src[part], *tune, dist[part],
                                               pred[part]) for part in pieces[1:]]
    try:
        kernel(*args, src[pieces[0]], *tune, dist[pieces[0]], pred[pieces[0]])
    finally:
        for future in futures:
            future.result()
    return pred, dist
