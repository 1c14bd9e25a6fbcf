"""Run a scenario live on this machine: broker, controller (in this process) and N worker processes.

Every process this module starts is recorded by PID in ``<run>/pids.json`` and stopped by PID; the
embedded broker likewise. Ctrl-C / SIGTERM stop the clock, tell the workers to finish (they write
their stats), and the summary is still written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from broker.client import MqttTransport
from broker.credentials import RunCredentials, write_private
from broker.embedded import EmbeddedBroker
from broker.url import BrokerURL, parse_broker_url
from orbitmesh import __version__
from orbitmesh.core.engine import LinkSource, compile_kernels
from orbitmesh.core.faults import CONTAINER_KINDS, Fault
from orbitmesh.core.limits import run_clock
from orbitmesh.core.placement import place, worker_count
from orbitmesh.core.scenario import Fidelity, load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.errors import BrokerError, RunError, ScenarioError
from orbitmesh.protocol.messages import ControlCommand, MessageError, WorkerProgress, WorkerStatus
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.controller import Controller
from orbitmesh.run.fidelity import behind_warning
from orbitmesh.run.files import DiskError, atomic_write
from orbitmesh.run.launch.cluster_watch import MemberWatch, member_answers, member_urls_for
from orbitmesh.run.launch.endpoint_containers import EndpointContainers, remove_recorded
from orbitmesh.run.launch.lifecycle import record_launcher
from orbitmesh.run.launch.lockdown import start_broker
from orbitmesh.run.launch.netns import (
    EndpointSetupError,
    cleanup_recorded,
    read_plan,
    with_endpoints,
    write_plan,
)
from orbitmesh.run.launch.replay import check_nodes, replay_scenario, write_replay
from orbitmesh.run.report import (
    build_summary,
    format_summary,
    load_worker_stats,
    percentiles,
    write_summary,
)
from orbitmesh.run.trace import LinkTimeline, Offered, manifest_for, write_manifest
from orbitmesh.run.web.live import LiveOptions, LiveServices

_PROJECT_ROOT = str(Path(__file__).resolve().parents[3])
READY_TIMEOUT_S = 60.0
DRAIN_S = 1.5
"""Wall seconds after the last scenario second for frames in flight to land."""
FINISH_TIMEOUT_S = 20.0
BROKER_POLL_S = 0.2
"""How often the launcher checks that the embedded broker it started is still alive."""
UNPLANNED_BROKER_ID = "unplanned_broker_outage"
"""The event a broker death nobody asked for is charged to (workers drop with this id)."""


@dataclass
class RunOptions:
    """What `orbitmesh run` was asked to do."""

    scenario: Path
    duration_s: float | None = None
    speed: float | None = None
    workers: int | None = None
    broker: str = "embedded"
    out: Path | None = None
    run_id: str | None = None
    progress: bool = True
    replay: list[Offered] | None = None
    """Offered traffic to replay instead of the scenario's flows (orbitmesh replay)."""
    replay_faults: list[dict[str, Any]] | None = None
    links_from: Path | None = None
    """A trace whose link timeline replaces geometry."""
    salvage: bool = False
    """Replay a damaged link timeline up to its damage (orbitmesh replay --salvage)."""
    replay_origin: str = ""
    placement: str = "blocks"
    external_workers: bool = False
    """Do not start workers: wait for workers started elsewhere (containers) to report."""
    fidelity_budget_ms: float | None = None
    """Overrides the scenario's ``fidelity.budget_ms``."""
    broker_insecure: bool = False
    """Embedded broker without credentials or ACL (open to every local process)."""
    tls: bool = False
    """Embedded broker: TLS listener with a run CA (clients verify it)."""
    broker_credentials: Path | None = None
    """External broker: per-role credentials from ``orbitmesh broker-config``."""
    broker_file: Path | None = None
    """External broker: a 0600 file holding its URL with the controller's credentials."""
    live: LiveOptions = dataclasses.field(default_factory=LiveOptions)
    """The live map (--web, --web-control) and /metrics (--metrics)."""
    endpoints: list[str] | None = None
    """Nodes that get an IP endpoint besides the scenario's ``endpoints.ip`` (run --endpoints)."""
    broker_members: tuple[str, ...] = ()
    """Every --broker when several were given: a clustered broker's members (worker k uses
    member k mod M first, the controller member 0; all fail over)."""


