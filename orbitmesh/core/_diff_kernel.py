"""The link diff of :class:`orbitmesh.core.links.LinkTracker` in one merge of two sorted key
arrays (numba).

Arrays: the announced state's keys ``prev_key (P,)`` (sorted) and delays ``announced_s (P,)``; the
new state's keys ``cur_key (L,)`` (sorted) and delays ``delay_s (L,)``. A new key is matched to
the first equal announced key, as ``np.searchsorted(prev_key, cur_key)`` (side left) matches it,
so the answer is the numpy path's, in one O(P + L) pass instead of L binary searches and a dozen
temporaries.
"""

from __future__ import annotations

import numpy as np
from numba import njit
from numpy.typing import NDArray

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]


@njit(cache=True, nogil=True)
def diff_sorted(prev_key: IntArray, announced_s: FloatArray, cur_key: IntArray,
                delay_s: FloatArray, threshold_s: float
                ) -> tuple[bool, IntArray, IntArray, IntArray, FloatArray]:
    """(in_order, up, down, changed, announced): indices of new links (into ``cur_key``), of gone
    ones (into ``prev_key``), of links whose delay drifted past the threshold, and the delays now
    announced; ``in_order`` False (and nothing else) when either key array is out of order."""
    p, n = prev_key.size, cur_key.size
    in_order = True
    for i in range(1, n):
        in_order = in_order and cur_key[i] >= cur_key[i - 1]
    for k in range(1, p):
        in_order = in_order and prev_key[k] >= prev_key[k - 1]
    if not in_order:
        empty = np.empty(0, np.int64)
        return False, empty, empty, empty, np.empty(0, np.float64)
    up = np.empty(n, np.int64)
    changed = np.empty(n, np.int64)
    matched = np.zeros(p, np.bool_)
    announced = delay_s.copy()
    n_up = n_changed = 0
    j = 0
    for i in range(n):
        key = cur_key[i]
        while j < p and prev_key[j] < key:
            j += 1
        if j < p and prev_key[j] == key:
            matched[j] = True
            if abs(delay_s[i] - announced_s[j]) > threshold_s:
                changed[n_changed] = i
                n_changed += 1
            else:
                announced[i] = announced_s[j]
        else:
            up[n_up] = i
            n_up += 1
    down = np.empty(p, np.int64)
    n_down = 0
    for k in range(p):
        if not matched[k]:
            down[n_down] = k
            n_down += 1
    return True, up[:n_up].copy(), down[:n_down].copy(), changed[:n_changed].copy(), announced

