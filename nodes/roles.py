"""What the nodes do: satellites, ground stations, operations centres and traffic flows.

* Satellites produce housekeeping telemetry (CCSDS TM space packets, per-APID 14-bit sequence
  counters) for the operations centre that operates their constellation. With no route (or a full
  first link) telemetry waits in a bounded on-board store and is dumped, limited by the link's
  queue and rate, once a route appears. Telecommands are executed and acknowledged.
* Ground stations relay: they are plain forwarding nodes (nodes/runtime.py).
* Operations centres send telecommands round-robin to their satellites (source-routed along the
  reverse of their own routing tree) and measure the round trip to the acknowledgement.
* Flows offer user traffic between any two nodes (constant rate or Poisson; sizes fixed, uniform
  or exponential).
"""

from __future__ import annotations

import functools
import itertools
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from nodes.mcs_packets import ack_packet
from nodes.runtime import NodeRuntime
from orbitmesh.core.mcs_spec import ACK_APID
from orbitmesh.core.scenario import Flow, SizeSpec
from orbitmesh.core.topology import OPS_CENTRE
from orbitmesh.protocol.wire import (
    ACK,
    DATA,
    F_CREATED,
    F_ID,
    F_KIND,
    F_PAYLOAD,
    F_REF,
    F_SRC,
    FLOW_ACK,
    FLOW_TELECOMMAND,
    FLOW_TELEMETRY,
    TC,
    TELECOMMAND,
    TELEMETRY,
    TM,
    SequenceCounter,
    new_frame,
    space_packet,
)

DUMP_INTERVAL_S = 0.02
"""Wall seconds between attempts to drain on-board stores."""


