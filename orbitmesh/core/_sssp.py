"""Exact shortest-path trees from many sources at once: a compiled bucket kernel, scipy fallback.

Array conventions: the graph is CSR over ``N`` nodes with both directions of every link stored
(``indptr (N+1,)``, ``indices (A,)``, ``weights (A,)``, all weights > 0); the answers are
``(D, N)``, sources first: ``pred[i, u]`` is ``u``'s parent in the tree grown from
``sources[i]`` (the source holds itself, ``-1``: unreachable) and ``dist[i, u]`` the path
weight (``inf``: unreachable). An optional ``transit (N,)`` mask marks the nodes that relay:
a node with ``transit`` False may start a tree (its own links are relaxed) and be reached, but no
path runs *through* it, so in every other tree it is a leaf.

The kernel (:mod:`orbitmesh.core._bucket_kernel`) is a label-correcting search over a circular array
of buckets of width ``width`` (sequential delta-stepping): bucket ``k`` holds nodes whose
tentative weight ``d`` has ``floor(d / width) == k``; buckets are emptied in order, each as a
stack, and a node whose label drops is scanned again. With ``width`` at or below the lightest
link every node is scanned once, as in Dijkstra, but in O(1) per node instead of a heap's
O(log N). Lighter links cost re-scans; a tree that re-scans more than :data:`RESCANS` times per
node on average is grown again by a binary-heap Dijkstra, so odd weights cannot blow it up.
With ``hints`` (the previous tick's parents) a tree is repaired instead
(:mod:`orbitmesh.core._repair_kernel`); the argument below covers it too, since a repair stops at a
labelling with the same three properties.

Why the result is exactly scipy's, bit for bit: both stop at a labelling ``d`` with ``d = 0`` at
the source, ``d[v] == fl(d[pred[v]] + w)`` at every reached node, and no link offering a smaller
``fl(d[u] + w)`` (here: a node whose label drops is always scanned again). While each weight is
more than half the float spacing at the path weights it is added to (weights >= 1e-12 s on paths
below 1e3 s; min-hop weights >= 1), adding a link strictly increases a label, and such a labelling
is unique: of the nodes where two of them differ, take the one with the smallest label ``m`` in
either; its parent there has a smaller label so agrees in both, which gives the node ``m`` in
both. The bucket width changes only the speed, and ``pred`` is a shortest-path parent. With a
``transit`` mask the same holds on the directed graph without the arcs out of non-transit nodes
(the source's excepted); the scipy fallback runs on exactly that graph (see :func:`_scipy_trees`).
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
"""Backend used when none is named: the compiled kernel if numba is installed, else scipy."""

MAX_SLOTS = 1024
"""Most buckets in the circular array: bounds the empty buckets walked between two labels."""

WIDTH_QUANTILE = 0.01
"""Bucket width = this quantile of the link weights: the lightest few links (co-located
terrestrial hops) are let through at the price of a rare re-scan, instead of shrinking every
bucket to their size."""

RESCANS = 2
"""A tree may scan each node this many times on average before it is handed to the heap
fallback: a scan beyond one per node comes from a link lighter than the bucket width (the
co-located terrestrial hops), a handful per tree on constellation graphs, but on adversarial
weights buckets could re-scan without a useful bound."""

FloatArray = NDArray[np.float64]
Int32Array = NDArray[np.int32]

REPAIR_SHARE = 4
"""A hinted tree may settle up to 1/this of the nodes by heap before it is grown afresh: a heap
scan costs about three bucket scans, so past that share repairing would cost more than growing."""

_KERNEL: list[Callable[..., None]] = []
_KERNEL_LOCK = threading.Lock()


def _kernel(hinted: bool = False) -> Callable[..., None]:
    """The compiled kernel; numba and its cached machine code load on first use only."""
    with _KERNEL_LOCK:
        if not _KERNEL:
            from orbitmesh.core._bucket_kernel import grow_forest
            from orbitmesh.core._repair_kernel import repair_forest

            _KERNEL.extend([grow_forest, repair_forest])
        return _KERNEL[1 if hinted else 0]


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

CHUNKS_PER_THREAD = 2
"""Slices of sources per thread, taken in turn: with more than one, a thread the OS runs late
does less of the work instead of all of its fixed share (each slice pays the kernel's per-node
passes once, so slices of fewer than :data:`MIN_SOURCES_PER_THREAD` sources are not made)."""


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
                # A smaller pool still in use elsewhere finishes its work; dropped, it winds down.
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


def _scipy_trees(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                 sources: NDArray[np.int64],
                 transit: NDArray[np.bool_] | None) -> tuple[Int32Array, FloatArray]:
    """(pred, dist) by scipy's Dijkstra; non-transit nodes relay nothing (see below)."""
    n = indptr.size - 1
    start = sources
    if transit is None:
        matrix = csr_matrix((weights, indices, indptr), shape=(n, n))
    else:
        # scipy cannot skip a node's arcs for some trees only, so each non-transit node t gets a
        # twin t' holding t's out-arcs, and t keeps only its in-arcs: a tree grown from t' is
        # t's own tree, and in every other tree t is a dead end. One call covers all sources.
        stub = np.flatnonzero(~transit)
        twin = np.arange(n, dtype=np.int64)
        twin[stub] = n + np.arange(stub.size)
        rows = twin[np.repeat(np.arange(n), np.diff(indptr))]
        order = np.argsort(rows, kind="stable")
        twin_indptr = np.zeros(n + stub.size + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n + stub.size), out=twin_indptr[1:])
        matrix = csr_matrix((weights[order], indices[order], twin_indptr),
                            shape=(n + stub.size, n + stub.size))
        start = twin[sources]
    # Both directions are stored, so directed=True is the undirected answer without scipy
    # symmetrising the matrix again.
    dist, pred = dijkstra(matrix, directed=True, indices=start, return_predecessors=True)
    pred = pred.astype(np.int32, copy=False)
    if transit is not None:
        dist, pred = dist[:, :n], pred[:, :n]
        pred = np.where(pred >= n, stub[np.maximum(pred - n, 0)], pred).astype(np.int32)
    pred[pred < 0] = -1
    rows_ = np.arange(sources.size)
    pred[rows_, sources] = sources
    dist[rows_, sources] = 0.0  # a non-transit source is reached back through its twin
    return pred, np.ascontiguousarray(dist)


