"""The faults a runtime knows of, and the drops they are charged with.

A link state carries the faults in force: failed nodes (the run's, and which of them this worker
hosts), links cut by a fault, degraded links, and the fault to blame for routes that only the
faults took away. :class:`FaultBooks` (a mixin of :class:`nodes.runtime.NodeRuntime`) keeps them
and charges each drop they cause to its fault id; a node that fails loses its queues and the
frames it is transmitting.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from nodes.link_slots import Transmitter
from nodes.stats import Stats
from orbitmesh.core.destinations import UNROUTED_DESTINATION
from orbitmesh.core.topology import Topology
from orbitmesh.protocol.state import FAULT_UNREACHABLE
from orbitmesh.protocol.wire import F_DST, F_POLICY, F_ROUTE

ARRIVE, CALL = 0, 1
"""Codes of the runtime's heap items: a frame arriving over a link, or a callback."""


class FaultBooks:
    """Mixin: fault state per link state, node failures, and drops charged to faults."""

    stats: Stats
    local: set[int]
    heap: list[tuple[float, int, int, Any, Any]]
    tx: dict[tuple[int, int], Transmitter]
    on_node_down: Callable[[int, str, float], None] | None
    next_hop: dict[str | None, Any]
    dest_row: dict[int, int]
    state_t_s: float
    topology: Topology

    def _init_faults(self) -> None:
        self.down_nodes: dict[int, str] = {}  # failed node hosted here -> fault id
        self.cut: dict[tuple[int, int], str] = {}  # link removed by a fault -> fault id
        self.degraded: dict[tuple[int, int], tuple[float, float, float, str]] = {}
        self.down_all: dict[int, str] = {}  # every failed node of the run -> fault id
        self.cut_at_node: dict[int, str] = {}  # node with a fault-cut link -> fault id
        self.blame: str | None = None

    def _set_faults(self, down: dict[int, str] | None,
                    cut: dict[tuple[int, int], str] | None,
                    degraded: dict[tuple[int, int], tuple[float, float, float, str]] | None,
                    blame: str | None, at_wall: float) -> None:
        """The faults of a state taking effect at ``at_wall``; newly failed nodes fail then."""
        self.cut = cut or {}
        self.degraded = degraded or {}
        self.blame = blame
        down = down or {}
        newly_down = {n: f for n, f in down.items() if n not in self.down_all}
        self.down_all = down
        self.cut_at_node = {}
        for (x, y), fault in self.cut.items():
            self.cut_at_node.setdefault(x, fault)
            self.cut_at_node.setdefault(y, fault)
        self.down_nodes = {n: f for n, f in down.items() if n in self.local}
        if newly_down:
            self._fail_nodes(newly_down, at_wall)

    def _fail_nodes(self, failed: dict[int, str], at_wall: float) -> None:
        """Failed nodes lose their queues and the frames they are transmitting.

        Frames sent by a failed node may be in flight on this worker's heap even when the node
        lives on another worker (they are handed over ahead of their arrival), so every newly
        failed node of the run is looked for, not only the local ones.
        """
        kept = []
        for item in self.heap:
            if item[2] == ARRIVE and item[3][0] in failed:
                self.stats.in_flight -= 1
                self.stats.drop(item[4], "fault", item[3][0], failed[item[3][0]])
            else:
                kept.append(item)
        if len(kept) != len(self.heap):
            # In place: run_due may be iterating over this very list.
            self.heap[:] = kept
            heapq.heapify(self.heap)
        for (u, v) in [k for k in self.tx if k[0] in failed]:
            del self.tx[(u, v)]
        if self.on_node_down is not None:
            for node, fault_id in failed.items():
                if node in self.local:
                    self.on_node_down(node, fault_id, at_wall)

    def suppressed(self, flow: int, src: int) -> bool:
        """True (and counted) when ``src`` cannot offer a frame of ``flow`` because it is down."""
        fault = self.down_nodes.get(src)
        if fault is None:
            return False
        self.stats.suppress(flow, src, fault)
        return True

    def unrouted(self, frame: list[Any]) -> bool:
        """True when the state in force has no table for ``frame`` at all: a ground destination
        (or a policy) the controller's destination set left out (orbitmesh/core/destinations.py),
        which is the set's fault, not the network's."""
        if self.state_t_s < 0 or frame[F_ROUTE]:
            return False
        return ((frame[F_DST] >= self.topology.n_satellites and frame[F_DST] not in self.dest_row)
                or frame[F_POLICY] not in self.next_hop)

    def drop_no_route(self, u: int, frame: list[Any], next_hop: int = -1) -> None:
        """Drop a frame that has no route, blaming the fault that took the route away if any."""
        if self.unrouted(frame):
            self.stats.drop(frame, UNROUTED_DESTINATION, u)
            return
        fault = self.down_all.get(frame[F_DST]) or self.cut_at_node.get(u)
        if fault is None and next_hop == FAULT_UNREACHABLE:
            fault = self.blame or "fault"
        if fault is not None:
            self.stats.drop(frame, "fault", u, fault)
        else:
            self.stats.drop(frame, "no_route", u)
