"""The controller: owns the clock, computes each tick one tick ahead, and publishes it.

Scenario time is ``(wall - t0_wall) * speed``. The controller publishes the retained clock
(``t0_wall``, speed, duration) once every worker is ready, then for tick k it publishes the
complete state in force from ``k * tick_s`` (retained, so late joiners catch up) while tick k-1 is
still in force. The link timeline (every diff) goes to ``links.msgpack`` in the run directory.

Tick work (engine, timeline, state encoding) runs on a thread beside the event loop
(:mod:`orbitmesh.run.ticking`), so a slow tick never holds up a publication or a control
command. Inputs are read on the loop when a job starts and results committed there when it ends;
a command that arrives while a tick computes is applied to it as soon as it is done, as it was
when the loop waited for the tick.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from orbitmesh.core.destinations import route_destinations
from orbitmesh.core.engine import LinkSource, Tick, TickEngine
from orbitmesh.core.faults import (
    PROCESS_KINDS,
    CommandError,
    Fault,
    active_at,
    fault_from_command,
    random_faults,
    scheduled_faults,
)
from orbitmesh.core.topology import Topology
from orbitmesh.protocol.clock import RunClock, WallClock, WallSource
from orbitmesh.protocol.messages import (
    RUN_COURSE_VERBS,
    ClockMessage,
    ControlCommand,
    ControlError,
    FaultListing,
)
from orbitmesh.protocol.transport import Transport
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.control_commands import (
    CONTROL_BURST,
    CONTROL_RATE_PER_S,
    TokenBucket,
    check_target,
    end_fault,
    fault_info,
)
from orbitmesh.run.files import DiskError
from orbitmesh.run.ticking import Prepared, TickRunner
from orbitmesh.run.timeline import LinkTimeline

log = logging.getLogger("orbitmesh.run.controller")
START_LEAD_S = 0.5
"""Wall seconds between publishing the clock and scenario time 0."""



class Controller:
    """Computes and publishes ticks for one run."""

    def __init__(self, topology: Topology, transport: Transport, topics: Topics, *,
                 duration_s: float, speed: float, out_dir: Path | None,
                 link_source: LinkSource | None = None, wall: WallSource | None = None,
                 workers: int | None = None, off_loop: bool | None = None,
                 destinations: Literal["used", "all"] | Sequence[int] = "used") -> None:
        self.topology = topology
        self.transport = transport
        self.topics = topics
        self.duration_s = duration_s
        self.speed = speed
        scenario = topology.scenario
        policies = sorted({f.policy for f in scenario.traffic if f.policy})
        self.destinations = route_destinations(topology, destinations)
        """The route trees' roots: what the run's frames can be addressed to
        (:func:`~orbitmesh.core.destinations.addressable_destinations`), or every ground node."""
        self.engine = TickEngine(topology, self.destinations, policies=policies,
                                 link_source=link_source)
        self.tick_s = scenario.tick_s
        self.wall: WallSource = wall or WallClock()
        self.clock: RunClock | None = None
        """Set when the run starts (``run``)."""
        self.workers: int | None = workers
        self._bucket = TokenBucket(CONTROL_RATE_PER_S, CONTROL_BURST)
        self.seq = 0
        """The last state snapshot's ``seq`` published."""
        self._encoded = 0
        self.tick_compute_ms: list[float] = []
        self.handovers = 0
        self.timeline = LinkTimeline(out_dir, topology.node_ids)
        self.faults: list[Fault] = scheduled_faults(scenario) + random_faults(topology,
                                                                              duration_s)
        self.extra_down: dict[int, str] = {}
        self.control_errors = 0
        self.on_process_fault: Callable[[Fault], None] | None = None
        self.on_clock: Callable[[float], None] | None = None
        self.upcoming: Prepared | None = None
        self.published: Prepared | None = None
        """The latest tick published: ticks go out one ahead, so it is in force only from its
        ``t_s`` on; until then ``in_force`` (the one before it) is."""
        self.in_force: Prepared | None = None
        self.off_loop = (wall is None) if off_loop is None else off_loop
        """Tick work on a thread beside the loop (real runs); inline by default under an
        injected clock, which cannot time a thread (see :mod:`orbitmesh.run.ticking`)."""
        self._runner = TickRunner(self.off_loop)
        self._refresh_wanted = asyncio.Event()
        self._refresher_serves = False
        """True while ``run``'s refresher task does the refreshes (off the loop)."""
        self._live_count = 0
        self._started_process_faults: set[str] = set()
        self._now_s = 0.0

    def scenario_s(self) -> float:
        """Current scenario time (0 before the clock starts)."""
        if self.clock is None:
            return 0.0
        return max(0.0, self.clock.scenario_s(self.wall.now_wall()))

    @property
    def t0_wall(self) -> float:
        """Wall time of scenario time 0 (0 before the clock starts)."""
        return 0.0 if self.clock is None else self.clock.t0_wall

    # --- faults -----------------------------------------------------------------------------------

    def handle_control(self, payload: bytes) -> None:
        """A message on the control topic: fault / clear / list; errors are answered and counted.

        Fault and clear commands are rate-limited (:mod:`orbitmesh.run.control_commands`): a
        flood is answered on ``control/error``, never applied, so it cannot stretch the run.
        ``finish`` and ``stop_traffic`` are the launcher's alone (it sends them on the
        ``launcher`` topic); here they are refused.
        """
        try:
            command = ControlCommand.decode(payload)
            if command.cmd in RUN_COURSE_VERBS:
                raise CommandError(f"{command.cmd} is the launcher's command; to end a run, "
                                   "stop its launcher (Ctrl-C or SIGTERM)")
            if command.cmd == "list":
                self.publish_faults()
                return
            if not self._bucket.take(self.wall.now_wall()):
                raise CommandError(f"too many control commands (more than {CONTROL_BURST} "
                                   f"at once, {CONTROL_RATE_PER_S:g}/s sustained); refused")
            now_s = self.scenario_s()
            if command.cmd == "fault":
                self._live_count += 1
                fault = fault_from_command(command.fault_body(), self.topology.scenario,
                                           f"live{self._live_count}", now_s)
                if any(f.id == fault.id for f in self.faults):
                    raise CommandError(f"fault id {fault.id!r} is already in use")
                check_target(fault, self.engine.overlay, self.workers)
                self.faults.append(fault)
                log.warning("live fault %s: %s", fault.id, fault.describe())
            elif command.cmd == "clear":
                end_fault(self.faults, command.fault_id or "", now_s)
            self.refresh()
        except Exception as exc:  # a bad command must never stop the run
            if not isinstance(exc, ValueError):  # CommandError and MessageError are answers
                log.exception("control command failed")
            self.control_errors += 1
            self.transport.publish(self.topics.control_error, ControlError(
                str(exc), payload[:500].decode("utf-8", "replace"),
                self.control_errors).encode())

    def worker_lost(self, nodes: list[int], fault_id: str) -> None:
        """A worker died: its nodes count as failed (by ``fault_id``) until it is back."""
        for node in nodes:
            self.extra_down[node] = fault_id
        self.refresh()

    def worker_back(self, nodes: list[int]) -> None:
        """A restarted worker is serving its nodes again."""
        for node in nodes:
            self.extra_down.pop(node, None)
        self.refresh()

    def refresh(self) -> None:
        """Re-apply the faults to the state in force (republished now) and to the next one.

        The state in force is judged by the faults active *now*, not at its tick's start: a live
        fault takes effect at once (and a cleared one ends at once), not a tick later. During
        ``run`` off the loop, "now" is as soon as the tick computing (if any) is done; several
        commands meanwhile are applied together.
        """
        if self._refresher_serves:
            self._refresh_wanted.set()
            return
        self._commit_refresh(self._runner.call_now(self._refresh_job, *self._refresh_inputs()))

    def _refresh_inputs(self) -> tuple[list[tuple[Prepared, float]], list[Fault],
                                       dict[int, str]]:
        """What to re-apply the faults to (and at which time), read on the loop."""
        now_s = self.scenario_s()
        in_force = self.in_force if self.published is None or self.published.tick.t_s > now_s \
            else self.published
        ticks = [in_force] + [p for p in (self.published, self.upcoming) if p is not in_force]
        # Judged at its start, or now if that has passed (a late tick still to go out too).
        return ([(p, max(p.tick.t_s, now_s)) for p in ticks
                 if p is not None and p.tick.raw_state is not None],
                list(self.faults), dict(self.extra_down))

    def _refresh_job(self, items: list[tuple[Prepared, float]], faults: list[Fault],
                     extra_down: dict[int, str]) -> list[tuple[Prepared, Prepared]]:
        """(old, re-applied) for each item, in order: the engine diffs each against the last."""
        done = []
        for old, at_s in items:
            assert old.tick.raw_state is not None
            started = time.perf_counter()
            again = self.engine.finish(old.tick.raw_state, active_at(faults, at_s), extra_down)
            self.tick_compute_ms.append((time.perf_counter() - started) * 1000.0)
            done.append((old, self._prepare(again)))
        return done

    def _commit_refresh(self, done: list[tuple[Prepared, Prepared]]) -> None:
        """Put re-applied ticks where their originals are now; publish those already out.

        Ticks may have moved on while the job ran (the next one published on time meanwhile):
        each result replaces its original in whichever place that holds now, and one that has
        left every place (superseded) is dropped.
        """
        for old, again in done:
            if self.upcoming is old:
                self.upcoming = again
        for old, again in done:  # the one in force first: the retained state ends newest
            if self.in_force is old:
                self.in_force = again
                self._publish_state(again)
        for old, again in done:
            if self.published is old:
                self.published = again
                self._publish_state(again)
        self.publish_faults()

    async def _refresher(self) -> None:
        """Serve refreshes during ``run``: each one after the tick computing, off the loop."""
        while True:
            await self._refresh_wanted.wait()
            async with self._runner.lock:
                self._refresh_wanted.clear()
                try:
                    done = await self._runner.call(self._refresh_job, *self._refresh_inputs())
                    self._commit_refresh(done)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # as for a command: answered, never the run's end
                    log.exception("re-applying the faults failed")
                    self.control_errors += 1
                    self.transport.publish(self.topics.control_error, ControlError(
                        f"re-applying the faults failed: {exc}", "", self.control_errors).encode())

    def publish_faults(self) -> None:
        """Publish the retained fault listing."""
        now_s = self.scenario_s()
        self.transport.publish(self.topics.faults, FaultListing(round(now_s, 3), tuple(
            fault_info(f, f.active(now_s)) for f in self.faults)).encode(), retain=True)

    def _start_process_faults(self, t_s: float) -> None:
        for fault in self.faults:
            if (fault.spec.kind in PROCESS_KINDS and fault.id not in
                    self._started_process_faults and fault.start_s <= t_s):
                self._started_process_faults.add(fault.id)
                self.publish_faults()
                if self.on_process_fault is not None:
                    self.on_process_fault(fault)

    def wall_at(self, t_s: float) -> float:
        """Wall time of scenario time ``t_s``."""
        assert self.clock is not None, "the clock has not started"
        return self.clock.wall_at(t_s)

    async def _compute(self, t_s: float) -> Prepared:
        """Tick ``t_s`` with the faults as they are now, computed off the loop (or inline)."""
        async with self._runner.lock:
            prepared = await self._runner.call(self._step_job, t_s, list(self.faults),
                                               dict(self.extra_down))
            self.handovers += prepared.tick.handovers
            return prepared

    def _step_job(self, t_s: float, faults: list[Fault], extra_down: dict[int, str]) -> Prepared:
        started = time.perf_counter()
        tick = self.engine.step(t_s, active_at(faults, t_s), extra_down)
        self.tick_compute_ms.append((time.perf_counter() - started) * 1000.0)
        return self._prepare(tick)

    def _prepare(self, tick: Tick) -> Prepared:
        """Record the tick in the timeline and encode what goes out (on the runner's thread)."""
        self.timeline.record(tick)
        self._encoded += 1
        return Prepared.of(tick, self._encoded)

    def _publish(self, prepared: Prepared) -> None:
        """Publish the next tick (the one published before it is in force until it starts)."""
        self.in_force = self.published
        self._publish_state(prepared)
        self.published = prepared
        if self.upcoming is prepared:
            self.upcoming = None  # out now; a refresh finds it as ``published``

    def _publish_state(self, prepared: Prepared) -> None:
        self.seq = prepared.seq
        self.transport.publish(self.topics.state, prepared.state, retain=True)
        self.transport.publish(self.topics.links, prepared.links)

    async def _sleep_until(self, wall: float) -> None:
        """Sleep until ``wall``; yields to the loop even when already late, so signals and
        control messages are served however far behind the ticks are."""
        await asyncio.sleep(max(0.0, wall - self.wall.now_wall()))

    async def run(self, on_tick: Callable[[float], None] | None = None,
                  stop: asyncio.Event | None = None) -> None:
        """Start the clock and tick until the duration is over (or ``stop`` is set)."""
        if not self.off_loop:
            await self._ticks(on_tick, stop)
            return
        # Owned here, not in a TaskGroup: the ticks' own errors (a full disk, a broker error)
        # must reach the launcher as they are, not wrapped in an ExceptionGroup.
        refresher = asyncio.create_task(self._refresher(), name="controller.refresh")
        self._refresher_serves = True
        try:
            await self._ticks(on_tick, stop)
        finally:
            self._refresher_serves = False
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
        if self._refresh_wanted.is_set():  # asked for as the run ended: done here, not lost
            self._refresh_wanted.clear()
            self.refresh()

    async def _ticks(self, on_tick: Callable[[float], None] | None,
                     stop: asyncio.Event | None) -> None:
        self._publish(await self._compute(0.0))
        n_ticks = math.ceil(self.duration_s / self.tick_s)
        self.upcoming = await self._compute(self.tick_s) if n_ticks >= 1 else None
        self.clock = RunClock(self.wall.now_wall() + START_LEAD_S, self.speed)
        self.transport.publish(self.topics.clock, ClockMessage(
            self.t0_wall, self.speed, self.duration_s, self.tick_s,
            self.topology.scenario.epoch.isoformat()).encode(), retain=True)
        self.publish_faults()
        if self.on_clock is not None:
            self.on_clock(self.t0_wall)
        for k in range(1, n_ticks + 1):
            # Publish tick k while tick k-1 is in force, then compute tick k+1 ahead of time.
            await self._sleep_until(self.wall_at((k - 1) * self.tick_s))
            if stop is not None and stop.is_set():
                break
            assert self.upcoming is not None
            self._start_process_faults((k - 1) * self.tick_s)
            self._publish(self.upcoming)
            if on_tick is not None:
                on_tick((k - 1) * self.tick_s)
            if k < n_ticks:
                self.upcoming = await self._compute((k + 1) * self.tick_s)
            if self.tick_compute_ms[-1] > self.tick_s / self.speed * 1000.0:
                log.warning("tick took %.0f ms, longer than a tick at this speed; links will "
                            "be late — lower --speed", self.tick_compute_ms[-1])
        await self._sleep_until(self.wall_at(self.duration_s))

    def close(self) -> None:
        """Close the timeline file; a full disk is kept in ``write_error``, not raised."""
        self._runner.close()  # a tick still computing writes its timeline row first
        self.timeline.close()

    @property
    def write_error(self) -> DiskError | None:
        """Set when the disk filled up under the link timeline (the run reports it at the end)."""
        return self.timeline.write_error

