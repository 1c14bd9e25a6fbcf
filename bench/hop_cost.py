"""The worker's CPU cost per frame-hop, in process: no broker, no sockets, no sleeping.

    .venv/bin/python bench/hop_cost.py [--frames 20000] [--chain 9] [--repeats 5]
                                       [--step-us 100] [--cases local,wire] [--no-events]
                                       [--profile N] [--plane python|batched|both]

The scenario is bench/messaging.py's: a chain of ``--chain`` operations centres joined by 1 ms
fibre, frames of 200 B offered at both ends for the other end (``chain - 1`` hops each), with
the links and routing tables the real engine computes for it (TickEngine -> encode_state ->
decode_state -> ``apply_snapshot``). Time is virtual: the driver advances a wall clock in steps
of ``--step-us`` and calls ``run_due`` at each step, as a worker's timer would (one step is one
loop turn: what falls due within it is handled, and handed over, together).

Cases (one JSON line each):

* ``local``: one :class:`NodeRuntime` hosts the whole chain; every hop is a heap push and pop.
* ``wire``: two runtimes, chain nodes dealt round-robin (as bench/messaging.py does), so every
  hop is handed over to the other runtime through ``encode_batch`` and ``receive_batch``
  (``decode_batch`` + the per-frame check): the worker's share of a live hop, minus MQTT.

``--plane``: ``python`` (NodeRuntime, the reference), ``batched`` (nodes/plane.py's
PlaneRuntime: common frames in the compiled lane, columnar batches) or ``both`` (default),
alternated repeat by repeat; each line says which (``plane``).

Each case runs ``--repeats`` times; ``us_per_hop`` is the median of process CPU seconds / hops
(``time.process_time``: less sensitive to other load than wall time), with every repeat's figure
and the minimum beside it. ``--baseline DIR`` loads another checkout's nodes/runtime.py,
nodes/stats.py and orbitmesh/protocol/wire.py (everything else comes from this tree) and
alternates its repeats with this tree's in the same process: before/after of one change, side by
side, on a shared machine. The event log is written to /dev/null through a buffered file, as a
worker writes its own (``--no-events``: none). ``--profile N`` runs one more repeat of each case
under cProfile and prints the top N functions by own time. ``--guard-us`` turns on coalesced
hand-over (``NodeRuntime.handover_guard_s``); ``frames_per_batch`` and ``hop_late_ms_max`` show
what it did. Figures taken on a shared machine are for comparing alternated runs, not for the
record.
"""

from __future__ import annotations

import argparse
import cProfile
import importlib.util
import os
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import IO, Any, NamedTuple

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, machine
from messaging import FRAME_BYTES, scenario_yaml

from nodes.plane import PlaneRuntime
from nodes.runtime import NodeRuntime
from nodes.stats import Stats
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.protocol.state import decode_state, encode_state
from orbitmesh.protocol.wire import DATA, new_frame

WALL_T0 = 1_000.0
"""Virtual wall time of scenario time 0 (any positive time: frames must carry one)."""
OFFER_RATE_FPS = 6_250.0
"""Frames offered per second at each end: 8 hops x 2 ends x 6,250 = bench/messaging.py's
default 100k hops/s over two workers (50k each) with a 9-node chain."""


class Impl(NamedTuple):
    """The classes a harness builds its runtimes from."""

    runtime: type[NodeRuntime]
    stats: type[Stats]


