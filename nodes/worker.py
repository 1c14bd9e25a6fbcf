"""A worker process: hosts a shard of nodes on one MQTT connection.

``python -m nodes.worker --scenario S --run-id R --broker-file F --worker K --workers N --out D``

It subscribes to its frame topic, its nodes' inboxes, the run's clock, state and control topics,
reports ``ready`` on its retained status topic (its last will says ``lost``), starts its nodes'
generators once the controller's clock arrives, applies each link/route state at the scenario
time it is stamped with, and on ``finish`` (or SIGTERM/SIGINT) drains what the other workers
sent (nodes/drain.py), writes ``stats-w<K>.json`` and reports ``done``.

Heartbeats, status and the stats file are nodes/worker_books.py's; the handlers of the clock,
state, fault and launcher topics nodes/worker_control.py's; the drain nodes/drain.py's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from broker.client import MqttTransport
from broker.lifetime import die_with_parent, exit_if_orphaned
from broker.url import resolve_broker_urls
from nodes.drain import WorkerDrain
from nodes.endpoints import EndpointHost
from nodes.event_loop import precise_loop
from nodes.gc_tuning import settle_heap
from nodes.mcs_bridge import McsBridges
from nodes.roles import Roles
from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from nodes.worker_books import WorkerBooks
from nodes.worker_control import WorkerControl
from orbitmesh.core.placement import place
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.errors import OrbitmeshError
from orbitmesh.protocol.clock import WallClock, WallSource
from orbitmesh.protocol.messages import (
    ClockMessage,
    ControlCommand,
    EndMarker,
    FaultListing,
    WorkerStatus,
)
from orbitmesh.protocol.state import TickSnapshot, decode_state
from orbitmesh.protocol.transport import Message, Transport
from orbitmesh.protocol.wire import WIRE_VERSION, Topics
from orbitmesh.run.files import atomic_write
from orbitmesh.run.launch.netns import read_plan
from orbitmesh.run.trace import read_replay

__all__ = ["DEFAULT_PLANE", "PLANES", "Worker", "precise_loop", "runtime_class"]

log = logging.getLogger("orbitmesh.worker")
FLUSH_TIMEOUT_S = 3.0
EXIT_GRACE_S = 5.0
"""Wall seconds a finished worker waits for its broker connection to close before it leaves."""


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


class Worker(WorkerControl, WorkerDrain, WorkerBooks):
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


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m nodes.worker")
    p.add_argument("--scenario", required=True)
    p.add_argument("--run-id", required=True)
    p.add_argument("--broker", help="broker URL without a password (a password belongs in "
                   "--broker-file or ORBITMESH_BROKER_URL, not on the command line)")
    p.add_argument("--broker-file", help="file (mode 0600) holding the broker URL with this "
                   "worker's credentials (one per line: a cluster's members, its own first)")
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--workers", type=int, required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--duration", type=float)
    p.add_argument("--speed", type=float)
    p.add_argument("--generation", default="auto",
                   help="restart count of this worker; 'auto' (default) counts the stats files "
                   "earlier incarnations left in --out (a restarted container finds its own)")
    p.add_argument("--placement", default="blocks", help="blocks, planes or chunks:N")
    return p.parse_args(argv)


def _generation(value: str, out: Path, worker: int) -> int:
    if value != "auto":
        return int(value)
    taken = [0 if p.stem == f"stats-w{worker}" else int(p.stem.rsplit("-g", 1)[1])
             for p in out.glob(f"stats-w{worker}.json")]
    taken += [int(p.stem.rsplit("-g", 1)[1]) for p in out.glob(f"stats-w{worker}-g*.json")]
    return max(taken) + 1 if taken else 0


async def amain(args: argparse.Namespace) -> int:
    """Run one worker until the controller says finish (or a signal arrives)."""
    args.generation = _generation(str(args.generation), Path(args.out), args.worker)
    scenario = load_scenario(args.scenario)
    topology = build_topology(scenario)
    duration = args.duration or scenario.duration_s
    speed = args.speed or scenario.speed
    topics = Topics(args.run_id)
    will_body = WorkerStatus(args.worker, "lost", args.generation).encode()
    # A --broker-file may list a cluster's members, this worker's own first: it fails over.
    transport = MqttTransport(resolve_broker_urls(args.broker, args.broker_file),
                              client_id=f"orbitmesh-{args.run_id}-w{args.worker}-g{args.generation}",
                              will=(topics.worker_status(args.worker), will_body, True),
                              reconnect=True)
    async with transport:
        worker = Worker(topology, worker=args.worker, workers=args.workers, run_id=args.run_id,
                        transport=transport, out_dir=Path(args.out), duration_s=duration,
                        speed=speed, generation=args.generation, placement=args.placement)
        loop = asyncio.get_running_loop()
        # Ctrl-C reaches the whole process group: the launcher drains and finishes the run, so
        # workers ignore SIGINT and leave on the controller's word (or on SIGTERM).
        loop.add_signal_handler(signal.SIGINT, lambda: None)
        loop.add_signal_handler(signal.SIGTERM, worker.finish)
        settle_heap()  # set-up is done: full collections skip what it built (nodes/gc_tuning.py)
        await worker.run()
        # The stats are written and the final status sent: closing the connection is all that is
        # left. If the broker died with the launcher, that close has been seen to hang; a worker
        # must not outlive its run for it.
        leave = threading.Timer(EXIT_GRACE_S, _leave_now)
        leave.daemon = True
        leave.start()
    return 0


def _leave_now() -> None:
    log.warning("the broker connection did not close within %.0f s of the end; leaving",
                EXIT_GRACE_S)
    logging.shutdown()
    os._exit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """Process entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s worker %(levelname)s "
                        "%(message)s")
    args = _parse(argv)
    parent = os.getppid()
    if die_with_parent():  # a launcher killed with -9 takes its workers with it
        exit_if_orphaned(parent)
    try:
        with asyncio.Runner(loop_factory=precise_loop) as runner:
            return runner.run(amain(args))
    except OrbitmeshError as exc:
        print(f"worker {args.worker}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
