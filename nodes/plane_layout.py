"""Layout of the batched plane's compiled lane: columns, buffer fields, codes (constants only).

nodes/plane_kernel.py's module docstring describes the state these index.
"""

from __future__ import annotations

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
 I_DROW, I_TABLE, I_QLIM, I_OI, I_HAND, I_HCNT, I_FCNT, I_LOG, I_RNG, I_BAD, I_FPAY) = range(33)
N_INT = 33
# float buffer fields, in order
(F_META, F_FF, F_HDUE, F_LDELAY, F_LCAP, F_LXLOSS, F_TBUSY, F_POOL, F_OF, F_RATE, F_LOSS,
 F_LATE) = range(12)
N_FLOAT = 12
FM_SPEED = 0
# request kinds (rows of the request arrays: the FI_* columns, then kind, seq, payload key)
REQ_COMMON, REQ_RARE = 0, 1
RQ_KIND, RQ_SEQ, RQ_PAY = FI_COLS, FI_COLS + 1, FI_COLS + 2
RQ_COLS = FI_COLS + 3
# output record kinds (O_AWAY: a frame with a payload leaving for another worker, which the
# rows of a columnar batch cannot carry: Python hands it over as a list frame)
O_DELIVER, O_DROP, O_RARE, O_WATCH, O_SLOW, O_AWAY = range(6)
# output int columns: kind, aux (reason / worker), node, fault, seq, log offset, payload key
# (-1: none; the bytes stay in Python, nodes/plane.py's ``_payloads``), FI_* columns
OI_KIND, OI_AUX, OI_NODE, OI_FAULT, OI_SEQ, OI_LOG, OI_PAY = range(7)
OI_FRAME = 7
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
