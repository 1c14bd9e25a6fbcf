"""Live latency against the geometry's, on the demo, at several speeds; prints JSON lines.

    .venv/bin/python bench/latency.py [--speeds 1,4] [--duration 60] [--scenario PATH]

For each speed it runs ``orbitmesh run`` as its own process (embedded mosquitto, controller,
worker processes), as a user would, then reads the run's trace and, for every delivered frame
of the scenario's first flow, compares

* ``latency`` — what the summary reports: the frame's due arrival at its destination minus its
  offer, scenario ms;
* the geometry's share, computed here independently of the run: the path that
  ``orbitmesh path`` gives at the tick in force when the frame was offered, summed over its links'
  one-way delays (a fresh TickEngine stepped tick by tick, as the controller does), plus the
  serialisation and queueing the frame really met (the ``waited_ms`` of its deliver record).

``geometry_excess_ms`` is latency minus that sum (p50, p99 and max of its absolute value; a frame
whose path changed in flight, at a tick boundary, is counted in ``path_changed_in_flight`` and
kept out of it). ``delivery_late_ms`` is how late the destination's worker really handled each
delivery (scenario ms) — the emulator's own excess, which the fidelity budget judges —
and ``fidelity`` is the run's own verdict from summary.json. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_ROOT, emit, machine

from orbitmesh.core.engine import TickEngine
from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology
from orbitmesh.run.trace import iter_events

DEFAULT_SCENARIO = PROJECT_ROOT / "scenarios" / "demo.yaml"


def run_once(scenario: Path, speed: float, duration_s: float, out: Path) -> dict[str, Any]:
    """Run the scenario; return its summary (the exit code is recorded beside it)."""
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "orbitmesh", "run", str(scenario), "--speed", str(speed),
         "--duration", str(duration_s), "--out", str(out), "--quiet"],
        cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=duration_s / speed + 180.0, check=False)
    summary: dict[str, Any] = json.loads((out / "summary.json").read_text())
    summary["_exit_code"] = proc.returncode
    summary["_wall_s"] = round(time.monotonic() - started, 1)
    return summary


def geometry_paths(scenario_path: Path, src: str, dst: str, duration_s: float
                   ) -> tuple[dict[int, tuple[tuple[int, ...], float]], float]:
    """Per tick index: (path, one-way propagation ms) from ``src`` to ``dst``; and the tick."""
    topology = build_topology(load_scenario(scenario_path))
    tick_s = topology.scenario.tick_s
    s, d = topology.node(src), topology.node(dst)
    engine = TickEngine(topology)
    out = {}
    for k in range(int(duration_s / tick_s) + 2):
        tick = engine.step(k * tick_s)
        hops = tuple(tick.routes[None].path(s, d))
        delay_ms = sum(tick.state.delay_of(a, b) or 0.0
                       for a, b in itertools.pairwise(hops)) * 1000.0
        out[k] = (hops, delay_ms)
    return out, tick_s


def analyse(run_dir: Path, summary: dict[str, Any], scenario_path: Path) -> dict[str, Any]:
    """Compare every delivered frame of flow 0 with the geometry."""
    flow = summary["flows"][0]
    speed, t0 = float(summary["run"]["speed"]), float(summary["run"]["t0_wall"])
    paths, tick_s = geometry_paths(scenario_path, flow["source"], flow["destination"],
                                   float(summary["run"]["duration_s"]))
    offers: dict[int, float] = {}
    hops_of: dict[int, list[int]] = {}
    delivered: list[tuple[int, float, float, float]] = []
    for record in iter_events(run_dir):
        tag = record[0]
        if tag == "offer" and record[3] == 0:
            offers[record[2]] = record[1]
        elif tag == "hop" and record[3] == 0:
            hops_of.setdefault(record[2], []).append(record[4])
        elif tag == "deliver" and record[3] == 0:
            delivered.append((record[2], record[6], record[7], record[9]))
    excess, late, changed = [], [], 0
    for frame_id, latency_ms, late_ms, waited_ms in delivered:
        t_s = (offers[frame_id] - t0) * speed
        path, geometric_ms = paths[int(t_s // tick_s + 1e-9)]
        late.append(late_ms)
        if tuple(hops_of.get(frame_id, [])) != path[:-1]:
            changed += 1  # rerouted at a tick boundary while in flight
            continue
        excess.append(latency_ms - (geometric_ms + waited_ms))
    absolute = np.abs(np.asarray(excess)) if excess else np.zeros(1)
    late_a = np.asarray(late) if late else np.zeros(1)
    return {
        "delivered": len(delivered), "compared": len(excess),
        "path_changed_in_flight": changed,
        "geometry_excess_ms": {"p50": round(float(np.percentile(absolute, 50)), 4),
                               "p99": round(float(np.percentile(absolute, 99)), 4),
                               "max": round(float(absolute.max()), 4)},
        "delivery_late_ms": {"p50": round(float(np.percentile(late_a, 50)), 4),
                             "p99": round(float(np.percentile(late_a, 99)), 4)},
        "latency_ms": flow["latency_ms"], "geometric_one_way_ms": flow["geometric_one_way_ms"],
    }


def main(argv: list[str] | None = None) -> int:
    """Run the cases and print one JSON object per speed."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--speeds", default="1,4")
    p.add_argument("--duration", type=float, default=60.0, help="scenario seconds per run")
    p.add_argument("--scenario", type=Path, default=DEFAULT_SCENARIO)
    args = p.parse_args(argv)
    emit({"bench": "latency", "machine": machine(), "scenario": str(args.scenario)})
    for speed in (float(s) for s in args.speeds.split(",")):
        with tempfile.TemporaryDirectory(prefix="orbitmesh-bench-latency-") as tmp:
            out = Path(tmp) / "run"
            summary = run_once(args.scenario, speed, args.duration, out)
            emit({"speed": speed, **analyse(out, summary, args.scenario),
                  "fidelity": {k: summary["fidelity"][k] for k in
                               ("ok", "hop_excess_ms", "link_apply_late_ms", "startup_late_ms")},
                  "exit_code": summary["_exit_code"], "wall_s": summary["_wall_s"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
