"""The batched message plane: NodeRuntime's semantics, with the common frames in a compiled lane.

:class:`PlaneRuntime` is a :class:`nodes.runtime.NodeRuntime` (same interface, same books)
whose frames of the common shape — no source route, ref or payload, a policy the tables know:
data-flow and telemetry frames — live as rows of arrays (nodes/plane_lane.py) and go through
arrive -> forward -> transmit -> schedule in one numba call per stretch of time
(nodes/plane_kernel.py). Everything else (telecommands, acks, endpoint packets, frames at
nodes whose arrivals the MCS pacer watches, timers and link states) stays on the Python heap.

Order is the reference's: both heaps are keyed (due, seq) with one seq counter, and
:meth:`run_due` lets the lane run only up to the Python heap's head before handling that head,
so a link state (a ``first`` CALL, negative seq) takes effect before anything due at its
instant. A frame Python puts on a transmitter is queued as a request with its seq reserved
there and then, and every transmitter lives in the lane (a rare frame's transmit is a lane call
too), so queues and serialisation are shared exactly. Hand-overs to other workers leave as
columnar batches (orbitmesh/protocol/wire_columns.py); hop records are written as one block of
packed msgpack per stretch, between the deliveries and drops around them, so the event log reads
as NodeRuntime's. The lane draws loss from its own seeded stream (splitmix64), not from
``self.rng``: with loss the two planes drop different frames, at the same rates.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgpack
import numpy as np

from nodes import plane_kernel as K
from nodes.plane_lane import Lane
from nodes.runtime import ARRIVE, BROKER_FAULT, Frame, NodeRuntime, _heappop, _heappush
from nodes.stats import Stats
from orbitmesh.core.topology import Topology
from orbitmesh.protocol.wire import (
    COLUMNS_VERSION,
    F_DUE,
    F_FROM,
    F_PAYLOAD,
    F_POLICY,
    F_PROP,
    F_REF,
    F_ROUTE,
    F_WAIT,
    MAX_BATCH_FRAMES,
    WIRE_VERSION,
    unpack_batch,
)
from orbitmesh.protocol.wire_columns import ROW, columns_body, encode_columns, rows_to_items

_NO_SEQ = 1 << 62
_FRAME_I = slice(K.OI_FRAME, K.OI_FRAME + K.FI_COLS)
_LANE_OUT = (K.M_OUT, K.M_LOG, K.M_NLATE, K.M_INFLIGHT, K.M_HFULL)


class PlaneRuntime(NodeRuntime):
    """NodeRuntime with the common frames' hop loop compiled (see the module docstring)."""

    def __init__(self, topology: Topology, worker: int, owner: np.ndarray, *,
                 send: Callable[[int, bytes], None], speed: float, seed: int,
                 stats: Stats | None = None) -> None:
        super().__init__(topology, worker, owner, send=send, speed=speed, seed=seed,
                         stats=stats)
        self.lane = Lane(self.n_nodes, worker, owner, workers=int(owner.max()) + 1,
                         flows=len(topology.scenario.traffic), speed=speed, seed=seed,
                         rate_bps=self.rate_bps, loss=self.loss, queue_frames=self.queue_frames)
        self._req_i: list[tuple[int, ...]] = []
        self._req_f: list[tuple[float, ...]] = []
        self._rare: dict[int, tuple[int, int, Frame]] = {}
        """seq -> (u, v, frame) of rare frames whose transmit request is queued."""
        self.policies: list[str | None] = []
        self._policy_index: dict[str | None, int] = {}
        self.faults: list[str] = []
        self._fault_index: dict[str, int] = {}
        self._out_rows: dict[int, list[bytes]] = {}
        """Worker -> blocks of :data:`ROW` rows handed over this turn (the rare ones are in
        ``self.outbox`` as lists)."""
        self._lane_watch: frozenset[int] = frozenset()
        self._recv_maps: dict[tuple[str | None, ...], np.ndarray] = {}
        """Sender's policy names -> their lane indices (shifted by one: -1 is None)."""
        self._recv_policies: list[str | None] = []
        self._rows: list[bytes] = []
        """Received row blocks not yet in the lane (it takes them at its next pass, before
        anything else runs: a frame's seq is still given in the order frames came)."""
        self._rows_key: tuple[str | None, ...] = ()
        self._rows_pol = np.full(1, -1, dtype=np.int64)
        self._rows_topic = "frames"
        self.lane.meta[K.M_LOGGING] = int(self.stats.logging_events)

    # --- indices ------------------------------------------------------------------------------

    def _fault(self, name: str) -> int:
        index = self._fault_index.get(name)
        if index is None:
            index = self._fault_index[name] = len(self.faults)
            self.faults.append(name)
        return index

    def _policy(self, name: str | None) -> int:
        index = self._policy_index.get(name)
        if index is None:
            index = self._policy_index[name] = len(self.policies)
            self.policies.append(name)
        return index

    # --- time ---------------------------------------------------------------------------------

    @property
    def next_due(self) -> float | None:
        """Wall time of the earliest pending item, on either heap."""
        lane = self.lane.next_due()
        if self.heap:
            due = self.heap[0][0]
            return due if lane is None or due < lane else lane
        return lane

    def run_due(self, now_wall: float) -> None:
        """Handle everything due by ``now_wall``, each at its due time, in (due, seq) order over
        both heaps; then send what was handed over."""
        self.now_wall = now_wall
        stats = self.stats
        stats.now_wall = now_wall
        heap = self.heap
        while True:
            if heap and heap[0][0] <= now_wall:
                bound_due, bound_seq = heap[0][0], heap[0][1]
            else:
                bound_due, bound_seq = now_wall, _NO_SEQ
            self._run_lane(bound_due, bound_seq, now_wall)
            if not heap or heap[0][0] > now_wall:
                break
            due, _seq, code, a, b = _heappop(heap)
            stats.event_wall = due
            if code == ARRIVE:
                self._arrive(a, b, due)
            else:
                a(due)
        stats.event_wall = now_wall
        self._flush_due(now_wall)

    def _run_lane(self, bound_due: float, bound_seq: int, now_wall: float) -> None:
        """One lane pass: the queued requests and received rows, then lane events before the
        bound."""
        lane = self.lane
        req_i = req_f = rows = None
        if self._req_i:
            req_i = np.array(self._req_i, dtype=np.int64)
            req_f = np.array(self._req_f, dtype=np.float64)
            self._req_i, self._req_f = [], []
        if self._rows:
            raw = self._rows[0] if len(self._rows) == 1 else b"".join(self._rows)
            rows = np.frombuffer(raw, dtype=np.int64).reshape(-1, K.W_COLS)
            self._rows = []
        elif req_i is None and (not lane.meta[K.M_HEAP] or lane.hdue[0] > now_wall):
            return
        lane.meta[K.M_SEQ] = self._seq
        lane.run(bound_due, bound_seq, now_wall, req_i, req_f, rows, self._rows_pol,
                 sink=self._sink)
        self._seq = int(lane.meta[K.M_SEQ])
        if rows is not None and lane.meta[K.M_BAD]:
            self._take_counts(self._rows_topic)

    def _drain(self) -> None:
        """Take the queued requests and rows now (before anything reads or changes the lane's
        state)."""
        if self._req_i or self._rows:
            self._run_lane(-np.inf, 0, self.now_wall)

    # --- output records -----------------------------------------------------------------------

    def _frame(self, fi: list[int], ff: list[float], policy: Any = False) -> Frame:
        """A lane row as the list NodeRuntime passes around."""
        return [fi[K.FI_ID], fi[K.FI_KIND], fi[K.FI_FLOW], fi[K.FI_SRC], fi[K.FI_DST],
                fi[K.FI_SIZE], ff[K.FF_CREATED], fi[K.FI_HOPS], fi[K.FI_TTL],
                self.policies[fi[K.FI_POLICY]] if policy is False else policy, None,
                ff[K.FF_DUE], None, b"", -1, ff[K.FF_WAIT], ff[K.FF_PROP]]

    def _sink(self, lane: Lane) -> None:
        """After a lane pass: deliveries and drops (between the hop records around them, as
        NodeRuntime writes them), hop lateness, and hand-overs out of a full buffer."""
        meta = lane.meta
        m = meta.tolist()
        out, log_b, n_late, inflight = m[K.M_OUT], m[K.M_LOG], m[K.M_NLATE], m[K.M_INFLIGHT]
        stats = self.stats
        if inflight:
            stats.in_flight += inflight
            meta[K.M_INFLIGHT] = 0
        if n_late >= len(lane.late) // 2:
            self._take_late()
        if out:
            log = lane.log.view(np.uint8) if log_b else None
            written = 0
            rows_i = lane.oi[:out * K.OI_COLS].reshape(out, K.OI_COLS).tolist()
            rows_f = lane.of[:out * K.OF_COLS].reshape(out, K.OF_COLS).tolist()
            meta[K.M_OUT] = 0
            for ri, rf in zip(rows_i, rows_f, strict=True):
                upto = ri[K.OI_LOG]
                if log is not None and upto > written:
                    stats.write_raw(log[written:upto].tobytes())
                    written = upto
                self._special(ri, rf)
            if log is not None and written < log_b:
                stats.write_raw(log[written:log_b].tobytes())
        elif log_b:
            stats.write_raw(lane.log.view(np.uint8)[:log_b].tobytes())
        meta[K.M_LOG] = 0
        if m[K.M_HFULL]:
            self._take_hand()

    def _take_late(self) -> None:
        """Hop lateness gathered by the lane into the histogram."""
        lane = self.lane
        n_late = int(lane.meta[K.M_NLATE])
        if n_late:
            self.stats.hop_block(lane.late[:n_late], None)
            lane.meta[K.M_NLATE] = 0

    def _take_hand(self) -> None:
        """Rows the lane handed over, out of its buffer into this turn's outgoing bytes."""
        lane = self.lane
        counts = lane.hcnt.tolist()
        for w, count in enumerate(counts):
            if count:
                at = w * lane.meta[K.M_HCAP] * K.W_COLS
                self._out_rows.setdefault(w, []).append(
                    lane.hand[at:at + count * K.W_COLS].tobytes())
        lane.hcnt[:] = 0
        lane.meta[K.M_HFULL] = lane.meta[K.M_HROWS] = 0

    def _take_counts(self, topic: str = "frames") -> None:
        """Refused rows, and remote_in / remote_out per flow, counted by the lane."""
        lane = self.lane
        if lane.meta[K.M_BAD]:
            lane.meta[K.M_BAD] = 0
            bad = lane.bad
            for i in np.flatnonzero(bad).tolist():
                for _ in range(int(bad[i])):
                    self.stats.malformed(K.REFUSED[i], topic)
            bad[:] = 0
        fcnt = lane.fcnt
        if not fcnt.any():
            return
        nflows = int(lane.meta[K.M_NFLOWS])
        flow0 = int(lane.meta[K.M_FLOW0])
        for i in np.flatnonzero(fcnt).tolist():
            count = int(fcnt[i])
            if i < nflows:
                self.stats.flows[i - flow0].remote_in += count
            else:
                self.stats.flows[i - nflows - flow0].remote_out += count
        fcnt[:] = 0

    def _special(self, ri: list[int], rf: list[float]) -> None:
        """One delivery, drop, rare-frame result or watched arrival."""
        code, t = ri[K.OI_KIND], rf[K.OF_T]
        fi, ff = ri[_FRAME_I], rf[K.OF_FRAME:]
        stats = self.stats
        if code == K.O_DELIVER:
            frame = self._frame(fi, ff)
            stats.deliver(frame, t)
            if self.on_deliver is not None:
                self.on_deliver(ri[K.OI_NODE], frame, t)
        elif code == K.O_DROP:
            rare = self._rare.get(ri[K.OI_SEQ])
            frame = rare[2] if rare is not None else self._frame(fi, ff)
            fault = ri[K.OI_FAULT]
            stats.event_wall = t
            stats.drop(frame, K.REASONS[ri[K.OI_AUX]], ri[K.OI_NODE],
                       self.faults[fault] if fault >= 0 else None)
        elif code == K.O_RARE:
            u, v, frame = self._rare.pop(ri[K.OI_SEQ])
            if ri[K.OI_AUX] >= 0:  # on its way
                self._scheduled(u, v, frame, ri[K.OI_SEQ], t, ff)
        elif code == K.O_SLOW:  # a received row the lane does not take: the list path
            pol = fi[K.FI_POLICY]
            frame = self._frame(fi, ff, self._recv_policies[pol] if pol >= 0 else None)
            frame[F_FROM] = fi[K.FI_U]
            NodeRuntime.receive_batch(
                self, msgpack.packb([WIRE_VERSION, [[fi[K.FI_V], frame]]], use_bin_type=True),
                self.now_wall, run=False)
        elif code == K.O_WATCH:
            frame = self._frame(fi, ff)
            self._scheduled(fi[K.FI_U], fi[K.FI_V], frame, ri[K.OI_SEQ], t, ff)

    def _scheduled(self, u: int, v: int, frame: Frame, seq: int, due: float,
                   ff: list[float]) -> None:
        """A Python-path frame left its transmitter: hand it over or put it on the heap."""
        frame[F_DUE] = due
        frame[F_WAIT] = ff[K.FF_WAIT]
        frame[F_PROP] = ff[K.FF_PROP]
        owner = self.owner_of[v]
        if owner != self.worker:
            frame[F_FROM] = u
            self.outbox.setdefault(owner, []).append((v, frame))
            self.stats.remote_sent(frame)
            return
        _heappush(self.heap, (due, seq, ARRIVE, (u, v), frame))
        self.stats.in_flight += 1
        if v in self.arrival_watch and self.on_arrival is not None:
            self.on_arrival(u, v, frame, due)

    # --- frames -------------------------------------------------------------------------------

    def _common(self, frame: Frame) -> bool:
        return (not frame[F_ROUTE] and frame[F_REF] is None and not frame[F_PAYLOAD]
                and frame[F_POLICY] in self._policy_index)

    def transmit(self, u: int, v: int, frame: Frame, at_wall: float) -> bool:
        """Put ``frame`` on link u->v at ``at_wall`` (in the lane); a common frame's outcome is
        known once the lane has taken the request, so True means only "queued"."""
        self._seq += 1
        seq = self._seq
        common = self._common(frame)
        self._req_i.append((frame[0], frame[1], frame[2], frame[3], frame[4], frame[5],
                            frame[7], frame[8],
                            self._policy_index[frame[F_POLICY]] if common else 0, u, v,
                            K.REQ_COMMON if common else K.REQ_RARE, seq))
        self._req_f.append((frame[6], frame[F_DUE], frame[F_WAIT], frame[F_PROP], at_wall))
        if common:
            return True
        self._rare[seq] = (u, v, frame)
        self._run_lane(-np.inf, 0, self.now_wall)  # a rare frame's outcome is needed now
        return True

    def backlog(self, u: int, v: int, at_wall: float) -> int:
        """Frames waiting on link u->v."""
        self._drain()
        lane = self.lane
        h = K.tx_find(lane.tkey, u * self.n_nodes + v)
        if lane.tkey[h] < 0:
            return 0
        t = int(lane.tslot[h])
        off, cap, head, cnt = (int(lane.toff[t]), int(lane.tcap[t]), int(lane.thead[t]),
                               int(lane.tcnt[t]))
        ring = [lane.pool[off + (head + i) % cap] for i in range(cnt)]
        return sum(1 for done in ring if done > at_wall)

    def receive_batch(self, payload: bytes, now_wall: float, *, injected: bool = False,
                      topic: str = "frames", run: bool = True) -> None:
        """As NodeRuntime's; columnar batches from other workers go straight into the lane."""
        if injected:
            super().receive_batch(payload, now_wall, injected=True, topic=topic, run=run)
            return
        try:
            body = unpack_batch(payload)
            if body[0] != COLUMNS_VERSION:
                super().receive_batch(payload, now_wall, topic=topic, run=run)
                return
            raw, policies, rare = columns_body(body)
        except ValueError as exc:
            self.stats.malformed(str(exc), topic)
            return
        if rare:
            super().receive_batch(msgpack.packb([WIRE_VERSION, rare], use_bin_type=True),
                                  now_wall, topic=topic, run=False)
        if raw:
            key = tuple(policies)
            if self._rows and key != self._rows_key:
                self._drain()  # rows of another sender's policy list: take these first
            pol = self._recv_maps.get(key)
            if pol is None:
                pol = np.array([self._policy_index.get(None, -1)]
                               + [self._policy_index.get(p, -1) for p in policies],
                               dtype=np.int64)
                self._recv_maps[key] = pol
            self._rows.append(raw)
            self._rows_key, self._rows_pol, self._recv_policies = key, pol, policies
            self._rows_topic = topic
        if run:
            self.run_due(now_wall)

    # --- hand-over ----------------------------------------------------------------------------

    def flush(self) -> None:
        """Send what was handed over this turn: one columnar batch per worker (and batch size
        limit), rare frames beside the rows."""
        self._drain()
        if self.lane.meta[K.M_HROWS]:
            self._take_hand()
        if not self._out_rows and not self.outbox:
            return
        out_rows, self._out_rows = self._out_rows, {}
        outbox, self.outbox = self.outbox, {}
        self._outbox_deadline = float("inf")
        if not self.connected():
            for w, blocks in out_rows.items():
                for block in blocks:
                    outbox.setdefault(w, []).extend(
                        (to, frame) for to, frame in self._items(block))
            for items in outbox.values():
                for _v, frame in items:
                    self.stats.drop(frame, "fault", -1, self.broker_fault_id)
            self._broker_down = True
            return
        if self._broker_down:
            self._broker_down = False
            self.broker_fault_id = BROKER_FAULT
        policies = self.policies
        for worker in sorted(set(out_rows) | set(outbox)):
            blocks = out_rows.get(worker, [])
            rare = [[v, frame] for v, frame in outbox.get(worker, [])]
            for at in range(0, len(rare), MAX_BATCH_FRAMES // 2):
                self.send(worker, encode_columns(b"", policies, rare[at:at + MAX_BATCH_FRAMES
                                                                  // 2], self._packer))
            for block in blocks:  # each under HAND_ROWS rows
                self.send(worker, encode_columns(block, policies, [], self._packer))

    def _items(self, block: bytes) -> list[list[Any]]:
        """Handed-over rows as ``[to_node, frame]`` lists."""
        return rows_to_items(np.frombuffer(block, dtype=ROW), self.policies)

    def _flush_due(self, now_wall: float) -> None:
        """End of a turn: send everything handed over (the plane does not coalesce)."""
        self._take_late()
        self._take_counts()
        self.flush()

    def held_frames(self) -> list[Frame]:
        """Frames in flight on this worker's links, lane and Python heap alike, with any not
        yet sent (for the conservation check)."""
        self._drain()
        self._take_hand()
        lane = self.lane
        held = [self._frame(lane.fi[s].tolist(), lane.ff[s].tolist())
                for s in lane.in_flight_slots().tolist()]
        for blocks in self._out_rows.values():
            for block in blocks:
                held += [frame for _to, frame in self._items(block)]
        return held + super().held_frames()

    # --- link state and faults ----------------------------------------------------------------

    def apply_state(self, t_s: float, a: np.ndarray, b: np.ndarray, kind: np.ndarray,
                    delay_s: np.ndarray, destinations: np.ndarray,
                    next_hop: dict[str | None, np.ndarray], *, now: float = 0.0,
                    down: dict[int, str] | None = None,
                    cut: dict[tuple[int, int], str] | None = None,
                    degraded: dict[tuple[int, int], tuple[float, float, float, str]] | None = None,
                    blame: str | None = None) -> None:
        """As NodeRuntime's, and the lane's copy of links, tables and faults."""
        self._drain()
        lane = self.lane
        n = self.n_nodes
        for name in next_hop:
            self._policy(name)
        super().apply_state(t_s, a, b, kind, delay_s, destinations, next_hop, now=now,
                            down=down, cut=cut, degraded=degraded, blame=blame)
        lane.set_links(a, b, kind, delay_s,
                       {pair: (x_loss, x_delay, cap, self._fault(f))
                        for pair, (x_loss, x_delay, cap, f) in self.degraded.items()})
        lane.set_cut(list(self.cut), [self._fault(f) for f in self.cut.values()])
        dest_row = np.full(n, -1, dtype=np.int64)
        dest_row[np.asarray(destinations, dtype=np.int64)] = np.arange(len(destinations))
        lane.dest_row = dest_row
        table = np.full((len(self.policies), max(1, len(destinations)), n), -1, dtype=np.int64)
        for name, tab in next_hop.items():
            if len(destinations):
                table[self._policy_index[name]] = tab
        lane.set_table(table)
        for target, faults in ((lane.down_all, self.down_all), (lane.down_local,
                                                                 self.down_nodes),
                               (lane.cut_node, self.cut_at_node)):
            target[:] = -1
            for node, fault in faults.items():
                target[node] = self._fault(fault)
        lane.blame = self._fault(self.blame or "fault")
        self._sync_watch()

    def _sync_watch(self) -> None:
        """The lane's copy of ``arrival_watch`` (read at each state: the pacer sets it once)."""
        if self.arrival_watch != self._lane_watch:
            self.lane.watch[:] = 0
            self.lane.watch[list(self.arrival_watch)] = 1
            self._lane_watch = self.arrival_watch

    def _fail_nodes(self, failed: dict[int, str], at_wall: float) -> None:
        """As NodeRuntime's, for the lane's frames and transmitters too."""
        super()._fail_nodes(failed, at_wall)
        lane = self.lane
        slots = lane.in_flight_slots()
        if len(slots):
            u = lane.fi[slots, K.FI_U]
            hit = np.isin(u, list(failed))
            for s in slots[hit].tolist():
                frame = self._frame(lane.fi[s].tolist(), lane.ff[s].tolist())
                node = int(lane.fi[s, K.FI_U])
                self.stats.drop(frame, "fault", node, failed[node])
            if hit.any():
                lane.remove(~hit)
                self.stats.in_flight += int(lane.meta[K.M_INFLIGHT])
                lane.meta[K.M_INFLIGHT] = 0
        lane.reset_transmitters(np.array(list(failed), dtype=np.int64))
