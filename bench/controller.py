"""The controller's event loop while ticks compute: inline (before) against off the loop. JSON.

    .venv/bin/python bench/controller.py [--scenario scenarios/starlink-gen1.yaml ...]
        [--ticks 20] [--speed 1] [--modes inline,thread] [--rounds 1] [--destinations used,all]

One Controller per case, in this process, on the in-memory broker and the real wall clock, with
its link timeline written to a temporary directory as in a run (no workers: this measures the
controller alone). Cases alternate mode by mode, scenario by scenario, in one sitting. Per case:

* ``tick_compute_ms``: the engine's time per tick (``Controller.tick_compute_ms``, the two
  ticks computed before the clock starts left out: the first loads numba's cached kernels);
* ``publish_late_ms``: how late each tick's state reached a subscriber on the same loop, against
  the wall time it was due to go out (one tick ahead of its ``t_s``). The subscriber reads when
  the loop is free, as the MQTT transport writes at the end of a loop turn, so this is when the
  state would leave for the broker;
* ``loop_lag_ms``: how late a 1 ms asyncio timer fires, again and again, while the run ticks.

``--destinations``: the route trees' roots, ``used`` (what the scenario's frames can be addressed
to, the controller's default since the destination set, orbitmesh/core/destinations.py) and/or
``all`` (every ground node, as every run routed before); each line says which and how many.

``inline`` is the controller as it was (tick work on the event loop); ``thread`` is the default
for real runs (``orbitmesh.run.ticking``). With ``--gil``, one more line per scenario: how much of
a tick (``TickEngine.step`` + ``encode_state``) lets another Python thread run — a thread that
only counts, its rate while ticks compute beside it against its rate alone (1.0: the tick never
held the GIL; about 0.5: it held it throughout, the two taking turns).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit, machine

from orbitmesh.core.engine import TickEngine
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.protocol.state import decode_state, encode_state
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport
from orbitmesh.protocol.wire import Topics
from orbitmesh.run.controller import Controller

DEFAULT_SCENARIOS = ("scenarios/starlink-shell1.yaml", "scenarios/starlink-gen1.yaml")
TIMER_S = 0.001
"""The probe timer's period: the loop's wake-up lateness is measured against it."""
PRE_CLOCK_TICKS = 2
"""Ticks the controller computes before its clock starts (t = 0 and one tick ahead)."""


def _stats(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"n": 0}
    p50, p99, p999 = np.percentile(values, [50, 99, 99.9])
    return {"n": len(values), "p50": round(float(p50), 2), "p99": round(float(p99), 2),
            "p99.9": round(float(p999), 2), "max": round(float(max(values)), 2)}


async def one_case(topology: Topology, mode: str, ticks: int, speed: float,
                   destinations: str = "used") -> dict[str, Any]:
    """Run ``ticks`` ticks of ``topology`` with the tick work ``mode``; the figures above."""
    scenario = topology.scenario
    topics = Topics("bench")
    broker = MemoryBroker()
    loop = asyncio.get_running_loop()
    lag_ms: list[float] = []
    late_ms: list[float] = []
    running = asyncio.Event()
    done = asyncio.Event()
    with tempfile.TemporaryDirectory(prefix="om-bench-controller-") as out:
        async with MemoryTransport(broker, "controller") as control, \
                MemoryTransport(broker, "probe") as probe, asyncio.TaskGroup() as tg:
            await probe.subscribe(topics.state)
            controller = Controller(topology, control, topics, duration_s=ticks * scenario.tick_s,
                                    speed=speed, out_dir=Path(out), off_loop=mode == "thread",
                                    destinations="all" if destinations == "all" else "used")

            async def receive() -> None:
                seen: set[float] = set()
                async for batch in probe.batches():
                    now = time.time()
                    for message in batch:
                        t_s = decode_state(message.payload).t_s
                        if t_s < scenario.tick_s or t_s in seen:
                            continue  # tick 0 goes out before the clock: it had no due time
                        seen.add(t_s)
                        due = controller.wall_at(t_s - scenario.tick_s)
                        late_ms.append((now - due) * 1000.0)

            async def probe_timer() -> None:
                await running.wait()
                while not done.is_set():
                    due = loop.time() + TIMER_S
                    await asyncio.sleep(TIMER_S)
                    lag_ms.append((loop.time() - due) * 1000.0)

            receiver = tg.create_task(receive(), name="bench.receive")
            timer = tg.create_task(probe_timer(), name="bench.timer")
            controller.on_clock = lambda _t0: running.set()
            started = time.perf_counter()
            await controller.run()
            wall_s = time.perf_counter() - started
            done.set()
            await timer
            receiver.cancel()
            controller.close()
    return {"mode": mode, "destination_set": destinations,
            "destinations": len(controller.destinations), "ticks": ticks, "speed": speed,
            "wall_s": round(wall_s, 2),
            "tick_compute_ms": _stats(controller.tick_compute_ms[PRE_CLOCK_TICKS:]),
            "first_tick_ms": round(controller.tick_compute_ms[0], 1),
            "publish_late_ms": _stats(late_ms), "loop_lag_ms": _stats(lag_ms)}


def gil_share(topology: Topology, ticks: int) -> dict[str, Any]:
    """A counting thread's rate beside ``ticks`` ticks computing, against its rate alone."""
    scenario = topology.scenario
    engine = TickEngine(topology, policies=sorted({f.policy for f in scenario.traffic
                                                   if f.policy}))

    def tick(k: int) -> None:
        t = engine.step(k * scenario.tick_s)
        encode_state(k, t.state, t.routes, t.overlay, t.blocked, t.blame)

    tick(0)  # numba's kernels load on the first tick
    stop = threading.Event()
    counted = [0]

    def count() -> None:
        n = 0
        while not stop.is_set():
            n += 1
        counted[0] = n

    def rate(work: Any) -> tuple[float, float]:
        stop.clear()
        counter = threading.Thread(target=count, name="bench.count")
        started = time.perf_counter()
        counter.start()
        work()
        elapsed = time.perf_counter() - started
        stop.set()
        counter.join()
        return counted[0] / elapsed, elapsed

    alone, _ = rate(lambda: time.sleep(1.0))
    def ticks_beside() -> None:
        for k in range(1, ticks + 1):
            tick(k)

    beside, elapsed = rate(ticks_beside)
    started = time.perf_counter()
    for k in range(ticks + 1, 2 * ticks + 1):
        tick(k)
    return {"case": "gil", "ticks": ticks, "counter_share": round(beside / alone, 3),
            "tick_ms_beside_counter": round(elapsed / ticks * 1000.0, 1),
            "tick_ms_alone": round((time.perf_counter() - started) / ticks * 1000.0, 1)}


