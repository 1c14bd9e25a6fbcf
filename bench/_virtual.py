"""A scenario's controller and workers in one process, on the in-memory broker and virtual time.

For benchmarks that compare work rather than timing (bench/plane_cpu.py, bench/soak_virtual.py):
run inside a ``tests.virtual_time.VirtualTimeLoop``, nothing sleeps, and a loaded machine makes
the run slower, not late.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from nodes.worker import Worker
from orbitmesh.core.topology import Topology
from orbitmesh.protocol.messages import ControlCommand, WorkerStatus
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.controller import Controller
from tests.virtual_time import LoopWall


@dataclass
class VirtualRun:
    """The run's parts, once every worker is ready and before the controller ticks."""

    controller: Controller
    workers: list[Worker]
    tasks: asyncio.TaskGroup
    """Start the controller here: ``tasks.create_task(controller.run())``."""


@contextlib.asynccontextmanager
async def virtual_run(topology: Topology, out: Path, *, run_id: str, duration_s: float,
                      speed: float, workers_n: int,
                      prepare: Callable[[Worker], None] | None = None
                      ) -> AsyncIterator[VirtualRun]:
    """The run, ready to tick (``prepare`` sees each worker first); leaving sends ``finish``
    and returns once every worker is done."""
    wall = LoopWall(asyncio.get_running_loop())
    topics = Topics(run_id)
    broker = MemoryBroker()
    status: dict[int, WorkerStatus] = {}

    def states_are(*states: str) -> bool:
        return all(getattr(status.get(k), "state", None) in states for k in range(workers_n))

    async with MemoryTransport(broker, "controller") as control, asyncio.TaskGroup() as tg:
        controller = Controller(topology, control, topics, duration_s=duration_s, speed=speed,
                                out_dir=out, wall=wall, workers=workers_n)
        await control.subscribe(topics.worker_status_all)

        async def listen() -> None:
            async for batch in control.batches():
                for message in batch:
                    if message.payload:
                        s = WorkerStatus.decode(message.payload)
                        status[s.worker] = s

        async def serve(worker: Worker, transport: MemoryTransport) -> None:
            async with transport:
                await worker.run()

        listener = tg.create_task(listen(), name="listen")
        workers: list[Worker] = []
        for k in range(workers_n):
            transport = MemoryTransport(broker, f"w{k}")
            worker = Worker(topology, worker=k, workers=workers_n, run_id=run_id,
                            transport=transport, out_dir=out, duration_s=duration_s,
                            speed=speed, wall=wall)
            if prepare is not None:
                prepare(worker)
            workers.append(worker)
            tg.create_task(serve(worker, transport), name=f"worker{k}")
        while not states_are("ready", "running"):  # noqa: ASYNC110
            await asyncio.sleep(0.01)  # virtual time: costs nothing
        yield VirtualRun(controller, workers, tg)
        control.publish(topics.launcher, ControlCommand("finish").encode())
        while not states_are("done"):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        controller.close()
        listener.cancel()
