"""Primitives of the batched plane's kernel: heap, hash, random stream, output records.

Inlined into nodes/plane_kernel.py's loop (``inline="always"``): a call that passes a tuple of
arrays costs a reference count per array, which per event was most of the kernel's time.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from nodes.plane_layout import (
    FF_COLS,
    FI_COLS,
    FI_FLOW,
    FI_ID,
    FI_SIZE,
    FI_U,
    FI_V,
    M_FREE,
    M_HEAP,
    M_LOG,
    M_OUT,
    N_INT,
    OF_FRAME,
    OF_LATE,
    OF_T,
    OI_AUX,
    OI_FAULT,
    OI_FRAME,
    OI_KIND,
    OI_LOG,
    OI_NODE,
    OI_PAY,
    OI_SEQ,
)


@njit(cache=True, nogil=True, inline="always")
def _less(d1: float, s1: int, d2: float, s2: int) -> bool:
    return d1 < d2 or (d1 == d2 and s1 < s2)


@njit(cache=True, nogil=True, inline="always")
def heap_push(hdue, hseq, hslot, meta, due, seq, slot):  # type: ignore[no-untyped-def]
    """Push (due, seq) -> slot."""
    i = meta[M_HEAP]
    meta[M_HEAP] = i + 1
    while i > 0:
        p = (i - 1) >> 1
        if _less(due, seq, hdue[p], hseq[p]):
            hdue[i], hseq[i], hslot[i] = hdue[p], hseq[p], hslot[p]
            i = p
        else:
            break
    hdue[i], hseq[i], hslot[i] = due, seq, slot


@njit(cache=True, nogil=True, inline="always")
def heap_pop(hdue, hseq, hslot, meta):  # type: ignore[no-untyped-def]
    """Remove the head (the caller read it)."""
    n = meta[M_HEAP] - 1
    meta[M_HEAP] = n
    if n == 0:
        return
    due, seq, slot = hdue[n], hseq[n], hslot[n]
    i = 0
    while True:
        c = 2 * i + 1
        if c >= n:
            break
        if c + 1 < n and _less(hdue[c + 1], hseq[c + 1], hdue[c], hseq[c]):
            c += 1
        if _less(hdue[c], hseq[c], due, seq):
            hdue[i], hseq[i], hslot[i] = hdue[c], hseq[c], hslot[c]
            i = c
        else:
            break
    hdue[i], hseq[i], hslot[i] = due, seq, slot


@njit(cache=True, nogil=True, inline="always")
def _rand(rng) -> float:  # type: ignore[no-untyped-def]
    """splitmix64 -> uniform [0, 1): the lane's own seeded stream."""
    rng[0] += np.uint64(0x9E3779B97F4A7C15)
    z = rng[0]
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return float(z >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, nogil=True, inline="always")
def find_link(lptr, lnbr, u, v):  # type: ignore[no-untyped-def]
    """Index of live link u->v in the CSR arrays, or -1."""
    for i in range(lptr[u], lptr[u + 1]):
        if lnbr[i] == v:
            return i
    return -1


@njit(cache=True, nogil=True, inline="always")
def find_cut(cut_key, cut_fault, key):  # type: ignore[no-untyped-def]
    """Fault index that cut the undirected link ``key`` (min * n + max), or -1."""
    i = np.searchsorted(cut_key, key)
    if i < len(cut_key) and cut_key[i] == key:
        return cut_fault[i]
    return -1


@njit(cache=True, nogil=True, inline="always")
def tx_find(tkey, key):  # type: ignore[no-untyped-def]
    """Hash position of transmitter ``key`` (u * n + v), or of the empty cell it would take."""
    mask = len(tkey) - 1
    h = (key * 0x9E3779B1) & mask
    while tkey[h] != -1 and tkey[h] != key:
        h = (h + 1) & mask
    return h


@njit(cache=True, nogil=True, inline="always")
def _iv(ints, lay, k):  # type: ignore[no-untyped-def]
    return ints[lay[2 * k]:lay[2 * k] + lay[2 * k + 1]]


@njit(cache=True, nogil=True, inline="always")
def _fv(F, lay, k):  # type: ignore[no-untyped-def]
    return F[lay[2 * (N_INT + k)]:lay[2 * (N_INT + k)] + lay[2 * (N_INT + k) + 1]]


@njit(cache=True, nogil=True, inline="always")
def _emit(S, kind, aux, node, fault, seq, t, late, s):  # type: ignore[no-untyped-def]
    meta, fi, ff, oi, of, fpay = S[0], S[1], S[2], S[3], S[4], S[8]
    k = meta[M_OUT]
    meta[M_OUT] = k + 1
    oi[k, OI_KIND] = kind
    oi[k, OI_AUX] = aux
    oi[k, OI_NODE] = node
    oi[k, OI_FAULT] = fault
    oi[k, OI_SEQ] = seq
    oi[k, OI_LOG] = meta[M_LOG]
    oi[k, OI_PAY] = fpay[s]
    for c in range(FI_COLS):
        oi[k, OI_FRAME + c] = fi[s, c]
    of[k, OF_T] = t
    of[k, OF_LATE] = late
    for c in range(FF_COLS):
        of[k, OF_FRAME + c] = ff[s, c]


@njit(cache=True, nogil=True, inline="always")
def _release(S, s):  # type: ignore[no-untyped-def]
    meta, free = S[0], S[5]
    free[meta[M_FREE]] = s
    meta[M_FREE] += 1


@njit(cache=True, nogil=True, inline="always")
def _put_be(log, at, value):  # type: ignore[no-untyped-def]
    for i in range(8):
        log[at + i] = (value >> (56 - 8 * i)) & 0xFF


@njit(cache=True, nogil=True, inline="always")
def _hop_record(S, scratch, s, t):  # type: ignore[no-untyped-def]
    """Append the ``hop`` record of slot ``s`` arriving at ``t`` to the log buffer."""
    meta, fi, log = S[0], S[1], S[6]
    at = meta[M_LOG]
    log[at] = 0x97
    log[at + 1] = 0xA3
    log[at + 2] = 104  # h
    log[at + 3] = 111  # o
    log[at + 4] = 112  # p
    log[at + 5] = 0xCB
    scratch[0] = t
    _put_be(log, at + 6, scratch.view(np.int64)[0])
    at += 14
    for col in (FI_ID, FI_FLOW, FI_U, FI_V, FI_SIZE):
        log[at] = 0xD3
        _put_be(log, at + 1, fi[s, col])
        at += 9
    meta[M_LOG] = at
