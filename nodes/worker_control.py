"""What the run's control topics make a worker do: the clock, link states, faults, the end.

:class:`WorkerControl` is a mixin of :class:`nodes.worker.Worker`. The controller's clock starts
the nodes' generators; each link/route state is scheduled on the runtime at the scenario time it
is stamped with (ahead of everything else due then) and its lateness measured; the fault listing
names broker outages; the launcher's ``stop_traffic`` and ``finish`` stop the traffic and the
worker.
"""

from __future__ import annotations

import asyncio

from nodes.roles import Roles
from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from orbitmesh.protocol.messages import ClockMessage, ControlCommand, FaultListing
from orbitmesh.protocol.state import TickSnapshot


class WorkerControl:
    """Mixin: the handlers of the clock, state, faults and launcher topics."""

    runtime: NodeRuntime
    roles: Roles
    stats: Stats
    started: bool
    finished: asyncio.Event
    _pending_state: list[TickSnapshot]
    _seq_in_force: int
    _early: list[tuple[bytes, bool]]
    _window_apply_late_ms: float

    def _on_clock(self, clock: ClockMessage, now: float) -> None:
        if self.started:
            return
        self.runtime.t0_wall = clock.t0_wall
        self.stats.start_late_ms = max(0.0, self.runtime.clock.scenario_s(now)) * 1000.0
        self.started = True
        self.roles.start(max(now, self.runtime.t0_wall))
        for state in self._pending_state:
            self._schedule_state(state, now)
        self._pending_state.clear()

    def _on_state(self, state: TickSnapshot, now: float) -> None:
        if not self.started:
            self._pending_state = [state]  # only the latest matters
            return
        self._schedule_state(state, now)

    def _schedule_state(self, state: TickSnapshot, received_wall: float) -> None:
        rt = self.runtime
        due = rt.wall_at(state.t_s)
        if state.t_s <= rt.state_t_s:
            # The tick in force, re-published because a live fault changed it: it takes effect
            # when it arrives (judging it from its tick's start would call it a tick late).
            due = max(due, received_wall)

        def apply(at: float) -> None:
            if state.t_s < rt.state_t_s:
                return  # an older state arrived late; a newer one is already in force
            if state.t_s == rt.state_t_s and state.seq < self._seq_in_force:
                return  # the tick's earlier copy, run after its re-publication (same instant)
            self._seq_in_force = state.seq
            rt.apply_snapshot(state, at)
            early, self._early = self._early, []
            for payload, injected in early:  # frames that came before any links did
                rt.receive_batch(payload, rt.now_wall, injected=injected,
                                 topic="inbox" if injected else "frames", run=False)
            late_ms = rt.clock.scenario_delay(max(0.0, rt.now_wall - due)) * 1000.0
            self.stats.link_apply_late_ms.add(late_ms)
            self._window_apply_late_ms = max(self._window_apply_late_ms, late_ms)

        rt.call_at(due, apply, first=True)

    def _on_faults(self, listing: FaultListing) -> None:
        """Learn the id of an active broker outage, to label what it makes us drop."""
        for fault in listing.faults:
            if fault.kind == "broker_outage" and fault.active:
                self.runtime.broker_fault_id = fault.id

    def _on_launcher(self, command: ControlCommand) -> None:
        if command.cmd == "stop_traffic":
            self.roles.stopped = True
        elif command.cmd == "finish":
            self.finish()

    def finish(self) -> None:
        """Stop producing traffic and end the run loop (the stats are written on the way out)."""
        self.roles.stopped = True
        self.finished.set()
