"""The tick snapshot the controller publishes (retained) and every worker applies.

One msgpack map per tick, holding the *complete* link state and routing tables in force from
scenario time ``t_s`` on, so that a worker that joins late or restarts catches up from the
retained copy alone. Arrays travel as raw little-endian bytes (``np.frombuffer`` on receipt)::

    {"v": 1, "t_s": float, "seq": int, "n": N,
     "a": int32[L], "b": int32[L], "kind": int8[L], "delay_s": float64[L],
     "destinations": int32[D], "next_hop": {"": int32[D*N], "<policy>": int32[D*N], ...}}

Fault effects ride along: ``"down": [[node, fault_id], ...]``, ``"cut": [[a, b, fault_id], ...]``
(links that geometry says are live but a fault removed) and ``"degraded": [[a, b, extra_loss,
extra_delay_s, rate_cap_bps (0 = none), fault_id], ...]`` (the extra delay is already in
``delay_s``).

``next_hop[p][d, u]`` is the next node from ``u`` toward destination ``destinations[d]`` under
policy ``p`` ("" = unrestricted), -1 when unreachable, -2 when unreachable only because of the
faults in force (frames are then dropped as ``fault``, charged to the fault named by ``blame``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import msgpack
import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.faults import Overlay
from orbitmesh.core.links import LinkState
from orbitmesh.core.routing import RouteTrees

STATE_VERSION = 1
FAULT_UNREACHABLE = -2
"""A next hop of -2: unreachable only because of the faults in force (``blame`` says which)."""


def encode_state(seq: int, state: LinkState, routes: dict[str | None, RouteTrees],
                 overlay: Overlay | None = None,
                 blocked: dict[str | None, NDArray[np.bool_]] | None = None,
                 blame: str | None = None) -> bytes:
    """Pack one tick's links, routes and fault effects (``blocked`` entries become -2)."""
    tables = {}
    for key, trees in routes.items():
        table = np.ascontiguousarray(trees.next_hop, dtype="<i4")
        mask = (blocked or {}).get(key)
        if mask is not None and mask.any():
            table = table.copy()
            table[mask] = FAULT_UNREACHABLE
        tables["" if key is None else key] = table.tobytes()
    dest = next(iter(routes.values())).destinations if routes else np.empty(0)
    return msgpack.packb({
        "v": STATE_VERSION, "t_s": state.t_s, "seq": seq, "n": state.n_nodes,
        "a": state.a.astype("<i4").tobytes(), "b": state.b.astype("<i4").tobytes(),
        "kind": state.kind.astype("i1").tobytes(), "delay_s": state.delay_s.astype("<f8").tobytes(),
        "destinations": np.asarray(dest).astype("<i4").tobytes(),
        "next_hop": tables, "blame": blame,
        "down": [] if overlay is None else [[n, f] for n, f in overlay.down_nodes.items()],
        "cut": [] if overlay is None else [list(c) for c in overlay.cut],
        "degraded": [] if overlay is None else [list(d) for d in overlay.degraded],
    }, use_bin_type=True)


@dataclass(frozen=True, slots=True)
class TickSnapshot:
    """One decoded state snapshot: links, routes and fault effects in force from ``t_s`` on."""

    t_s: float
    seq: int
    n: int
    a: NDArray[np.int64]
    b: NDArray[np.int64]
    kind: NDArray[np.int8]
    delay_s: NDArray[np.float64]
    destinations: NDArray[np.int64]
    next_hop: Mapping[str | None, NDArray[np.int32]]
    """``next_hop[policy][row, u]``; rows follow ``destinations``."""
    blame: str | None
    down: Mapping[int, str]
    cut: Mapping[tuple[int, int], str]
    degraded: Mapping[tuple[int, int], tuple[float, float, float, str]]


def decode_state(payload: bytes, n_nodes: int | None = None) -> TickSnapshot:
    """Unpack and check a state snapshot; raises ValueError when malformed.

    With ``n_nodes`` (the receiver's topology) every node index must be below it, so that a
    forged or stale snapshot can never make a worker index out of range.
    """
    try:
        raw = msgpack.unpackb(payload, raw=False)
        if not isinstance(raw, dict):
            raise ValueError("not a map")
        if raw["v"] != STATE_VERSION:
            raise ValueError(f"state version {raw['v']}, this orbitmesh reads {STATE_VERSION}")
        n = int(raw["n"])
        if n_nodes is not None and n != n_nodes:
            raise ValueError(f"snapshot of {n} nodes, this scenario has {n_nodes}")
        t_s = float(raw["t_s"])
        if not math.isfinite(t_s) or t_s < 0.0:
            raise ValueError(f"t_s {t_s!r} is not a scenario time")
        dest = np.frombuffer(raw["destinations"], dtype="<i4").astype(np.int64)
        a = np.frombuffer(raw["a"], dtype="<i4").astype(np.int64)
        b = np.frombuffer(raw["b"], dtype="<i4").astype(np.int64)
        kind = np.frombuffer(raw["kind"], dtype="i1")
        delay_s = np.frombuffer(raw["delay_s"], dtype="<f8")
        if not len(a) == len(b) == len(kind) == len(delay_s):
            raise ValueError("link arrays differ in length")
        for name, idx in (("a", a), ("b", b), ("destinations", dest)):
            if len(idx) and (idx.min() < 0 or idx.max() >= n):
                raise ValueError(f"{name} holds node indices outside 0..{n - 1}")
        if len(kind) and (kind.min() < 0 or kind.max() > 2):
            raise ValueError("link kinds outside 0..2")
        if len(delay_s) and not (np.isfinite(delay_s).all() and (delay_s >= 0).all()):
            raise ValueError("link delays must be finite and >= 0")
        next_hop = {}
        for k, v in raw["next_hop"].items():
            table = np.frombuffer(v, dtype="<i4").reshape(len(dest), n)
            if table.size and (table.min() < FAULT_UNREACHABLE or table.max() >= n):
                raise ValueError(f"next-hop table {k!r} holds entries outside -2..{n - 1}")
            next_hop[k or None] = table
        down = {int(x): str(f) for x, f in raw.get("down", [])}
        cut = {(int(x), int(y)): str(f) for x, y, f in raw.get("cut", [])}
        degraded = {(int(d[0]), int(d[1])): (float(d[2]), float(d[3]), float(d[4]), str(d[5]))
                    for d in raw.get("degraded", [])}
        for x in [*down, *(i for pair in (*cut, *degraded) for i in pair)]:
            if not 0 <= x < n:
                raise ValueError(f"fault effect on node {x}, outside 0..{n - 1}")
        blame = raw.get("blame")
        if blame is not None and not isinstance(blame, str):
            raise ValueError("blame must be a fault id")
        return TickSnapshot(t_s, int(raw["seq"]), n, a, b, kind, delay_s, dest, next_hop, blame,
                            down, cut, degraded)
    except (KeyError, TypeError, IndexError, msgpack.UnpackException, ValueError) as exc:
        raise ValueError(f"malformed state snapshot: {exc}") from exc
