"""The compiled hop loop of the batched message plane (nodes/plane.py), in numba.

One call of :func:`run_lane` does what ``NodeRuntime.run_due`` does for frames of the common
shape (no source route, payload or ref): it first takes the requests Python queued (frames to
put on a transmitter, frames handed over from another worker), then pops every lane event due
before a bound (the Python heap's head, or ``now``) in (due, seq) order, and for each one does
arrive -> forward -> transmit -> schedule. What Python must see is written to the output
records (hops, deliveries, drops with reason codes, hand-overs, frames for the Python path);
Python turns them into stats, the event log and wire batches.

State layout (every array is owned by :class:`nodes.plane.Lane`):

* frame slots: ``fi[slot, FI_*]`` (int64) and ``ff[slot, FF_*]`` (float64), ``fpay[slot]`` the
  key of the frame's payload in nodes/plane.py's ``_payloads`` (-1: none; the kernel only
  carries it); free slots on the stack ``free[:meta[M_FREE]]``.
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

# ruff: noqa: F403, F405
from __future__ import annotations

import numpy as np
from numba import njit

from nodes.plane_layout import *  # the names the kernel and its callers index by
from nodes.plane_prims import (
    _emit,
    _fv,
    _hop_record,
    _iv,
    _less,
    _rand,
    _release,
    find_cut,
    find_link,
    heap_pop,
    heap_push,
    tx_find,
)


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
    elif w != meta[M_WORKER] and S[8][s] >= 0:  # its payload cannot ride in a row
        _emit(S, O_AWAY, w, v, -1, seq, due, 0.0, s)
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
    fpay = _iv(ints, lay, I_FPAY)
    S = (meta, fi, ff, oi, of, free, log, fmeta, fpay)
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
        fpay[s] = req_i[r, RQ_PAY]
        _transmit(S, L, T, s, fi[s, FI_U], fi[s, FI_V], req_f[r, FF_COLS], req_i[r, RQ_SEQ],
                  req_i[r, RQ_KIND] == REQ_RARE)

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
        fpay[s] = -1
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


@njit(cache=True, nogil=True)
def backlog_packed(ints, F, lay, key, at):  # type: ignore[no-untyped-def]
    """Frames still queued or serialising at ``at`` on transmitter ``key`` (u * n + v)."""
    tkey = _iv(ints, lay, I_TKEY)
    h = tx_find(tkey, key)
    if tkey[h] < 0:
        return 0
    t = _iv(ints, lay, I_TSLOT)[h]
    off, cap = _iv(ints, lay, I_TOFF)[t], _iv(ints, lay, I_TCAP)[t]
    head, cnt = _iv(ints, lay, I_THEAD)[t], _iv(ints, lay, I_TCNT)[t]
    pool = _fv(F, lay, F_POOL)
    waiting = 0
    for i in range(cnt):
        if pool[off + (head + i) % cap] > at:
            waiting += 1
    return waiting


@njit(cache=True, nogil=True)
def tx_rehash(tkey, tslot, keys, slots):  # type: ignore[no-untyped-def]
    """Put transmitters ``keys`` -> ``slots`` into an emptied hash."""
    for i in range(len(keys)):
        h = tx_find(tkey, keys[i])
        tkey[h] = keys[i]
        tslot[h] = slots[i]
