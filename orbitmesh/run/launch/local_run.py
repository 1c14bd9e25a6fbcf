"""One local run in flight: the controller in this process, the workers as child processes.

:class:`LocalRun` starts the controller's transport, the live services, the endpoint containers
and the workers, waits for every worker to report ready, runs the clock, and at the end tells the
workers to finish and reaps them. Its listener follows the workers' statuses: a worker lost that
nobody killed is an unplanned event; a ``worker_kill`` fault's worker is restarted when asked.
The broker's side is :mod:`orbitmesh.run.launch.local_broker`, the processes' is
:mod:`orbitmesh.run.launch.local_workers`, the summary :mod:`orbitmesh.run.launch.local_summary`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from broker.client import MqttTransport
from broker.credentials import RunCredentials
from broker.embedded import EmbeddedBroker
from broker.url import BrokerURL
from orbitmesh.core.engine import LinkSource
from orbitmesh.core.faults import CONTAINER_KINDS, Fault
from orbitmesh.core.placement import place
from orbitmesh.core.topology import Topology
from orbitmesh.protocol.messages import ControlCommand, MessageError, WorkerStatus
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.controller import Controller
from orbitmesh.run.files import atomic_write
from orbitmesh.run.launch.cluster_watch import member_urls_for
from orbitmesh.run.launch.endpoint_containers import EndpointContainers
from orbitmesh.run.launch.lifecycle import record_launcher
from orbitmesh.run.launch.local_broker import BrokerWatch
from orbitmesh.run.launch.local_progress import ProgressLine
from orbitmesh.run.launch.local_summary import RunResult, summarise
from orbitmesh.run.launch.local_workers import reap, spawn_worker, wait_for
from orbitmesh.run.trace import manifest_for, write_manifest
from orbitmesh.run.web.live import LiveOptions, LiveServices

READY_TIMEOUT_S = 60.0
DRAIN_S = 1.5
"""Wall seconds after the last scenario second for frames in flight to land."""
FINISH_TIMEOUT_S = 20.0


class LocalRun:
    """One run on this machine: the controller in this process, workers as child processes."""

    def __init__(self, topology: Topology, run_dir: Path, run_id: str, url: BrokerURL,
                 workers: int, duration: float, speed: float,
                 broker: EmbeddedBroker | None) -> None:
        self.topology = topology
        self.run_dir = run_dir
        self.run_id = run_id
        self.url = url
        self.workers = workers
        self.duration = duration
        self.speed = speed
        self.broker = broker
        self.topics = Topics(run_id)
        self.status: dict[int, WorkerStatus] = {}
        self.malformed_status = 0
        self.procs: dict[int, asyncio.subprocess.Process] = {}
        self.generation: dict[int, int] = dict.fromkeys(range(workers), 0)
        self.pids: dict[str, int] = {}
        self.placement = place(topology, workers)
        self.stop = asyncio.Event()
        self.kills: dict[int, Fault] = {}
        self.process_faults: dict[str, dict[str, Any]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self.controller: Controller | None = None
        self.manifest: dict[str, Any] = {}
        self.link_source: LinkSource | None = None
        self.placement_mode = "blocks"
        self.external = False
        self.live = LiveOptions()
        self.route_to: Literal["used", "all"] = "used"
        """Which ground nodes get route trees (:mod:`orbitmesh.core.destinations`)."""
        self.credentials: RunCredentials | None = None
        """Per-role broker users; None: every process uses ``url`` as it is."""
        self.members: list[BrokerURL] = [url]
        """A clustered broker's members (member 0 first); one entry for a single broker."""
        self.brokers = BrokerWatch(broker, self.stop)

    def _nodes_of(self, worker: int) -> list[int]:
        return np.flatnonzero(self.placement == worker).tolist()

    async def execute(self, broker_label: str, progress: bool) -> RunResult:
        """Start everything, run the clock, stop everything, write the summary."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.stop.set)
        record_launcher(self.run_dir)  # `orbitmesh stop RUN` signals this process, by PID
        started = datetime.now(UTC)
        topics = self.topics
        async with MqttTransport(self.members, client_id=f"orbitmesh-{self.run_id}-controller",
                                 reconnect=True) as transport:
            self.transport = transport
            await transport.subscribe(topics.worker_status_all, topics.control)
            controller = Controller(self.topology, transport, topics, duration_s=self.duration,
                                    speed=self.speed, out_dir=self.run_dir,
                                    link_source=self.link_source, workers=self.workers,
                                    destinations=self.route_to)
            self.controller = controller
            controller.on_process_fault = self._process_fault
            self.manifest = manifest_for(self.topology, self.run_id, self.speed, self.duration)
            write_manifest(self.run_dir, self.manifest)
            controller.on_clock = self._clock_started
            # The page and /metrics watch the run over MQTT like any operator; closed (and the
            # last scrape saved) once the workers' final counts are in.
            live = LiveServices(self.run_dir, self.live,
                                tick_compute_ms=lambda: controller.tick_compute_ms,
                                fidelity=self.topology.scenario.fidelity) \
                if self.live.wanted else None
            if live is not None:
                await live.__aenter__()
            listener = asyncio.create_task(self._listen(), name="controller.listen")
            if self.broker is not None:
                self._background(self.brokers.watch_embedded(controller.scenario_s,
                                                              self._record_broker_pid),
                                 "broker.watchdog")
            if self.broker is None:  # an external broker or cluster: probe what we do not own
                self._background(self.brokers.watch_members(self.members, transport,
                                                             controller.scenario_s),
                                 "broker.members")
            try:
                # Users' containers first: the workers move their nodes' TUNs into them.
                # With external workers, whoever starts them starts and watches these.
                containers = None if self.external else await asyncio.to_thread(
                    EndpointContainers.start, self.run_dir)
                if containers is not None:
                    self._background(containers.watch(self.stop, lambda: round(
                        controller.scenario_s(), 3) if controller.t0_wall else None),
                        "endpoint.containers")
                if not self.external:
                    for k in range(self.workers):
                        await self._spawn(k)
                await wait_for(lambda: all(getattr(self.status.get(k), "state", None)
                                            in ("ready", "running") for k in range(self.workers)),
                                self.procs, READY_TIMEOUT_S * (3 if self.external else 1),
                                f"all {self.workers} workers to report ready", self.stop)
                printer = ProgressLine(self.status, self.workers, self.duration, enabled=progress,
                                    budget=self.topology.scenario.fidelity)
                ticker = asyncio.create_task(controller.run(printer.update, self.stop),
                                             name="controller")
                stopper = asyncio.create_task(self.stop.wait(), name="controller.stop")
                await asyncio.wait({ticker, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if ticker.done():
                    ticker.result()
                else:
                    ticker.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await ticker
                    transport.publish(topics.launcher, ControlCommand("stop_traffic").encode())
                await asyncio.sleep(DRAIN_S)  # frames in flight land before the count
                printer.done()
            finally:
                for task in list(self._tasks):
                    task.cancel()
                if self.broker is not None and not self.broker.running:
                    self.broker.restart()
                transport.publish(topics.launcher, ControlCommand("finish").encode())
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(transport.flush(), 5.0)
                finishing = range(self.workers) if self.external else list(self.procs)
                await wait_for(lambda: all(getattr(self.status.get(k), "state", None)
                                            in ("done", "lost") for k in finishing),
                                self.procs, FINISH_TIMEOUT_S, "every worker to finish", None,
                                quiet=True)
                await reap(self.procs)
                controller.close()
                # Leave no retained messages behind on a shared broker.
                for topic in (topics.clock, topics.state, topics.faults,
                              *(topics.worker_status(k) for k in range(self.workers))):
                    transport.publish(topic, b"", retain=True)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(transport.flush(), 5.0)
                listener.cancel()
                if live is not None:
                    await live.__aexit__(None, None, None)
        return summarise(self, broker_label, started)

    def _clock_started(self, t0_wall: float) -> None:
        self.manifest["t0_wall"] = t0_wall
        write_manifest(self.run_dir, self.manifest)

    async def _listen(self) -> None:
        assert self.controller is not None
        async for batch in self.transport.batches():
            for message in batch:
                if message.topic == self.topics.control:
                    self.controller.handle_control(message.payload)
                    continue
                if not message.payload:
                    continue
                try:
                    status = WorkerStatus.decode(message.payload)
                    if message.topic != self.topics.worker_status(status.worker) \
                            or status.worker >= self.workers:
                        raise MessageError(f"status of worker {status.worker} on "
                                           f"{message.topic}")
                except MessageError as exc:
                    self.malformed_status += 1
                    if self.malformed_status <= 10:
                        print(f"warning: malformed worker status ignored: {exc}",
                              file=sys.stderr)
                    continue
                worker, generation = status.worker, status.generation
                if generation < self.generation.get(worker, 0):
                    continue  # news from a previous incarnation
                if generation > self.generation.get(worker, 0):
                    self.generation[worker] = generation  # restarted elsewhere (a container)
                before = self.status[worker].state if worker in self.status else None
                self.status[worker] = status
                self._transition(worker, before, status.state)

    def _transition(self, worker: int, before: str | None, state: str) -> None:
        assert self.controller is not None
        if state == "lost" and self.brokers.stopping:
            return  # mosquitto publishes all wills on shutdown: the worker is fine
        if state == "lost" and before not in ("lost", "done"):
            fault = self.kills.get(worker)
            fault_id = fault.id if fault is not None else f"worker{worker}-lost"
            detected = time.time()
            info = self.process_faults.setdefault(fault_id, {})
            if fault is None and not self.stop.is_set():  # nobody asked for this
                proc = self.procs.get(worker)
                info.update(id=fault_id, kind="worker_lost", origin="unplanned",
                            start_s=round(self.controller.scenario_s(), 3), end_s=None,
                            target={"worker": worker}, pid=None if proc is None else proc.pid)
                print(f"error: worker {worker} (pid {info['pid']}) was lost at "
                      f"t={info['start_s']:g} s; routing around its nodes", file=sys.stderr)
            if "killed_wall" in info:
                info["detected_after_s"] = round(detected - info["killed_wall"], 3)
            self.controller.worker_lost(self._nodes_of(worker), fault_id)
            if (fault is not None and fault.spec.restart and not self.stop.is_set()
                    and not self.external):  # with containers the supervisor restarts it
                self._background(self._restart(worker), f"restart-w{worker}")
        elif state == "ready" and before == "lost":
            self.controller.worker_back(self._nodes_of(worker))
            fault = self.kills.get(worker)
            if fault is not None:
                info = self.process_faults.setdefault(fault.id, {})
                info["restarted_wall"] = time.time()
                info["end_s"] = round(self.controller.scenario_s(), 3)

    def _background(self, coro: Any, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _process_fault(self, fault: Fault) -> None:
        """Carry out worker_kill and broker_outage faults."""
        info = self.process_faults.setdefault(fault.id, {})
        if fault.spec.kind in CONTAINER_KINDS or (self.external and
                                                  fault.spec.kind == "worker_kill"):
            if not self.external:
                info["error"] = f"{fault.spec.kind} needs the docker backend (orbitmesh up)"
                return
            # The supervisor that started the containers (orbitmesh up) carries it out when it
            # sees the fault go active on the faults topic.
            self.kills[int(fault.spec.worker or 0)] = fault
            info["delegated"] = "container supervisor"
            return
        if fault.spec.kind == "worker_kill":
            worker = int(fault.spec.worker or 0)
            proc = self.procs.get(worker)
            if proc is None or proc.returncode is not None:
                info["error"] = f"worker {worker} is not running"
                return
            self.kills[worker] = fault
            info["killed_wall"] = time.time()
            info["pid"] = proc.pid
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGKILL)
        elif fault.spec.kind == "broker_outage":
            if self.broker is None:
                info["error"] = "broker_outage needs the embedded broker (--broker embedded)"
                return
            self._background(self.brokers.outage(fault, info, self.transport, self.speed),
                             f"broker-outage-{fault.id}")


    async def _restart(self, worker: int) -> None:
        proc = self.procs[worker]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        self.generation[worker] += 1
        await self._spawn(worker)

    async def _spawn(self, worker: int) -> None:
        url = self.url if self.credentials is None else self.credentials.worker(worker).on(
            self.url)
        urls = [url] if len(self.members) == 1 else member_urls_for(self.members, worker)
        tag, self.procs[worker] = await spawn_worker(
            self.run_dir, self.run_id, worker, self.generation[worker], urls,
            workers=self.workers, duration_s=self.duration, speed=self.speed,
            placement=self.placement_mode)
        self.pids[tag] = self.procs[worker].pid
        if self.broker is not None and self.broker.pid is not None:
            self.pids["broker"] = self.broker.pid
        atomic_write(self.run_dir / "pids.json", json.dumps(self.pids), durable=False)

    def _record_broker_pid(self, pid: int) -> None:
        """The embedded broker was restarted under ``pid``: pids.json says so."""
        self.pids["broker"] = pid
        atomic_write(self.run_dir / "pids.json", json.dumps(self.pids), durable=False)
