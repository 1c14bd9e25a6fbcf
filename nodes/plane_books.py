"""The batched plane's books: what its lane's output means to the stats, and its link state.

:class:`PlaneBooks` is the half of nodes/plane.py's PlaneRuntime that turns the lane's output
records into NodeRuntime's stats, event log and Python-path frames, and copies each link state
(links, tables, faults) into the lane. nodes/plane.py has the other half: time, frames in, and
hand-over.
"""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

from nodes import plane_kernel as K
from nodes.plane_lane import Lane
from nodes.runtime import ARRIVE, Frame, NodeRuntime, _heappush
from orbitmesh.core.destinations import UNROUTED_DESTINATION
from orbitmesh.protocol.wire import F_DUE, F_FROM, F_PROP, F_WAIT, WIRE_VERSION

_FRAME_I = slice(K.OI_FRAME, K.OI_FRAME + K.FI_COLS)


class PlaneBooks(NodeRuntime):
    """Output records and link state of the batched plane (see the module docstring)."""

    lane: Lane
    policies: list[str | None]
    faults: list[str]
    _policy_index: dict[str | None, int]
    _fault_index: dict[str, int]
    _rare: dict[int, tuple[int, int, Frame]]
    _payloads: dict[int, bytes]
    _out_rows: dict[int, list[bytes]]
    _recv_policies: list[str | None]
    _lane_watch: frozenset[int]
    min_delay_wall: float

    def _drain(self) -> None:
        """Take the lane's queued input now (PlaneRuntime's)."""
        raise NotImplementedError

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

    # --- output records -----------------------------------------------------------------------

    def _frame(self, fi: list[int], ff: list[float], policy: Any = False, *, pay: int = -1,
               keep: bool = False) -> Frame:
        """A lane row as the list NodeRuntime passes around; its payload (key ``pay``) leaves
        ``_payloads`` unless ``keep`` (the frame is only looked at)."""
        payload = b"" if pay < 0 else (self._payloads[pay] if keep else self._payloads.pop(pay))
        return [fi[K.FI_ID], fi[K.FI_KIND], fi[K.FI_FLOW], fi[K.FI_SRC], fi[K.FI_DST],
                fi[K.FI_SIZE], ff[K.FF_CREATED], fi[K.FI_HOPS], fi[K.FI_TTL],
                self.policies[fi[K.FI_POLICY]] if policy is False else policy, None,
                ff[K.FF_DUE], None, payload, -1, ff[K.FF_WAIT], ff[K.FF_PROP]]

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
            frame = self._frame(fi, ff, pay=ri[K.OI_PAY])
            stats.deliver(frame, t)
            if self.on_deliver is not None:
                self.on_deliver(ri[K.OI_NODE], frame, t)
        elif code == K.O_DROP:
            rare = self._rare.get(ri[K.OI_SEQ])
            frame = rare[2] if rare is not None else self._frame(fi, ff, pay=ri[K.OI_PAY])
            fault = ri[K.OI_FAULT]
            stats.event_wall = t
            reason = K.REASONS[ri[K.OI_AUX]]
            if reason == "no_route" and self.unrouted(frame):  # left out of the set
                reason = UNROUTED_DESTINATION
            stats.drop(frame, reason, ri[K.OI_NODE], self.faults[fault] if fault >= 0 else None)
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
        elif code == K.O_WATCH or code == K.O_AWAY:  # noqa: PLR1714 (ints, not a set)
            frame = self._frame(fi, ff, pay=ri[K.OI_PAY])
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
        for name in next_hop:
            self._policy(name)
        super().apply_state(t_s, a, b, kind, delay_s, destinations, next_hop, now=now,
                            down=down, cut=cut, degraded=degraded, blame=blame)
        self.min_delay_wall = float(np.min(delay_s)) / self.speed if len(delay_s) else 0.0
        lane.forget_idle(now, 2 * len(a))
        lane.set_links(a, b, kind, delay_s,
                       {pair: (x_loss, x_delay, cap, self._fault(f))
                        for pair, (x_loss, x_delay, cap, f) in self.degraded.items()})
        lane.set_cut(list(self.cut), [self._fault(f) for f in self.cut.values()])
        lane.dest_row[:] = -1
        lane.dest_row[np.asarray(destinations, dtype=np.int64)] = np.arange(len(destinations))
        lane.set_tables(len(self.policies), len(destinations),
                        [(self._policy_index[name], tab) for name, tab in next_hop.items()
                         if len(destinations)])
        for target, faults in ((lane.down_all, self.down_all), (lane.down_local,
                                                                 self.down_nodes),
                               (lane.cut_node, self.cut_at_node)):
            target[:] = -1
            for node, fault in faults.items():
                target[node] = self._fault(fault)
        lane.meta[K.M_BLAME] = self._fault(self.blame or "fault")
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
                frame = self._frame(lane.fi[s].tolist(), lane.ff[s].tolist(),
                                    pay=int(lane.fpay[s]))
                node = int(lane.fi[s, K.FI_U])
                self.stats.drop(frame, "fault", node, failed[node])
            if hit.any():
                lane.remove(~hit)
                self.stats.in_flight += int(lane.meta[K.M_INFLIGHT])
                lane.meta[K.M_INFLIGHT] = 0
        lane.reset_transmitters(np.array(list(failed), dtype=np.int64))