def shortest_path_trees(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                        sources: NDArray[np.int64], backend: str | None = None,
                        threads: int | None = None, width: float | None = None,
                        capacity: int | None = None, budget: int | None = None,
                        transit: NDArray[np.bool_] | None = None,
                        hints: Int32Array | None = None, repair_budget: int | None = None,
                        order: Int32Array | None = None, arcs: Int32Array | None = None,
                        old_arc: Int32Array | None = None) -> tuple[Int32Array, FloatArray]:
    """(pred, dist), both (D, N), of the trees grown from ``sources`` over a CSR graph.

    ``transit`` (N,), if given, marks the nodes that may relay; the others are only ever a path's
    first or last node. ``backend`` is "numba" or "scipy" (default :data:`BACKEND`). The kernel
    splits the sources over up to ``threads`` threads (default :data:`THREADS`; each tree is grown
    by one thread, so the answer does not depend on it). ``width``, ``capacity`` (bucket entries per
    tree) and ``budget`` (node scans per tree) tune or test the kernel, never its answer: a tree
    that outgrows either is grown again by the heap fallback.

    ``hints`` (D, N), if given, holds a guess at ``pred`` (the previous tick's trees); a row that is
    a tree rooted at its source (``hints[i, sources[i]] == sources[i]``) is repaired from it, which
    costs far less than growing it when few parents changed. The answer is the same either way
    (``dist`` bit for bit; ``pred`` a shortest-path parent, which may differ only where two
    parents give exactly the same label). Hints need symmetric weights, as routing's graphs have.
    A repair that settles more than ``repair_budget`` nodes by heap (default N / REPAIR_SHARE) gives
    up and grows the tree afresh.

    ``order`` (D, N) int32, with ``hints``: each hinted tree's nodes parents first, as the last
    call left them (``-1`` ends a row; a row that does not start at its source lists nothing).
    Summing today's weights down a tree in that order is one linear pass instead of a walk up
    from every node. The call rewrites it in place for the next call (see
    :mod:`orbitmesh.core._repair_kernel`); like ``hints`` it changes the speed, never the answer.

    ``arcs`` (D, N) int32, with ``hints``, is rewritten in place with each node's arc (an index
    into ``indices``) to its parent, -1 at sources and unreached nodes. Given with ``old_arc``
    (:func:`~orbitmesh.core._repair_kernel.arc_map` from the graph the last call ran on to this
    one), it holds the last call's arcs, so each hinted parent's link is found by a look-up
    instead of a search; like ``order`` it changes the speed, never the answer.
    """
    n = indptr.size - 1
    backend = backend or BACKEND
    if transit is not None:
        transit = np.asarray(transit, dtype=np.bool_)
        if transit.shape != (n,):
            raise RoutingError(f"transit mask has shape {transit.shape}; expected ({n},), one "
                               "flag per node")
        if transit.all():
            transit = None  # nobody opted out: the unrestricted search, at its usual cost
    if backend == "scipy":
        return _scipy_trees(indptr, indices, weights, sources, transit)
    if backend != "numba" or not HAVE_NUMBA:
        raise RoutingError(f"shortest-path backend {backend!r} is not available; use 'scipy', "
                           "or install numba for 'numba'")
    dist = np.empty((sources.size, n), dtype=np.float64)
    pred = np.empty((sources.size, n), dtype=np.int32)
    args = (indptr.astype(np.int32, copy=False), indices.astype(np.int32, copy=False),
            weights.astype(np.float64, copy=False),
            np.ones(n, dtype=np.bool_) if transit is None else transit)
    src = np.array(sources, dtype=np.int64)  # a fresh writable array: one compiled signature
    tune = (bucket_width(weights) if width is None else float(width),
            max(1, 2 * (indices.size + n) + 1 if capacity is None else capacity),
            RESCANS * n + 64 if budget is None else budget)
    parts = max(1, min(THREADS if threads is None else threads,
                       src.size // MIN_SOURCES_PER_THREAD))
    chunks = max(parts, min(parts * CHUNKS_PER_THREAD, src.size // MIN_SOURCES_PER_THREAD))
    bounds = [src.size * i // chunks for i in range(chunks + 1)]
    pieces = [slice(lo, hi) for lo, hi in itertools.pairwise(bounds)]
    kernel = _kernel(hints is not None)
    if hints is not None:
        hint_rows = np.asarray(hints, dtype=np.int32)
        if hint_rows.shape != (src.size, n):
            raise RoutingError(f"hints have shape {hint_rows.shape}; expected ({src.size}, {n}), "
                               "one row of parents per source")
        repair = n // REPAIR_SHARE + 64 if repair_budget is None else repair_budget
        if order is None:
            order = np.empty((src.size, n), dtype=np.int32)
            order[:, :1] = -1  # no order known: every row is walked, and an order made
        elif order.shape != (src.size, n) or order.dtype != np.int32 \
                or not order.flags.c_contiguous or not order.flags.writeable:
            raise RoutingError(f"order has shape {order.shape} and dtype {order.dtype}; expected "
                               f"a writable, C-contiguous int32 ({src.size}, {n}) array")
        carried = arcs is not None and old_arc is not None
        if arcs is None:
            arcs = np.empty((src.size, n), dtype=np.int32)
        elif arcs.shape != (src.size, n) or arcs.dtype != np.int32 \
                or not arcs.flags.c_contiguous or not arcs.flags.writeable:
            raise RoutingError(f"arcs have shape {arcs.shape} and dtype {arcs.dtype}; expected "
                               f"a writable, C-contiguous int32 ({src.size}, {n}) array")
        arc_of = (np.asarray(old_arc, dtype=np.int32) if carried and old_arc is not None
                  else np.empty(0, np.int32))
        if not arc_of.flags.writeable:
            arc_of = arc_of.copy()  # one compiled signature: writable arrays only
        work: list[tuple[object, ...]] = [
            (src[part], hint_rows[part], *tune, repair, dist[part], pred[part], order[part],
             arcs[part], arc_of, carried) for part in pieces]
    else:
        work = [(src[part], *tune, dist[part], pred[part]) for part in pieces]
    # The kernel releases the GIL: this thread and the helpers take slices in turn until none is
    # left, so a helper that the OS does not run soon (a busy machine) leaves its share to the
    # others instead of holding the tick up.
    taken = itertools.count()
    lock = threading.Lock()

    def run_slices() -> None:
        while True:
            with lock:
                i = next(taken)
            if i >= len(work):
                return
            kernel(*args, *work[i])

    futures = [_HELPERS.pool(parts - 1).submit(run_slices) for _ in range(parts - 1)]
    try:
        run_slices()
    finally:
        for future in futures:
            future.result()
    return pred, dist
