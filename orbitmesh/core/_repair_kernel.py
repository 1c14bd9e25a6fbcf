"""Route trees repaired from the previous tick's (numba); :mod:`orbitmesh.core._sssp` explains why
the answer is the one a fresh search gives.

Arrays as in :mod:`orbitmesh.core._bucket_kernel`: CSR ``indptr (N+1,)``, ``indices (A,)``,
``weights (A,)`` (symmetric: both directions of a link weigh the same), ``transit (N,)``; per
source ``t`` a hinted parent row ``hints[t] (N,)`` and the answers ``dist``/``pred`` ``(D, N)``.

A repair takes three steps. (1) Labels: today's weights summed down yesterday's tree, root first,
as a search would add them; a node whose parent link is gone gets ``inf``. The order the last
repair labelled its nodes in (``order (D, N)``, parents first) makes this one linear pass for all
but the few nodes whose parent changed since; those are walked up to a labelled node. Each
node's link to its parent is the arc the last repair recorded (``arcs (D, N)``), mapped to
today's CSR by one merge of the two ticks' arc lists (:func:`arc_map`) and checked, instead of
a search of the node's arcs for every tree each tick. (2) One
pass in which every node takes its best relaying neighbour — done for all trees at once over a
node-major copy ``(N, D)`` of the labels, so the branchy walk over each node's arcs is paid once,
not D times, and the inner loop over trees is plain arithmetic. (3) A heap search from the nodes
that improved. A tree that changed little (the usual tick: a few handovers, a few flipped
near-ties) touches a few nodes in step 3; one that needs more than ``repair_budget`` heap scans
is grown afresh instead.

Why the answer is the fresh search's: every label is set as ``fl(d[p] + w)`` for the parent it
records, and afterwards only ever drops; a relay whose label drops is queued, and its scan offers
every neighbour the new label. So when the heap is empty no link offers a smaller label, the
labels equal their parents' plus the link (a parent that dropped later either re-parented the
child or left the sum unchanged), and that labelling is unique (:mod:`orbitmesh.core._sssp`). A
heap search from arbitrary upper-bound labels settles each node once, as Dijkstra does: the
smallest queued label cannot be lowered by anything still queued.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

from orbitmesh.core._bucket_kernel import _heap_drop_top, _heap_push, grow_forest

FloatArray = NDArray[np.float64]
Int32Array = NDArray[np.int32]

_BLOCK = 64
"""Nodes per block when labels are transposed between tree-major and node-major (cache lines)."""


@njit(cache=True, nogil=True, inline="always")
def _arc_joins(indptr: Int32Array, indices: Int32Array, arc: int, x: int, p: int) -> bool:
    """True when ``arc`` is today's arc x -> p (a carried-over arc may be stale or garbage)."""
    return indptr[x] <= arc < indptr[x + 1] and indices[arc] == p


@njit(cache=True, nogil=True)
def _arc_to(indptr: Int32Array, indices: Int32Array, x: int, p: int) -> int:
    """The arc x -> p, or -1 (a node's few arcs, scanned)."""
    for arc in range(indptr[x], indptr[x + 1]):
        if indices[arc] == p:
            return arc
    return -1


@njit(cache=True, nogil=True)
def _fill_arcs(indptr: Int32Array, indices: Int32Array, source: int, pred: Int32Array,
               arcs: Int32Array) -> None:
    """``arcs[x]``: the arc x -> pred[x] of a tree grown afresh (-1 at the source and unreached)."""
    for x in range(pred.size):
        p = pred[x]
        arcs[x] = -1 if p < 0 or x == source else _arc_to(indptr, indices, x, p)


