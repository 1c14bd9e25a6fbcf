"""A worker process: hosts a shard of nodes on one MQTT connection.

``python -m nodes.worker --scenario S --run-id R --broker-file F --worker K --workers N --out D``

It subscribes to its frame topic, its nodes' inboxes, the run's clock, state and control topics,
reports ``ready`` on its retained status topic (its last will says ``lost``), starts its nodes'
generators once the controller's clock arrives, applies each link/route state at the scenario
time it is stamped with, and on ``finish`` (or SIGTERM/SIGINT) drains what the other workers
sent (nodes/drain.py), writes ``stats-w<K>.json`` and reports ``done``.

Heartbeats, status and the stats file are nodes/worker_books.py's; the process's arguments,
connection and signals nodes/worker_cli.py's (this module's ``__main__`` hands over to it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from nodes.drain import drain_cap_s, drain_frames
from nodes.endpoints import EndpointHost
from nodes.event_loop import precise_loop
from nodes.mcs_bridge import McsBridges
from nodes.roles import Roles
from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from nodes.worker_books import WorkerBooks
from orbitmesh.core.placement import place
from orbitmesh.core.topology import Topology
from orbitmesh.errors import OrbitmeshError
from orbitmesh.protocol.clock import WallClock, WallSource
from orbitmesh.protocol.messages import (
    ClockMessage,
    ControlCommand,
    EndMarker,
    FaultListing,
)
from orbitmesh.protocol.state import TickSnapshot, decode_state
from orbitmesh.protocol.transport import Message, Transport
from orbitmesh.protocol.wire import F_FLOW, WIRE_VERSION, Topics, decode_batch
from orbitmesh.run.files import atomic_write
from orbitmesh.run.launch.netns import read_plan
from orbitmesh.run.trace import read_replay

__all__ = ["DEFAULT_PLANE", "PLANES", "Worker", "precise_loop", "runtime_class"]

log = logging.getLogger("orbitmesh.worker")
FLUSH_TIMEOUT_S = 3.0


PLANES = ("python", "batched")
"""Message planes a worker can run: NodeRuntime (the reference) or nodes/plane.py's
PlaneRuntime (common frames in a compiled lane)."""
DEFAULT_PLANE = "python"
"""Not yet batched: its kernel takes ~56 s to compile cold (a fresh clone, an image without
the warm-up) and ~0.5 s to load, and numba ~1.5 s to import, which a restarted worker pays."""


def runtime_class() -> type[NodeRuntime]:
    """The runtime ``ORBITMESH_PLANE`` asks for (python, the default, or batched)."""
    name = os.environ.get("ORBITMESH_PLANE", DEFAULT_PLANE)
    if name == "python":
        return NodeRuntime
    if name == "batched":
        from nodes.plane import PlaneRuntime  # numba: loaded only by the workers that use it
        return PlaneRuntime
    raise OrbitmeshError(f"ORBITMESH_PLANE={name!r}: expected one of {', '.join(PLANES)}")


class Worker(WorkerBooks):
    """Drives one :class:`NodeRuntime` from asyncio and a transport."""

    def __init__(self, topology: Topology, *, worker: int, workers: int, run_id: str,
                 transport: Transport, out_dir: Path | None, duration_s: float,
                 speed: float, generation: int = 0, placement: str = "blocks",
                 wall: WallSource | None = None) -> None:
        self.wall: WallSource = wall or WallClock()
        self.topology = topology
        self.index = worker
        self.generation = generation
        self.topics = Topics(run_id)
        self._frames_topic = self.topics.worker_frames(worker)
        self.transport = transport
        self.out_dir = out_dir
        self.owner = place(topology, workers, placement)
        tag = f"w{worker}" + (f"-g{generation}" if generation else "")
        self.tag = tag
        events = (out_dir / f"events-{tag}.msgpack").open("wb") if out_dir else None
        self.stats = Stats(events, speed=speed)
        self._events = events
        self.runtime = runtime_class()(topology, worker, self.owner, send=self._send,
                                       speed=speed, seed=topology.scenario.seed,
                                       stats=self.stats)
        self.roles = Roles(self.runtime, duration_s=duration_s, generation=generation,
                           replay=read_replay(out_dir) if out_dir else None)
        connected = getattr(transport, "connected", None)
        if isinstance(connected, asyncio.Event):
            self.runtime.connected = connected.is_set
        self.started = False
        self.finished = asyncio.Event()
        self.workers = workers
        self.drained: dict[int, int] = {}
        self._ends_seen: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due = float("inf")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wall_offset = 0.0
        self._pending_state: list[TickSnapshot] = []
        self._seq_in_force = -1
        """``seq`` of the snapshot in force: a re-publication of the same tick (a live fault)
        outranks the copy it replaces, whichever the loop runs last."""
        self._last_counts = (0, 0.0)
        self._window_apply_late_ms = 0.0
        self._init_books()
        self._early: list[tuple[bytes, bool]] = []
        """Frame batches received before the first link state (a restarted worker's)."""
        self.endpoints: EndpointHost | None = None
        self.mcs: McsBridges | None = None

    # --- plumbing -------------------------------------------------------------------------------

    def _send(self, worker: int, payload: bytes) -> None:
        self.transport.publish(self.topics.worker_frames(worker), payload)

    def _arm(self) -> None:
        """Make sure the runtime is serviced at its next due time."""
        due = self.runtime.next_due
        if due is None or due >= self._timer_due or self.finished.is_set():
            return
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer_due = due
        self._timer = self._loop.call_at(due - self._wall_offset, self._service)

    def _open_endpoints(self) -> EndpointHost | None:
        """Make the endpoints of the hosted nodes from the run's record (endpoints.json)."""
        plan = read_plan(self.out_dir) if self.out_dir is not None else None
        if plan is None:
            return None
        host = EndpointHost(self.roles, plan, transport=self.transport, topics=self.topics,
                            now=self.now, started=lambda: self.started,
                            after_input=self._after_input, restarted=self.generation > 0)
        assert self._loop is not None
        host.open(self._loop)
        self.roles.endpoint_deliver = host.deliver
        assert self.out_dir is not None
        atomic_write(self.out_dir / f"endpoints-{self.tag}.json", json.dumps(host.record()),
                     durable=False)
        return host

    def _after_input(self) -> None:
        """Endpoint packets were originated: send what they handed over, wake at their hops."""
        self.runtime.flush()
        self._arm()

    def _service(self) -> None:
        self._timer, self._timer_due = None, float("inf")
        try:
            self._run_due(self.now())
        finally:
            self._arm()

    def _run_due(self, now: float) -> None:
        try:
            self.runtime.run_due(now)
        except Exception:  # a bug of ours: shown, counted, and the timer still re-armed
            log.exception("servicing due frames and timers failed")
            self.stats.internal_errors += 1

    # --- lifecycle ------------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve until finished."""
        self._loop = asyncio.get_running_loop()
        self._wall_offset = self.wall.now_wall() - self._loop.time()
        t = self.topics
        inboxes = [t.node_inbox(self.topology.node_ids[i]) for i in sorted(self.runtime.local)]
        await self.transport.subscribe(t.worker_frames(self.index), t.clock, t.state, t.launcher,
                                       t.faults, *inboxes)
        self.endpoints = self._open_endpoints()  # before "ready": exec may use them at once
        self.mcs = McsBridges.open(self.roles, now=self.now, started=lambda: self.started,
                                   after_input=self._after_input,  # listening before "ready"
                                   gated_topics=(t.state, t.launcher),
                                   finished=self.finished.is_set, run_id=t.run_id)
        self._write_stats(final=False)  # claims this generation's file name at once
        self._status("ready", nodes=len(self.runtime.local), pid=os.getpid())
        try:
            async with asyncio.TaskGroup() as tg:
                receiver = tg.create_task(self._receive(), name=f"worker{self.index}.receive")
                beat = tg.create_task(self._heartbeat(), name=f"worker{self.index}.heartbeat")
                mcs = (tg.create_task(self.mcs.serve(), name=f"worker{self.index}.mcs")
                       if self.mcs is not None else None)
                await self.finished.wait()
                receiver.cancel()
                beat.cancel()
                if mcs is not None:
                    mcs.cancel()
        except asyncio.CancelledError:
            if self._events is not None:  # cancelled: nothing more is written
                self._events.close()
            raise
        finally:  # cancelled or finished, the runtime's timer goes with the tasks
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_due = None, float("-inf")  # never re-armed
        await self._drain()
        self._finish()
        try:
            await asyncio.wait_for(self.transport.flush(), FLUSH_TIMEOUT_S)
        except (TimeoutError, OrbitmeshError) as exc:
            log.warning("final status not confirmed by the broker: %s", exc)

    async def _drain(self) -> None:
        """Send our end markers, then count the frames other workers sent us before they
        stopped, as still in flight (nodes/drain.py: it waits while they keep coming)."""
        others = {k for k in range(self.workers) if k != self.index} - self._ends_seen
        marker = EndMarker(self.index).encode(WIRE_VERSION)
        for k in range(self.workers):
            if k == self.index:
                continue
            self.transport.publish(self.topics.worker_frames(k), marker)
        if not others:
            return
        due = self.runtime.next_due
        behind_s = max(self.behind_s, self.now() - due if due is not None else 0.0)
        result = await drain_frames(self.transport, self.topics.worker_frames(self.index),
                                    others, self._count_drained, cap_s=drain_cap_s(behind_s))
        self.drain = result
        if result.gave_up is not None:
            log.warning("drain gave up (%s) after %.1f s (limit %.1f s, %d frames counted): no "
                        "end marker from worker(s) %s; frames they sent after that are "
                        "uncounted", result.gave_up, result.waited_s, result.cap_s,
                        result.frames, result.missing)

    def _count_drained(self, payload: bytes) -> int:
        """Count one drained batch's frames as in flight, by flow; how many there were."""
        try:
            items, _refused = decode_batch(payload, self.runtime.n_nodes)
        except ValueError as exc:
            self.stats.malformed(str(exc), "frames")
            return 0
        for _node, frame in items:
            self.stats.remote_received(frame)
            self.drained[frame[F_FLOW]] = self.drained.get(frame[F_FLOW], 0) + 1
        return len(items)

    async def _receive(self) -> None:
        async for batch in self.transport.batches():
            # Before the stamp: the MCS pacer waits while a state or command may be read.
            gated = self.mcs is not None and self.mcs.close_gate(batch)
            now = self.now()
            self.stats.clock(now)
            for message in batch:
                self._dispatch(message, now)
            # Once per transport batch, not per message: what is due runs in due order across
            # all of them, and the handovers it makes leave in one MQTT message per worker.
            self._run_due(now)
            if gated and self.mcs is not None:
                self.mcs.open_gate()
            self._arm()

    def _dispatch(self, message: Message, now: float) -> None:
        """Hand one message to its handler; nothing a message holds can stop this worker."""
        t = self.topics
        topic = message.topic
        try:
            if topic == self._frames_topic:
                end = EndMarker.sniff(message.payload, WIRE_VERSION)
                if end is not None:  # that worker stopped before we did
                    self._ends_seen.add(end.sender)
                elif self.runtime.state_t_s < 0:  # no links yet (a restart): hold them
                    self._early.append((message.payload, False))
                else:
                    self.runtime.receive_batch(message.payload, now, run=False)
            elif topic == t.state:
                self._on_state(decode_state(message.payload, self.runtime.n_nodes), now)
            elif topic == t.clock:
                if message.payload:
                    self._on_clock(ClockMessage.decode(message.payload), now)
            elif topic == t.launcher:
                self._on_launcher(ControlCommand.decode(message.payload))
            elif topic == t.faults:
                self._on_faults(FaultListing.decode(message.payload))
            elif topic == t.control:
                pass  # operators' commands are the controller's business
            elif self.runtime.state_t_s < 0:
                self._early.append((message.payload, True))
            else:  # a node inbox: frames injected by any MQTT client
                self.runtime.receive_batch(message.payload, now, injected=True, topic="inbox",
                                           run=False)
        except ValueError as exc:  # MessageError and the codecs' errors
            self.stats.malformed(f"{topic}: {exc}", t.family(topic))
        except Exception as exc:  # a bug of ours, shown with its traceback, yet not fatal
            log.exception("handling a message on %s failed", topic)
            self.stats.malformed(f"{topic}: {type(exc).__name__}: {exc}", t.family(topic))

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


if __name__ == "__main__":
    from nodes.worker_cli import main
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
