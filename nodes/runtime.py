"""The node runtime of one worker: forwarding and link emulation for many nodes, sans I/O.

A worker hosts a shard of the scenario's nodes. :class:`NodeRuntime` holds their state and does
everything that happens to a frame: route lookup, the emulated transmitter of each directed link
(tail-drop queue, serialisation at the link rate, propagation delay from geometry, seeded loss),
hand-over to the next hop when the frame would arrive there, delivery and drops (each with a
reason). It never touches a socket or the event loop: the caller feeds it time
(``run_due(now_wall)``), received batches and link states, and gives it a
``send(worker, payload)`` callable. Unit tests drive it with a fake clock; nodes/worker.py
drives it from asyncio and MQTT.

Times: ``*_wall`` are wall-clock seconds, shared by every process of a run; the run clock
(:class:`orbitmesh.protocol.clock.RunClock`) maps them to scenario seconds. Every event is handled
*at the time it was due* (``at_wall``), never at the time the worker got round to it
(``now_wall``): a frame's next hop is scheduled from its due arrival, so a late wake-up is measured
(``Stats.hop_late_ms``) but never compounds along the path. A frame bound for a node of another
worker is handed over as soon as it leaves its transmitter, stamped with its due arrival, so the
broker's transit hides behind the emulated propagation delay instead of adding to it.

The live links are nodes/link_slots.py's (updated by difference from one state to the next);
the faults in force and the drops charged to them, nodes/fault_books.py's; frames to and from
other workers (the outbox, received batches), nodes/handover.py's.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

import numpy as np

from nodes.fault_books import ARRIVE, CALL, FaultBooks
from nodes.handover import BROKER_FAULT, Handover
from nodes.link_slots import LinkSlots, Transmitter
from nodes.stats import Stats
from orbitmesh.core.topology import GSL, ISL, TERRESTRIAL, Topology
from orbitmesh.protocol.clock import RunClock
from orbitmesh.protocol.state import TickSnapshot
from orbitmesh.protocol.wire import (
    F_DST,
    F_DUE,
    F_FROM,
    F_HOPS,
    F_POLICY,
    F_PROP,
    F_ROUTE,
    F_SIZE,
    F_TTL,
    F_WAIT,
)

__all__ = ["ARRIVE", "BROKER_FAULT", "CALL", "Frame", "NodeRuntime", "Transmitter"]

Frame = list[Any]
_heappush, _heappop = heapq.heappush, heapq.heappop
"""Bound once: the per-hop path calls them for every frame."""


class NodeRuntime(LinkSlots, FaultBooks, Handover):
    """Forwarding state of the nodes one worker hosts."""

    def __init__(self, topology: Topology, worker: int, owner: np.ndarray, *,
                 send: Callable[[int, bytes], None], speed: float, seed: int,
                 stats: Stats | None = None) -> None:
        self.topology = topology
        self.worker = worker
        self.owner = owner
        self.local = set(np.flatnonzero(owner == worker).tolist())
        self.send = send
        self.speed = speed
        self.clock = RunClock(0.0, speed)
        self.now_wall = 0.0
        """When the worker is really handling the current events (``run_due``'s argument)."""
        self.rng = random.Random(seed * 1_000_003 + worker)
        self.stats = stats or Stats(speed=speed)
        self.n_nodes = len(owner)
        rules = topology.scenario.links
        by_kind = {ISL: rules.isl, GSL: rules.gsl, TERRESTRIAL: rules.terrestrial}
        # Indexed by link kind (ISL, GSL, TERRESTRIAL = 0, 1, 2): a tuple index is the cheapest
        # lookup on the per-hop path.
        self.rate_bps = tuple(by_kind[k].rate_bps for k in (ISL, GSL, TERRESTRIAL))
        self.loss = tuple(by_kind[k].loss for k in (ISL, GSL, TERRESTRIAL))
        self.queue_frames = tuple(by_kind[k].queue_frames for k in (ISL, GSL, TERRESTRIAL))
        self.owner_of: list[int] = owner.tolist()
        """``owner`` as a list: Python ints, no numpy scalar per hop."""
        self._init_links()
        self._init_faults()
        self.next_hop: dict[str | None, np.ndarray] = {}
        self.dest_row: dict[int, int] = {}
        self.state_t_s = -1.0
        self.tx: dict[tuple[int, int], Transmitter] = {}
        self._tx_idle_since = float("-inf")
        """When the link state before the one in force took effect: a transmitter idle since
        then is forgotten (the tick's margin covers events handled late, before the state)."""
        self.heap: list[tuple[float, int, int, Any, Any]] = []
        """(due_wall, seq, ARRIVE, (u, v), frame) or (due_wall, seq, CALL, fn, None)."""
        self._seq = 0
        self._init_handover()
        self.on_deliver: Callable[[int, Frame, float], None] | None = None
        self.on_suppressed: Callable[[int, str], None] | None = None
        self.on_node_down: Callable[[int, str, float], None] | None = None
        self.arrival_watch: frozenset[int] = frozenset()
        """Nodes whose scheduled arrivals ``on_arrival(u, v, frame, due)`` hears of, and
        ``on_barrier(due)`` of every link state scheduled (nodes/mcs_bridge.py's pacer)."""
        self.on_arrival: Callable[[int, int, Frame, float], None] | None = None
        self.on_barrier: Callable[[float], None] | None = None

    # --- time ---------------------------------------------------------------------------------

    @property
    def t0_wall(self) -> float:
        """Wall time of scenario time 0."""
        return self.clock.t0_wall

    @t0_wall.setter
    def t0_wall(self, value: float) -> None:
        self.clock = RunClock(value, self.speed)

    def scenario_s(self, at_wall: float) -> float:
        """Scenario seconds at wall time ``at_wall``."""
        return self.clock.scenario_s(at_wall)

    def wall_at(self, t_s: float) -> float:
        """Wall time at which scenario time ``t_s`` happens."""
        return self.clock.wall_at(t_s)

    def call_at(self, due_wall: float, fn: Callable[[float], None], *,
                first: bool = False) -> None:
        """Run ``fn(due_wall)`` once wall time ``due_wall`` has come (from :meth:`run_due`);
        ``first``: before anything else due at the same instant (a link state that takes effect
        then is in force for every event of that instant)."""
        self._seq += 1
        order = -self._seq if first else self._seq
        heapq.heappush(self.heap, (due_wall, order, CALL, fn, None))
        if first and self.on_barrier is not None:
            self.on_barrier(due_wall)

    @property
    def next_due(self) -> float | None:
        """Wall time of the earliest pending item."""
        return self.heap[0][0] if self.heap else None

    def run_due(self, now_wall: float) -> None:
        """Handle everything due by ``now_wall``, each at its due time; then send the outbox."""
        self.now_wall = now_wall
        stats = self.stats
        stats.now_wall = now_wall
        heap = self.heap
        while heap and heap[0][0] <= now_wall:
            due, _seq, code, a, b = _heappop(heap)
            stats.event_wall = due
            if code == ARRIVE:
                self._arrive(a, b, due)
            else:
                a(due)
        stats.event_wall = now_wall
        self._flush_due(now_wall)

    # --- link state ---------------------------------------------------------------------------

    def apply_state(self, t_s: float, a: np.ndarray, b: np.ndarray, kind: np.ndarray,
                    delay_s: np.ndarray, destinations: np.ndarray,
                    next_hop: dict[str | None, np.ndarray], *, now: float = 0.0,
                    down: dict[int, str] | None = None,
                    cut: dict[tuple[int, int], str] | None = None,
                    degraded: dict[tuple[int, int], tuple[float, float, float, str]] | None = None,
                    blame: str | None = None) -> None:
        """Replace the live links, routing tables (rows follow ``destinations``) and faults.

        ``now`` is the wall time the state takes effect (its due time).
        """
        self._set_links(a, b, kind, delay_s)
        self._forget_idle_transmitters(now)
        self.dest_row = {int(d): i for i, d in enumerate(destinations.tolist())}
        self.next_hop = next_hop
        self.state_t_s = t_s
        self._set_faults(down, cut, degraded, blame, now)

    def _forget_idle_transmitters(self, at_wall: float) -> None:
        """Drop the transmitters idle since the previous link state took effect (a tick ago): a
        fresh one behaves the same. Kept, every link direction a long run ever used (GSLs, and
        ISLs as the routes move) holds one: memory that grows with the run (bench/soak.py)."""
        idle_since, self._tx_idle_since = self._tx_idle_since, at_wall
        gone = [k for k, tx in self.tx.items() if tx.busy_until <= idle_since]
        for k in gone:
            del self.tx[k]

    def apply_snapshot(self, state: TickSnapshot, at_wall: float) -> None:
        """Apply a decoded tick snapshot taking effect at ``at_wall``."""
        self.apply_state(state.t_s, state.a, state.b, state.kind, state.delay_s,
                         state.destinations, dict(state.next_hop), now=at_wall,
                         down=dict(state.down), cut=dict(state.cut),
                         degraded=dict(state.degraded), blame=state.blame)

    def route_next(self, u: int, frame: Frame) -> int:
        """Next hop of ``frame`` at node ``u``; -1 when there is no route."""
        route = frame[F_ROUTE]
        if route:
            try:
                return int(route[route.index(u) + 1])
            except (ValueError, IndexError):
                return -1
        table = self.next_hop.get(frame[F_POLICY])
        row = self.dest_row.get(frame[F_DST])
        if table is None or row is None:
            return -1
        return table.item(row, u)

    def source_route(self, root: int, target: int, policy: str | None) -> list[int] | None:
        """Path root -> target read from the tree rooted at ``root`` (for satellite targets)."""
        table = self.next_hop.get(policy)
        row = self.dest_row.get(root)
        if table is None or row is None:
            return None
        path = [target]
        node = target
        for _ in range(len(self.owner)):
            node = int(table[row, node])
            if node < 0:
                return None
            path.append(node)
            if node == root:
                path.reverse()
                return path
        return None

    # --- frames -------------------------------------------------------------------------------

    def originate(self, u: int, frame: Frame, at_wall: float) -> None:
        """A node creates a frame: count the offer and start forwarding it."""
        self.stats.offer(frame)
        self.forward(u, frame, at_wall)

    def forward(self, u: int, frame: Frame, at_wall: float) -> None:
        """Frame is at node ``u`` at ``at_wall``: deliver it or put it on the next transmitter."""
        if frame[F_DST] == u:
            self.stats.deliver(frame, at_wall)
            if self.on_deliver is not None:
                self.on_deliver(u, frame, at_wall)
            return
        frame[F_TTL] -= 1
        if frame[F_TTL] < 0:
            self.stats.drop(frame, "ttl", u)
            return
        if frame[F_ROUTE]:
            v = self.route_next(u, frame)
        else:  # route_next's table lookup, inlined: this runs on every hop
            table = self.next_hop.get(frame[F_POLICY])
            row = self.dest_row.get(frame[F_DST])
            v = -1 if table is None or row is None else table.item(row, u)
        if v < 0:
            self.drop_no_route(u, frame, v)
            return
        self.transmit(u, v, frame, at_wall)

    def transmit(self, u: int, v: int, frame: Frame, at_wall: float) -> bool:
        """Emulate link u->v for ``frame`` entering it at ``at_wall``; False if dropped."""
        hop = (u, v)
        key = hop if u < v else (v, u)
        slot = self.links.get(key)
        if slot is None:
            fault = self.cut.get(key)
            if fault is not None:
                self.stats.drop(frame, "fault", u, fault)
            else:
                self.stats.drop(frame, "link_down", u)
            return False
        delay_s = self.link_delay_s[slot]
        kind = self.link_kind[slot]
        rate_bps = self.rate_bps[kind]
        if self.degraded:
            degraded = self.degraded.get(key)
            if degraded is not None:
                extra_loss, _extra_delay, cap, fault = degraded
                if extra_loss and self.rng.random() < extra_loss:
                    self.stats.drop(frame, "fault", u, fault)
                    return False
                if cap:
                    rate_bps = min(rate_bps, cap)
        tx = self.tx.get(hop)
        if tx is None:
            tx = self.tx[hop] = Transmitter()
        finishing = tx.finishing
        while finishing and finishing[0] <= at_wall:  # Transmitter.backlog, inlined
            finishing.popleft()
        if len(finishing) >= self.queue_frames[kind]:
            self.stats.drop(frame, "queue", u)
            return False
        loss = self.loss[kind]
        if loss and self.rng.random() < loss:
            self.stats.drop(frame, "loss", u)
            return False
        speed = self.speed
        busy = tx.busy_until
        start = at_wall if busy < at_wall else busy
        done = start + frame[F_SIZE] * 8.0 / (rate_bps * speed)
        tx.busy_until = done
        finishing.append(done)
        due = done + delay_s / speed
        frame[F_DUE] = due
        frame[F_WAIT] += (done - at_wall) * speed
        frame[F_PROP] += delay_s
        owner = self.owner_of[v]
        if owner != self.worker:  # handed over now, due there at ``due``
            frame[F_FROM] = u
            guard = self.handover_guard_s
            if guard is not None and due - guard < self._outbox_deadline:
                self._outbox_deadline = due - guard
            box = self.outbox.get(owner)
            if box is None:  # not setdefault: that builds a list on every call
                box = self.outbox[owner] = []
            box.append((v, frame))
            self.stats.remote_sent(frame)
            return True
        self._seq += 1
        _heappush(self.heap, (due, self._seq, ARRIVE, hop, frame))
        self.stats.in_flight += 1
        if v in self.arrival_watch and self.on_arrival is not None:
            self.on_arrival(u, v, frame, due)
        return True

    def backlog(self, u: int, v: int, at_wall: float) -> int:
        """Frames waiting on link u->v."""
        tx = self.tx.get((u, v))
        return 0 if tx is None else tx.backlog(at_wall)

    def _arrive(self, hop: tuple[int, int], frame: Frame, due: float) -> None:
        u, v = hop
        stats = self.stats
        stats.in_flight -= 1
        links = self.links
        if hop not in links and (v, u) not in links:
            # Gone while the frame was on it: cut by a fault, with a failed end, or by geometry.
            fault = (self.cut.get((u, v) if u < v else (v, u)) or self.down_all.get(v)
                     or self.down_all.get(u))
            if fault is not None:
                stats.drop(frame, "fault", u, fault)
            else:
                stats.drop(frame, "link_lost", u)
            return
        frame[F_HOPS] += 1
        frame[F_FROM] = -1
        stats.hop(frame, u, v, due)
        if self.down_nodes:
            self.receive(v, frame, due)
        else:  # no failed node here: receive() would only forward
            self.forward(v, frame, due)

    def receive(self, v: int, frame: Frame, at_wall: float) -> None:
        """A frame reaches node ``v`` at ``at_wall``."""
        fault = self.down_nodes.get(v)
        if fault is not None:
            self.stats.drop(frame, "fault", v, fault)
            return
        self.forward(v, frame, at_wall)