@njit(cache=True, nogil=True)
def _labels_along_hint(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                       transit: NDArray[np.bool_], source: int, hint: Int32Array,
                       old_arc: Int32Array, dist: FloatArray, pred: Int32Array,
                       order: Int32Array, arcs: Int32Array, state: NDArray[np.int8],
                       stack: Int32Array) -> None:
    """Step 1 for one tree: a node whose hinted parent is gone, out of range, not a relay or on a
    cycle gets ``inf``, and with it the subtree below.

    ``arcs`` (N,) holds on entry each node's arc to its hinted parent in the last graph, and
    ``old_arc`` maps those arcs to today's (:func:`arc_map`; or the identity, arcs found today
    by :func:`_hint_arcs`). An arc that is not today's x -> hint[x] counts as no link, so a
    stale one costs speed only. Each node's entry is read before it is overwritten with the arc
    to its parent today (-1: none).

    ``order`` (N,) lists the last tree's nodes parents first (-1 ends the list; a row that does
    not start at ``source`` lists nothing): one linear pass labels every node that still follows
    its parent there (~9 ns a node on shell 1). What it leaves — nodes whose hinted parent comes
    later (a parent that changed in the last repair), or is gone — is labelled by walking up to a
    labelled node and back down (~28 ns a node: one dependent load after another). On return
    ``order`` lists the labelled nodes in the order they were labelled, parents first."""
    n = dist.size
    m = old_arc.size
    for i in range(n):
        state[i] = 0  # 0: not labelled yet, 1: on the walk, 2: labelled
        dist[i] = np.inf
        pred[i] = -1
    dist[source] = 0.0
    pred[source] = source
    arcs[source] = -1
    state[source] = 2
    k = 1  # order[:k] are labelled, parents first; reading order[i] with i >= k is safe
    if order[0] == source:
        for i in range(1, n):
            x = order[i]
            if x < 0:
                break
            if x >= n or state[x] != 0:
                continue
            p = hint[x]
            last = arcs[x]
            arc = old_arc[last] if 0 <= last < m else -1
            # Until the walk below, a finite label means "labelled": inf is only the start value.
            if (0 <= p < n and dist[p] < np.inf and (transit[p] or p == source)
                    and _arc_joins(indptr, indices, arc, x, p)):
                dist[x] = dist[p] + weights[arc]  # the arc x->p weighs what p->x does
                pred[x] = p
                arcs[x] = arc
                state[x] = 2
                order[k] = x
                k += 1
    order[0] = source
    for v in range(n):
        top = 0
        u = v
        while state[u] == 0:  # walk up to a labelled node (or a dead end)
            state[u] = 1
            stack[top] = u
            top += 1
            p = hint[u]
            if p < 0 or p >= n or p == u or (not transit[p] and p != source):
                break
            u = p
        while top > 0:  # and back down, parents before children
            top -= 1
            x = stack[top]
            p = hint[x]
            label = np.inf
            last = arcs[x]
            arc = old_arc[last] if 0 <= last < m else -1
            if (p != x and 0 <= p < n and state[p] == 2 and dist[p] < np.inf
                    and (transit[p] or p == source) and _arc_joins(indptr, indices, arc, x, p)):
                label = dist[p] + weights[arc]
            dist[x] = label
            state[x] = 2
            if label < np.inf:
                pred[x] = p
                arcs[x] = arc
                order[k] = x
                k += 1
            else:
                arcs[x] = -1
    if k < n:
        order[k] = -1


@njit(cache=True, nogil=True)
def _hint_arcs(indptr: Int32Array, indices: Int32Array, hints: Int32Array,
               hint_arc: Int32Array) -> None:
    """``hint_arc[t, x]``: the first arc x -> hints[t, x], or -1 — all trees per node at once
    (node-major, so the inner loop over trees is a branch-free compare and select)."""
    n = indptr.size - 1
    d = hints.shape[0]
    by_node = np.empty((n, d), np.int32)
    found = np.empty((n, d), np.int32)
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        for t in range(d):
            for x in range(lo, hi):
                by_node[x, t] = hints[t, x]
    for x in range(n):
        want = by_node[x]
        row = found[x]
        for t in range(d):
            row[t] = -1
        for arc in range(indptr[x + 1] - 1, indptr[x] - 1, -1):  # the first arc wins
            u = indices[arc]
            for t in range(d):
                row[t] = arc if want[t] == u else row[t]
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        for t in range(d):
            for x in range(lo, hi):
                hint_arc[t, x] = found[x, t]


