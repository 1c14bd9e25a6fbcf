"""A message plane's CPU per scenario second on a constellation, on virtual time (no load skew).

    .venv/bin/python bench/plane_cpu.py [--scenario PATH] [--seconds 30] [--speed 10]
                                        [--plane python|batched|both] [--workers 2]

Runs the controller and ``--workers`` workers of the scenario (default
scenarios/starlink-shell1.yaml) in one process, on the in-memory broker and an event loop on
virtual time (tests/virtual_time.py): nothing sleeps, and a loaded machine makes the run slower,
not late, so the figures compare planes on a shared machine where bench/scale.py's lateness
measures the other tenants. Each plane runs in a child process of its own (``ORBITMESH_PLANE``
is read when a worker starts), ``both`` alternates them.

One JSON line per plane:

* ``cpu_s``: process CPU (``time.process_time``) from the first tick to the end, the
  controller's included (the same work for both planes), ``cpu_s_per_scenario_s`` that over the
  scenario seconds run;
* ``apply_ms``: CPU-clock ms of each ``apply_snapshot`` (p50 / p99 / max over every tick and
  worker): what one link state costs a worker to take in;
* ``hops``, ``delivered``, ``telemetry_delivered``: the work done (the same for both planes
  when they agree);
* ``rss_mb``: the process's RSS at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from _common import PROJECT_ROOT, emit, machine, rss_mb
from _virtual import virtual_run

from nodes.worker import Worker
from orbitmesh.core.engine import compile_kernels
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from tests.virtual_time import VirtualTimeLoop

DEFAULT_SCENARIO = PROJECT_ROOT / "scenarios" / "starlink-shell1.yaml"
RUN = "planecpu"


async def one_run(scenario_path: Path, out: Path, seconds: float, speed: float,
                  workers_n: int) -> dict[str, Any]:
    """Controller and workers for ``seconds`` scenario seconds; the record."""
    topology = build_topology(load_scenario(scenario_path))
    apply_ms: list[float] = []

    def timed(worker: Worker) -> None:
        rt = worker.runtime
        inner = rt.apply_snapshot

        def apply_snapshot(state: Any, at_wall: float) -> None:
            started = time.process_time()
            inner(state, at_wall)
            apply_ms.append((time.process_time() - started) * 1000.0)
        rt.apply_snapshot = apply_snapshot  # type: ignore[method-assign]

    async with virtual_run(topology, out, run_id=RUN, duration_s=seconds, speed=speed,
                           workers_n=workers_n, prepare=timed) as run:
        cpu0, real0 = time.process_time(), time.perf_counter()
        await run.tasks.create_task(run.controller.run(), name="controller")
        workers = run.workers
    cpu_s, real_s = time.process_time() - cpu0, time.perf_counter() - real0
    flows = [f for w in workers for f in w.stats.flows.values()]
    ms = np.array(apply_ms) if apply_ms else np.zeros(1)
    return {"cpu_s": round(cpu_s, 2), "real_s": round(real_s, 2),
            "cpu_s_per_scenario_s": round(cpu_s / seconds, 3),
            "apply_ms": {"n": len(apply_ms), "p50": round(float(np.percentile(ms, 50)), 3),
                         "p99": round(float(np.percentile(ms, 99)), 3),
                         "max": round(float(ms.max()), 3)},
            "hops": sum(f.hops for f in flows), "delivered": sum(f.delivered for f in flows),
            "telemetry_delivered": sum(w.stats.flows[-1].delivered for w in workers
                                       if -1 in w.stats.flows),
            "rss_mb": rss_mb(os.getpid())}


def child(args: argparse.Namespace) -> int:
    """Run one plane in this process and print its line."""
    compile_kernels()
    if os.environ["ORBITMESH_PLANE"] == "batched":
        from nodes import plane  # noqa: F401  (numba import and kernel load before the clock)
    loop = VirtualTimeLoop()
    try:
        with tempfile.TemporaryDirectory(prefix="orbitmesh-planecpu-") as tmp:
            record = loop.run_until_complete(one_run(args.scenario, Path(tmp), args.seconds,
                                                     args.speed, args.workers))
    finally:
        loop.close()
    emit({"case": args.scenario.stem, "plane": os.environ["ORBITMESH_PLANE"],
          "speed": args.speed, "seconds": args.seconds, "workers": args.workers, **record})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run each plane asked for in a child process of its own."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--seconds", type=float, default=30.0, help="scenario seconds (30)")
    parser.add_argument("--speed", type=float, default=1.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--plane", choices=("python", "batched", "both"), default="both")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args)
    emit(machine())
    planes = ("python", "batched") if args.plane == "both" else (args.plane,)
    for plane in planes:
        cmd = [sys.executable, __file__, "--child", "--scenario", str(args.scenario),
               "--seconds", str(args.seconds), "--speed", str(args.speed),
               "--workers", str(args.workers)]
        done = subprocess.run(cmd, env={**os.environ, "ORBITMESH_PLANE": plane}, check=False,
                              capture_output=True, text=True)
        if done.returncode:
            print(json.dumps({"plane": plane, "error": done.stderr[-2000:]}), flush=True)
            return 1
        sys.stdout.write(done.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
