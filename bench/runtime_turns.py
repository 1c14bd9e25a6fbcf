"""Where a worker's loop turns go: the python plane driven in-process on a constellation.

    .venv/bin/python bench/runtime_turns.py [--scenario PATH] [--seconds 10] [--step-ms 1]
                                            [--speed 1] [--gc worker|default] [--unpaced]

Two :class:`nodes.runtime.NodeRuntime` (the two workers of ``bench/scale.py``), each with its
:class:`nodes.roles.Roles`, exchange their hand-over batches in memory on a virtual clock that
advances ``--step-ms`` per turn; the controller's states come from the real engine
(``TickEngine``), encoded and decoded as on the wire, and are applied at their instants as
nodes/worker.py schedules them. No broker, no sockets: what is timed is the CPU of the worker's
own work, which is what makes frames late when a turn runs long (every frame due during a
turn is handled after it). Paced (the default), each worker's clock also moves on by the CPU a
long turn took, as on a core of its own, so frames due meanwhile come out late:
``hop_late_ms`` (worker 0, scenario ms) is the lateness its own work makes, without the
machine's timer floor, the broker or the other processes. Prints one JSON object: the turn
durations (p50/p99/max, ms of thread CPU), the link-state applies, the garbage collector's
pauses by generation, and CPU per wall second per worker. Figures are thread CPU time, so a
shared machine inflates them less than wall time, but they are still profiling figures there.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit, machine

from nodes.gc_tuning import settle_heap
from nodes.roles import Roles
from nodes.runtime import NodeRuntime
from orbitmesh.core.engine import TickEngine, compile_kernels
from orbitmesh.core.placement import place
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.protocol.state import decode_state, encode_state

T0_WALL = 1_000.0


def _pcts(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    a = np.asarray(values)
    return {"n": len(values), "p50": round(float(np.percentile(a, 50)), 3),
            "p99": round(float(np.percentile(a, 99)), 3), "max": round(float(a.max()), 3),
            "sum": round(float(a.sum()), 1)}


def run(scenario_path: Path, seconds: float, step_s: float,
        gc_mode: str = "worker", speed: float = 1.0, paced: bool = True) -> dict[str, Any]:
    """Drive two workers for ``seconds`` scenario seconds at ``speed``; their turn figures."""
    topology = build_topology(load_scenario(scenario_path))
    compile_kernels()
    engine = TickEngine(topology)
    tick_s = topology.scenario.tick_s
    payloads = []
    for k in range(int(seconds / tick_s) + 2):
        tick = engine.step(k * tick_s)
        payloads.append(encode_state(k, tick.state, tick.routes, tick.overlay, tick.blocked,
                                     tick.blame))
    owner = place(topology, 2, "blocks")
    mail: list[list[tuple[float, bytes]]] = [[], []]
    sending = [T0_WALL]
    """The sender's clock when it sends: the receiver reads the batch from then on."""
    runtimes, roles = [], []
    for w in range(2):
        rt = NodeRuntime(topology, w, owner, send=lambda k, p: mail[k].append((sending[0], p)),
                         speed=speed, seed=topology.scenario.seed)
        rt.t0_wall = T0_WALL
        runtimes.append(rt)
        roles.append(Roles(rt, duration_s=seconds + 10.0))
    apply_ms: list[float] = []
    for k, payload in enumerate(payloads):
        for rt in runtimes:
            state = decode_state(payload, topology.n_nodes)

            def apply(at: float, rt: NodeRuntime = rt, state: Any = state) -> None:
                started = time.thread_time()
                rt.apply_snapshot(state, at)
                apply_ms.append((time.thread_time() - started) * 1000.0)

            rt.call_at(rt.wall_at(k * tick_s), apply, first=True)
    for w in range(2):
        roles[w].start(T0_WALL)
    if gc_mode == "worker":  # what nodes/worker.py does once its nodes are set up
        settle_heap()
    gc_ms: dict[int, list[float]] = {0: [], 1: [], 2: []}
    gc_started = [0.0]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            gc_started[0] = time.thread_time()
        else:
            gc_ms[info["generation"]].append((time.thread_time() - gc_started[0]) * 1000.0)

    gc.callbacks.append(on_gc)
    turns_ms: list[float] = []
    cpu_s = [0.0, 0.0]
    clocks = [T0_WALL, T0_WALL]
    end = T0_WALL + seconds / speed
    try:
        while min(clocks) < end:
            # Each worker on a core of its own: the one furthest behind goes next; its clock
            # moves by the step, or by the CPU its turn took when that was longer (everything
            # due meanwhile is late), and it reads what the other sent by its clock's now.
            w = 0 if clocks[0] <= clocks[1] else 1
            rt = runtimes[w]
            now = clocks[w] + step_s
            sending[0] = now
            started = time.thread_time()
            inbox = [p for at, p in mail[w] if at <= now]
            mail[w] = [(at, p) for at, p in mail[w] if at > now]
            for payload in inbox:
                rt.receive_batch(payload, now, run=False)
            rt.run_due(now)
            took = time.thread_time() - started
            turns_ms.append(took * 1000.0)
            cpu_s[w] += took
            clocks[w] = now + (max(0.0, took - step_s) if paced else 0.0)
    finally:
        gc.callbacks.remove(on_gc)
    hops = sum(fs.hops for rt in runtimes for fs in rt.stats.flows.values())
    return {"case": "runtime_turns", "scenario": scenario_path.name, "seconds": seconds,
            "step_ms": step_s * 1000.0, "gc": gc_mode, "nodes": topology.n_nodes,
            "turn_cpu_ms": _pcts(turns_ms),
            "turns_over_2ms": sum(1 for t in turns_ms if t > 2.0),
            "apply_cpu_ms": _pcts(apply_ms),
            "gc_ms": {str(g): _pcts(v) for g, v in gc_ms.items()},
            "gc_frozen": gc.get_freeze_count(), "gc_threshold": list(gc.get_threshold()),
            "speed": speed,
            "cpu_s_per_wall_s": [round(c * speed / seconds, 3) for c in cpu_s],
            "paced": paced,
            "hop_late_ms": dict(zip(("p50", "p99", "max"), [
                round(float(x or 0.0), 3) for x in runtimes[0].stats.hop_late_ms.percentiles(
                    (50, 99, 100))], strict=True)),
            "delivered_hops": hops,
            "offered": sum(fs.offered for rt in runtimes for fs in rt.stats.flows.values())}


def main() -> int:
    """Run the case and print its JSON line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scenario", type=Path,  # shell 1: scenarios/starlink-shell1.yaml
                   default=PROJECT_ROOT / "scenarios" / "starlink-gen1.yaml")
    p.add_argument("--seconds", type=float, default=10.0, help="scenario seconds")
    p.add_argument("--step-ms", type=float, default=1.0, help="virtual wall ms per turn")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--unpaced", action="store_true",
                   help="the clock moves by the step whatever a turn took (no lateness)")
    p.add_argument("--gc", choices=("worker", "default"), default="worker",
                   help="worker: the collector tuned as nodes/worker.py tunes it; default: "
                   "Python's defaults (the before case)")
    args = p.parse_args()
    emit({"case": "machine", **machine()})
    emit(run(args.scenario, args.seconds, args.step_ms / 1000.0, args.gc, args.speed,
             not args.unpaced))
    return 0


if __name__ == "__main__":
    sys.exit(main())