@njit(cache=True, nogil=True)
def _best_neighbours(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                     transit: NDArray[np.bool_], sources: NDArray[np.int64],
                     labels: FloatArray, pred: Int32Array, arcs: Int32Array, seeds: Int32Array,
                     n_seeds: NDArray[np.int64]) -> None:
    """Step 2 over node-major ``labels (N, D)``: improved relays are filed in ``seeds[t]``."""
    n = indptr.size - 1
    d = sources.size
    best = np.empty(d, np.float64)
    for v in range(n):
        row = labels[v]
        for t in range(d):
            best[t] = row[t]
        for arc in range(indptr[v], indptr[v + 1]):
            u = indices[arc]
            if not transit[u]:
                continue  # relays only for its own tree: see below
            w = weights[arc]
            other = labels[u]
            for t in range(d):
                best[t] = min(best[t], other[t] + w)
        for t in range(d):
            if best[t] < row[t]:
                for arc in range(indptr[v], indptr[v + 1]):
                    u = indices[arc]
                    if transit[u] and labels[u, t] + weights[arc] == best[t]:
                        row[t] = best[t]
                        pred[t, v] = u
                        arcs[t, v] = arc
                        break
                if transit[v]:
                    seeds[t, n_seeds[t]] = v
                    n_seeds[t] += 1
    for t in range(d):  # a source that relays nothing still starts its own tree
        s = sources[t]
        if transit[s]:
            continue
        for arc in range(indptr[s], indptr[s + 1]):
            v = indices[arc]
            if weights[arc] < labels[v, t]:
                labels[v, t] = weights[arc]
                pred[t, v] = s
                arcs[t, v] = _arc_to(indptr, indices, v, s)
                if transit[v]:
                    seeds[t, n_seeds[t]] = v
                    n_seeds[t] += 1


@njit(cache=True, nogil=True)
def _settle(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
            transit: NDArray[np.bool_], dist: FloatArray, pred: Int32Array, arcs: Int32Array,
            seeds: Int32Array, n_seeds: int, heap_key: FloatArray, heap_node: Int32Array,
            budget: int) -> bool:
    """Step 3 for one tree: Dijkstra from the improved ``seeds``; False past ``budget`` scans."""
    size = 0
    for i in range(n_seeds):
        size = _heap_push(heap_key, heap_node, size, dist[seeds[i]], seeds[i])
    while size > 0:
        u = heap_node[0]
        du = heap_key[0]
        size = _heap_drop_top(heap_key, heap_node, size)
        if du != dist[u]:
            continue  # superseded by a lower label (a label only ever drops)
        budget -= 1
        if budget < 0:
            return False
        for arc in range(indptr[u], indptr[u + 1]):
            v = indices[arc]
            candidate = du + weights[arc]
            if candidate < dist[v]:
                dist[v] = candidate
                pred[v] = u
                arcs[v] = _arc_to(indptr, indices, v, u)  # a few per repair: a short scan
                if transit[v]:
                    size = _heap_push(heap_key, heap_node, size, candidate, v)
    return True


@njit(cache=True, nogil=True)
def arc_map(old_indptr: Int32Array, old_indices: Int32Array, indptr: Int32Array,
            indices: Int32Array) -> Int32Array:
    """(A_old,) today's arc with the same (row, col) as each arc of the last tick's CSR, or -1:
    one merge per row (both list a row's cols in increasing order), O(A_old + A)."""
    out = np.full(old_indices.size, -1, np.int32)
    rows = min(old_indptr.size, indptr.size) - 1
    for r in range(rows):
        j, end = indptr[r], indptr[r + 1]
        for i in range(old_indptr[r], old_indptr[r + 1]):
            col = old_indices[i]
            while j < end and indices[j] < col:
                j += 1
            if j < end and indices[j] == col:
                out[i] = j
    return out


