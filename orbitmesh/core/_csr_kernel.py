"""The CSR layout of a tick's link graph, and its links' key order, by counting sorts (numba);
:mod:`orbitmesh.core.link_graph` explains the layout.

Arrays: each undirected link once, ``a (E,)``, ``b (E,)``; the layout's ``indptr (N+1,)`` and
``indices (A,)`` (one arc per distinct (row, col), both directions stored), ``edge_of_arc (A',)``
(the link feeding each arc before parallel arcs merge) and ``fresh (A',)`` (True at the first arc
of each run of parallel arcs).

Arcs are ordered by (row, col), ties in input order — what a stable argsort of ``row * N + col``
gives — by two stable counting sorts (by col, then by row): O(A + N) instead of a comparison
sort of the keys. A link state's links (``a < b``, sorted by key, none repeated) need only one.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
Int32Array = NDArray[np.int32]
BoolArray = NDArray[np.bool_]


@njit(cache=True, nogil=True)
def _stable_by(key: IntArray, items: IntArray, n: int, count: IntArray) -> IntArray:
    """``items`` stably sorted by ``key[items]`` (keys in 0..n-1)."""
    for i in range(n + 1):
        count[i] = 0
    for i in range(items.size):
        count[key[items[i]] + 1] += 1
    for i in range(n):
        count[i + 1] += count[i]
    out = np.empty(items.size, np.int64)
    for i in range(items.size):
        k = key[items[i]]
        out[count[k]] = items[i]
        count[k] += 1
    return out


@njit(cache=True, nogil=True)
def _layout_of_sorted(a: IntArray, b: IntArray,
                      n: int) -> tuple[Int32Array, Int32Array, IntArray, BoolArray]:
    """:func:`csr_layout` of links with ``a < b`` in increasing ``a * n + b`` order (a link
    state's): one counting sort by row, since a row's reverse arcs (cols below it) and then its
    forward arcs (cols above it) arrive in col order already."""
    e = a.size
    indptr = np.zeros(n + 1, np.int32)
    for i in range(e):
        indptr[a[i] + 1] += 1
        indptr[b[i] + 1] += 1
    for r in range(n):
        indptr[r + 1] += indptr[r]
    fill = indptr[:-1].copy()
    indices = np.empty(2 * e, np.int32)
    edge_of_arc = np.empty(2 * e, np.int64)
    for i in range(e):  # row b[i] meets col a[i] < b[i]: its reverse arcs come first ...
        m = fill[b[i]]
        indices[m], edge_of_arc[m] = a[i], i
        fill[b[i]] = m + 1
    for i in range(e):  # ... then row a[i]'s forward arcs, cols above a[i]
        m = fill[a[i]]
        indices[m], edge_of_arc[m] = b[i], i
        fill[a[i]] = m + 1
    return indptr, indices, edge_of_arc, np.ones(2 * e, np.bool_)


@njit(cache=True, nogil=True)
def csr_layout(a: IntArray, b: IntArray,
               n: int) -> tuple[Int32Array, Int32Array, IntArray, BoolArray]:
    """(indptr, indices, edge_of_arc, fresh) of the symmetric arcs of links ``a``-``b``; a link
    from a node to itself gives no arc."""
    e = a.size
    normal = True
    for i in range(e):
        if not (a[i] < b[i] and (i == 0 or a[i] * n + b[i] > a[i - 1] * n + b[i - 1])):
            normal = False
            break
    if normal:
        return _layout_of_sorted(a, b, n)
    keep = 0
    for i in range(e):
        if a[i] != b[i]:
            keep += 1
    rows = np.empty(2 * keep, np.int64)
    cols = np.empty(2 * keep, np.int64)
    edge = np.empty(2 * keep, np.int64)
    k = 0
    for i in range(e):  # forward arcs first, then the reverse ones: the order a concatenation has
        if a[i] != b[i]:
            rows[k], cols[k], edge[k] = a[i], b[i], i
            rows[k + keep], cols[k + keep], edge[k + keep] = b[i], a[i], i
            k += 1
    count = np.empty(n + 1, np.int64)
    order = _stable_by(rows, _stable_by(cols, np.arange(2 * keep), n, count), n, count)
    fresh = np.empty(2 * keep, np.bool_)
    indptr = np.zeros(n + 1, np.int32)
    n_arcs = 0
    for i in range(2 * keep):
        j = order[i]
        first = i == 0 or rows[j] != rows[order[i - 1]] or cols[j] != cols[order[i - 1]]
        fresh[i] = first
        if first:
            indptr[rows[j] + 1] += 1
            n_arcs += 1
    for r in range(n):
        indptr[r + 1] += indptr[r]
    indices = np.empty(n_arcs, np.int32)
    edge_of_arc = np.empty(2 * keep, np.int64)
    m = 0
    for i in range(2 * keep):
        j = order[i]
        edge_of_arc[i] = edge[j]
        if fresh[i]:
            indices[m] = cols[j]
            m += 1
    return indptr, indices, edge_of_arc, fresh


@njit(cache=True, nogil=True)
def key_order(lo: IntArray, hi: IntArray, n: int) -> IntArray:
    """The permutation a stable argsort of ``lo * n + hi`` gives (both in 0..n-1), by two stable
    counting sorts: how a tick's raw links are put in key order."""
    count = np.empty(n + 1, np.int64)
    return _stable_by(lo, _stable_by(hi, np.arange(lo.size), n, count), n, count)
