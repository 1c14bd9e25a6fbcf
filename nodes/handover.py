"""Frames between workers: the outbox of hand-overs, and the batches other workers send.

A frame bound for a node of another worker leaves as soon as its transmitter is done with it,
stamped with its due arrival there (nodes/runtime.py); :class:`Handover` (a mixin of
:class:`nodes.runtime.NodeRuntime`) collects those in an outbox per worker and sends each turn's
as one batch per worker (or, coalescing, lets them wait up to a guard before their due time). A
received batch puts its frames in flight here until they are due. With the broker connection
down, what would be sent is dropped, charged to the broker outage.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from typing import Any

from nodes.fault_books import ARRIVE
from nodes.stats import Stats
from orbitmesh.protocol.wire import (
    F_DUE,
    F_FROM,
    MAX_BATCH_FRAMES,
    batch_packer,
    decode_batch,
    encode_batch,
)

BROKER_FAULT = "unplanned_broker_outage"
"""Fault id of frames a worker could not hand over because its broker connection was down and
no broker_outage fault was in force (the launcher names that event when its broker dies)."""
Frame = list[Any]


class Handover:
    """Mixin: the outbox, sending it, and receiving other workers' batches."""

    stats: Stats
    local: set[int]
    heap: list[tuple[float, int, int, Any, Any]]
    n_nodes: int
    send: Callable[[int, bytes], None]
    _seq: int
    arrival_watch: frozenset[int]
    on_arrival: Callable[[int, int, Frame, float], None] | None

    def _init_handover(self) -> None:
        self.outbox: dict[int, list[tuple[int, Frame]]] = {}
        self._packer = batch_packer()
        self.handover_guard_s: float | None = None
        """Coalesced hand-over (None: off, every turn sends what it made). A frame for another
        worker may then wait in the outbox until this many wall seconds before its due arrival
        there, so the frames of several turns leave in one message; one due sooner than that
        leaves at the end of its turn, as without coalescing. A frame that waits is sent by a
        later turn, often the wake-up at its deadline, and a sleeping worker wakes late by the
        machine's timer floor (bench/timers.py: p99 ~2 ms on the 2-vCPU VMs): the guard must
        cover that plus the broker's transit, or coalescing makes frames late at the next hop.
        With 1 ms hops (bench/messaging.py) no safe guard leaves room to wait."""
        self._outbox_deadline = float("inf")
        """Earliest ``due - handover_guard_s`` of the frames in the outbox."""
        self._flush_wake = float("inf")
        """Due time of the wake-up on the heap that sends the outbox (inf: none)."""
        self.connected: Callable[[], bool] = lambda: True
        self.broker_fault_id = BROKER_FAULT
        self._broker_down = False

    def receive(self, v: int, frame: Frame, at_wall: float) -> None:
        """A frame reaches node ``v`` at ``at_wall`` (nodes/runtime.py)."""
        raise NotImplementedError

    def run_due(self, now_wall: float) -> None:
        """Handle everything due by ``now_wall`` (nodes/runtime.py)."""
        raise NotImplementedError

    def call_at(self, due_wall: float, fn: Callable[[float], None], *,
                first: bool = False) -> None:
        """Run ``fn(due_wall)`` once ``due_wall`` has come (nodes/runtime.py)."""
        raise NotImplementedError

    def receive_batch(self, payload: bytes, now_wall: float, *, injected: bool = False,
                      topic: str = "frames", run: bool = True) -> None:
        """Frames handed over by another worker (put in flight until they are due here), or
        ``injected`` by a client into a node's inbox (offered there, now). Malformed input —
        the whole batch, or one frame of it — is counted and logged, never fatal."""
        try:
            items, refused = decode_batch(payload, self.n_nodes)
        except ValueError as exc:
            self.stats.malformed(str(exc), topic)
            return
        for why in refused:
            self.stats.malformed(why, topic)
        stats = self.stats
        local, heap = self.local, self.heap
        for v, frame in items:
            if v not in local:
                stats.malformed(f"frame for node {v}, not hosted here", topic)
                continue
            if injected:
                frame[F_DUE] = 0.0
                frame[F_FROM] = -1
                stats.clock(now_wall)
                stats.offer(frame)
                self.receive(v, frame, now_wall)
                continue
            u = frame[F_FROM]
            if u < 0 or frame[F_DUE] <= 0.0:
                stats.malformed("handed-over frame without its link or due time", topic)
                continue
            stats.remote_received(frame)
            stats.in_flight += 1
            self._seq += 1
            heapq.heappush(heap, (frame[F_DUE], self._seq, ARRIVE, (u, v), frame))
            if v in self.arrival_watch and self.on_arrival is not None:
                self.on_arrival(u, v, frame, frame[F_DUE])
        if run:
            self.run_due(now_wall)

    def _flush_due(self, now_wall: float) -> None:
        """End of a turn: send the outbox, unless coalescing lets every frame in it wait; then
        make sure of a wake-up at the first frame's deadline (the worker arms its timer at
        :attr:`next_due`), so no frame waits past it."""
        if not self.outbox:
            return
        deadline = self._outbox_deadline
        if self.handover_guard_s is None or now_wall >= deadline:
            self.flush()
        elif deadline < self._flush_wake:
            self._flush_wake = deadline
            self.call_at(deadline, self._woken_to_flush)

    def _woken_to_flush(self, at_wall: float) -> None:
        """The outbox's deadline has come: :meth:`run_due` sends it at the end of this turn."""
        if at_wall >= self._flush_wake:
            self._flush_wake = float("inf")

    def flush(self) -> None:
        """Send batched frames to the workers that host their next hops."""
        if not self.outbox:
            return
        outbox, self.outbox = self.outbox, {}
        self._outbox_deadline = float("inf")
        if not self.connected():
            for items in outbox.values():
                for _v, frame in items:
                    self.stats.drop(frame, "fault", -1, self.broker_fault_id)
            self._broker_down = True
            return
        if self._broker_down:  # back: the next outage is nobody's until a fault says so
            self._broker_down = False
            self.broker_fault_id = BROKER_FAULT
        for worker, items in outbox.items():
            for at in range(0, len(items), MAX_BATCH_FRAMES):  # receivers refuse longer ones
                self.send(worker, encode_batch(items[at:at + MAX_BATCH_FRAMES], self._packer))

    def held_frames(self) -> list[Frame]:
        """Frames in flight on this worker's links (for the conservation check), with any
        that coalescing still holds in the outbox (counted as sent, never received)."""
        return ([item[4] for item in self.heap if item[2] == ARRIVE]
                + [frame for items in self.outbox.values() for _v, frame in items])
