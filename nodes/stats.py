"""Counters, streaming summaries and the frame-event log of one worker.

Every frame that a node offers ends in exactly one of: delivered, dropped (with a reason), or
still held (in flight on a link, or in an on-board store) when the run ends. Frames a source
could not offer because a fault had taken it down are counted apart, per fault
(``suppressed``), so that a fault at a flow's source shows in the books. Workers write their
``Stats`` as JSON; orbitmesh/run/report.py merges them into summary.json.

Figures that grow with traffic (latencies, lateness, ages) are :class:`Histogram` summaries, so a
worker's memory stays flat however long the run.

Times: events are stamped with the wall time at which they happen *in the emulation* (a frame's
due time), not when the worker got round to them; how late the worker was is measured apart, in
scenario ms (``late_ms``, the emulator's own excess over the modelled network).

Event log records (msgpack arrays, one per event, appended to ``events-w<k>.msgpack``):
``["offer", wall, id, flow, kind, src, dst, size]`` (an acknowledgement's ends with the id of
the telecommand it acknowledges), ``["deliver", wall, id, flow, node, hops,
latency_ms, late_ms, propagation_ms, waited_ms]``, ``["drop", wall, id, flow, node_or_-1, reason,
fault_id_or_None]``, ``["hop", arrival_wall, id, flow, from_node, to_node, size]``,
``["suppress", wall, flow, src, fault_id]``, ``["packet", wall, id, bytes]`` (after the offer of
a frame from an IP endpoint: the packet itself, up to ``capture_bytes``). docs/traces.md has
the format.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from typing import IO, Any

import msgpack
import numpy as np

from orbitmesh.core.histogram import Histogram
from orbitmesh.protocol.wire import (
    ACK,
    F_CREATED,
    F_DST,
    F_FLOW,
    F_HOPS,
    F_ID,
    F_KIND,
    F_PAYLOAD,
    F_PROP,
    F_REF,
    F_SIZE,
    F_SRC,
    F_WAIT,
    FLOW_ENDPOINT,
)

log = logging.getLogger("orbitmesh.worker")
CAPTURE_BYTES = 256
"""Bytes of each endpoint packet kept in the trace by default (IP, ICMP/TCP/UDP headers and
the start of the data; a run's scenario may ask for more, up to 65,535)."""
MARK_EVERY_B = 65_536
"""A record start is remembered every this many bytes of event log: where a cut looks from."""


class FlowStats:
    """Counters of one flow on one worker."""

    __slots__ = ("delivered", "dropped", "geometric_ms", "hops", "late_ms", "latency_ms",
                 "offered", "remote_in", "remote_out", "suppressed")

    def __init__(self) -> None:
        self.offered = 0
        self.delivered = 0
        self.dropped: Counter[str] = Counter()
        self.suppressed: Counter[str] = Counter()
        self.latency_ms = Histogram()
        self.late_ms = Histogram()
        self.geometric_ms = Histogram()
        self.hops = 0
        self.remote_out = 0
        self.remote_in = 0

    def as_dict(self, samples: bool = True) -> dict[str, Any]:
        """JSON-ready form (``samples=False``: counters only)."""
        out: dict[str, Any] = {
            "offered": self.offered, "delivered": self.delivered, "dropped": dict(self.dropped),
            "suppressed": dict(self.suppressed), "hops": self.hops,
            "remote_out": self.remote_out, "remote_in": self.remote_in}
        if samples:
            out |= {"latency_ms": self.latency_ms.to_dict(), "late_ms": self.late_ms.to_dict(),
                    "geometric_ms": self.geometric_ms.to_dict()}
        return out


class Stats:
    """Everything one worker counts."""

    def __init__(self, events: IO[bytes] | None = None, *, speed: float = 1.0) -> None:
        self.speed = speed
        self.flows: defaultdict[int, FlowStats] = defaultdict(FlowStats)
        self.hop_late_ms = Histogram()
        """How late each hop was handled, in scenario ms (the emulator's excess)."""
        self.malformed_count = 0
        self.malformed_by_topic: Counter[str] = Counter()
        self.capture_bytes = CAPTURE_BYTES
        """How much of an endpoint packet the event log keeps (0: none)."""
        self.internal_errors = 0
        """Exceptions of our own code that the worker survived (logged with their traceback)."""
        self.in_flight = 0
        self.held_on_board = 0
        self.telemetry_age_ms = Histogram()
        self.telecommand_rtt_ms = Histogram()
        self.telecommands_sent = 0
        self.telecommands_acked = 0
        self.max_backlog = 0
        self.link_apply_late_ms = Histogram()
        """How late each link state was applied, in scenario ms."""
        self.window_late_ms = 0.0
        """Largest hop lateness since the last heartbeat (scenario ms), for live warnings."""
        self.start_late_ms = 0.0
        """How late (scenario ms) this worker learnt the clock after scenario time 0."""
        self.fault_drops: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self.fault_suppressed: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self._events = events
        self._packer = msgpack.Packer(use_bin_type=True) if events is not None else None
        self.events_truncated_at: dict[str, Any] | None = None
        """Where the event log stopped because it could not be written (a full disk)."""
        self._written_b = 0
        self._marks: deque[int] = deque([0], maxlen=64)
        self.event_wall = 0.0
        self.now_wall = 0.0
        """Wall time at which the worker is really handling the current event."""
        self.before_read: list[Callable[[], None]] = []
        """Called before the counters are read (:meth:`as_dict`): nodes/plane.py's lane keeps
        some counts in arrays and folds them in then, not on every loop turn."""

    def clock(self, event_wall: float, now_wall: float | None = None) -> None:
        """Wall time stamped on the events that follow (and the real time, if it differs)."""
        self.event_wall = event_wall
        self.now_wall = event_wall if now_wall is None else now_wall

    def _event(self, record: list[Any]) -> None:
        events, packer = self._events, self._packer
        if events is not None and packer is not None:
            data = packer.pack(record)
            written_b = self._written_b
            if written_b - self._marks[-1] >= MARK_EVERY_B:
                self._marks.append(written_b)
            try:
                events.write(data)
            except OSError as exc:
                self._events_failed(exc)
                return
            self._written_b = written_b + len(data)

    def close_events(self) -> None:
        """Flush and close the event log (a write error here is a truncation, not a crash)."""
        if self._events is not None:
            try:
                self._events.close()
            except OSError as exc:
                self._events_failed(exc)

    def _events_failed(self, exc: OSError) -> None:
        """Stop the event log at its last whole record on disk; counting goes on."""
        events, self._events, self._packer = self._events, None, None
        name = getattr(events, "name", None)
        with contextlib.suppress(OSError):
            if events is not None:
                events.close()  # its buffer cannot be written either: that tail is lost
        kept_b = _cut_at_record(name, self._marks) if isinstance(name, str) else None
        self.events_truncated_at = {"bytes": kept_b, "wall": self.event_wall,
                                    "error": exc.strerror or str(exc)}
        log.error("event log %s: %s; no more events are written (kept %s bytes of whole "
                  "records); counting goes on and the trace will say it was cut short",
                  name, exc.strerror or exc, kept_b)

    def offer(self, frame: list[Any]) -> None:
        """A node created ``frame``."""
        self.flows[frame[F_FLOW]].offered += 1
        record = ["offer", self.event_wall, frame[F_ID], frame[F_FLOW], frame[F_KIND],
                  frame[F_SRC], frame[F_DST], frame[F_SIZE]]
        if frame[F_KIND] == ACK and frame[F_REF]:  # the telecommand it acknowledges: pairs them
            record.append(frame[F_REF][0])
        self._event(record)
        if frame[F_FLOW] == FLOW_ENDPOINT and frame[F_PAYLOAD] and self.capture_bytes:
            # A real program's packet: kept (up to capture_bytes) so exports show it as it was.
            self._event(["packet", self.event_wall, frame[F_ID],
                         frame[F_PAYLOAD][:self.capture_bytes]])

    def suppress(self, flow: int, src: int, fault: str) -> None:
        """A source could not offer a frame of ``flow`` because ``fault`` had taken it down."""
        self.flows[flow].suppressed[fault] += 1
        self.fault_suppressed[fault][flow] += 1
        self._event(["suppress", self.event_wall, flow, src, fault])

    def deliver(self, frame: list[Any], at_wall: float) -> None:
        """``frame`` reached its destination at (emulated) wall time ``at_wall``."""
        fs = self.flows[frame[F_FLOW]]
        fs.delivered += 1
        scale_ms = self.speed * 1000.0
        latency_ms = (at_wall - frame[F_CREATED]) * scale_ms
        late_ms = max(0.0, self.now_wall - at_wall) * scale_ms
        geometric_ms = frame[F_PROP] * 1000.0
        fs.latency_ms.add(latency_ms)
        fs.late_ms.add(late_ms)
        fs.geometric_ms.add(geometric_ms)
        fs.hops += frame[F_HOPS]
        self._event(["deliver", at_wall, frame[F_ID], frame[F_FLOW], frame[F_DST], frame[F_HOPS],
                     latency_ms, late_ms, geometric_ms, frame[F_WAIT] * 1000.0])

    def drop(self, frame: list[Any], reason: str, node: int = -1,
             fault: str | None = None) -> None:
        """``frame`` was dropped for ``reason`` (and, for reason ``fault``, by fault ``fault``)."""
        self.flows[frame[F_FLOW]].dropped[reason] += 1
        if fault is not None:
            self.fault_drops[fault][frame[F_FLOW]] += 1
        self._event(["drop", self.event_wall, frame[F_ID], frame[F_FLOW], node, reason, fault])

    def hop(self, frame: list[Any], u: int, v: int, arrival_wall: float) -> None:
        """``frame`` crossed link u->v, arriving at ``arrival_wall``; how late we are counts."""
        late_ms = (self.now_wall - arrival_wall) * self.speed * 1000.0
        self.window_late_ms = max(self.window_late_ms, late_ms)
        self.hop_late_ms.add(late_ms)
        if self._packer is not None:
            self._event(["hop", arrival_wall, frame[F_ID], frame[F_FLOW], u, v, frame[F_SIZE]])

    def hop_block(self, late_ms: np.ndarray, records: bytes | None) -> None:
        """Many hops at once (nodes/plane.py): their lateness, and their ``hop`` records
        already packed (:func:`hop_records`)."""
        if not len(late_ms):
            return
        self.window_late_ms = max(self.window_late_ms, float(late_ms.max()))
        self.hop_late_ms.add_many(late_ms)
        if records:
            self.write_raw(records)

    def write_raw(self, data: bytes) -> None:
        """Append whole packed records to the event log."""
        if self._events is None:
            return
        if self._written_b - self._marks[-1] >= MARK_EVERY_B:
            self._marks.append(self._written_b)
        try:
            self._events.write(data)
        except OSError as exc:
            self._events_failed(exc)
            return
        self._written_b += len(data)

    @property
    def logging_events(self) -> bool:
        """True while the event log is being written."""
        return self._packer is not None

    def remote_sent(self, frame: list[Any]) -> None:
        """``frame`` left for another worker."""
        self.flows[frame[F_FLOW]].remote_out += 1

    def remote_received(self, frame: list[Any]) -> None:
        """``frame`` came from another worker."""
        self.flows[frame[F_FLOW]].remote_in += 1

    def malformed(self, why: str, topic: str = "frames") -> None:
        """A malformed payload (or one bad frame of a batch); counted and logged, never fatal."""
        self.malformed_count += 1
        self.malformed_by_topic[topic] += 1
        if self.malformed_count <= 10:
            log.warning("malformed payload ignored (%d so far): %s", self.malformed_count, why)

    def as_dict(self, samples: bool = True) -> dict[str, Any]:
        """JSON-ready form of everything counted (``samples=False``: counters only)."""
        for sync in self.before_read:
            sync()
        out: dict[str, Any] = {
            "flows": {str(k): v.as_dict(samples) for k, v in sorted(self.flows.items())},
            "malformed": self.malformed_count,
            "malformed_by_topic": dict(self.malformed_by_topic),
            "internal_errors": self.internal_errors,
            "telecommands_sent": self.telecommands_sent,
            "telecommands_acked": self.telecommands_acked,
            "max_backlog": self.max_backlog,
            "start_late_ms": self.start_late_ms,
            "samples": samples,
            "fault_drops": {f: {str(k): v for k, v in c.items()}
                            for f, c in self.fault_drops.items()},
            "fault_suppressed": {f: {str(k): v for k, v in c.items()}
                                 for f, c in self.fault_suppressed.items()},
        }
        if self.events_truncated_at is not None:
            out["events_truncated_at"] = self.events_truncated_at
        if samples:
            out |= {"hop_late_ms": self.hop_late_ms.to_dict(),
                    "telemetry_age_ms": self.telemetry_age_ms.to_dict(),
                    "telecommand_rtt_ms": self.telecommand_rtt_ms.to_dict(),
                    "link_apply_late_ms": self.link_apply_late_ms.to_dict()}
        return out


def _cut_at_record(path: str, marks: deque[int]) -> int | None:
    """Truncate a msgpack stream to its last whole record; its new length (None: not possible).

    Parsing starts at the latest remembered record start that is on disk, so a cut costs at most
    a few hundred kB of reading however long the log.
    """
    try:
        with open(path, "r+b") as f:
            size = f.seek(0, 2)
            start = max((m for m in marks if m <= size), default=0)
            f.seek(start)
            unpacker = msgpack.Unpacker(f, raw=False)
            end = start
            with contextlib.suppress(ValueError, msgpack.UnpackException):
                for _record in unpacker:
                    end = start + unpacker.tell()
            f.truncate(end)
            return end
    except OSError:
        return None


HOP_RECORD = np.dtype([("head", "u1"), ("tag", "S4"), ("tt", "u1"), ("t", ">f8"),
                       ("ti", "u1"), ("id", ">i8"), ("tf", "u1"), ("flow", ">i8"),
                       ("tu", "u1"), ("u", ">i8"), ("tv", "u1"), ("v", ">i8"),
                       ("ts", "u1"), ("size", ">i8")])
"""``["hop", arrival_wall, id, flow, from, to, size]`` as fixed-width msgpack (float64 and
int64 markers): any msgpack reader reads it as the record Stats.hop writes."""


def hop_records(arrival_wall: np.ndarray, ids: np.ndarray, flows: np.ndarray, u: np.ndarray,
                v: np.ndarray, size: np.ndarray) -> bytes:
    """Packed ``hop`` records for many hops, one array operation per field."""
    out = np.empty(len(ids), dtype=HOP_RECORD)
    out["head"], out["tag"], out["tt"], out["ti"] = 0x97, b"\xa3hop", 0xCB, 0xD3
    out["tf"], out["tu"], out["tv"], out["ts"] = 0xD3, 0xD3, 0xD3, 0xD3
    out["t"], out["id"], out["flow"] = arrival_wall, ids, flows
    out["u"], out["v"], out["size"] = u, v, size
    return out.tobytes()
