"""The compiled hop loop of the batched message plane (nodes/plane.py), in numba.

One call of :func:`run_lane` does what ``NodeRuntime.run_due`` does for frames of the common
shape (no source route, payload or ref): it first takes the requests Python queued (frames to
put on a transmitter, frames handed over from another worker), then pops every lane event due
before a bound (the Python heap's head, or ``now``) in (due, seq) order, and for each one does
arrive -> forward -> transmit -> schedule. What Python must see is written to the output
records (hops, deliveries, drops with reason codes, hand-overs, frames for the Python path);
Python turns them into stats, the event log and wire batches.

State layout (every array is owned by :class:`nodes.plane.Lane`):

* frame slots: ``fi[slot, FI_*]`` (int64) and ``ff[slot, FF_*]`` (float64); free slots on the
  stack ``free[:meta[M_FREE]]``.
* lane heap: ``hdue``, ``hseq``, ``hslot`` (binary min-heap on (due, seq), ``meta[M_HEAP]``
  entries).
* live links: CSR over nodes, ``lptr[u]..lptr[u+1]`` index ``lnbr`` (neighbour), ``ldelay_s``,
  ``lkind``, ``lcap_bps`` (degraded rate cap, 0: none), ``lxloss`` (degraded extra loss),
  ``lxfault`` (fault index of the degradation). Both directions are listed.
* transmitters (one per directed link ever used): open-addressing hash ``tkey`` (u * n + v,
  -1 empty) -> ``tslot``; per transmitter ``tbusy`` (busy-until wall), and its ring of
  finishing times in ``pool[toff:toff + tcap]`` (``thead``, ``tcnt``), grown by doubling up to
  the link's queue limit.
* per node: ``owner``, ``watch`` (1: the Python path must hear of arrivals there),
  ``down_local`` / ``down_all`` / ``cut_node`` (fault index or -1), ``dest_row``.
* routing: ``table[policy, row, node]`` (next hop, -1 none, -2 unreachable by a fault).
"""

from __future__ import annotations

import numpy as np
from numba import njit

# frame int columns
FI_ID, FI_KIND, FI_FLOW, FI_SRC, FI_DST, FI_SIZE, FI_HOPS, FI_TTL, FI_POLICY, FI_U, FI_V = range(11)
FI_COLS = 11
# frame float columns
FF_CREATED, FF_DUE, FF_WAIT, FF_PROP = range(4)
FF_COLS = 4
# wire row (orbitmesh/protocol/wire_columns.py): the FI_* columns (FI_V is the node it is for,
# FI_U the node it crosses from), then the FF_* columns as float64 bits
W_COLS = FI_COLS + FF_COLS
# meta counters and settings (int buffer, first field)
(M_HEAP, M_FREE, M_SEQ, M_INFLIGHT, M_OUT, M_NTX, M_POOL, M_LOG, M_NLATE, M_BLAME, M_WORKER,
 M_N, M_WORKERS, M_HCAP, M_FLOW0, M_NFLOWS, M_LOGGING, M_NP, M_ND, M_HFULL, M_HROWS,
 M_BAD) = range(22)
M_LEN = 22
# int buffer fields, in order
(I_META, I_FI, I_HSEQ, I_HSLOT, I_FREE, I_LPTR, I_LNBR, I_LKIND, I_LXFAULT, I_CUTK, I_CUTF,
 I_TKEY, I_TSLOT, I_TOFF, I_TCAP, I_THEAD, I_TCNT, I_OWNER, I_WATCH, I_DLOCAL, I_DALL, I_CUTN,
 I_DROW, I_TABLE, I_QLIM, I_OI, I_HAND, I_HCNT, I_FCNT, I_LOG, I_RNG, I_BAD) = range(32)
N_INT = 32
# float buffer fields, in order
(F_META, F_FF, F_HDUE, F_LDELAY, F_LCAP, F_LXLOSS, F_TBUSY, F_POOL, F_OF, F_RATE, F_LOSS,
 F_LATE) = range(12)
