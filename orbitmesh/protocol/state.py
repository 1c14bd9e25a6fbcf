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

from typing import Any

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


def decode_state(payload: bytes) -> dict[str, Any]:
    """Unpack a state snapshot into numpy arrays; raises ValueError when malformed."""
    try:
        raw = msgpack.unpackb(payload, raw=False)
        if raw["v"] != STATE_VERSION:
            raise ValueError(f"state version {raw['v']}, this orbitmesh reads {STATE_VERSION}")
        n = int(raw["n"])
        dest = np.frombuffer(raw["destinations"], dtype="<i4").astype(np.int64)
        return {
            "t_s": float(raw["t_s"]), "seq": int(raw["seq"]), "n": n,
            "a": np.frombuffer(raw["a"], dtype="<i4").astype(np.int64),
            "b": np.frombuffer(raw["b"], dtype="<i4").astype(np.int64),
            "kind": np.frombuffer(raw["kind"], dtype="i1"),
            "delay_s": np.frombuffer(raw["delay_s"], dtype="<f8"),
            "destinations": dest,
            "next_hop": {(k or None): np.frombuffer(v, dtype="<i4").reshape(len(dest), n)
                         for k, v in raw["next_hop"].items()},
            "blame": raw.get("blame"),
            "down": {int(n): str(f) for n, f in raw.get("down", [])},
            "cut": {(int(a), int(b)): str(f) for a, b, f in raw.get("cut", [])},
            "degraded": {(int(d[0]), int(d[1])): (float(d[2]), float(d[3]), float(d[4]), str(d[5]))
                         for d in raw.get("degraded", [])},
        }
    except (KeyError, TypeError, msgpack.UnpackException, ValueError) as exc:
        raise ValueError(f"malformed state snapshot: {exc}") from exc