THIS = Impl(NodeRuntime, Stats)
BATCHED = Impl(PlaneRuntime, Stats)
"""The batched plane (nodes/plane.py): the compiled lane for common frames."""


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None or not path.is_file():
        raise SystemExit(f"hop_cost: --baseline: no module at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def baseline(tree: Path) -> Impl:
    """NodeRuntime and Stats of the checkout at ``tree``, wired to its own wire codec."""
    wire = _load("baseline_wire", tree / "orbitmesh" / "protocol" / "wire.py")
    stats = _load("baseline_stats", tree / "nodes" / "stats.py")
    runtime = _load("baseline_runtime", tree / "nodes" / "runtime.py")
    # Its runtime imported this tree's codec and Stats by name: point them at its own.
    setattr(runtime, "decode_batch", wire.decode_batch)  # noqa: B010 (a module's global)
    setattr(runtime, "encode_batch", wire.encode_batch)  # noqa: B010
    setattr(runtime, "Stats", stats.Stats)  # noqa: B010
    return Impl(runtime.NodeRuntime, stats.Stats)


def chain_topology(chain: int) -> Topology:
    """bench/messaging.py's chain scenario as a topology."""
    text = scenario_yaml(chain=chain, flows=2, load_hops_per_s=1000.0, duration_s=60.0)
    return build_topology(parse_scenario(text, Path("<bench/hop_cost.py>")))


def ends(topology: Topology, chain: int) -> tuple[int, int]:
    """Node indices of the chain's first and last operations centre."""
    ids = topology.node_ids
    return ids.index("c00"), ids.index(f"c{chain - 1:02d}")


class Harness:
    """Runtimes of one case, their mailboxes and a virtual clock."""

    def __init__(self, topology: Topology, owner: np.ndarray, workers: int,
                 sink: IO[bytes] | None, guard_s: float | None = None,
                 impl: Impl = THIS) -> None:
        self.inbox: list[list[bytes]] = [[] for _ in range(workers)]
        self.sends = 0
        self.runtimes = [
            impl.runtime(topology, k, owner, send=self._sender(), speed=1.0, seed=1,
                         stats=impl.stats(sink, speed=1.0))
            for k in range(workers)]
        tick = TickEngine(topology).step(0.0)
        snapshot = decode_state(encode_state(1, tick.state, tick.routes), topology.n_nodes)
        for rt in self.runtimes:
            rt.handover_guard_s = guard_s
            rt.t0_wall = WALL_T0
            rt.apply_snapshot(snapshot, WALL_T0)

    def _sender(self) -> Callable[[int, bytes], None]:
        def send(worker: int, payload: bytes) -> None:
            self.sends += 1
            self.inbox[worker].append(payload)
        return send

    def offer(self, src: int, dst: int, frames: int, seed: int) -> None:
        """Schedule ``frames`` Poisson offers at ``src`` bound for ``dst``."""
        rng = random.Random(seed)
        owner = self.runtimes[0].owner_of[src]
        rt = self.runtimes[owner]
        t = WALL_T0
        for i in range(frames):
            t += rng.expovariate(OFFER_RATE_FPS)
            frame = new_frame(seed * 10_000_000 + i, DATA, 0, src, dst, FRAME_BYTES, t)
            rt.call_at(t, _originator(rt, src, frame))

    def run(self, step_s: float) -> None:
        """Advance the clock a step at a time until nothing is pending anywhere."""
        now = WALL_T0
        runtimes = self.runtimes
        inbox = self.inbox
        while True:
            busy = False
            for k, rt in enumerate(runtimes):
                batches, inbox[k] = inbox[k], []
                for payload in batches:
                    rt.receive_batch(payload, now, run=False)
                rt.run_due(now)
                busy = busy or rt.next_due is not None or bool(batches)
            if not busy and not any(inbox):
                return
            now += step_s

    def hops(self) -> int:
        """Frame-hops handled (hop events) over every runtime."""
        return sum(rt.stats.hop_late_ms.n for rt in self.runtimes)

    def check(self, offered: int) -> None:
        """Every frame delivered, none dropped: the bench measured what it claims."""
        flows = [rt.stats.flows[0] for rt in self.runtimes]
        delivered = sum(f.delivered for f in flows)
        dropped = sum(sum(f.dropped.values()) for f in flows)
        malformed = sum(rt.stats.malformed_count for rt in self.runtimes)
        if delivered != offered or dropped or malformed:
            raise SystemExit(f"hop_cost: {offered} offered, {delivered} delivered, {dropped} "
                             f"dropped, {malformed} malformed: the harness is broken")


def _originator(rt: NodeRuntime, src: int, frame: list[Any]) -> Callable[[float], None]:
    def fire(at_wall: float) -> None:
        rt.originate(src, frame, at_wall)
    return fire


def build(case: str, topology: Topology, chain: int, frames: int,
          sink: IO[bytes] | None, guard_s: float | None = None, impl: Impl = THIS) -> Harness:
    """A harness for ``case`` with its offers scheduled."""
    first, last = ends(topology, chain)
    owner = np.zeros(topology.n_nodes, dtype=np.int64)
    workers = 1
    if case == "wire":
        workers = 2
        for position, node in enumerate(range(first, last + 1)):
            owner[node] = position % 2
    harness = Harness(topology, owner, workers, sink, guard_s, impl)
    harness.offer(first, last, frames // 2, seed=1)
    harness.offer(last, first, frames - frames // 2, seed=2)
    return harness


def guard_s(args: argparse.Namespace) -> float | None:
    """``--guard-us`` in seconds (None: coalescing off)."""
    return None if args.guard_us is None else args.guard_us * 1e-6


def measure(case: str, topology: Topology, args: argparse.Namespace,
            sink: IO[bytes] | None, impl: Impl = THIS) -> tuple[float, float, int, Harness]:
    """(CPU µs per hop, wall µs per hop, hops, harness) of one repeat; setup is not timed."""
    harness = build(case, topology, args.chain, args.frames, sink, guard_s(args), impl)
    cpu0, wall0 = time.process_time(), time.perf_counter()
    harness.run(args.step_us * 1e-6)
    cpu_s, wall_s = time.process_time() - cpu0, time.perf_counter() - wall0
    harness.check(args.frames)
    hops = harness.hops()
    return cpu_s / hops * 1e6, wall_s / hops * 1e6, hops, harness


def profile(case: str, topology: Topology, args: argparse.Namespace,
            sink: IO[bytes] | None) -> list[dict[str, Any]]:
    """Top functions by own time over one repeat of ``case``."""
    harness = build(case, topology, args.chain, args.frames, sink, guard_s(args))
    prof = cProfile.Profile()
    prof.enable()
    harness.run(args.step_us * 1e-6)
    prof.disable()
    stats = pstats.Stats(prof)
    table = stats.stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in table.values()) or 1.0
    rows = sorted(table.items(), key=lambda kv: kv[1][2], reverse=True)[:args.profile]
    return [{"function": f"{Path(fn).name}:{line}:{name}", "calls": nc,
             "tottime_s": round(tt, 4), "share": round(tt / total, 3)}
            for (fn, line, name), (_cc, nc, tt, _ct, _callers) in rows]


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print one JSON line each."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--frames", type=int, default=20_000)
    p.add_argument("--chain", type=int, default=9)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--step-us", type=float, default=100.0,
                   help="virtual loop turn (µs); what falls due within one is handled together")
    p.add_argument("--cases", default="local,wire")
    p.add_argument("--no-events", action="store_true", help="no event log at all")
    p.add_argument("--profile", type=int, default=0, metavar="N")
    p.add_argument("--guard-us", type=float, default=None,
                   help="coalesced hand-over: NodeRuntime.handover_guard_s, in µs (default off)")
    p.add_argument("--plane", choices=("python", "batched", "both"), default="both",
                   help="python: NodeRuntime; batched: nodes/plane.py's PlaneRuntime; both "
                        "(alternated, default)")
    p.add_argument("--baseline", type=Path, metavar="DIR",
                   help="another checkout to alternate with (its runtime, stats and wire)")
    args = p.parse_args(argv)
    if args.frames < 2 or args.chain < 2 or args.repeats < 1 or args.step_us <= 0:
        p.error("--frames and --chain need at least 2, --repeats 1, --step-us > 0")
    if args.guard_us is not None and args.guard_us < 0:
        p.error("--guard-us must be >= 0")
    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - {"local", "wire"}
    if unknown:
        p.error(f"--cases: unknown {sorted(unknown)}; expected local and/or wire")
    topology = chain_topology(args.chain)
    variants = {}
    if args.plane in ("python", "both"):
        variants["this"] = THIS
    if args.plane in ("batched", "both"):
        variants["batched"] = BATCHED
        build(cases[0], topology, args.chain, 200, None, None, BATCHED).run(
            args.step_us * 1e-6)  # compile (or load the cache) before anything is timed
    if args.baseline is not None:
        variants["baseline"] = baseline(args.baseline)
    sink = None if args.no_events else open(os.devnull, "wb")  # noqa: SIM115 (closed below)
    try:
        for case in cases:
            runs_of: dict[str, list[tuple[float, float, int, Harness]]] = {v: [] for v in variants}
            for _ in range(args.repeats):  # variants alternate: the same load meets both
                for name, impl in variants.items():
                    runs_of[name].append(measure(case, topology, args, sink, impl))
            for name, runs in runs_of.items():
                emit(_record(case, name, runs, args, sink))
            if args.profile:
                emit({"case": case, "variant": "this",
                      "profile": profile(case, topology, args, sink)})
    finally:
        if sink is not None:
            sink.close()
    return 0


def _record(case: str, variant: str, runs: list[tuple[float, float, int, Harness]],
            args: argparse.Namespace, sink: IO[bytes] | None) -> dict[str, Any]:
    """The JSON line of one case and variant."""
    cpu = [r[0] for r in runs]
    last = runs[-1][3]
    late = [rt.stats.hop_late_ms for rt in last.runtimes]
    return {
        "case": case,
        "variant": variant if variant in ("this", "batched") else str(args.baseline),
        "plane": "batched" if variant == "batched" else "python",
        "us_per_hop": round(statistics.median(cpu), 3), "us_per_hop_min": round(min(cpu), 3),
        "us_per_hop_runs": [round(x, 3) for x in cpu],
        "wall_us_per_hop": round(statistics.median(r[1] for r in runs), 3),
        "hops": runs[0][2], "frames": args.frames, "chain": args.chain,
        "step_us": args.step_us, "guard_us": args.guard_us,
        "frames_per_batch": round(last.hops() / last.sends, 2) if last.sends else None,
        "hop_late_ms_max": round(max(h.maximum or 0.0 for h in late), 3),
        "events": sink is not None, **machine()}


if __name__ == "__main__":
    sys.exit(main())
