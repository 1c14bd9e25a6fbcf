"""What a watcher knows about a live run, fed by the run's own MQTT topics.

The live map and /metrics both read one :class:`RunView`. It takes messages (``clock``, ``state``,
``faults``, ``links``, ``worker/+/status``) exactly as a worker or ``orbitmesh faults`` gets them,
and computes satellite positions from the run's scenario file with the core geometry at the
snapshot's scenario time: the same sources the run uses, no second source of truth.

Arrays in a frame: ``sat_lat_deg``/``sat_lon_deg`` ``(S,)`` in node order; ``links`` a flat
``[a0, b0, kind0, a1, ...]`` list of global node indices and link classes (0 ISL, 1 GSL,
2 terrestrial).
"""

from __future__ import annotations

import json
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.geometry import Propagator, julian_date
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import LINK_CLASSES, Topology, build_topology
from orbitmesh.protocol.clock import RunClock
from orbitmesh.protocol.messages import (
    LATENCY_BOUNDS_MS,
    ClockMessage,
    FaultListing,
    LinksNotice,
    MessageError,
    WorkerStatus,
)
from orbitmesh.protocol.state import TickSnapshot, decode_state
from orbitmesh.protocol.transport import Message
from orbitmesh.protocol.wire import FLOW_ACK, FLOW_TELECOMMAND, FLOW_TELEMETRY, Topics

HISTORY = 120
"""Sparkline points kept per flow (one per tick)."""
WINDOW_TICKS = 5
"""Ticks over which a sparkline point's delivery ratio and latency are taken."""
BUILTIN_FLOWS = {FLOW_TELEMETRY: "telemetry", FLOW_TELECOMMAND: "telecommand", FLOW_ACK: "ack"}


@dataclass
class FlowTotals:
    """A flow's counters summed over the workers' latest heartbeats."""

    offered: int = 0
    delivered: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    latency_sum_ms: float = 0.0
    latency_le: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BOUNDS_MS))


def lat_lon_deg(positions_ecef_km: NDArray[np.float64]) -> tuple[NDArray[np.float64],
                                                                NDArray[np.float64]]:
    """Geocentric latitude and longitude of Earth-fixed points ``(S, 3)`` (map resolution)."""
    x, y, z = positions_ecef_km[:, 0], positions_ecef_km[:, 1], positions_ecef_km[:, 2]
    return np.degrees(np.arctan2(z, np.hypot(x, y))), np.degrees(np.arctan2(y, x))


class Positions:
    """Satellite map positions at scenario times, from the scenario's own SGP4 elements."""

    def __init__(self, topology: Topology) -> None:
        self.topology = topology
        self._prop = Propagator(topology.satrecs) if topology.satrecs else None

    def at(self, t_s: float) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """``(lat_deg, lon_deg)`` of every satellite at scenario time ``t_s``."""
        if self._prop is None:
            return np.empty(0), np.empty(0)
        jd, fr = julian_date(self.topology.scenario.epoch + timedelta(seconds=t_s))
        return lat_lon_deg(self._prop.ecef_at(jd, fr))


def flow_path(snapshot: TickSnapshot, src: int, dst: int, policy: str | None) -> list[int]:
    """Nodes from ``src`` to ``dst`` under the snapshot's next-hop table; [] when unreachable."""
    rows = np.flatnonzero(snapshot.destinations == dst)
    table = snapshot.next_hop.get(policy, snapshot.next_hop.get(None))
    if not len(rows) or table is None:
        return []
    row = table[int(rows[0])]
    path, node = [src], src
    for _ in range(snapshot.n):
        if node == dst:
            return path
        node = int(row[node])
        if node < 0:
            return []
        path.append(node)
    return []


def static_meta(topology: Topology, run_id: str, *, control: bool, replay: bool) -> dict[str, Any]:
    """What does not change during a run: nodes, operators, ground sites, flows."""
    sc = topology.scenario
    lat_deg = [g.lat_deg for g in sc.stations] + [o.lat_deg for o in sc.ops_centres]
    lon_deg = [g.lon_deg for g in sc.stations] + [o.lon_deg for o in sc.ops_centres]
    return {
        "run_id": run_id, "scenario": sc.name, "epoch": sc.epoch.isoformat(),
        "tick_s": sc.tick_s, "control": control, "replay": replay,
        "node_ids": list(topology.node_ids), "kind": topology.kind.tolist(),
        "operator": topology.operator.tolist(), "operators": list(topology.operators),
        "n_satellites": topology.n_satellites,
        "ground_lat_deg": lat_deg,
        "ground_lon_deg": [((lon + 180.0) % 360.0) - 180.0 for lon in lon_deg],
        "flows": [{"index": i, "name": f.name, "source": f.source, "destination": f.destination,
                   "policy": f.policy} for i, f in enumerate(sc.traffic)],
        "link_classes": list(LINK_CLASSES), "budget_ms": sc.fidelity.budget_ms,
    }