N_FLOAT = 12
FM_SPEED = 0
# request kinds (rows of the request arrays)
REQ_COMMON, REQ_RARE = 0, 1
# output record kinds
O_DELIVER, O_DROP, O_RARE, O_WATCH, O_SLOW = range(5)
# output int columns: kind, aux (reason / worker), node, fault, seq, log offset, FI_* columns
OI_KIND, OI_AUX, OI_NODE, OI_FAULT, OI_SEQ, OI_LOG = range(6)
OI_FRAME = 6
OI_COLS = OI_FRAME + FI_COLS
# output float columns: event wall, late_ms, then the FF_* columns
OF_T, OF_LATE = range(2)
OF_FRAME = 2
OF_COLS = OF_FRAME + FF_COLS
# drop reasons (index into REASONS)
R_TTL, R_NO_ROUTE, R_FAULT, R_LINK_DOWN, R_QUEUE, R_LOSS, R_LINK_LOST = range(7)
REASONS = ("ttl", "no_route", "fault", "link_down", "queue", "loss", "link_lost")
# why a received row was refused (index into REFUSED)
REFUSED = ("to_node is not a node index", "src/dst are not node indices", "kind is not 0..3",
           "size is not 1..65535", "hops/ttl are not 0..255", "policy is not listed",
           "a time is not finite", "frame for a node not hosted here",
           "handed-over frame without its link or due time")
# status of a call
S_DONE, S_OUT_FULL, S_NEED_SLOTS, S_NEED_TX, S_NEED_POOL, S_HAND_FULL = range(6)
FAULT_UNREACHABLE = -2
RING_START = 8
"""Finishing times a new transmitter's ring holds before it doubles (up to its queue limit)."""
HOP_RECORD_B = 58
"""``["hop", wall, id, flow, from, to, size]`` in fixed-width msgpack (nodes/stats.py)."""
MAX_FRAME_BYTES, MAX_TTL, FINITE_WALL = 65_535, 255, 1e11


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
    meta, fi, ff, oi, of = S[0], S[1], S[2], S[3], S[4]
    k = meta[M_OUT]
    meta[M_OUT] = k + 1
    oi[k, OI_KIND] = kind
    oi[k, OI_AUX] = aux
    oi[k, OI_NODE] = node
    oi[k, OI_FAULT] = fault
    oi[k, OI_SEQ] = seq
    oi[k, OI_LOG] = meta[M_LOG]
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