class Roles:
    """Schedules the behaviour of the nodes one runtime hosts."""

    def __init__(self, runtime: NodeRuntime, *, duration_s: float, generation: int = 0,
                 replay: list[tuple[float, str, str, str, int]] | None = None) -> None:
        self.rt = runtime
        self.generation = generation
        self.replay = replay or []
        self.topo = runtime.topology
        self.duration_s = duration_s
        self._ids = itertools.count(1)
        self.counters: dict[int, SequenceCounter] = {}
        self.store: dict[int, deque[list[Any]]] = {}
        self.store_limit: dict[int, int] = {}
        self.operating_centre = self._operating_centres()
        self._tc_targets: dict[int, itertools.cycle[int]] = {}
        self._tm_made: dict[int, tuple[int, bytes, int]] = {}
        """Satellite -> (APID, data field, operations centre) of its telemetry packets."""
        runtime.on_deliver = self._delivered
        runtime.on_node_down = self._node_down
        self.stopped = False
        self.endpoint_deliver: Callable[[int, list[Any]], None] | None = None
        """nodes/endpoints.py: hands delivered frames to the node's TUN, UDP pipe or outbox."""
        self.mcs_deliver: Callable[[int, bytes, float], None] | None = None
        """nodes/mcs_bridge.py: TM packets (telemetry, TC acks) that reached an ops centre."""

    def _operating_centres(self) -> dict[int, int]:
        """Constellation index -> node index of the first ops centre operating it."""
        out: dict[int, int] = {}
        names = [c.name for c in self.topo.scenario.constellations]
        for o in self.topo.scenario.ops_centres:
            for c in o.constellations:
                out.setdefault(names.index(c), self.topo.index[o.name])
        return out

    def _node_down(self, node: int, fault_id: str, now: float) -> None:
        """A failed node loses its on-board store and comes back with empty state."""
        store = self.store.get(node)
        while store:
            self.rt.stats.held_on_board -= 1
            self.rt.stats.drop(store.popleft(), "fault", node, fault_id)
        self.counters.pop(node, None)

    def frame_id(self) -> int:
        """A run-unique frame id: worker index in the high bits."""
        return (self.generation << 56) | (self.rt.worker << 40) | next(self._ids)

    # --- scheduling -----------------------------------------------------------------------------

    def start(self, now: float) -> None:
        """Schedule every generator of the hosted nodes, starting at the run's t0."""
        rt, topo = self.rt, self.topo
        rng = np.random.default_rng(topo.scenario.seed * 7919 + rt.worker)
        t0 = rt.t0_wall
        for s in sorted(i for i in rt.local if i < topo.n_satellites):
            c = int(topo.sat_constellation[s])
            spec = topo.shells[c].constellation.telemetry
            self.store[s] = deque()
            self.store_limit[s] = spec.store_frames
            if spec.rate_hz > 0 and c in self.operating_centre:
                period = 1.0 / (spec.rate_hz * rt.speed)
                first = t0 + float(rng.uniform(0, period))
                self._periodic(s, FLOW_TELEMETRY, first, period,
                               functools.partial(self.telemetry, s))
        for o_index, o in enumerate(topo.scenario.ops_centres):
            node = topo.n_satellites + topo.n_stations + o_index
            if node in rt.local and o.telecommand_rate_hz > 0:
                sats = [s for s in range(topo.n_satellites)
                        if topo.shells[int(topo.sat_constellation[s])].constellation.name
                        in o.constellations]
                if sats:
                    self._tc_targets[node] = itertools.cycle(sats)
                    period = 1.0 / (o.telecommand_rate_hz * rt.speed)
                    targets = self._tc_targets[node]
                    self._periodic(node, FLOW_TELECOMMAND, t0 + period, period, functools.partial(
                        self._command_next, node, targets, o.telecommand_size_bytes))
        for f_index, flow in enumerate(topo.scenario.traffic):
            src = topo.index.get(flow.source)
            if src is not None and src in rt.local and flow.pattern == "replay":
                frames = [(t, size) for t, name, _s, _d, size in self.replay if name == flow.name
                          and rt.wall_at(t) >= now - 1e-9]
                if frames:
                    dst = topo.node(flow.destination)
                    rt.call_at(rt.wall_at(frames[0][0]),
                               self._replay_fn(f_index, flow, src, dst, frames))
            elif src is not None and src in rt.local:
                dst = topo.node(flow.destination)
                frng = np.random.default_rng([topo.scenario.seed, f_index])
                first = rt.wall_at(flow.start_s) + self._gap(flow, frng)
                rt.call_at(first, self._flow_fn(f_index, flow, src, dst, frng, first))
        rt.call_at(now + DUMP_INTERVAL_S, self._dump)

    def _running(self, now: float) -> bool:
        return not self.stopped and self.rt.scenario_s(now) < self.duration_s

    def _gap(self, flow: Flow, rng: np.random.Generator) -> float:
        mean = 1.0 / (flow.rate_pps * self.rt.speed)
        return float(rng.exponential(mean)) if flow.pattern == "poisson" else mean

    # --- satellites -----------------------------------------------------------------------------

    # Generators run at their intended times (the runtime hands every callback the time it was
    # due, not when the worker woke up), so a late wake-up neither lowers the rate nor ages the
    # frames. A source that a fault has taken down offers nothing; what it would have offered is
    # counted as suppressed by that fault.

    def _periodic(self, node: int, flow: int, first: float, period: float,
                  action: Callable[[float], None]) -> None:
        """Run ``action(at)`` every ``period`` wall seconds from ``first`` while the node is up."""

        count = 0

        def fire(at: float) -> None:
            nonlocal count
            if not self._running(at):
                return
            if not self.rt.suppressed(flow, node):
                action(at)
            count += 1
            self.rt.call_at(first + count * period, fire)  # no float drift over a long run

        self.rt.call_at(first, fire)

    def telemetry(self, s: int, now: float) -> None:
        """Satellite ``s`` produces one housekeeping packet."""
        made = self._tm_made.get(s)
        if made is None:  # what does not change from packet to packet, made once
            c = int(self.topo.sat_constellation[s])
            spec = self.topo.shells[c].constellation.telemetry
            made = self._tm_made[s] = (spec.apid, s.to_bytes(4, "big")
                                       + b"\x00" * max(1, spec.size_bytes - 10),
                                       self.operating_centre[c])
        apid, data, centre = made
        counter = self.counters.get(s)
        if counter is None:  # not setdefault: that builds a counter on every call
            counter = self.counters[s] = SequenceCounter()
        packet = space_packet(TM, apid, counter.next(apid), data)
        frame = new_frame(self.frame_id(), TELEMETRY, FLOW_TELEMETRY, s, centre,
                          len(packet), now, payload=packet)
        self.rt.stats.offer(frame)
        self._send_or_store(s, frame, now)

    def _send_or_store(self, s: int, frame: list[Any], now: float) -> None:
        store = self.store[s]
        if store or not self._can_send(s, frame, now):
            if len(store) >= self.store_limit[s]:
                self.rt.stats.drop(frame, "store_full", s)
                return
            store.append(frame)
            self.rt.stats.held_on_board += 1
            self.rt.stats.max_backlog = max(self.rt.stats.max_backlog, len(store))
            return
        self.rt.forward(s, frame, now)

    def _can_send(self, s: int, frame: list[Any], now: float) -> bool:
        rt = self.rt
        v = rt.route_next(s, frame)
        if v < 0:
            return False
        live = rt.link(s, v)
        return live is not None and rt.backlog(s, v, now) < rt.queue_frames[live[1]]

    def _dump(self, now: float) -> None:
        """Drain on-board stores into links that have a route and room."""
        for s, store in self.store.items():
            if not store or s in self.rt.down_nodes:
                continue
            while store and self._can_send(s, store[0], now):
                frame = store.popleft()
                self.rt.stats.held_on_board -= 1
                self.rt.forward(s, frame, now)
        self.rt.call_at(now + DUMP_INTERVAL_S, self._dump)

    # --- operations centres ---------------------------------------------------------------------

    def _command_next(self, node: int, targets: Iterator[int], size: int, now: float) -> None:
        self.telecommand(node, next(targets), size, now)

    def telecommand(self, node: int, sat: int, size: int, now: float,
                    packet: bytes | None = None) -> list[Any]:
        """Operations centre ``node`` commands satellite ``sat`` (with ``packet``, an MCS's)."""
        rt = self.rt
        if packet is None:
            counter = self.counters.setdefault(node, SequenceCounter())
            packet = space_packet(TC, 0x7F, counter.next(0x7F), b"\x01" * max(1, size - 6))
        route = rt.source_route(node, sat, None)
        frame = new_frame(self.frame_id(), TELECOMMAND, FLOW_TELECOMMAND, node, sat, len(packet),
                          now, route=route, payload=packet)
        rt.stats.telecommands_sent += 1
        if route is None:
            rt.stats.offer(frame)
            rt.drop_no_route(node, frame)
            return frame
        rt.originate(node, frame, now)
        return frame

    def _delivered(self, node: int, frame: list[Any], now: float) -> None:
        if self.endpoint_deliver is not None:
            self.endpoint_deliver(node, frame)
        kind = frame[F_KIND]
        if kind == TELECOMMAND:  # execute and acknowledge, with a TM ack packet (docs/mcs.md)
            counter = self.counters.setdefault(node, SequenceCounter())
            packet = ack_packet(node, frame[F_PAYLOAD], counter.next(ACK_APID))
            ack = new_frame(self.frame_id(), ACK, FLOW_ACK, node, frame[F_SRC], len(packet), now,
                            ref=[frame[F_ID], frame[F_CREATED]], payload=packet)
            self.rt.stats.offer(ack)
            if node in self.store:
                self._send_or_store(node, ack, now)
            else:
                self.rt.forward(node, ack, now)
        elif kind == ACK and self.topo.kind[node] == OPS_CENTRE:
            self.rt.stats.telecommands_acked += 1
            self.rt.stats.telecommand_rtt_ms.add((now - frame[F_REF][1]) * self.rt.speed * 1000.0)
            if self.mcs_deliver is not None and frame[F_PAYLOAD]:
                self.mcs_deliver(node, frame[F_PAYLOAD], now)
        elif kind == TELEMETRY:
            self.rt.stats.telemetry_age_ms.add((now - frame[F_CREATED]) * self.rt.speed * 1000.0)
            if self.mcs_deliver is not None and self.topo.kind[node] == OPS_CENTRE:
                self.mcs_deliver(node, frame[F_PAYLOAD], now)

    # --- flows ----------------------------------------------------------------------------------

    def _flow_fn(self, f_index: int, flow: Flow, src: int, dst: int,  # type: ignore[no-untyped-def]
                 rng: np.random.Generator, first: float):
        stop_s = min(flow.stop_s or self.duration_s, self.duration_s)
        due, count = first, 0

        def fire(now: float) -> None:
            nonlocal due, count
            if self.stopped or self.rt.scenario_s(now) >= stop_s:
                return
            if not self.rt.suppressed(f_index, src):
                self.offer(f_index, flow, src, dst, _size(flow.size, rng), now)
            count += 1
            if flow.pattern == "constant":  # on a grid: no float drift over a long run
                due = first + count * self._gap(flow, rng)
            else:
                due += self._gap(flow, rng)
            self.rt.call_at(due, fire)
        return fire

    def _replay_fn(self, f_index: int, flow: Flow, src: int,  # type: ignore[no-untyped-def]
                   dst: int, frames: list[tuple[float, int]]):
        position = 0

        def fire(now: float) -> None:
            nonlocal position
            if self.stopped:
                return
            t_s, size = frames[position]
            if t_s < self.duration_s and not self.rt.suppressed(f_index, src):
                self.offer(f_index, flow, src, dst, size, now)
            position += 1
            if position < len(frames):
                self.rt.call_at(self.rt.wall_at(frames[position][0]), fire)
        return fire

    def offer(self, f_index: int, flow: Flow, src: int, dst: int, size: int, now: float) -> None:
        """Offer one user frame of ``flow``."""
        rt = self.rt
        route = None
        if dst < self.topo.n_satellites and dst not in rt.dest_row:
            route = rt.source_route(src, dst, flow.policy)
        frame = new_frame(self.frame_id(), DATA, f_index, src, dst, size, now,
                          policy=flow.policy, route=route)
        rt.originate(src, frame, now)


def _size(spec: SizeSpec, rng: np.random.Generator) -> int:
    if spec.distribution == "fixed":
        return spec.bytes
    if spec.distribution == "uniform":
        return int(rng.integers(spec.min_bytes, spec.max_bytes + 1))
    return int(min(65_536, max(1, round(rng.exponential(spec.bytes)))))