class RunView:
    """The latest state of a run as its topics tell it (see the module docstring)."""

    def __init__(self, topology: Topology, run_id: str, *, clock_wall: Any = time.time) -> None:
        self.topology = topology
        self.topics = Topics(run_id)
        self.run_id = run_id
        self.positions = Positions(topology)
        self.clock: RunClock | None = None
        self.clock_message: ClockMessage | None = None
        self.snapshot: TickSnapshot | None = None
        self.faults = FaultListing(0.0, ())
        self.workers: dict[int, WorkerStatus] = {}
        self.seen_wall: dict[int, float] = {}
        self.handovers = 0
        self.route_changes = 0
        self.ticks = 0
        self.malformed = 0
        self.budget = topology.scenario.fidelity
        """The fidelity budget in force (``--fidelity-budget`` may override the scenario's)."""
        self.ended = False
        """True once the run cleared its retained clock (it has finished)."""
        self.history: dict[int, deque[tuple[float, float | None, float | None]]] = {}
        self._past_totals: deque[dict[int, FlowTotals]] = deque(maxlen=WINDOW_TICKS)
        self._wall = clock_wall
        self._index = topology.index
        self._flows = [(self._index[f.source], self._index[f.destination], f.policy)
                       for f in topology.scenario.traffic]

    @classmethod
    def from_scenario(cls, scenario: Path, run_id: str) -> RunView:
        """A view of run ``run_id`` of the scenario file ``scenario``."""
        return cls(build_topology(load_scenario(scenario)), run_id)

    def subscriptions(self) -> tuple[str, ...]:
        """The topics to subscribe to."""
        t = self.topics
        return (t.clock, t.state, t.faults, t.links, t.worker_status_all)

    def handle(self, message: Message) -> bool:
        """Take one message; True when it was a new tick (time to send an update)."""
        t = self.topics
        try:
            if message.topic == t.state:
                if not message.payload:
                    return False
                self.snapshot = decode_state(message.payload, self.topology.n_nodes)
                self.ticks += 1
                self._sample_history()
                return True
            if not message.payload:
                # A retained topic cleared at the end: keep the last figures; a cleared clock
                # after one was seen means the run is over.
                self.ended |= message.topic == t.clock and self.clock is not None
                return False
            if message.topic == t.clock:
                self.clock_message = ClockMessage.decode(message.payload)
                self.clock = RunClock(self.clock_message.t0_wall, self.clock_message.speed)
            elif message.topic == t.faults:
                self.faults = FaultListing.decode(message.payload)
            elif message.topic == t.links:
                notice = LinksNotice.decode(message.payload)
                self.handovers += notice.handovers
                self.route_changes += notice.route_changes
            else:
                status = WorkerStatus.decode(message.payload)
                known = self.workers.get(status.worker)
                if known is None or status.generation >= known.generation:
                    self.workers[status.worker] = status
                    self.seen_wall[status.worker] = self._wall()
        except (MessageError, ValueError):
            self.malformed += 1  # counted and shown, never fatal
        return False

    def flow_totals(self) -> dict[int, FlowTotals]:
        """Per-flow counters summed over the workers' latest heartbeats."""
        out: dict[int, FlowTotals] = {}
        for status in self.workers.values():
            for f in status.progress.flows if status.progress else ():
                tot = out.setdefault(f.flow, FlowTotals())
                tot.offered += f.offered
                tot.delivered += f.delivered
                for reason, n in f.dropped:
                    tot.dropped[reason] = tot.dropped.get(reason, 0) + n
                tot.latency_sum_ms += f.latency_sum_ms
                if f.latency_le:
                    tot.latency_le = [a + b for a, b in zip(tot.latency_le, f.latency_le,
                                                            strict=True)]
        return out

    def flow_name(self, flow: int) -> str:
        """A flow's name (user flows by the scenario, built-in traffic classes by kind)."""
        if flow in BUILTIN_FLOWS:
            return BUILTIN_FLOWS[flow]
        traffic = self.topology.scenario.traffic
        return traffic[flow].name if 0 <= flow < len(traffic) else f"flow{flow}"

    def _sample_history(self) -> None:
        """One sparkline point per flow and tick: delivery ratio and mean latency over the last
        :data:`WINDOW_TICKS` ticks (heartbeats come every 0.5 s wall, not once per tick)."""
        assert self.snapshot is not None
        totals = self.flow_totals()
        past = self._past_totals[0] if self._past_totals else {}
        for flow in range(len(self._flows)):
            now, before = totals.get(flow, FlowTotals()), past.get(flow, FlowTotals())
            offered = now.offered - before.offered
            delivered = now.delivered - before.delivered
            ratio = None if offered <= 0 else min(1.0, max(0.0, delivered / offered))
            latency = (None if delivered <= 0 else
                       (now.latency_sum_ms - before.latency_sum_ms) / delivered)
            self.history.setdefault(flow, deque(maxlen=HISTORY)).append(
                (self.snapshot.t_s, ratio, None if latency is None else round(latency, 3)))
        self._past_totals.append(totals)

    def links_up(self) -> dict[str, int]:
        """Live links per class in the snapshot in force."""
        snap = self.snapshot
        counts = (np.bincount(snap.kind.astype(np.int64), minlength=3) if snap is not None
                  else np.zeros(3, dtype=np.int64))
        return {name: int(counts[k]) for k, name in enumerate(LINK_CLASSES)}

    def fidelity(self) -> dict[str, Any]:
        """Live verdict: the largest lateness the workers report against the budget."""
        budget = self.budget
        progress = [w.progress for w in self.workers.values() if w.progress is not None]
        late = max((p.late_ms for p in progress), default=0.0)
        apply = max((p.apply_late_ms for p in progress), default=0.0)
        ok = late <= budget.budget_ms and apply <= budget.link_apply_budget_ms
        return {"ok": ok, "late_ms": late, "apply_late_ms": apply,
                "budget_ms": budget.budget_ms,
                "link_apply_budget_ms": budget.link_apply_budget_ms,
                "text": (f"ok: excess {late:.1f} ms ≤ {budget.budget_ms:g} ms" if ok else
                         f"OVER BUDGET: excess {late:.1f} ms, link apply {apply:.1f} ms "
                         f"(budget {budget.budget_ms:g} / {budget.link_apply_budget_ms:g} ms)")}

    def frame(self) -> dict[str, Any]:
        """Everything the page draws for the snapshot in force (JSON-ready)."""
        snap = self.snapshot
        t_s = snap.t_s if snap is not None else 0.0
        lat, lon = self.positions.at(t_s)
        links: list[int] = []
        paths: list[list[int]] = []
        if snap is not None:
            links = np.stack([snap.a, snap.b, snap.kind.astype(np.int64)], axis=1).ravel().tolist()
            paths = [flow_path(snap, s, d, p) for s, d, p in self._flows]
        totals = self.flow_totals()
        flows = []
        for i in range(len(self._flows)):
            tot = totals.get(i, FlowTotals())
            flows.append({"index": i, "name": self.flow_name(i), "offered": tot.offered,
                          "delivered": tot.delivered, "dropped": tot.dropped,
                          "path": paths[i] if paths else [],
                          "history": [list(h) for h in self.history.get(i, ())]})
        now = self._wall()
        return {
            "t_s": t_s, "seq": snap.seq if snap is not None else -1,
            "duration_s": self.clock_message.duration_s if self.clock_message else None,
            "sat_lat_deg": _finite_list(lat), "sat_lon_deg": _finite_list(lon),
            "links": links, "links_up": self.links_up(),
            "down": {str(k): v for k, v in (snap.down.items() if snap else ())},
            "cut": [[a, b, f] for (a, b), f in (snap.cut.items() if snap else ())],
            "faults": [f.as_json() for f in self.faults.faults],
            "flows": flows, "fidelity": self.fidelity(), "handovers": self.handovers,
            "workers": [{"worker": k, "state": w.state,
                         "age_s": round(now - self.seen_wall.get(k, now), 1)}
                        for k, w in sorted(self.workers.items())],
            "malformed": self.malformed,
        }

    def frame_json(self) -> bytes:
        """:meth:`frame` as compact JSON."""
        return json.dumps(self.frame(), separators=(",", ":"), allow_nan=False).encode()


def _finite_list(values: NDArray[np.float64]) -> list[float | None]:
    """Rounded to 0.01 deg; a satellite SGP4 could not propagate (NaN) becomes null."""
    rounded = np.round(values, 2)
    bad = ~np.isfinite(rounded)
    if not bad.any():
        return rounded.tolist()
    out: list[float | None] = rounded.tolist()
    for i in np.flatnonzero(bad).tolist():
        out[i] = None
    return out