@njit(cache=True, nogil=True, inline="always")
def _transmit(S, L, T, s, u, v, at, seq, rare):  # type: ignore[no-untyped-def]
    """NodeRuntime.transmit for slot ``s`` entering link u->v at ``at``; frees ``s`` unless it
    stays on the lane heap."""
    meta, fi, ff = S[0], S[1], S[2]
    lptr, lnbr, ldelay_s, lkind, lcap_bps, lxloss, lxfault, cut_key, cut_fault = L
    (tkey, tslot, tbusy, toff, tcap, thead, tcnt, pool, owner, watch, rate_bps, loss, qlim,
     rng, hand, hcnt, fcnt, hdue, hseq, hslot) = T
    n = meta[M_N]
    li = find_link(lptr, lnbr, u, v)
    reason, fault, kind, rate, t = -1, -1, 0, 0.0, 0
    if li < 0:
        fault = find_cut(cut_key, cut_fault, min(u, v) * n + max(u, v))
        reason = R_FAULT if fault >= 0 else R_LINK_DOWN
    else:
        kind = lkind[li]
        rate = rate_bps[kind]
        if lxfault[li] >= 0:
            if lxloss[li] > 0.0 and _rand(rng) < lxloss[li]:
                reason, fault = R_FAULT, lxfault[li]
            elif lcap_bps[li] > 0.0:
                rate = min(rate, lcap_bps[li])
    if reason < 0:
        key = u * n + v
        h = tx_find(tkey, key)
        if tkey[h] == -1:  # a new transmitter (the caller made sure of room)
            t = meta[M_NTX]
            meta[M_NTX] = t + 1
            tkey[h] = key
            tslot[h] = t
            tbusy[t] = 0.0
            toff[t] = meta[M_POOL]
            tcap[t] = min(RING_START, qlim[kind])
            thead[t] = 0
            tcnt[t] = 0
            meta[M_POOL] += tcap[t]
        t = tslot[h]
        while tcnt[t] > 0 and pool[toff[t] + thead[t]] <= at:  # Transmitter.backlog
            thead[t] = (thead[t] + 1) % tcap[t]
            tcnt[t] -= 1
        if tcnt[t] >= qlim[kind]:
            reason = R_QUEUE
        elif loss[kind] > 0.0 and _rand(rng) < loss[kind]:
            reason = R_LOSS
    if reason >= 0:
        _emit(S, O_DROP, reason, u, fault, seq, at, 0.0, s)
        if rare:
            _emit(S, O_RARE, -1, v, -1, seq, at, 0.0, s)
        _release(S, s)
        return
    if tcnt[t] == tcap[t]:  # ring full but under the limit: double it at the pool's end
        cap = min(2 * tcap[t], qlim[kind])
        off = meta[M_POOL]
        for i in range(tcnt[t]):
            pool[off + i] = pool[toff[t] + (thead[t] + i) % tcap[t]]
        toff[t] = off
        tcap[t] = cap
        thead[t] = 0
        meta[M_POOL] += cap
    delay_s = ldelay_s[li]
    speed = S[7][FM_SPEED]
    busy = tbusy[t]
    start = at if busy < at else busy
    done = start + fi[s, FI_SIZE] * 8.0 / (rate * speed)
    tbusy[t] = done
    pool[toff[t] + (thead[t] + tcnt[t]) % tcap[t]] = done
    tcnt[t] += 1
    due = done + delay_s / speed
    ff[s, FF_DUE] = due
    ff[s, FF_WAIT] += (done - at) * speed
    ff[s, FF_PROP] += delay_s
    fi[s, FI_U] = u
    fi[s, FI_V] = v
    w = owner[v]
    if rare:
        _emit(S, O_RARE, w, v, -1, seq, due, 0.0, s)
        _release(S, s)
    elif w != meta[M_WORKER]:
        row = w * meta[M_HCAP] + hcnt[w]
        hcnt[w] += 1
        meta[M_HROWS] += 1
        if hcnt[w] == meta[M_HCAP]:
            meta[M_HFULL] = 1
        for c in range(FI_COLS):
            hand[row, c] = fi[s, c]
        handf = hand[row].view(np.float64)
        for c in range(FF_COLS):
            handf[FI_COLS + c] = ff[s, c]
        fcnt[meta[M_NFLOWS] + fi[s, FI_FLOW] + meta[M_FLOW0]] += 1  # remote_out
        _release(S, s)
    elif watch[v]:
        _emit(S, O_WATCH, w, v, -1, seq, due, 0.0, s)
        _release(S, s)
    else:
        heap_push(hdue, hseq, hslot, meta, due, seq, s)
        meta[M_INFLIGHT] += 1


@njit(cache=True, nogil=True, inline="always")
def _refusal(row, rowf, n, n_pol):  # type: ignore[no-untyped-def]
    """Index into REFUSED of what is wrong with a received wire row, or -1."""
    if not (0 <= row[FI_V] < n):
        return 0
    if not (0 <= row[FI_SRC] < n and 0 <= row[FI_DST] < n):
        return 1
    if not (0 <= row[FI_KIND] <= 3):
        return 2
    if not (1 <= row[FI_SIZE] <= MAX_FRAME_BYTES):
        return 3
    if not (0 <= row[FI_HOPS] <= MAX_TTL and -1 <= row[FI_TTL] <= MAX_TTL):
        return 4
    if not (-1 <= row[FI_POLICY] < n_pol):
        return 5
    for c in range(FF_COLS):
        x = rowf[FI_COLS + c]
        if not (0.0 <= x < FINITE_WALL):  # also false for NaN
            return 6
    if not (-1 <= row[FI_U] < n):
        return 8
    if row[FI_U] < 0 or rowf[FI_COLS + FF_DUE] <= 0.0:
        return 8
    return -1


