"""The container supervisor of a docker run: it carries out the faults the controller delegates.

With external workers the controller touches no process: when a ``worker_kill`` or
``container_*`` fault starts it lists the fault on the run's retained faults topic and leaves the
act to whoever started the containers. The supervisor subscribes to that topic, the clock and the
worker statuses, turns each fault's scenario start and end into wall times with the clock, and
acts on the worker's container (found by label):

=====================  ============================================================================
kind                   action
=====================  ============================================================================
``container_kill``     SIGKILL; started again once the worker is reported lost when ``restart``
``worker_kill``        is set, else at the fault's end when it has ``for_s``
``container_pause``    ``docker pause``; unpaused at the fault's end when it has ``for_s``
``container_unpause``  ``docker unpause``
``container_restart``  ``docker restart`` (SIGTERM, 10 s grace, start)
=====================  ============================================================================

What it did goes to ``<run>/supervisor.json`` and, once the controller has written the summary,
into each fault's entry there (``"container": {...}``). Every docker SDK call runs in a thread.
`orbitmesh up` runs it in the foreground, `orbitmesh supervise RUN` in a container of its own
(:mod:`orbitmesh.run.launch.docker_up`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import heapq
import itertools
import json
import os
import time
from typing import Any

from broker.client import MqttTransport
from broker.url import parse_broker_url
from orbitmesh.errors import OrbitmeshError, RunError
from orbitmesh.protocol.clock import RunClock
from orbitmesh.protocol.messages import ClockMessage, FaultListing, MessageError, WorkerStatus
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.launch.control import RUN_FILE
from orbitmesh.run.launch.docker import (
    LABEL_ROLE,
    DockerRun,
    Progress,
    role_container,
    run_containers,
    worker_container,
)
from orbitmesh.run.launch.docker_secrets import as_operator
from orbitmesh.run.launch.endpoint_containers import EndpointContainers, kill_labelled
from orbitmesh.run.report import read_summary, write_summary

DELEGATED = ("worker_kill", "container_kill", "container_pause", "container_unpause",
             "container_restart")
RECORD = "supervisor.json"
LOST_WAIT_S = 10.0
"""A killed worker that is not reported lost within this is restarted anyway."""
STOP_GRACE_S = 60.0
"""After Ctrl-C, how long the controller may take to finish before it is killed."""
POLL_S = 0.5
CONTROLLER_WAIT_S = 60.0


class Supervisor:
    """Carries out a run's delegated faults until its controller container exits."""

    def __init__(self, client: Any, run: DockerRun, say: Progress, *,
                 connect_url: str | None = None, progress: bool = True) -> None:
        self.client = client
        self.run = run
        self.say = say
        # The operator's credential from the run's secrets (the host's, or the detached
        # supervisor container's own copy): it only reads, but anonymous clients are refused.
        self.url = as_operator(run.run_dir, parse_broker_url(connect_url or run.host_broker_url))
        self.progress = progress
        self.topics = Topics(run.run_id)
        self.clock: dict[str, Any] | None = None
        self.first_tick_s: float | None = None
        """Wall seconds from the run's start to scenario time 0."""
        self.status: dict[int, dict[str, Any]] = {}
        self.malformed = 0
        self.actions: dict[str, dict[str, Any]] = {}
        self._timers: list[tuple[float, int, str, dict[str, Any]]] = []
        self._seq = itertools.count()
        self._awaiting_lost: dict[int, tuple[float, dict[str, Any]]] = {}
        self.endpoints: EndpointContainers | None = None
        self._wake = asyncio.Event()

    # --- the loop ---------------------------------------------------------------------------------

    async def supervise(self, stop: asyncio.Event) -> int:
        """Act on faults until the controller container exits; its exit code."""
        controller = await self._controller()
        async with MqttTransport(self.url, client_id=f"orbitmesh-{self.run.run_id}-supervisor-"
                                 f"{os.getpid()}", reconnect=True) as transport:
            await transport.subscribe(self.topics.faults, self.topics.clock,
                                      self.topics.worker_status_all)
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(self._listen(transport), name="supervisor.listen"),
                         group.create_task(self._run_timers(), name="supervisor.timers"),
                         group.create_task(self._watch(), name="supervisor.watch")]
                # Users' containers at endpoint nodes (`up` started them): exits said, on_exit
                self.endpoints = endpoints = await asyncio.to_thread(
                    EndpointContainers.resume, self.client, self.run.run_dir)
                if endpoints is not None:
                    tasks.append(group.create_task(endpoints.watch(stop, self._scenario_s),
                                                   name="supervisor.endpoints"))
                try:
                    code = await self._wait_for_exit(controller, stop)
                finally:
                    for task in tasks:
                        task.cancel()
        await asyncio.to_thread(kill_labelled, self.client, self.run.run_id)
        self._write_record()
        return code

    def _scenario_s(self) -> float | None:
        """The run's scenario time now, None before its clock started."""
        return None if self.clock is None else round(
            RunClock.of(self.clock).scenario_s(time.time()), 3)

    async def _controller(self) -> Any:
        """The run's controller container (compose may start it a moment after us)."""
        deadline = time.monotonic() + CONTROLLER_WAIT_S
        while True:
            found = await asyncio.to_thread(role_container, self.client, self.run.run_id,
                                            "controller")
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise RunError(f"run {self.run.run_id} has no controller container (label "
                               f"{LABEL_ROLE}=controller); is it running on this docker host?")
            await asyncio.sleep(POLL_S)

    async def _wait_for_exit(self, controller: Any, stop: asyncio.Event) -> int:
        asked_at: float | None = None
        while True:
            await asyncio.to_thread(controller.reload)
            if controller.status in ("exited", "dead"):
                return int(controller.attrs["State"]["ExitCode"])
            if stop.is_set() and asked_at is None:
                self.say("stopping: the controller finishes the run and writes the summary")
                asked_at = time.monotonic()
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(controller.kill, "SIGINT")
            if asked_at is not None and time.monotonic() - asked_at > STOP_GRACE_S:
                await asyncio.to_thread(controller.kill)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait() if asked_at is None else asyncio.sleep(POLL_S),
                                       POLL_S)

    async def _listen(self, transport: MqttTransport) -> None:
        async for batch in transport.batches():
            for message in batch:
                if not message.payload:
                    continue
                # Checked by the protocol's types where they enter; the plain forms below are
                # what the supervisor's records hold.
                try:
                    if message.topic == self.topics.clock:
                        self._on_clock(dataclasses.asdict(ClockMessage.decode(message.payload)))
                    elif message.topic == self.topics.faults:
                        listing = FaultListing.decode(message.payload)
                        self._plan({"t_s": listing.t_s,
                                    "faults": [f.as_json() for f in listing.faults]})
                    else:
                        status = WorkerStatus.decode(message.payload)
                        if message.topic != self.topics.worker_status(status.worker):
                            raise MessageError(f"status of worker {status.worker} on "
                                               f"{message.topic}")
                        self._on_status(status.worker, json.loads(status.encode()))
                except MessageError as exc:
                    self.malformed += 1
                    if self.malformed <= 10:
                        self.say(f"malformed message ignored: {exc}")

    def _on_clock(self, clock: dict[str, Any]) -> None:
        if self.clock is None:
            self.first_tick_s = float(clock["t0_wall"]) - self.run.started_wall
            self.say(f"clock started: scenario time 0 came {self.first_tick_s:.1f} s after "
                     "`up` began")
            self.clock = clock
            self._fix_run_file()
            self._write_record()
        self.clock = clock

    def _on_status(self, worker: int, body: dict[str, Any]) -> None:
        self.status[worker] = body
        if body.get("state") == "lost" and worker in self._awaiting_lost:
            _deadline, fault = self._awaiting_lost.pop(worker)
            self._schedule(time.time(), "start", fault)

    # --- faults -----------------------------------------------------------------------------------

    def wall_at(self, t_s: float) -> float:
        """Wall time of scenario time ``t_s`` (needs the clock)."""
        assert self.clock is not None
        return RunClock.of(self.clock).wall_at(t_s)

    def _plan(self, listing: dict[str, Any]) -> None:
        if self.clock is None:
            return  # the listing is published again with the clock
        now_s = float(listing.get("t_s", 0.0))
        for fault in listing.get("faults", []):
            if fault.get("kind") not in DELEGATED or fault["id"] in self.actions:
                continue
            if not fault.get("active") and float(fault["start_s"]) <= now_s:
                continue  # over before we heard of it
            record = {"kind": fault["kind"], "worker": fault["target"].get("worker"),
                      "actions": []}
            self.actions[fault["id"]] = record
            self._schedule(self.wall_at(float(fault["start_s"])), _first_action(fault["kind"]),
                           fault)

    def _schedule(self, wall: float, action: str, fault: dict[str, Any]) -> None:
        heapq.heappush(self._timers, (wall, next(self._seq), action, fault))
        self._wake.set()

    async def _run_timers(self) -> None:
        while True:
            now = time.time()
            while self._timers and self._timers[0][0] <= now:
                _wall, _seq, action, fault = heapq.heappop(self._timers)
                await self._act(action, fault)
            for worker, (deadline, fault) in list(self._awaiting_lost.items()):
                if now > deadline:
                    del self._awaiting_lost[worker]
                    await self._act("start", fault)
            self._wake.clear()
            delay = min([self._timers[0][0] - now] if self._timers else [POLL_S])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(0.0, min(delay, POLL_S)))

    async def _act(self, action: str, fault: dict[str, Any]) -> None:
        record = self.actions[fault["id"]]
        worker = fault["target"].get("worker")
        entry: dict[str, Any] = {"action": action, "wall": round(time.time(), 3)}
        if self.clock is not None:
            entry["scenario_s"] = round((time.time() - float(self.clock["t0_wall"]))
                                        * float(self.clock["speed"]), 3)
        end_s = fault.get("end_s")
        restart = bool(fault["target"].get("restart"))
        if action == "start" and self._over():
            entry["skipped"] = "the run is over"
            record["actions"].append(entry)
            self._write_record()
            return
        if action == "kill" and restart:
            # Before the kill: the worker's last will can arrive before the kill call returns.
            self._awaiting_lost[int(worker)] = (time.time() + LOST_WAIT_S, fault)
        try:
            container = await asyncio.to_thread(worker_container, self.client, self.run.run_id,
                                                int(worker if worker is not None else -1))
            if container is None:
                raise RunError(f"run {self.run.run_id} has no container for worker {worker}")
            record["container"] = container.name
            await asyncio.to_thread(_docker_action, container, action)
        except (OrbitmeshError, OSError) as exc:
            entry["error"] = str(exc)
        except Exception as exc:  # docker.errors.APIError and the like: record, keep going
            entry["error"] = f"{type(exc).__name__}: {exc}"
        record["actions"].append(entry)
        self.say(f"fault {fault['id']} ({fault['kind']}): {action} {record.get('container', '?')}"
                 + (f" failed: {entry['error']}" if "error" in entry else ""))
        self._write_record()
        if "error" in entry:
            self._awaiting_lost.pop(int(worker if worker is not None else -1), None)
            return
        if action == "kill" and not restart and end_s is not None:
            self._schedule(self.wall_at(float(end_s)), "start", fault)
        elif action == "pause" and end_s is not None:
            self._schedule(self.wall_at(float(end_s)), "unpause", fault)

    def _over(self) -> bool:
        """True once scenario time has passed the run's duration (no restarts then)."""
        return self.clock is not None and time.time() >= self.wall_at(
            float(self.clock["duration_s"]))

    # --- housekeeping -----------------------------------------------------------------------------

    async def _watch(self) -> None:
        """Report progress; end the run early when a worker container dies before the clock."""
        last = 0.0
        while True:
            await asyncio.sleep(1.0)
            if self.clock is None:
                rows = await asyncio.to_thread(run_containers, self.client, self.run.run_id)
                dead = [c for c in rows if c.labels.get("orbitmesh.role") == "worker"
                        and c.status == "exited"]
                if dead:
                    tail = (await asyncio.to_thread(dead[0].logs, tail=10)).decode(
                        errors="replace")
                    self.say(f"{dead[0].name} exited before the run began:\n{tail}")
                    controller = await self._controller()
                    await asyncio.to_thread(controller.kill, "SIGTERM")
                    return
                continue
            if self.progress and time.monotonic() - last >= 5.0:
                last = time.monotonic()
                self.say(self._progress_line())

    def _progress_line(self) -> str:
        assert self.clock is not None
        s = list(self.status.values())
        t_s = RunClock.of(self.clock).scenario_s(time.time())
        running = sum(x.get("state") in ("ready", "running") for x in s)
        return (f"t={min(t_s, float(self.clock['duration_s'])):7.1f}/"
                f"{float(self.clock['duration_s']):g} s  workers up {running}/{self.run.workers}"
                f"  offered {sum(x.get('offered', 0) for x in s)}  delivered "
                f"{sum(x.get('delivered', 0) for x in s)}  dropped "
                f"{sum(x.get('dropped', 0) for x in s)}")

    def _fix_run_file(self) -> None:
        """run.json must name the broker as this machine reaches it (the controller wrote its
        own view), so that `orbitmesh fault RUN` works from the host."""
        path = self.run.run_dir / RUN_FILE
        with contextlib.suppress(OSError, ValueError):
            body = json.loads(path.read_text())
            host = parse_broker_url(self.run.host_broker_url).to_text(show_password=False)
            if body.get("broker") != host:
                body["broker"] = host
                path.write_text(json.dumps(body, indent=2))

    def _write_record(self) -> None:
        with contextlib.suppress(OSError):
            (self.run.run_dir / RECORD).write_text(json.dumps(
                {"run_id": self.run.run_id, "first_tick_s": self.first_tick_s,
                 "faults": self.actions}, indent=2))

    def merge_into_summary(self) -> dict[str, Any] | None:
        """Add what the supervisor did to each fault of summary.json; the summary, if any."""
        path = self.run.run_dir / "summary.json"
        if not path.is_file():
            return None
        summary = read_summary(path)
        for fault in summary.get("faults", []):
            if fault["id"] in self.actions:
                fault["container"] = self.actions[fault["id"]]
        write_summary(self.run.run_dir, summary)
        return summary


def _first_action(kind: str) -> str:
    return {"container_pause": "pause", "container_unpause": "unpause",
            "container_restart": "restart"}.get(kind, "kill")


def _docker_action(container: Any, action: str) -> None:
    """One blocking docker call on a worker container."""
    container.reload()
    if action == "kill":
        if container.status in ("running", "paused"):
            if container.status == "paused":
                container.unpause()
            container.kill()
    elif action == "start":
        if container.status != "running":
            container.start()
    elif action == "pause":
        container.pause()
    elif action == "unpause":
        if container.status == "paused":
            container.unpause()
    elif action == "restart":
        container.restart(timeout=10)
    else:  # pragma: no cover - the table above is complete
        raise RunError(f"unknown container action {action!r}")

