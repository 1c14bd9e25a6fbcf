"""Counters, samples and the frame-event log of one worker.

Every frame that a node offers ends in exactly one of: delivered, dropped (with a reason), or
still held (in flight on a link, or in an on-board store) when the run ends. Workers write their
``Stats`` as JSON at the end; orbitmesh/run/report.py merges them into summary.json.

Event log records (msgpack arrays, one per event, appended to ``events-w<k>.msgpack``):
``["offer", wall, id, flow, kind, src, dst, size]``, ``["deliver", wall, id, flow, node, hops,
latency_ms]``, ``["drop", wall, id, flow, node_or_-1, reason, fault_id_or_None]``,
``["hop", arrival_wall, id, flow, from_node, to_node, size]``. docs/traces.md has the format.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from typing import IO, Any

import msgpack

from orbitmesh.protocol.wire import F_CREATED, F_DST, F_FLOW, F_HOPS, F_ID, F_KIND, F_SIZE, F_SRC

log = logging.getLogger("orbitmesh.worker")


class FlowStats:
    """Counters of one flow on one worker."""

    __slots__ = ("delivered", "dropped", "hops", "latency_ms", "offered", "remote_in",
                 "remote_out")

    def __init__(self) -> None:
        self.offered = 0
        self.delivered = 0
        self.dropped: Counter[str] = Counter()
        self.latency_ms: list[float] = []
        self.hops = 0
        self.remote_out = 0
        self.remote_in = 0

    def as_dict(self, samples: bool = True) -> dict[str, Any]:
        """JSON-ready form (``samples=False``: counters only)."""
        return {"offered": self.offered, "delivered": self.delivered,
                "dropped": dict(self.dropped),
                "latency_ms": self.latency_ms if samples else [], "hops": self.hops,
                "remote_out": self.remote_out, "remote_in": self.remote_in}


class Stats:
    """Everything one worker counts."""

    def __init__(self, events: IO[bytes] | None = None) -> None:
        self.flows: defaultdict[int, FlowStats] = defaultdict(FlowStats)
        self.accuracy_ms: list[float] = []
        self.malformed_count = 0
        self.in_flight = 0
        self.held_on_board = 0
        self.telemetry_age_ms: list[float] = []
        self.telecommand_rtt_ms: list[float] = []
        self.telecommands_sent = 0
        self.telecommands_acked = 0
        self.max_backlog = 0
        self.link_apply_late_ms: list[float] = []
        self.fault_drops: defaultdict[str, Counter[int]] = defaultdict(Counter)
        self._events = events
        self._packer = msgpack.Packer(use_bin_type=True) if events is not None else None
        self._now = 0.0

    def clock(self, now: float) -> None:
        """Wall time stamped on the events that follow."""
        self._now = now

    def _event(self, record: list[Any]) -> None:
        if self._events is not None and self._packer is not None:
            self._events.write(self._packer.pack(record))

    def offer(self, frame: list[Any]) -> None:
        """A node created ``frame``."""
        self.flows[frame[F_FLOW]].offered += 1
        self._event(["offer", self._now, frame[F_ID], frame[F_FLOW], frame[F_KIND], frame[F_SRC],
                     frame[F_DST], frame[F_SIZE]])

    def deliver(self, frame: list[Any], now: float, speed: float) -> None:
        """``frame`` reached its destination."""
        fs = self.flows[frame[F_FLOW]]
        fs.delivered += 1
        latency_ms = (now - frame[F_CREATED]) * speed * 1000.0
        fs.latency_ms.append(latency_ms)
        fs.hops += frame[F_HOPS]
        self._event(["deliver", now, frame[F_ID], frame[F_FLOW], frame[F_DST], frame[F_HOPS],
                     latency_ms])

    def drop(self, frame: list[Any], reason: str, node: int = -1,
             fault: str | None = None) -> None:
        """``frame`` was dropped for ``reason`` (and, for reason ``fault``, by fault ``fault``)."""
        self.flows[frame[F_FLOW]].dropped[reason] += 1
        if fault is not None:
            self.fault_drops[fault][frame[F_FLOW]] += 1
        self._event(["drop", self._now, frame[F_ID], frame[F_FLOW], node, reason, fault])

    def hop(self, frame: list[Any], u: int, v: int, arrival: float) -> None:
        """``frame`` crossed link u->v, arriving at wall time ``arrival``."""
        if self._events is not None:
            self._event(["hop", arrival, frame[F_ID], frame[F_FLOW], u, v, frame[F_SIZE]])

    def remote_sent(self, frame: list[Any]) -> None:
        """``frame`` left for another worker."""
        self.flows[frame[F_FLOW]].remote_out += 1

    def remote_received(self, frame: list[Any]) -> None:
        """``frame`` came from another worker."""
        self.flows[frame[F_FLOW]].remote_in += 1

    def accuracy(self, late_s: float) -> None:
        """Actual minus intended arrival of one hop."""
        self.accuracy_ms.append(late_s * 1000.0)

    def malformed(self, why: str) -> None:
        """A malformed payload was received; counted and logged, never fatal."""
        self.malformed_count += 1
        if self.malformed_count <= 10:
            log.warning("malformed payload ignored (%d so far): %s", self.malformed_count, why)

    def as_dict(self, samples: bool = True) -> dict[str, Any]:
        """JSON-ready form of everything counted (``samples=False``: counters only)."""
        def keep(values: list[float]) -> list[float]:
            return values if samples else []

        return {
            "flows": {str(k): v.as_dict(samples) for k, v in sorted(self.flows.items())},
            "accuracy_ms": keep(self.accuracy_ms),
            "malformed": self.malformed_count,
            "telemetry_age_ms": keep(self.telemetry_age_ms),
            "telecommand_rtt_ms": keep(self.telecommand_rtt_ms),
            "telecommands_sent": self.telecommands_sent,
            "telecommands_acked": self.telecommands_acked,
            "max_backlog": self.max_backlog,
            "link_apply_late_ms": keep(self.link_apply_late_ms),
            "samples": samples,
            "fault_drops": {f: {str(k): v for k, v in c.items()}
                            for f, c in self.fault_drops.items()},
        }