@dataclass
class RunResult:
    """Where the run wrote its results and what they say."""

    run_dir: Path
    summary: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True when the conservation check held, the run kept its fidelity budget and lost no
        process it did not mean to."""
        return (bool(self.summary["conservation_ok"]) and bool(self.summary["fidelity"]["ok"])
                and not self.summary.get("unplanned") and not self.summary.get("internal_errors")
                and not _stopped_by_container(self.summary))


def _stopped_by_container(summary: dict[str, Any]) -> bool:
    """True when an endpoint container with ``on_exit: stop`` exited (the run ended for it)."""
    containers = (summary.get("endpoints") or {}).get("containers", [])
    return any(c.get("on_exit") == "stop" and c.get("state") != "running" for c in containers)


def run_cli(args: argparse.Namespace) -> int:
    """`orbitmesh run`: run, print the summary table, exit non-zero if conservation broke."""
    brokers = list(args.broker or ["embedded"])  # --broker is repeatable: a cluster's members
    opts = RunOptions(Path(args.scenario), args.duration, args.speed, args.workers, brokers[0],
                      Path(args.out) if args.out else None, args.run_id, not args.quiet,
                      placement=args.placement, external_workers=args.external_workers,
                      fidelity_budget_ms=args.fidelity_budget,
                      broker_insecure=args.broker_insecure, tls=args.tls,
                      broker_credentials=Path(args.broker_credentials)
                      if args.broker_credentials else None,
                      broker_file=Path(args.broker_file)
                      if getattr(args, "broker_file", None) else None,
                      endpoints=_node_list(getattr(args, "endpoints", None)),
                      broker_members=tuple(brokers) if len(brokers) > 1 else ())
    opts.live = LiveOptions(getattr(args, "web", None), bool(getattr(args, "web_control", False)),
                            getattr(args, "metrics", None))
    return print_result(run(opts))


def _node_list(text: str | None) -> list[str] | None:
    return [n.strip() for n in text.split(",") if n.strip()] if text else None


def print_result(result: RunResult) -> int:
    """Print the summary table; its exit code (1: conservation or fidelity broken, 130: Ctrl-C)."""
    print(format_summary(result.summary))
    print(f"results: {result.run_dir}")
    if not result.ok:
        return 1
    return 130 if result.summary["run"]["interrupted"] else 0


COMPILE_NOTE_S = 2.0
"""Compiling the geometry kernels longer than this is said (a cold numba cache: ~20 s)."""


def _compile_kernels() -> None:
    """Compile (or load) the tick's kernels before the clock: the first tick must not pay."""
    started = time.monotonic()
    compile_kernels()
    spent_s = time.monotonic() - started
    if spent_s > COMPILE_NOTE_S:
        print(f"compiled the geometry kernels in {spent_s:.0f} s (numba keeps them for later "
              "runs; `make venv` compiles them at install)", file=sys.stderr, flush=True)


