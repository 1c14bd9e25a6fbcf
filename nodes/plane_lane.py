"""The arrays of the batched message plane's compiled lane and the calls that keep them.

:class:`Lane` owns every array nodes/plane_kernel.py works on (its module docstring has the
layout). They live in two buffers, one int64 and one float64, with a table of where each array
starts (``lay``): a numba call pays for each array argument it unboxes (~0.3 µs), and the lane
is called once per loop turn and per frame Python originates, so three arrays beat forty.
The named attributes are views into the buffers; assigning a new array to one marks the
buffers for repacking before the next call (link states, growth). It knows nothing of stats,
the event log or the wire: nodes/plane.py reads what a call returns.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nodes import plane_kernel as K

OUT_ROWS = 4096
"""Output records (deliveries, drops, ...) per kernel call before it returns to Python."""
LATE_ROWS = 16384
"""Hop lateness samples (and hop records) per kernel call before it returns to Python."""
FORGET_SLACK = 4096
"""Transmitters beyond twice the live links' count before the idle ones are forgotten."""
NO_KEY = np.iinfo(np.int64).max
"""Fills the cut-link keys past the last (above every min * n + max)."""
HAND_ROWS = 4096
"""Rows handed over to one worker before the lane returns them to Python (under the
receivers' MAX_BATCH_FRAMES)."""

INT_FIELDS = ("meta", "fi", "hseq", "hslot", "free", "lptr", "lnbr", "lkind", "lxfault",
              "cut_key", "cut_fault", "tkey", "tslot", "toff", "tcap", "thead", "tcnt", "owner",
              "watch", "down_local", "down_all", "cut_node", "dest_row", "table", "qlim", "oi",
              "hand", "hcnt", "fcnt", "log", "rng", "bad", "fpay")
FLOAT_FIELDS = ("fmeta", "ff", "hdue", "ldelay_s", "lcap_bps", "lxloss", "tbusy", "pool", "of",
                "rate_bps", "loss", "late")
_PACKED = frozenset(INT_FIELDS + FLOAT_FIELDS)
assert len(INT_FIELDS) == K.N_INT and len(FLOAT_FIELDS) == K.N_FLOAT