@njit(cache=True, nogil=True)
def repair_forest(indptr: Int32Array, indices: Int32Array, weights: FloatArray,
                  transit: NDArray[np.bool_], sources: NDArray[np.int64], hints: Int32Array,
                  width: float, capacity: int, budget: int, repair_budget: int,
                  dist: FloatArray, pred: Int32Array, order: Int32Array, arcs: Int32Array,
                  old_arc: Int32Array, carried: bool) -> None:
    """As :func:`~orbitmesh.core._bucket_kernel.grow_forest`, but a row whose ``hints`` row is a
    tree rooted at its source (``hints[i, sources[i]] == sources[i]``) is repaired from it.

    ``order (D, N)``: per row, the hinted tree's nodes parents first (see
    :func:`_labels_along_hint`); rewritten with the nodes of the hinted tree as labelled today
    (parents first again: the order the next call's hints, today's answer, will mostly follow),
    or ``-1`` first for a row grown afresh. It changes the speed, never the answer.

    ``arcs (D, N)`` is rewritten with each node's arc to its parent today (-1 at the source and
    unreached nodes). With ``carried``, it holds on entry the last call's arcs, and ``old_arc``
    maps them to today's (:func:`arc_map`): each hinted parent's link is then one look-up instead
    of a search of the node's arcs for every tree. Stale arcs only cost speed: each is checked."""
    n = indptr.size - 1
    d = sources.size
    state = np.empty(n, np.int8)
    stack = np.empty(n, np.int32)
    hinted = np.zeros(d, np.bool_)
    if not carried:  # today's arcs to the hinted parents, searched; mapped by the identity
        _hint_arcs(indptr, indices, hints, arcs)
        old_arc = np.arange(indices.size).astype(np.int32)
    for t in range(d):
        s = sources[t]
        if hints[t, s] == s:
            hinted[t] = True
            _labels_along_hint(indptr, indices, weights, transit, s, hints[t], old_arc,
                               dist[t], pred[t], order[t], arcs[t], state, stack)
        else:  # grown afresh: already final, step 2 finds nothing to improve
            grow_forest(indptr, indices, weights, transit, sources[t:t + 1], width, capacity,
                        budget, dist[t:t + 1], pred[t:t + 1])
            _fill_arcs(indptr, indices, s, pred[t], arcs[t])
            order[t, 0] = -1  # grown by buckets: no parents-first order to hand on
    labels = np.empty((n, d), np.float64)
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        for t in range(d):
            for x in range(lo, hi):
                labels[x, t] = dist[t, x]
    seeds = np.empty((d, 2 * n + 1), np.int32)  # a node, or a neighbour of a stub source
    n_seeds = np.zeros(d, np.int64)
    _best_neighbours(indptr, indices, weights, transit, sources, labels, pred, arcs, seeds,
                     n_seeds)
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        for t in range(d):
            for x in range(lo, hi):
                dist[t, x] = labels[x, t]
    heap_key = np.empty(indices.size + 2 * n + 1, np.float64)  # one entry per lowered label
    heap_node = np.empty(indices.size + 2 * n + 1, np.int32)
    for t in range(d):
        if not hinted[t] or n_seeds[t] == 0:
            continue
        if not _settle(indptr, indices, weights, transit, dist[t], pred[t], arcs[t], seeds[t],
                       n_seeds[t], heap_key, heap_node, repair_budget):
            grow_forest(indptr, indices, weights, transit, sources[t:t + 1], width, capacity,
                        budget, dist[t:t + 1], pred[t:t + 1])
            _fill_arcs(indptr, indices, sources[t], pred[t], arcs[t])
            order[t, 0] = -1