def run(opts: RunOptions) -> RunResult:
    """Run a scenario to the end (or to Ctrl-C) and return its summary."""
    scenario = load_scenario(opts.scenario)
    if opts.fidelity_budget_ms is not None:
        if not 0.0 < opts.fidelity_budget_ms <= 60_000.0:
            raise ScenarioError(f"--fidelity-budget {opts.fidelity_budget_ms:g}: expected a "
                                "number of scenario ms in (0, 60000]")
        scenario = scenario.model_copy(update={"fidelity": scenario.fidelity.model_copy(
            update={"budget_ms": opts.fidelity_budget_ms})})
    # Overrides pass the file's own bounds (--speed 0 or -1 is refused, not ignored).
    duration, speed = run_clock(scenario, opts.duration_s, opts.speed)
    topology = build_topology(scenario)
    _compile_kernels()
    if opts.replay is not None:
        # Replayed traffic does not change the nodes: check it, then swap the flows in.
        check_nodes(opts.replay, set(topology.node_ids), opts.replay_origin)
        scenario = replay_scenario(scenario, opts.replay, duration_s=duration,
                                   faults=opts.replay_faults)
        topology = dataclasses.replace(topology, scenario=scenario)
    # `orbitmesh up` writes the endpoint record, checks what its worker containers need and
    # starts the endpoint containers before this controller: then they are its to check.
    planned = (opts.external_workers and opts.out is not None
               and read_plan(opts.out.resolve()) is not None)
    if opts.external_workers and not planned and any(e.container for e in
                                                      scenario.endpoints.ip):
        raise EndpointSetupError(f"{opts.scenario}: endpoints.ip[].container with "
                                 "--external-workers: nobody would start those containers; "
                                 "run the scenario with `orbitmesh up --backend docker` or "
                                 "`orbitmesh run`")
    scenario = with_endpoints(topology, opts.endpoints, check=not planned)  # refuses up front
    topology = dataclasses.replace(topology, scenario=scenario)
    workers = worker_count(topology, opts.placement, opts.workers or os.cpu_count() or 1)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = (opts.out or Path("runs") / f"{scenario.name}-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    if opts.replay is not None:
        write_replay(run_dir, scenario, opts.replay)
    else:
        shutil.copy(opts.scenario, run_dir / "scenario.yaml")
    link_source = (LinkTimeline(opts.links_from, topology, salvage=opts.salvage)
                   if opts.links_from else None)
    run_id = opts.run_id or re.sub(r"[^A-Za-z0-9_.-]", "-", run_dir.name)
    if not planned:
        write_plan(run_dir, topology, run_id, place(topology, workers, opts.placement))
    broker, url, credentials, broker_label = start_broker(opts, run_dir, run_id, workers)
    try:
        return asyncio.run(_run(topology, run_dir, run_id, url, broker_label, workers,
                                duration, speed, opts.progress, broker, link_source, opts,
                                credentials))
    finally:
        if broker is not None:
            broker.stop()
        for name in cleanup_recorded(run_dir):  # what a worker could not remove (killed)
            print(f"removed namespace {name} left by a worker", file=sys.stderr)
        if not opts.external_workers:  # else they are the launcher's (`orbitmesh up`)
            remove_recorded(run_dir)  # endpoint containers, by the run's label


async def _run(topology: Topology, run_dir: Path, run_id: str, url: BrokerURL, broker_label: str,
               workers: int, duration: float, speed: float, progress: bool,
               broker: EmbeddedBroker | None = None,
               link_source: LinkSource | None = None,
               opts: RunOptions | None = None,
               credentials: RunCredentials | None = None) -> RunResult:
    run = _LocalRun(topology, run_dir, run_id, url, workers, duration, speed, broker)
    run.link_source = link_source
    run.credentials = credentials
    if opts is not None:
        run.members = [parse_broker_url(u) for u in opts.broker_members] or [url]
        run.placement_mode = opts.placement
        run.external = opts.external_workers
        run.placement = place(topology, workers, opts.placement)
        run.live = opts.live
    return await run.execute(broker_label, progress)


class _LocalRun:
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
        self.credentials: RunCredentials | None = None
        self.broker_lost: dict[str, Any] | None = None
        self.members: list[BrokerURL] = [url]
        """A clustered broker's members (member 0 first); one entry for a single broker."""
        self.broker_stopping = False
        """True while a broker_outage fault stops the broker: it sends every will then."""
        """Per-role broker users; None: every process uses ``url`` as it is."""

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
                                    link_source=self.link_source, workers=self.workers)
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
                self._background(self._watch_broker(), "broker.watchdog")
            if self.broker is None:  # an external broker or cluster: probe what we do not own
                self._background(self._watch_members(), "broker.members")
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
                await _wait_for(lambda: all(getattr(self.status.get(k), "state", None)
                                            in ("ready", "running") for k in range(self.workers)),
                                self.procs, READY_TIMEOUT_S * (3 if self.external else 1),
                                f"all {self.workers} workers to report ready", self.stop)
                printer = _Progress(self.status, self.workers, self.duration, enabled=progress,
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
                await _wait_for(lambda: all(getattr(self.status.get(k), "state", None)
                                            in ("done", "lost") for k in finishing),
                                self.procs, FINISH_TIMEOUT_S, "every worker to finish", None,
                                quiet=True)
                await _reap(self.procs)
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
        return self._summarise(broker_label, started)

    def _clock_started(self, t0_wall: float) -> None:
        self.manifest["t0_wall"] = t0_wall
        write_manifest(self.run_dir, self.manifest)

    def _summarise(self, broker_label: str, started: datetime) -> RunResult:
        controller = self.controller
        assert controller is not None
        scenario = self.topology.scenario
        links = {"handovers": controller.handovers,
                 "route_changes": controller.engine.route_changes_total,
                 "ticks": len(controller.tick_compute_ms),
                 "tick_compute_ms": percentiles(controller.tick_compute_ms, (50, 99))}
        meta = {"id": self.run_id, "scenario": scenario.name,
                "scenario_file": str(scenario.source), "seed": scenario.seed,
                "speed": self.speed, "duration_s": self.duration, "workers": self.workers,
                "broker": broker_label, "started": started.isoformat(),
                "t0_wall": controller.t0_wall, "ended": datetime.now(UTC).isoformat(),
                "interrupted": self.stop.is_set(), "control_errors": controller.control_errors,
                "versions": _versions()}
        faults = [{**f.describe(), **self.process_faults.get(f.id, {})}
                  for f in controller.faults]
        faults += [self.broker_lost] if self.broker_lost is not None else []
        for info in self.process_faults.values():
            if info.get("origin") == "unplanned":
                proc = self.procs.get(int(info["target"]["worker"]))
                code = None if proc is None else proc.returncode
                info["exit"] = (None if code is None else f"signal {-code}" if code < 0
                                else f"exit code {code}")
                how = info["exit"] or "still running: its broker connection dropped"
                info["describe"] = (f"worker {info['target']['worker']} (pid {info['pid']}) "
                                    f"lost at t={info['start_s']:g} s ({how})")
                faults.append(info)
        summary = build_summary(self.run_dir, scenario, meta, links, self.workers, faults)
        if self.malformed_status:  # the launcher's own count: statuses it refused
            summary["malformed_by_topic"]["status"] = self.malformed_status
            summary["malformed"] += self.malformed_status
        # A full disk ends the run with one line (and exit 1), after saving what still fits.
        errors = [e for e in (controller.write_error,) if e is not None]
        summary["run"]["write_errors"] = [str(e) for e in errors]
        summary["run"]["write_errors"] += [  # a worker's event log cut by a full disk
            f"worker {w.get('worker')}: event log cut at byte {cut.get('bytes')}: "
            f"{cut.get('error')}" for w in load_worker_stats(self.run_dir)
            if isinstance(cut := w.get("events_truncated_at"), dict)]
        for write in (lambda: write_summary(self.run_dir, summary), lambda: write_manifest(
                self.run_dir, {**self.manifest, "faults": faults, "complete": not errors,
                               "interrupted": self.stop.is_set()})):
            try:
                write()
            except DiskError as exc:
                errors.append(exc)
        if errors:
            print(format_summary(summary))  # print_result will not run: the table goes out here
            raise errors[0]
        return RunResult(self.run_dir, summary)

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
        if state == "lost" and self.broker_stopping:
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
            self._background(self._broker_outage(fault, info), f"broker-outage-{fault.id}")

    async def _broker_outage(self, fault: Fault, info: dict[str, Any]) -> None:
        assert self.broker is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.transport.flush(), 1.0)  # workers learn the fault id
        info["stopped_wall"] = time.time()
        self.broker_stopping = True
        try:
            await asyncio.to_thread(self.broker.stop)
            await asyncio.sleep(float(fault.spec.for_s or 0.0) / self.speed)
            await asyncio.to_thread(self.broker.restart)
        finally:
            self.broker_stopping = False
        info["restarted_wall"] = time.time()

    async def _watch_broker(self) -> None:
        """Restart an embedded broker that died unasked and charge the gap to an unplanned
        event (not to a broker_outage fault nobody injected)."""
        assert self.broker is not None and self.controller is not None
        pid = self.broker.pid
        while True:
            await asyncio.sleep(BROKER_POLL_S)
            if self.broker_stopping or self.broker.running or self.stop.is_set():
                # After Ctrl-C (a terminal signals the whole process group, the broker too)
                # nothing is unplanned: the run's end restarts a broker it still needs.
                pid = self.broker.pid or pid
                continue
            code = self.broker.returncode
            how = ("exit status unknown" if code is None else f"signal {-code}" if code < 0
                   else f"exit code {code}")
            start_s, died = round(self.controller.scenario_s(), 3), time.time()
            event = self.broker_lost = self.broker_lost or {
                "id": UNPLANNED_BROKER_ID, "kind": "broker_lost", "origin": "unplanned",
                "start_s": start_s, "end_s": None, "target": {}, "outages": []}
            print(f"error: the embedded broker (pid {pid}) died at t={start_s:g} s ({how}); "
                  "restarting it", file=sys.stderr)
            self.broker_stopping = True  # no will from before the restart marks a worker lost
            try:
                await asyncio.to_thread(self.broker.restart)
            except BrokerError as exc:
                event["describe"] = (f"embedded broker (pid {pid}) died at t={start_s:g} s "
                                     f"({how}) and could not be restarted: {exc}")
                print(f"error: {event['describe']}; stopping the run", file=sys.stderr)
                self.stop.set()
                return
            finally:
                self.broker_stopping = False
            event["end_s"] = round(self.controller.scenario_s(), 3)
            event["outages"].append({"pid": pid, "exit": how, "start_s": start_s,
                                     "end_s": event["end_s"],
                                     "restart_wall_s": round(time.time() - died, 3)})
            event["describe"] = "; ".join(
                f"embedded broker (pid {o['pid']}) died at t={o['start_s']:g} s ({o['exit']}), "
                f"restarted after {o['restart_wall_s']:g} s wall" for o in event["outages"])
            pid = self.broker.pid
            if pid is not None:
                self.pids["broker"] = pid
                atomic_write(self.run_dir / "pids.json", json.dumps(self.pids), durable=False)

    async def _watch_members(self) -> None:
        """Name an external broker's loss, or a cluster member's (the run goes on)."""
        assert self.controller is not None
        transport = self.transport

        async def connected(_member: BrokerURL) -> bool:
            return transport.connected.is_set()

        watch = MemberWatch(self.members, UNPLANNED_BROKER_ID, self.controller.scenario_s,
                            on_event=lambda event: setattr(self, "broker_lost", event),
                            answers=member_answers if len(self.members) > 1 else connected)
        await watch.run(self.stop.is_set)

    async def _restart(self, worker: int) -> None:
        proc = self.procs[worker]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 5.0)
        self.generation[worker] += 1
        await self._spawn(worker)

    async def _spawn(self, worker: int) -> None:
        gen = self.generation[worker]
        tag = f"w{worker}" + (f"-g{gen}" if gen else "")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([_PROJECT_ROOT, env.get("PYTHONPATH", "")]
                                            ).rstrip(os.pathsep)
        log = (self.run_dir / f"worker-{tag}.log").open("wb")
        # The URL carries this worker's password: a 0600 file, never argv (ps shows argv).
        url = self.url if self.credentials is None else self.credentials.worker(worker).on(
            self.url)
        urls = [url] if len(self.members) == 1 else member_urls_for(self.members, worker)
        broker_file = write_private(self.run_dir / "broker" / f"worker-{worker}.url", "".join(
            u.to_text(show_password=True) + "\n" for u in urls))
        self.procs[worker] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "nodes.worker", "--scenario",
            str(self.run_dir / "scenario.yaml"), "--run-id", self.run_id, "--broker-file",
            str(broker_file), "--worker", str(worker), "--workers",
            str(self.workers), "--out", str(self.run_dir), "--duration", str(self.duration),
            "--speed", str(self.speed), "--generation", str(gen), "--placement",
            self.placement_mode, stdout=log, stderr=log, env=env)
        log.close()
        self.pids[tag] = self.procs[worker].pid
        if self.broker is not None and self.broker.pid is not None:
            self.pids["broker"] = self.broker.pid
        atomic_write(self.run_dir / "pids.json", json.dumps(self.pids), durable=False)