class Lane:
    """State of the compiled lane of one worker."""

    meta: np.ndarray
    fi: np.ndarray
    hseq: np.ndarray
    hslot: np.ndarray
    free: np.ndarray
    lptr: np.ndarray
    lnbr: np.ndarray
    lkind: np.ndarray
    lxfault: np.ndarray
    cut_key: np.ndarray
    cut_fault: np.ndarray
    tkey: np.ndarray
    tslot: np.ndarray
    toff: np.ndarray
    tcap: np.ndarray
    thead: np.ndarray
    tcnt: np.ndarray
    owner: np.ndarray
    watch: np.ndarray
    down_local: np.ndarray
    down_all: np.ndarray
    cut_node: np.ndarray
    dest_row: np.ndarray
    table: np.ndarray
    qlim: np.ndarray
    oi: np.ndarray
    hand: np.ndarray
    hcnt: np.ndarray
    fcnt: np.ndarray
    log: np.ndarray
    rng: np.ndarray
    bad: np.ndarray
    fpay: np.ndarray
    fmeta: np.ndarray
    ff: np.ndarray
    hdue: np.ndarray
    ldelay_s: np.ndarray
    lcap_bps: np.ndarray
    lxloss: np.ndarray
    tbusy: np.ndarray
    pool: np.ndarray
    of: np.ndarray
    rate_bps: np.ndarray
    loss: np.ndarray
    late: np.ndarray

    def __init__(self, n_nodes: int, worker: int, owner: np.ndarray, *, workers: int,
                 flows: int, speed: float, seed: int, rate_bps: tuple[float, ...],
                 loss: tuple[float, ...], queue_frames: tuple[int, ...]) -> None:
        self.dirty = True
        self.n = n_nodes
        self.workers = workers
        meta = np.zeros(K.M_LEN, dtype=np.int64)
        meta[K.M_WORKER], meta[K.M_N], meta[K.M_WORKERS] = worker, n_nodes, workers
        meta[K.M_HCAP], meta[K.M_FLOW0] = HAND_ROWS, 4  # built-in flows are -4..-1
        meta[K.M_NFLOWS], meta[K.M_BLAME] = flows + 4, -1
        meta[K.M_NP], meta[K.M_ND] = 1, 1
        self.meta = meta
        self.fmeta = np.array([float(speed)])
        self.owner = np.asarray(owner, dtype=np.int64).copy()
        self.rate_bps = np.asarray(rate_bps, dtype=np.float64)
        self.loss = np.asarray(loss, dtype=np.float64)
        self.qlim = np.asarray(queue_frames, dtype=np.int64)
        self.rng = np.array([(seed * 1_000_003 + worker) & (2**63 - 1)], dtype=np.int64)
        self.fi = np.zeros(0, dtype=np.int64)
        self._slots(1024)
        self._tx(256)
        self.pool = np.zeros(max(1 << 16, 4 * int(self.qlim.max())), dtype=np.float64)
        self.oi = np.zeros(OUT_ROWS * K.OI_COLS, dtype=np.int64)
        self.of = np.zeros(OUT_ROWS * K.OF_COLS, dtype=np.float64)
        self.late = np.zeros(LATE_ROWS, dtype=np.float64)
        self.log = np.zeros(LATE_ROWS * K.HOP_RECORD_B // 8 + 64, dtype=np.int64)
        self.hand = np.zeros(workers * HAND_ROWS * K.W_COLS, dtype=np.int64)
        self.hcnt = np.zeros(workers, dtype=np.int64)
        self.fcnt = np.zeros(2 * (flows + 4), dtype=np.int64)
        self.bad = np.zeros(len(K.REFUSED), dtype=np.int64)
        self.watch = np.zeros(n_nodes, dtype=np.int64)
        none = np.full(n_nodes, -1, dtype=np.int64)
        self.down_local, self.down_all, self.cut_node = none.copy(), none.copy(), none.copy()
        self.dest_row = none.copy()
        self.table = np.full(n_nodes, -1, dtype=np.int64)
        self.cut_key = np.full(16, NO_KEY, dtype=np.int64)
        self.cut_fault = np.full(16, -1, dtype=np.int64)
        self.set_links(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64),
                       np.zeros(0))
        self._no_req_i = np.zeros((0, K.RQ_COLS), dtype=np.int64)
        self._no_req_f = np.zeros((0, K.FF_COLS + 1), dtype=np.float64)
        self._no_rows = np.zeros((0, K.W_COLS), dtype=np.int64)
        self._no_pol = np.full(1, -1, dtype=np.int64)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _PACKED:
            object.__setattr__(self, "dirty", True)
        object.__setattr__(self, name, value)

    def pack(self) -> None:
        """Copy every array into the two buffers and point the attributes at their views."""
        lay = np.zeros(2 * (K.N_INT + K.N_FLOAT), dtype=np.int64)
        buffers = []
        for base, names, dtype in ((0, INT_FIELDS, np.int64), (K.N_INT, FLOAT_FIELDS,
                                                               np.float64)):
            arrays = [getattr(self, name) for name in names]
            at = 0
            for k, a in enumerate(arrays):
                lay[2 * (base + k)], lay[2 * (base + k) + 1] = at, a.size
                at += a.size
            buf = np.zeros(max(at, 1), dtype=dtype)
            for k, (name, a) in enumerate(zip(names, arrays, strict=True)):
                o = lay[2 * (base + k)]
                view = buf[o:o + a.size].reshape(a.shape)
                view[...] = a
                object.__setattr__(self, name, view)
            buffers.append(buf)
        self.I, self.F, self.lay = buffers[0], buffers[1], lay
        object.__setattr__(self, "dirty", False)

    # --- room ----------------------------------------------------------------------------------

    def _slots(self, count: int) -> None:
        """Frame slots and heap arrays for ``count`` frames (keeping what is there)."""
        have = len(self.fi)
        fi = np.zeros((count, K.FI_COLS), dtype=np.int64)
        ff = np.zeros((count, K.FF_COLS), dtype=np.float64)
        fpay = np.full(count, -1, dtype=np.int64)
        hdue = np.zeros(count, dtype=np.float64)
        hseq = np.zeros(count, dtype=np.int64)
        hslot = np.zeros(count, dtype=np.int64)
        free = np.zeros(count, dtype=np.int64)
        added = np.arange(count - 1, have - 1, -1)
        free[:len(added)] = added
        if have:
            fi[:have], ff[:have], fpay[:have] = self.fi, self.ff, self.fpay
            size = self.meta[K.M_HEAP]
            hdue[:size], hseq[:size], hslot[:size] = (self.hdue[:size], self.hseq[:size],
                                                      self.hslot[:size])
            nfree = int(self.meta[K.M_FREE])
            free[len(added):len(added) + nfree] = self.free[:nfree]
        else:
            nfree = 0
        self.meta[K.M_FREE] = nfree + len(added)
        self.fi, self.ff, self.fpay, self.hdue, self.hseq, self.hslot, self.free = (
            fi, ff, fpay, hdue, hseq, hslot, free)

    def _tx(self, count: int) -> None:
        """Room for ``count`` transmitters (the hash is rebuilt at twice that, a power of 2)."""
        fresh = "tbusy" not in self.__dict__
        have = 0 if fresh else int(self.meta[K.M_NTX])
        size = 1 << max(4, int(2 * count - 1).bit_length())
        keys_old = None if fresh else self.tkey[self.tkey >= 0]
        slots_old = None if fresh else self.tslot[self.tkey >= 0]
        for name, dtype in (("tbusy", np.float64), ("toff", np.int64), ("tcap", np.int64),
                            ("thead", np.int64), ("tcnt", np.int64)):
            a = np.zeros(count, dtype=dtype)
            if not fresh:
                a[:have] = getattr(self, name)[:have]
            setattr(self, name, a)
        tkey = np.full(size, -1, dtype=np.int64)
        tslot = np.zeros(size, dtype=np.int64)
        if keys_old is not None and slots_old is not None:
            K.tx_rehash(tkey, tslot, keys_old, slots_old)
        self.tkey, self.tslot = tkey, tslot

    def forget_idle(self, now: float, live_links: int) -> int:
        """Drop every transmitter idle at ``now`` once they outnumber the live links' twice
        over (GSLs come and go: kept, their rings would grow with the run); returns how many.

        An idle transmitter is as good as a new one for anything from ``now`` on (its ring
        holds only finishing times already past), so this changes no outcome; NodeRuntime
        forgets those of gone links at each state."""
        ntx = int(self.meta[K.M_NTX])
        if ntx <= 2 * live_links + FORGET_SLACK:
            return 0
        used = self.tkey >= 0
        keys, slots = self.tkey[used], self.tslot[used]
        keep = self.tbusy[slots] > now
        keys, slots = keys[keep], slots[keep]
        k = len(keys)
        for name in ("tbusy", "toff", "tcap", "thead", "tcnt"):
            a = getattr(self, name)
            a[:k] = a[slots]
        self.meta[K.M_NTX] = k
        self.tkey[:] = -1
        K.tx_rehash(self.tkey, self.tslot, keys, np.arange(k, dtype=np.int64))
        self._pool(shrink=True)
        return ntx - k

    def _pool(self, shrink: bool = False) -> None:
        """Compact the rings into a pool with room to grow (twice the live rings, at least;
        ``shrink``: no larger than that)."""
        ntx = int(self.meta[K.M_NTX])
        caps = self.tcap[:ntx]
        need = int(caps.sum()) + 4 * int(self.qlim.max())
        size = max(2 * need, 1 << 16) if shrink else max(2 * need, len(self.pool))
        pool = np.zeros(size, dtype=np.float64)
        at = 0
        for t in range(ntx):  # rare: only when the pool is full
            cap = int(caps[t])
            pool[at:at + cap] = self.pool[self.toff[t]:self.toff[t] + cap]
            self.toff[t] = at
            at += cap
        self.pool = pool
        self.meta[K.M_POOL] = at

    # --- link state ----------------------------------------------------------------------------

    def set_links(self, a: np.ndarray, b: np.ndarray, kind: np.ndarray, delay_s: np.ndarray,
                  degraded: dict[tuple[int, int], tuple[float, float, float, int]] | None = None
                  ) -> None:
        """Live links (both directions) as CSR arrays; ``degraded`` pair -> (extra_loss,
        extra_delay_s, rate cap bps, fault index).

        Written in place while they fit (the arrays keep room for twice the links last
        allocated for; ``lptr`` bounds what is read), so a tick repacks nothing: a repack
        copies every frame slot and ring too."""
        src = np.concatenate([a, b]).astype(np.int64)
        dst = np.concatenate([b, a]).astype(np.int64)
        order = np.argsort(src * self.n + dst, kind="stable")
        src = src[order]
        m = len(src)
        if "lnbr" not in self.__dict__ or m > len(self.lnbr):
            room = max(64, 2 * m)
            self.lnbr, self.lkind = np.zeros(room, np.int64), np.zeros(room, np.int64)
            self.lxfault = np.full(room, -1, dtype=np.int64)
            self.ldelay_s, self.lcap_bps, self.lxloss = np.zeros(room), np.zeros(room), \
                np.zeros(room)
            self.lptr = np.zeros(self.n + 1, dtype=np.int64)
        lnbr, lptr = self.lnbr, self.lptr
        lnbr[:m] = dst[order]
        lptr[:] = np.searchsorted(src, np.arange(self.n + 1))
        self.ldelay_s[:m] = np.concatenate([delay_s, delay_s])[order]
        self.lkind[:m] = np.concatenate([kind, kind])[order]
        lcap, lxloss, lxfault = self.lcap_bps, self.lxloss, self.lxfault
        lcap[:m], lxloss[:m], lxfault[:m] = 0.0, 0.0, -1
        for (x, y), (extra_loss, _delay, cap, fault) in (degraded or {}).items():
            for p, q in ((x, y), (y, x)):
                i = K.find_link(lptr, lnbr, p, q)
                if i >= 0:
                    lcap[i], lxloss[i], lxfault[i] = cap, extra_loss, fault

    def set_cut(self, pairs: list[tuple[int, int]], faults: list[int]) -> None:
        """Links removed by faults: undirected keys, sorted, with their fault index (in place
        while they fit: the room past them holds a key no link has)."""
        keys = np.array([min(x, y) * self.n + max(x, y) for x, y in pairs], dtype=np.int64)
        order = np.argsort(keys)
        k = len(keys)
        if k > len(self.cut_key) - 1:
            self.cut_key = np.full(max(16, 2 * k + 1), NO_KEY, dtype=np.int64)
            self.cut_fault = np.full(len(self.cut_key), -1, dtype=np.int64)
        self.cut_key[:] = NO_KEY
        self.cut_key[:k] = keys[order]
        self.cut_fault[:k] = np.asarray(faults, dtype=np.int64)[order]

    def set_tables(self, policies: int, rows: int, tables: list[tuple[int, np.ndarray]]
                   ) -> None:
        """Next-hop tables ``[policy, row, node]`` (policy index, ``[row, node]`` table); the
        rest -1. In place when the shape is the last one's."""
        shape = (max(1, policies), max(1, rows), self.n)
        if self.table.size != shape[0] * shape[1] * shape[2]:
            self.table = np.zeros(shape[0] * shape[1] * shape[2], dtype=np.int64)
        self.meta[K.M_NP], self.meta[K.M_ND] = shape[0], shape[1]
        view = self.table.reshape(shape)
        view[...] = -1
        for index, tab in tables:
            view[index, :tab.shape[0]] = tab

    # --- running -------------------------------------------------------------------------------

    def run(self, bound_due: float, bound_seq: int, now: float,
            req_i: np.ndarray | None = None, req_f: np.ndarray | None = None,
            rows: np.ndarray | None = None, rows_pol: np.ndarray | None = None,
            sink: Any = None) -> None:
        """Kernel passes until done (see :func:`nodes.plane_kernel.run_packed`), growing room
        as asked; ``sink(lane)`` reads the outputs after every pass."""
        if req_i is None or req_f is None:
            req_i, req_f = self._no_req_i, self._no_req_f
        if rows is None or rows_pol is None:
            rows, rows_pol = self._no_rows, self._no_pol
        while True:
            if self.dirty:
                self.pack()
            status, took_req, took_rows = K.run_packed(
                bound_due, bound_seq, now, self.I, self.F, self.lay, req_i, req_f, rows,
                rows_pol)
            sink(self)
            if status == K.S_DONE:
                return
            req_i, req_f, rows = req_i[took_req:], req_f[took_req:], rows[took_rows:]
            if status == K.S_NEED_SLOTS:
                self._slots(2 * len(self.fi))
            elif status == K.S_NEED_TX:
                self._tx(2 * len(self.tbusy))
            elif status == K.S_NEED_POOL:
                self._pool()

    def in_flight_slots(self) -> np.ndarray:
        """Slots of the frames on the lane heap (in heap order)."""
        return self.hslot[:int(self.meta[K.M_HEAP])].copy()

    def remove(self, keep: np.ndarray) -> None:
        """Keep only the heap entries where ``keep`` (a mask over the heap) is true."""
        size = int(self.meta[K.M_HEAP])
        due, seq, slot = self.hdue[:size], self.hseq[:size], self.hslot[:size]
        gone = slot[~keep]
        due, seq, slot = due[keep], seq[keep], slot[keep]
        order = np.lexsort((seq, due))  # a sorted array is a valid heap
        k = len(order)
        self.hdue[:k], self.hseq[:k], self.hslot[:k] = due[order], seq[order], slot[order]
        self.meta[K.M_HEAP] = k
        nfree = int(self.meta[K.M_FREE])
        self.free[nfree:nfree + len(gone)] = gone
        self.meta[K.M_FREE] = nfree + len(gone)
        self.meta[K.M_INFLIGHT] -= len(gone)

    def reset_transmitters(self, nodes: np.ndarray) -> None:
        """Transmitters leaving ``nodes`` start afresh (a failed node's queues are lost)."""
        used = self.tkey >= 0
        hit = np.isin(self.tkey[used] // self.n, nodes)
        for t in self.tslot[used][hit].tolist():
            self.tbusy[t], self.tcnt[t], self.thead[t] = 0.0, 0, 0

    def next_due(self) -> float | None:
        """Due time of the lane's earliest frame."""
        return float(self.hdue[0]) if self.meta[K.M_HEAP] else None
