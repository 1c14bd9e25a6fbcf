"""The run's processes together, without a socket: the controller, two workers and the
launcher's part on the in-memory broker, on virtual time.

Covers start-up (ready statuses before the clock), ticks, a live fault by control command, a
worker lost (its will) and back, the launcher's finish, the end markers and the final count —
a 14 s scenario in well under a second of real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import pytest

from nodes.worker import Worker
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.protocol.messages import ControlCommand, WorkerStatus
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.controller import Controller
from orbitmesh.run.report import build_summary
from tests.virtual_time import LoopWall, VirtualTimeLoop

SCENARIO = Path(__file__).parent / "data" / "faults" / "detour.yaml"
WORKERS = 2
RUN = "choreo"


async def _until(condition: object, what: str, timeout_s: float = 30.0) -> None:
    """Wait for a condition over several objects; on virtual time, polling costs nothing."""
    async with asyncio.timeout(timeout_s):
        while not condition():  # type: ignore[operator]  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def choreography(out: Path) -> dict[str, object]:
    """One run: returns the summary and what the launcher saw."""
    loop = asyncio.get_running_loop()
    wall = LoopWall(loop)
    topology = build_topology(load_scenario(SCENARIO))
    scenario = topology.scenario
    topics = Topics(RUN)
    broker = MemoryBroker()
    status: dict[int, WorkerStatus] = {}
    seen: list[tuple[int, str]] = []

    def make_worker(k: int, generation: int) -> tuple[Worker, MemoryTransport]:
        will = (topics.worker_status(k), WorkerStatus(k, "lost", generation).encode(), True)
        transport = MemoryTransport(broker, f"w{k}-g{generation}", will=will)
        worker = Worker(topology, worker=k, workers=WORKERS, run_id=RUN, transport=transport,
                        out_dir=out, duration_s=scenario.duration_s, speed=scenario.speed,
                        generation=generation, wall=wall)
        return worker, transport

    async with MemoryTransport(broker, "controller") as control, asyncio.TaskGroup() as tg:
        controller = Controller(topology, control, topics, duration_s=scenario.duration_s,
                                speed=scenario.speed, out_dir=out, wall=wall, workers=WORKERS)
        await control.subscribe(topics.worker_status_all, topics.control)

        async def launcher_listens() -> None:  # what the local launcher does with statuses
            async for batch in control.batches():
                for message in batch:
                    if message.topic == topics.control:
                        controller.handle_control(message.payload)
                        continue
                    if not message.payload:
                        continue
                    s = WorkerStatus.decode(message.payload)
                    before = status[s.worker].state if s.worker in status else None
                    status[s.worker] = s
                    if s.state != before:
                        seen.append((s.worker, s.state))
                    nodes = [n for n in range(topology.n_nodes) if owner[n] == s.worker]
                    if s.state == "lost" and before not in ("lost", "done"):
                        controller.worker_lost(nodes, f"worker{s.worker}-lost")
                    elif s.state == "ready" and before == "lost":
                        controller.worker_back(nodes)

        async def serve(worker: Worker, transport: MemoryTransport) -> None:
            async with transport:
                await worker.run()

        workers = [make_worker(k, 0) for k in range(WORKERS)]
        owner = workers[0][0].owner
        listener = tg.create_task(launcher_listens(), name="launcher.listen")
        serving = [tg.create_task(serve(w, t), name=f"worker{k}") for k, (w, t) in
                   enumerate(workers)]
        await _until(lambda: all(getattr(status.get(k), "state", None) in ("ready", "running")
                                 for k in range(WORKERS)), "ready")
        ticking = tg.create_task(controller.run(), name="controller")

        # A live fault at t ~ 2 s: perth down for 1 s (the operator's command).
        await _until(lambda: controller.scenario_s() >= 2.0, "t=2")
        operator = MemoryTransport(broker, "operator")
        async with operator:
            operator.publish(topics.control, b'{"cmd": "fault", "kind": "node_down", '
                             b'"node": "perth", "for_s": 1, "id": "perth-down"}')
            operator.publish(topics.control, ControlCommand("finish").encode())  # refused
        # Worker 1 dies at t ~ 11 s (its connection drops: the broker sends its will) and a
        # new generation takes its place.
        await _until(lambda: controller.scenario_s() >= 11.0, "t=11")
        _dead, dead_transport = workers[1]
        await dead_transport.abort()  # the connection drops: the broker publishes the will ...
        serving[1].cancel()  # ... and a killed process runs nothing more
        with contextlib.suppress(asyncio.CancelledError):
            await serving[1]
        await _until(lambda: getattr(status.get(1), "state", None) == "lost", "lost")
        back, back_transport = make_worker(1, 1)
        tg.create_task(serve(back, back_transport), name="worker1-g1")
        await _until(lambda: status[1].state in ("ready", "running")
                     and status[1].generation == 1, "back")

        await ticking
        control.publish(topics.launcher, ControlCommand("finish").encode())
        await _until(lambda: all(status[k].state == "done" for k in range(WORKERS)), "done")
        controller.close()
        listener.cancel()
    meta = {"id": RUN, "speed": scenario.speed, "duration_s": scenario.duration_s,
            "t0_wall": controller.t0_wall}
    faults = [f.describe() for f in controller.faults]
    faults.append({"id": "worker1-lost", "kind": "worker_lost", "origin": "unplanned",
                   "start_s": 11.0, "end_s": None, "target": {"worker": 1}})
    summary = build_summary(out, scenario, meta, {}, WORKERS, faults)
    return {"summary": summary, "seen": seen, "errors": controller.control_errors,
            "virtual_s": loop.time()}


def test_a_whole_run_on_the_memory_broker(tmp_path: Path) -> None:
    loop = VirtualTimeLoop()
    started = time.perf_counter()
    try:
        result = loop.run_until_complete(choreography(tmp_path))
    finally:
        loop.close()
    real_s = time.perf_counter() - started
    summary = result["summary"]
    assert isinstance(summary, dict)
    assert result["virtual_s"] > 14.0 / 4.0  # the whole scenario ran (14 s at speed 4)
    print(f"\n{result['virtual_s']:.1f} virtual s in {real_s:.1f} real s")
    seen = result["seen"]
    assert sorted(seen[:2]) == [(0, "ready"), (1, "ready")]
    assert (1, "lost") in seen and seen.index((1, "lost")) < len(seen) - 1
    assert result["errors"] == 1  # the operator's finish was refused
    flow = summary["flows"][0]
    assert flow["offered"] > 300 and flow["delivered"] > 0
    perth = next(f for f in summary["faults"] if f["id"] == "perth-down")
    assert perth["kind"] == "node_down" and perth["dropped"] > 0
    assert "tokyo-perth" in perth["flows_affected"]
    # The scheduled cut of tokyo-singapore and the live fault both charge their frames; the
    # worker lost at 11 s is a process fault: what it held is attributed to it.
    cut = next(f for f in summary["faults"] if f["id"] == "cut")
    assert cut["dropped"] <= 2
    assert summary["conservation_ok"], summary["conservation"]
    assert summary["fidelity"]["hop_excess_ms"]["p99"] < 1.0  # virtual time is never late


@pytest.mark.parametrize("junk", [b"null", b"[]", b'{"worker":0}', b'{"offered":"x"}'])
def test_junk_on_every_control_topic_does_not_stop_a_worker(tmp_path: Path, junk: bytes) -> None:
    """The payloads that once killed a worker's dispatcher or the controller's listener."""

    async def go() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        topology = build_topology(load_scenario(SCENARIO))
        topics = Topics(RUN)
        broker = MemoryBroker()
        transport = MemoryTransport(broker, "w0")
        worker = Worker(topology, worker=0, workers=1, run_id=RUN, transport=transport,
                        out_dir=None, duration_s=5.0, speed=4.0, wall=LoopWall(loop))
        async with transport, MemoryTransport(broker, "evil") as evil:
            task = asyncio.create_task(worker.run())
            await asyncio.sleep(0.1)
            for topic in (topics.clock, topics.state, topics.faults, topics.launcher,
                          topics.worker_frames(0), topics.node_inbox("tokyo"), topics.control):
                evil.publish(topic, junk, retain=topic in (topics.clock, topics.faults))
            await asyncio.sleep(0.5)
            alive = not task.done()
            worker.finish()
            await task
        return int(alive), worker.stats.malformed_count

    loop = VirtualTimeLoop()
    try:
        alive, malformed = loop.run_until_complete(go())
    finally:
        loop.close()
    assert alive == 1
    # Counted on clock, state, faults, launcher and frames; inbox frames wait for the first link
    # state (none came here), and control is the controller's business.
    assert malformed >= 5 - 1