async def _wait_for(condition: Any, procs: dict[int, asyncio.subprocess.Process],
                    timeout_s: float, what: str, stop: asyncio.Event | None,
                    quiet: bool = False) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        dead = [k for k, p in procs.items() if p.returncode is not None]
        if dead and not quiet:
            raise RunError(f"worker {dead[0]} exited with code {procs[dead[0]].returncode} while "
                           f"waiting for {what}; see worker-{dead[0]}.log in the run directory")
        if dead and quiet and all(p.returncode is not None for p in procs.values()):
            return
        if stop is not None and stop.is_set():
            raise RunError(f"interrupted while waiting for {what}")
        if time.monotonic() > deadline:
            if quiet:
                return
            raise RunError(f"timed out after {timeout_s:g} s waiting for {what}")
        await asyncio.sleep(0.02)


async def _reap(procs: dict[int, asyncio.subprocess.Process], grace_s: float = 5.0) -> None:
    """Wait for the workers; SIGTERM then SIGKILL the ones (by PID) that linger."""
    for sig in (None, signal.SIGTERM, signal.SIGKILL):
        alive = [p for p in procs.values() if p.returncode is None]
        if not alive:
            return
        for p in alive:
            if sig is not None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(sig)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in alive)), grace_s)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"orbitmesh": __version__, "python": platform.python_version()}
    for pkg in ("numpy", "scipy", "sgp4", "aiomqtt", "paho-mqtt", "msgpack"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


class _Progress:
    """The live progress line (scenario time, frames/s, deliveries, drops)."""

    def __init__(self, status: dict[int, WorkerStatus], workers: int, duration: float,
                 enabled: bool, budget: Fidelity | None = None) -> None:
        self.budget = budget or Fidelity()
        self._warned = -1e9
        self.status = status
        self.workers = workers
        self.duration = duration
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self._last = (time.monotonic(), 0)
        self._printed = 0.0

    def update(self, t_s: float) -> None:
        """Print the progress line (at most twice a second; every 10 s when not a terminal),
        and — quiet or not — a warning as soon as a worker falls behind the fidelity budget."""
        now = time.monotonic()
        self._warn_if_behind(now)
        if not self.enabled or now - self._printed < (0.5 if self.tty else 10.0):
            return
        self._printed = now
        s = [x.progress or WorkerProgress() for x in self.status.values()]
        hops = sum(x.hops for x in s)
        rate = (hops - self._last[1]) / max(1e-6, now - self._last[0])
        self._last = (now, hops)
        line = (f"t={t_s:7.1f}/{self.duration:g} s  {rate:8.0f} frame-hops/s  "
                f"offered {sum(x.offered for x in s)}  "
                f"delivered {sum(x.delivered for x in s)}  "
                f"dropped {sum(x.dropped for x in s)}  "
                f"on board {sum(x.held_on_board for x in s)}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", file=sys.stderr,
              flush=True)

    def _warn_if_behind(self, now: float) -> None:
        if now - self._warned < 5.0:
            return
        progress = [x.progress for x in self.status.values() if x.progress is not None]
        late = max((x.late_ms for x in progress), default=0.0)
        apply = max((x.apply_late_ms for x in progress), default=0.0)
        warning = behind_warning(late, self.budget)
        if warning is None and apply > self.budget.link_apply_budget_ms:
            warning = behind_warning(apply, self.budget.model_copy(
                update={"budget_ms": self.budget.link_apply_budget_ms}))
        if warning is None:
            return
        self._warned = now
        print(("\r" if self.tty else "") + "WARNING: " + warning, file=sys.stderr, flush=True)

    def done(self) -> None:
        """End the progress line."""
        if self.enabled and self.tty:
            print(file=sys.stderr)
