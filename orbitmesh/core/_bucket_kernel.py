"""The compiled many-source shortest-path kernel (numba); :mod:`orbitmesh.core._sssp` explains it.

Imported only when routes are first computed, so that processes which never route do not load
numba. Arrays as in :mod:`orbitmesh.core._sssp`: CSR ``indptr (N+1,)``, ``indices (A,)``,
``weights (A,)``, ``transit (N,)`` (False: the node ends paths but relays none); answers
``dist``/``pred`` are ``(D, N)``, one row per source.

A non-transit node other than the source is labelled but never filed for a scan: its links are not
relaxed, so it is a leaf of every tree but its own.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
Int32Array = NDArray[np.int32]


@njit(cache=True, nogil=True, inline="always")
def _heap_push(heap_key: FloatArray, heap_node: Int32Array, size: int, key: float,
               node: int) -> int:
    """Push onto the binary min-heap; returns the new size."""
    i = size
    while i > 0:
        up = (i - 1) >> 1
        if heap_key[up] <= key:
            break
        heap_key[i] = heap_key[up]
        heap_node[i] = heap_node[up]
        i = up
    heap_key[i] = key
    heap_node[i] = node
    return size + 1


@njit(cache=True, nogil=True, inline="always")
def _heap_drop_top(heap_key: FloatArray, heap_node: Int32Array, size: int) -> int:
    """Remove the heap's top (read it first); returns the new size."""
    size -= 1
    key = heap_key[size]
    node = heap_node[size]
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and heap_key[child + 1] < heap_key[child]:
            child += 1
        if heap_key[child] >= key:
            break
        heap_key[i] = heap_key[child]
        heap_node[i] = heap_node[child]
        i = child
    heap_key[i] = key
    heap_node[i] = node
    return size


@njit(cache=True, nogil=True)
def grow_tree(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
              transit: NDArray[np.bool_], source: int,
              inv_width: float, mask: int, dist: FloatArray, pred: Int32Array,
              where: NDArray[np.int64], head: Int32Array, nxt: Int32Array,
              entry_node: Int32Array, budget: int) -> bool:
    """One tree into ``dist``/``pred`` by buckets; False (give up) after ``budget`` scans or when
    the entry pool runs out: lighter-than-bucket links re-scan nodes, and on adversarial weights
    that could go on for long."""
    n = indptr.size - 1
    for i in range(n):
        dist[i] = np.inf
        pred[i] = -1
        where[i] = -1  # bucket holding the node's live entry; -1: none
    for i in range(mask + 1):
        head[i] = -1  # top entry of each bucket's stack; -1: empty
    dist[source] = 0.0
    pred[source] = source
    entry_node[0] = source
    nxt[0] = -1
    head[0] = 0
    where[source] = 0
    used = 1
    pending = 1
    capacity = entry_node.size
    k = 0
    while pending > 0:
        slot = k & mask
        while head[slot] >= 0:
            e = head[slot]
            head[slot] = nxt[e]
            pending -= 1
            u = entry_node[e]
            if where[u] != k:
                continue  # stale: the node was filed again, in an earlier bucket, since
            where[u] = -1
            budget -= 1
            if budget < 0:
                return False
            du = dist[u]
            for arc in range(indptr[u], indptr[u + 1]):
                v = indices[arc]
                candidate = du + weights[arc]
                if candidate < dist[v]:
                    dist[v] = candidate
                    pred[v] = u
                    if not transit[v]:
                        continue  # a leaf: labelled, never scanned
                    bucket = np.int64(candidate * inv_width)
                    if where[v] != bucket:
                        if used == capacity:
                            return False
                        where[v] = bucket
                        target = bucket & mask
                        entry_node[used] = v
                        nxt[used] = head[target]
                        head[target] = used
                        used += 1
                        pending += 1
        k += 1
    return True


@njit(cache=True, nogil=True)
def dijkstra_tree(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                  transit: NDArray[np.bool_], source: int,
                  dist: FloatArray, pred: Int32Array, done: NDArray[np.bool_],
                  heap_key: FloatArray, heap_node: Int32Array) -> None:
    """One tree into ``dist``/``pred`` by Dijkstra with a binary heap: the bounded fallback."""
    n = indptr.size - 1
    for i in range(n):
        dist[i] = np.inf
        pred[i] = -1
        done[i] = False
    dist[source] = 0.0
    pred[source] = source
    size = _heap_push(heap_key, heap_node, 0, 0.0, source)
    while size > 0:
        u = heap_node[0]
        du = heap_key[0]
        size = _heap_drop_top(heap_key, heap_node, size)
        if done[u]:
            continue  # a superseded, higher label
        done[u] = True
        for arc in range(indptr[u], indptr[u + 1]):
            v = indices[arc]
            candidate = du + weights[arc]
            if candidate < dist[v]:
                dist[v] = candidate
                pred[v] = u
                if transit[v]:  # a non-transit node is a leaf: never popped, never scanned
                    size = _heap_push(heap_key, heap_node, size, candidate, v)


@njit(cache=True, nogil=True)
def grow_forest(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                transit: NDArray[np.bool_], sources: NDArray[np.int64], width: float,
                capacity: int, budget: int,
                dist: FloatArray, pred: Int32Array) -> None:
    """One tree per source into the rows of ``dist``/``pred``: by buckets, or by a heap for a
    tree that exceeds ``budget`` scans or ``capacity`` bucket entries."""
    n = indptr.size - 1
    wmax = 0.0
    for arc in range(weights.size):
        wmax = max(wmax, weights[arc])
    inv_width = 1.0 / width
    n_slots = 1
    # Live labels span at most wmax / width + 1 buckets (+1 for rounding in the product), so the
    # circular array never files two live buckets in one slot.
    while n_slots < np.int64(wmax * inv_width) + 3:
        n_slots *= 2
    where = np.empty(n, np.int64)
    head = np.empty(n_slots, np.int32)
    capacity = max(capacity, 1)
    nxt = np.empty(capacity, np.int32)  # entry pool: next entry in the same stack ...
    entry_node = np.empty(capacity, np.int32)  # ... and the node the entry files
    done = np.empty(0, np.bool_)  # the fallback's arrays, made when first needed
    heap_key = np.empty(0, np.float64)
    heap_node = np.empty(0, np.int32)
    for i in range(sources.size):
        if grow_tree(indptr, indices, weights, transit, sources[i], inv_width, n_slots - 1,
                     dist[i], pred[i], where, head, nxt, entry_node, budget):
            continue
        if done.size == 0:
            done = np.empty(n, np.bool_)
            heap_key = np.empty(indices.size + 1, np.float64)  # one entry per lowered label
            heap_node = np.empty(indices.size + 1, np.int32)
        dijkstra_tree(indptr, indices, weights, transit, sources[i], dist[i], pred[i], done,
                      heap_key, heap_node)