def main(argv: list[str] | None = None) -> int:
    """Print one JSON line per case."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scenario", action="append", help="scenario file (repeatable); default: "
                   + ", ".join(DEFAULT_SCENARIOS))
    p.add_argument("--ticks", type=int, default=20, help="ticks per case (default 20)")
    p.add_argument("--speed", type=float, default=1.0, help="run speed (default 1)")
    p.add_argument("--modes", default="inline,thread", help="comma-separated: inline, thread")
    p.add_argument("--rounds", type=int, default=1, help="alternations of the modes")
    p.add_argument("--gil", action="store_true", help="also measure the GIL share of a tick")
    p.add_argument("--destinations", default="used",
                   help="comma-separated: used (the controller's default), all (every ground "
                   "node); cases alternate between them")
    args = p.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in modes if m not in ("inline", "thread")]
    sets = [d.strip() for d in args.destinations.split(",") if d.strip()]
    if bad or args.ticks < 1 or args.rounds < 1 or not sets or set(sets) - {"used", "all"}:
        p.error(f"--modes takes inline and thread (got {bad}); --destinations used and/or all "
                f"(got {sets}); --ticks and --rounds >= 1")
    emit({"bench": "controller", "machine": machine()})
    for path in args.scenario or DEFAULT_SCENARIOS:
        topology = build_topology(load_scenario(PROJECT_ROOT / path))
        if args.gil:
            emit({"scenario": path, "nodes": topology.n_nodes, **gil_share(topology, args.ticks)})
        for _round in range(args.rounds):
            for mode in modes:
                for which in sets:
                    record = asyncio.run(one_case(topology, mode, args.ticks, args.speed, which))
                    emit({"scenario": path, "nodes": topology.n_nodes, **record})
    return 0


if __name__ == "__main__":
    sys.exit(main())
