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
from nodes.plane_books import PlaneBooks
from nodes.plane_lane import Lane
from nodes.runtime import ARRIVE, BROKER_FAULT, Frame, _heappop
from nodes.stats import Stats
from orbitmesh.core.topology import Topology
from orbitmesh.protocol.wire import (
    COLUMNS_VERSION,
    F_DUE,
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
LATE_BATCH = 1024
"""Hop lateness samples gathered before a turn folds them into the stats."""
LATE_EVERY_S = 0.05
"""Wall seconds at most between two folds (the heartbeat's window must see every hop)."""
_FRAME_I = slice(K.OI_FRAME, K.OI_FRAME + K.FI_COLS)
_LANE_OUT = (K.M_OUT, K.M_LOG, K.M_NLATE, K.M_INFLIGHT, K.M_HFULL)


def _load_kernels(lane: Lane, sink: Callable[[Lane], None]) -> None:
    """Call every compiled function with each signature a run uses (compiling it when
    numba's cache has none)."""
    lane.run(-np.inf, 0, 0.0, sink=sink)
    no_rows = np.frombuffer(b"", dtype=np.int64).reshape(-1, K.W_COLS)  # read-only: its own
    lane.run(-np.inf, 0, 0.0, rows=no_rows, rows_pol=np.full(1, -1, dtype=np.int64),  # signature
             sink=sink)
    K.backlog_packed(lane.I, lane.F, lane.lay, 0, 0.0)
    K.tx_rehash(np.full(16, -1, dtype=np.int64), np.zeros(16, dtype=np.int64),
                np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))


def compile_plane() -> None:
    """Compile the batched plane's kernels into numba's cache (``make venv`` does it once: cold,
    it takes about a minute, which a run should not pay)."""
    none3 = (0.0, 0.0, 0.0)
    lane = Lane(2, 0, np.zeros(2, dtype=np.int64), workers=1, flows=0, speed=1.0, seed=0,
                rate_bps=(1e6, 1e6, 1e6), loss=none3, queue_frames=(4, 4, 4))
    _load_kernels(lane, lambda _lane: None)


class PlaneRuntime(PlaneBooks):
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
        self._late_taken_wall = 0.0
        self._req_keys: set[int] = set()
        """Links (u * n + v) of the queued transmit requests."""
        self._payloads: dict[int, bytes] = {}
        """Payload key -> bytes of the lane's frames that carry one (telemetry, for one)."""
        self._pay_next = 0
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
        self.min_delay_wall = 0.0
        """Shortest link delay of the state in force, in wall seconds (0: none known)."""
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
        self.stats.before_read.append(self.sync_stats)
        # Load the compiled kernel now (numba's cache: ~1 s, more under load), while the worker
        # is starting, not at the first frame of the run.
        _load_kernels(self.lane, self._sink)

    def sync_stats(self) -> None:
        """Fold what the lane counted (hop lateness, remote_in / remote_out) into the stats."""
        self._drain()
        self._take_late()
        self._take_counts(self._rows_topic)

    # --- time ---------------------------------------------------------------------------------

    @property
    def next_due(self) -> float | None:
        """Wall time of the earliest pending item, on either heap."""
        if self._rows:  # received rows count from when they arrived: put them on the lane heap
            self._drain()
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
        lane = self.lane
        while True:
            if heap and heap[0][0] <= now_wall:
                bound_due, bound_seq = heap[0][0], heap[0][1]
                # Queued transmits may wait for the next pass while this Python event comes
                # before anything they can make happen (their frames arrive one link delay
                # after they leave at the earliest) and before the lane's own next event: the
                # outcome is the same, with one lane call for many originations.
                if not (self._req_i and not self._rows
                        and bound_due < self._req_f[0][-1] + self.min_delay_wall
                        and (not lane.meta[K.M_HEAP] or bound_due < lane.hdue[0])):
                    self._run_lane(bound_due, bound_seq, now_wall)
            else:
                self._run_lane(now_wall, _NO_SEQ, now_wall)
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
            self._req_keys.clear()
        if self._rows:
            raw = self._rows[0] if len(self._rows) == 1 else b"".join(self._rows)
            rows = np.frombuffer(raw, dtype=np.int64).reshape(-1, K.W_COLS)
            self._rows = []
        elif req_i is None and (not lane.meta[K.M_HEAP] or lane.hdue[0] > now_wall
                                or lane.hdue[0] > bound_due
                                or (lane.hdue[0] == bound_due and lane.hseq[0] > bound_seq)):
            return  # nothing to take and nothing due before the bound: the call would be void
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

    # --- frames -------------------------------------------------------------------------------

    def _common(self, frame: Frame) -> bool:
        return (not frame[F_ROUTE] and frame[F_REF] is None
                and frame[F_POLICY] in self._policy_index)

    def transmit(self, u: int, v: int, frame: Frame, at_wall: float) -> bool:
        """Put ``frame`` on link u->v at ``at_wall`` (in the lane); a common frame's outcome is
        known once the lane has taken the request, so True means only "queued"."""
        self._seq += 1
        seq = self._seq
        common = self._common(frame)
        pay = -1
        if common and frame[F_PAYLOAD]:  # the bytes stay here; the lane carries their key
            pay = self._pay_next
            self._pay_next = pay + 1
            self._payloads[pay] = frame[F_PAYLOAD]
        self._req_i.append((frame[0], frame[1], frame[2], frame[3], frame[4], frame[5],
                            frame[7], frame[8],
                            self._policy_index[frame[F_POLICY]] if common else 0, u, v,
                            K.REQ_COMMON if common else K.REQ_RARE, seq, pay))
        self._req_f.append((frame[6], frame[F_DUE], frame[F_WAIT], frame[F_PROP], at_wall))
        self._req_keys.add(u * self.n_nodes + v)
        if common:
            return True
        self._rare[seq] = (u, v, frame)
        self._run_lane(-np.inf, 0, self.now_wall)  # a rare frame's outcome is needed now
        return True

    def backlog(self, u: int, v: int, at_wall: float) -> int:
        """Frames waiting on link u->v."""
        key = u * self.n_nodes + v
        # Only a queued transmit on this very link changes its ring (received rows go to the
        # lane heap, and lane events before now have run): a satellite asking before each
        # telemetry frame costs no lane pass.
        if key in self._req_keys:
            self._drain()
        lane = self.lane
        if lane.dirty:
            lane.pack()
        return int(K.backlog_packed(lane.I, lane.F, lane.lay, key, at_wall))

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
        """End of a turn: send everything handed over (the plane does not coalesce); fold hop
        lateness into the stats when enough gathered or LATE_EVERY_S passed (the heartbeat
        reads the window's worst, so it must not wait longer)."""
        if (self.lane.meta[K.M_NLATE] >= LATE_BATCH
                or now_wall - self._late_taken_wall >= LATE_EVERY_S):
            self._late_taken_wall = now_wall
            self._take_late()
        self.flush()

    def held_frames(self) -> list[Frame]:
        """Frames in flight on this worker's links, lane and Python heap alike, with any not
        yet sent (for the conservation check)."""
        self.sync_stats()
        self._take_hand()
        lane = self.lane
        held = [self._frame(lane.fi[s].tolist(), lane.ff[s].tolist(), pay=int(lane.fpay[s]),
                            keep=True)
                for s in lane.in_flight_slots().tolist()]
        for blocks in self._out_rows.values():
            for block in blocks:
                held += [frame for _to, frame in self._items(block)]
        return held + super().held_frames()
