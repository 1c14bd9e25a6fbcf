"""Where does a worker's memory grow? The soak's scenario on virtual time, with tracemalloc.

    .venv/bin/python bench/soak_virtual.py [--minutes 8] [--first-min 2] [--second-min 7]

Runs the controller and the workers of ``bench/soak.py``'s scenario (shell 1 at speed 1) in one
process, on the in-memory broker and an event loop on virtual time (tests/virtual_time.py): no
sockets, no sleeping, and a loaded machine slows the run down instead of making it late (with
tracemalloc on, shell 1 runs at about real time on 2 shared cores). The event logs and stats
snapshots are written to a temporary run directory as in a real run. tracemalloc snapshots are
taken at ``--first-min`` and ``--second-min``; the JSON line gives the traced size and the
process's RSS over time (``series``: scenario s, traced MB, RSS MB; their slopes between the
snapshots, in MB per 10 scenario minutes), the source lines whose live allocations grew
most between the snapshots (worker-side files only: nodes/, broker/, orbitmesh/protocol/,
orbitmesh/core/histogram.py), and, at each snapshot, the sizes of the worker structures that
could grow with the run.

The controller shares the process: ``top`` lists worker-side lines only, the sizes and slopes are
everything's. The MQTT client (broker/client.py) is not in this run; bench/soak.py measures the
real processes.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
from _common import PROJECT_ROOT, emit, machine, rss_mb
from _virtual import virtual_run

from nodes.worker import Worker
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from tests.virtual_time import VirtualTimeLoop

DEFAULT_SCENARIO = PROJECT_ROOT / "scenarios" / "starlink-shell1.yaml"
RUN = "soakv"
WORKER_SIDE = ("/nodes/", "/broker/", "/orbitmesh/protocol/", "/orbitmesh/core/histogram.py")


def sizes(worker: Worker) -> dict[str, int]:
    """Sizes of the worker's structures that could grow with the run."""
    rt, roles, stats = worker.runtime, worker.roles, worker.stats
    return {"tx": len(rt.tx), "heap": len(rt.heap), "links": len(rt.links),
            "outbox": sum(len(v) for v in rt.outbox.values()),
            "held_on_board": sum(len(s) for s in roles.store.values()),
            "flows": len(stats.flows), "fault_drops": len(stats.fault_drops),
            "counters": len(roles.counters), "early": len(worker._early),
            "histogram_exact_samples": sum(h.n for h in histograms(stats) if h.exact)}


def histograms(stats: Any) -> list[Any]:
    """Every streaming histogram a worker's Stats keeps."""
    out = [stats.hop_late_ms, stats.telemetry_age_ms, stats.telecommand_rtt_ms,
           stats.link_apply_late_ms]
    for fs in stats.flows.values():
        out += [fs.latency_ms, fs.late_ms, fs.geometric_ms]
    return out


def top_growth(first: tracemalloc.Snapshot, second: tracemalloc.Snapshot,
               n: int) -> list[dict[str, Any]]:
    """Worker-side source lines whose live allocations grew most between two snapshots."""
    out = []
    for stat in second.compare_to(first, "lineno"):
        frame = stat.traceback[0]
        if not any(part in frame.filename for part in WORKER_SIDE):
            continue
        out.append({"line": f"{Path(frame.filename).relative_to(PROJECT_ROOT)}:{frame.lineno}"
                    if frame.filename.startswith(str(PROJECT_ROOT)) else
                    f"{frame.filename}:{frame.lineno}",
                    "growth_kb": round(stat.size_diff / 1024, 1), "kb": round(stat.size / 1024, 1),
                    "blocks_growth": stat.count_diff})
        if len(out) >= n:
            break
    return out


async def soak(scenario_path: Path, out: Path, minutes: float, marks_min: tuple[float, float],
               sample_s: float, workers_n: int, top: int) -> dict[str, Any]:
    """One virtual-time run of ``minutes`` scenario minutes; the record."""
    topology = build_topology(load_scenario(scenario_path))
    duration_s = minutes * 60.0
    record: dict[str, Any] = {"series": [], "sizes": {}}
    snapshots: list[tracemalloc.Snapshot] = []

    async with virtual_run(topology, out, run_id=RUN, duration_s=duration_s, speed=1.0,
                           workers_n=workers_n) as run:
        controller, workers = run.controller, run.workers
        ticking = run.tasks.create_task(controller.run(), name="controller")
        started = time.perf_counter()
        marks = list(marks_min)
        next_sample_s = 0.0
        while not ticking.done():
            await asyncio.sleep(1.0)
            if controller.clock is None:
                continue
            t_s = controller.scenario_s()
            if marks and t_s >= marks[0] * 60.0:
                gc.collect()
                snapshots.append(tracemalloc.take_snapshot())
                record["sizes"][f"min{marks.pop(0):g}"] = [sizes(w) for w in workers]
            if t_s >= next_sample_s:
                next_sample_s += sample_s
                record["series"].append((round(t_s), round(tracemalloc.get_traced_memory()[0]
                                                           / 2**20, 3), rss_mb(os.getpid())))
        await ticking
        record["real_s"] = round(time.perf_counter() - started, 1)
    if len(snapshots) == 2:
        first, second = snapshots
        grown = (sum(s.size for s in second.statistics("filename"))
                 - sum(s.size for s in first.statistics("filename")))
        record["traced_growth_mb"] = round(grown / 2**20, 3)
        record["between_min"] = list(marks_min)
        record["top"] = top_growth(first, second, top)
    # Between the snapshots only: taking one raises the RSS by tens of MB (tracemalloc's own),
    # and the run's end frees what the workers held.
    kept = [row for row in record["series"]
            if marks_min[0] * 60.0 < row[0] < marks_min[1] * 60.0]
    if len(kept) >= 3:
        times_s = np.array([row[0] for row in kept], dtype=np.float64)
        for i, name in ((1, "traced"), (2, "rss")):
            values = np.array([row[i] for row in kept], dtype=np.float64)
            slope = float(np.polyfit(times_s, values, 1)[0]) * 600.0
            record[f"{name}_growth_mb_per_10min"] = round(slope, 3)
    record["hops"] = sum(f.hops for w in workers for f in w.stats.flows.values())
    return record


def main(argv: list[str] | None = None) -> int:
    """Run the virtual-time soak and print its JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    parser.add_argument("--minutes", type=float, default=8.0, help="scenario minutes (8)")
    parser.add_argument("--first-min", type=float, default=2.0, help="first snapshot (2)")
    parser.add_argument("--second-min", type=float, default=7.0, help="second snapshot (7)")
    parser.add_argument("--sample-s", type=float, default=30.0,
                        help="scenario seconds between traced-size samples (30)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--top", type=int, default=25, help="lines listed (25)")
    parser.add_argument("--frames", type=int, default=1, help="tracemalloc frames (1)")
    args = parser.parse_args(argv)
    if not 0 < args.first_min < args.second_min < args.minutes:
        parser.error("need 0 < --first-min < --second-min < --minutes")
    tracemalloc.start(args.frames)
    loop = VirtualTimeLoop()
    try:
        with tempfile.TemporaryDirectory(prefix="orbitmesh-soakv-") as tmp:
            record = loop.run_until_complete(soak(
                args.scenario, Path(tmp), args.minutes, (args.first_min, args.second_min),
                args.sample_s, args.workers, args.top))
    finally:
        loop.close()
    emit({"bench": "soak_virtual", "scenario": args.scenario.name, "minutes": args.minutes,
          "machine": machine(), **record})
    return 0


if __name__ == "__main__":
    sys.exit(main())