@njit(cache=True, nogil=True)
def run_packed(bound_due, bound_seq, now, ints, F, lay, req_i, req_f, recv, recv_pol):  # type: ignore[no-untyped-def]
    """Take the transmit requests (rows of ``req_i``/``req_f``) and the received wire rows
    ``recv`` (``recv_pol`` maps their policy column, shifted by one, to ours), then handle lane
    events before (bound_due, bound_seq) and due by ``now``. Returns (status, requests taken,
    rows taken); on anything but S_DONE the caller makes room and calls again with the rest."""
    meta = _iv(ints, lay, I_META)
    n = meta[M_N]
    fi = _iv(ints, lay, I_FI).reshape(-1, FI_COLS)
    ff = _fv(F, lay, F_FF).reshape(-1, FF_COLS)
    oi = _iv(ints, lay, I_OI).reshape(-1, OI_COLS)
    of = _fv(F, lay, F_OF).reshape(-1, OF_COLS)
    free = _iv(ints, lay, I_FREE)
    log = _iv(ints, lay, I_LOG).view(np.uint8)
    fmeta = _fv(F, lay, F_META)
    S = (meta, fi, ff, oi, of, free, log, fmeta)
    L = (_iv(ints, lay, I_LPTR), _iv(ints, lay, I_LNBR), _fv(F, lay, F_LDELAY),
         _iv(ints, lay, I_LKIND),
         _fv(F, lay, F_LCAP), _fv(F, lay, F_LXLOSS), _iv(ints, lay, I_LXFAULT),
         _iv(ints, lay, I_CUTK), _iv(ints, lay, I_CUTF))
    hdue, hseq, hslot = _fv(F, lay, F_HDUE), _iv(ints, lay, I_HSEQ), _iv(ints, lay, I_HSLOT)
    qlim = _iv(ints, lay, I_QLIM)
    tkey, tbusy, pool = _iv(ints, lay, I_TKEY), _fv(F, lay, F_TBUSY), _fv(F, lay, F_POOL)
    hand = _iv(ints, lay, I_HAND).reshape(-1, W_COLS)
    hcnt, fcnt = _iv(ints, lay, I_HCNT), _iv(ints, lay, I_FCNT)
    owner, watch = _iv(ints, lay, I_OWNER), _iv(ints, lay, I_WATCH)
    T = (tkey, _iv(ints, lay, I_TSLOT), tbusy, _iv(ints, lay, I_TOFF), _iv(ints, lay, I_TCAP),
         _iv(ints, lay, I_THEAD), _iv(ints, lay, I_TCNT), pool, owner, watch, _fv(F, lay, F_RATE),
         _fv(F, lay, F_LOSS), qlim, _iv(ints, lay, I_RNG).view(np.uint64), hand, hcnt, fcnt,
         hdue, hseq, hslot)
    down_local, down_all, cut_node = (_iv(ints, lay, I_DLOCAL), _iv(ints, lay, I_DALL),
                                      _iv(ints, lay, I_CUTN))
    dest_row = _iv(ints, lay, I_DROW)
    table = _iv(ints, lay, I_TABLE).reshape(meta[M_NP], meta[M_ND], n)
    late = _fv(F, lay, F_LATE)
    bad = _iv(ints, lay, I_BAD)
    lptr, lnbr = L[0], L[1]
    cut_key, cut_fault = L[7], L[8]
    speed = fmeta[FM_SPEED]
    scale_ms = speed * 1000.0
    out_cap = len(oi) - 4
    log_cap = len(log) - 4 * HOP_RECORD_B
    grow = 2 * qlim.max()
    nflows = meta[M_NFLOWS]
    flow0 = meta[M_FLOW0]
    scratch = np.zeros(1, dtype=np.float64)
    taken_req = 0
    taken_rows = 0

    for r in range(len(req_i)):
        if meta[M_OUT] >= out_cap:
            return S_OUT_FULL, taken_req, taken_rows
        if meta[M_HFULL]:
            return S_HAND_FULL, taken_req, taken_rows
        if meta[M_FREE] == 0:
            return S_NEED_SLOTS, taken_req, taken_rows
        if meta[M_NTX] >= len(tbusy) or 2 * meta[M_NTX] >= len(tkey):
            return S_NEED_TX, taken_req, taken_rows
        if meta[M_POOL] + grow > len(pool):
            return S_NEED_POOL, taken_req, taken_rows
        taken_req += 1
        meta[M_FREE] -= 1
        s = free[meta[M_FREE]]
        for c in range(FI_COLS):
            fi[s, c] = req_i[r, c]
        for c in range(FF_COLS):
            ff[s, c] = req_f[r, c]
        _transmit(S, L, T, s, fi[s, FI_U], fi[s, FI_V], req_f[r, FF_COLS], req_i[r, FI_COLS + 1],
                  req_i[r, FI_COLS] == REQ_RARE)

    n_pol = len(recv_pol) - 1
    for r in range(len(recv)):
        if meta[M_OUT] >= out_cap:
            return S_OUT_FULL, taken_req, taken_rows
        if meta[M_FREE] == 0:
            return S_NEED_SLOTS, taken_req, taken_rows
        taken_rows += 1
        row = recv[r]
        rowf = row.view(np.float64)
        why = _refusal(row, rowf, n, n_pol)
        if why < 0 and owner[row[FI_V]] != meta[M_WORKER]:
            why = 7
        if why >= 0:
            bad[why] += 1
            meta[M_BAD] += 1
            continue
        meta[M_FREE] -= 1
        s = free[meta[M_FREE]]
        for c in range(FI_COLS):
            fi[s, c] = row[c]
        for c in range(FF_COLS):
            ff[s, c] = rowf[FI_COLS + c]
        pol = recv_pol[row[FI_POLICY] + 1]
        flow = row[FI_FLOW] + flow0
        if pol < 0 or flow < 0 or flow >= nflows or watch[row[FI_V]]:
            # the list path (the policy column still indexes the sender's names)
            _emit(S, O_SLOW, 0, row[FI_V], -1, 0, ff[s, FF_DUE], 0.0, s)
            _release(S, s)
            continue
        fi[s, FI_POLICY] = pol
        fcnt[flow] += 1  # remote_in
        meta[M_SEQ] += 1
        heap_push(hdue, hseq, hslot, meta, ff[s, FF_DUE], meta[M_SEQ], s)
        meta[M_INFLIGHT] += 1

    while meta[M_HEAP] > 0:
        due = hdue[0]
        seq = hseq[0]
        if due > now or not _less(due, seq, bound_due, bound_seq):
            return S_DONE, taken_req, taken_rows
        if meta[M_OUT] >= out_cap or meta[M_LOG] >= log_cap or meta[M_NLATE] >= len(late):
            return S_OUT_FULL, taken_req, taken_rows
        if meta[M_HFULL]:
            return S_HAND_FULL, taken_req, taken_rows
        if meta[M_NTX] >= len(tbusy) or 2 * meta[M_NTX] >= len(tkey):
            return S_NEED_TX, taken_req, taken_rows
        if meta[M_POOL] + grow > len(pool):
            return S_NEED_POOL, taken_req, taken_rows
        s = hslot[0]
        heap_pop(hdue, hseq, hslot, meta)
        meta[M_INFLIGHT] -= 1
        u = fi[s, FI_U]
        v = fi[s, FI_V]
        if find_link(lptr, lnbr, u, v) < 0:  # gone while the frame was on it
            fault = find_cut(cut_key, cut_fault, min(u, v) * n + max(u, v))
            if fault < 0:
                fault = down_all[v]
            if fault < 0:
                fault = down_all[u]
            _emit(S, O_DROP, R_FAULT if fault >= 0 else R_LINK_LOST, u, fault, seq, due, 0.0, s)
            _release(S, s)
            continue
        fi[s, FI_HOPS] += 1
        late[meta[M_NLATE]] = (now - due) * scale_ms
        meta[M_NLATE] += 1
        if meta[M_LOGGING]:
            _hop_record(S, scratch, s, due)
        if down_local[v] >= 0:
            _emit(S, O_DROP, R_FAULT, v, down_local[v], seq, due, 0.0, s)
            _release(S, s)
            continue
        dst = fi[s, FI_DST]
        if dst == v:
            _emit(S, O_DELIVER, 0, v, -1, seq, due, 0.0, s)
            _release(S, s)
            continue
        fi[s, FI_TTL] -= 1
        if fi[s, FI_TTL] < 0:
            _emit(S, O_DROP, R_TTL, v, -1, seq, due, 0.0, s)
            _release(S, s)
            continue
        row_d = dest_row[dst]
        pol = fi[s, FI_POLICY]
        nh = -1
        if row_d >= 0 and pol >= 0:
            nh = table[pol, row_d, v]
        if nh < 0:
            fault = down_all[dst]
            if fault < 0:
                fault = cut_node[v]
            if fault < 0 and nh == FAULT_UNREACHABLE:
                fault = meta[M_BLAME]
            _emit(S, O_DROP, R_FAULT if fault >= 0 else R_NO_ROUTE, v, fault, seq, due, 0.0, s)
            _release(S, s)
            continue
        meta[M_SEQ] += 1
        _transmit(S, L, T, s, v, nh, due, meta[M_SEQ], False)
    return S_DONE, taken_req, taken_rows
