"""Starlink shell 1 (or Gen1) live: start-up time, link-apply lateness, fidelity and memory.

    .venv/bin/python bench/scale.py [--duration 120] [--speed 1] [--workers 2] [--scenario PATH]
                                    [--keep DIR]

Runs ``orbitmesh run`` as its own process (embedded mosquitto, controller, worker processes),
exactly as a user would, on ``scenarios/starlink-shell1.yaml`` (72 x 22 = 1,584 satellites; when
that file is missing an equivalent 72 x 22 shell with 50 seeded stations is generated), and
prints one JSON object per line:

* ``nodes``: satellites + stations + operations centres;
* ``first_tick_s``: wall seconds from starting the ``orbitmesh run`` process to scenario t=0
  taking effect (``run.t0_wall`` in summary.json, which the controller also publishes on the
  retained clock topic); ``t0_after_run_started_s`` splits off the part after ``run.started``
  (scenario loaded, topology built, broker up);
* ``link_apply_p99_ms``: summary ``links.apply_late_ms.p99`` (how late workers applied each
  tick's link state, wall ms);
* ``total_rss_mb``: peak over the run of the summed VmRSS of the controller process, every
  worker (``<run>/pids.json``) and the broker (the controller's other child), sampled every
  0.5 s from /proc; ``rss_at_peak_mb`` and ``peak_rss_mb`` break it down.

It stops by itself: the run ends after ``--duration`` scenario seconds; past a deadline the run
is interrupted (SIGINT, then SIGTERM/SIGKILL by PID, workers and broker included).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    PROJECT_ROOT,
    ProcSampler,
    emit,
    machine,
    unexplained_loss,
    worker_pids,
)

from orbitmesh.core.scenario import load_scenario
from orbitmesh.core.topology import build_topology

DEFAULT_SCENARIO = PROJECT_ROOT / "scenarios" / "starlink-shell1.yaml"
SETUP_ALLOWANCE_S = 180.0
"""Wall seconds allowed beyond the run's duration before the benchmark interrupts it."""


def fallback_scenario(n_stations: int = 50, duration_s: float = 120.0) -> str:
    """A 72 x 22 Walker shell at 550 km, 53 deg, +Grid, ``n_stations`` seeded stations."""
    rng = np.random.default_rng(1584)
    lats = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-55)), np.sin(np.radians(60)),
                                            n_stations)))
    lons = rng.uniform(-180, 180, n_stations)
    lines = ["name: bench-shell1", "epoch: 2026-01-01T00:00:00Z", f"duration_s: {duration_s}",
             "tick_s: 1.0", "speed: 1.0", "seed: 1584", "constellations:",
             "  - name: starlink", "    operator: spacex", "    max_gsl: 4",
             "    walker: {pattern: delta, inclination_deg: 53.0, satellites: 1584, planes: 72,"
             " phasing: 39, altitude_km: 550.0}",
             "    telemetry: {rate_hz: 0.2, size_bytes: 128, apid: 100, store_frames: 600}",
             "stations:"]
    for g in range(n_stations):
        lines.append(f"  - {{name: gs{g:02d}, operator: spacex, lat_deg: {lats[g]:.3f}, "
                     f"lon_deg: {lons[g]:.3f}, min_elevation_deg: 25, antennas: 4}}")
    lines += ["ops_centres:",
              "  - {name: hawthorne, operator: spacex, lat_deg: 33.92, lon_deg: -118.33,"
              " constellations: [starlink], stations: all, telecommand_rate_hz: 0.5}",
              "links:",
              "  isl: {topology: plus_grid, grazing_margin_km: 80, rate_bps: 1.0e11,"
              " queue_frames: 1000}",
              "  gsl: {handover: sticky, rate_bps: 1.0e9, queue_frames: 1000}",
              "  terrestrial: {fibre_factor: 1.5, rate_bps: 1.0e10}",
              "traffic:",
              "  - {name: a-b, source: gs00, destination: gs01, pattern: poisson, rate_pps: 5}",
              "  - {name: b-a, source: gs01, destination: gs00, pattern: poisson, rate_pps: 5}"]
    return "\n".join(lines) + "\n"


def children_of(pid: int) -> list[int]:
    """PIDs whose parent is ``pid`` (scanning /proc; no process is touched)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(entry))
    return out


class RunProcesses:
    """The PIDs of one `orbitmesh run`: the CLI (controller), its workers and its broker."""

    def __init__(self, controller: int, run_dir: Path) -> None:
        self.controller = controller
        self.run_dir = run_dir
        self.broker: int | None = None
        self._started: dict[int, int] = {}
        """PID -> kernel start time when first seen, so a reused PID is never signalled."""

    def __call__(self) -> dict[str, int]:
        workers = worker_pids(self.run_dir)
        if self.broker is None:
            others = [p for p in children_of(self.controller) if p not in workers.values()]
            if others:  # the embedded broker is the controller's first child
                self.broker = min(others)
        out = {"controller": self.controller, **workers}
        if self.broker is not None:
            out["broker"] = self.broker
        for pid in out.values():
            if pid not in self._started:
                started = _start_time(pid)
                if started is not None:
                    self._started[pid] = started
        return out

    def kill_leftovers(self) -> list[int]:
        """SIGKILL (by PID) any worker or broker of this run still alive; returns their PIDs."""
        killed = []
        for role, pid in self().items():
            if role == "controller" or pid not in self._started:
                continue
            if _start_time(pid) != self._started[pid]:
                continue  # gone (or the PID now belongs to someone else)
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        return killed


def _start_time(pid: int) -> int | None:
    """Kernel start time of ``pid`` (clock ticks since boot), None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            return None
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def run_scale(scenario: Path, duration_s: float, workers: int, out: Path,
              speed: float = 1.0) -> dict[str, Any]:
    """One live run of ``scenario``; returns the figures."""
    run_dir = out / "run"
    log_path = out / "orbitmesh-run.log"
    cmd = [sys.executable, "-m", "orbitmesh", "run", str(scenario), "--duration", str(duration_s),
           "--speed", str(speed), "--workers", str(workers), "--out", str(run_dir),
           "--run-id", f"bench-scale-{os.getpid()}", "--quiet"]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(x for x in (str(PROJECT_ROOT), env.get("PYTHONPATH"))
                                        if x)
    started_wall = time.time()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env)
    pids = RunProcesses(proc.pid, run_dir)
    interrupted = False
    leftovers: list[int] = []
    with ProcSampler(pids) as procs:
        try:
            proc.wait(timeout=duration_s / speed + SETUP_ALLOWANCE_S)
        except subprocess.TimeoutExpired:
            interrupted = True
            proc.send_signal(signal.SIGINT)  # the run stops its clock and still summarises
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            leftovers = pids.kill_leftovers()
    wall_s = time.time() - started_wall
    summary_path = run_dir / "summary.json"
    if not summary_path.exists():
        tail = log_path.read_text(errors="replace")[-2000:]
        raise SystemExit(f"bench/scale.py: the run wrote no summary (exit {proc.returncode}); "
                         f"log tail:\n{tail}")
    summary = json.loads(summary_path.read_text())
    topo = build_topology(load_scenario(scenario))
    run_meta = summary["run"]
    t0_wall = run_meta.get("t0_wall")
    run_started = datetime.fromisoformat(run_meta["started"]).timestamp()
    links = summary["links"]
    flows = summary["flows"]
    return {
        "case": scenario.stem, "scenario": str(scenario), "nodes": topo.n_nodes,
        "satellites": topo.n_satellites, "stations": topo.n_stations,
        "ops_centres": topo.n_nodes - topo.n_satellites - topo.n_stations,
        "workers": workers, "speed": speed, "duration_s": duration_s,
        "first_tick_s": round(t0_wall - started_wall, 3) if t0_wall else None,
        "first_tick_note": None if t0_wall else "summary.json has no run.t0_wall: not recorded",
        "t0_after_run_started_s": round(t0_wall - run_started, 3) if t0_wall else None,
        "link_apply_p50_ms": links["apply_late_ms"]["p50"],
        "link_apply_p99_ms": links["apply_late_ms"]["p99"],
        "ticks": links["ticks"], "tick_compute_ms": links["tick_compute_ms"],
        "handovers": links["handovers"], "route_changes": links["route_changes"],
        "total_rss_mb": round(procs.peak_total_mb, 1),
        "rss_at_peak_mb": {k: round(v, 1) for k, v in sorted(procs.at_peak.items())},
        "peak_rss_mb": {k: round(v, 1) for k, v in sorted(procs.peak_by_role.items())},
        "rss_samples": procs.samples,
        "cpu_s": {k: round(v, 2) for k, v in sorted(procs.cpu_s.items())},
        "foreign_cpu_s": round(procs.foreign_cpu_s, 2),
        "accuracy_p99_ms": summary["fidelity"]["hop_excess_ms"]["p99"],
        "fidelity_ok": summary["fidelity"]["ok"],
        "fidelity_problems": summary["fidelity"]["problems"],
        "telemetry_generated": summary["telemetry"]["generated"],
        "telemetry_delivered": summary["telemetry"]["delivered"],
        "flow_frames_offered": sum(f["offered"] for f in flows),
        "flow_frames_delivered": sum(f["delivered"] for f in flows),
        "unexplained_loss": unexplained_loss(summary),
        "conservation_ok": summary["conservation_ok"], "malformed": summary["malformed"],
        "exit_code": proc.returncode, "interrupted": interrupted or run_meta["interrupted"],
        "leftover_pids_killed": leftovers, "wall_s": round(wall_s, 1), "run_dir": str(run_dir),
    }


def main(argv: list[str] | None = None) -> int:
    """Run the scale benchmark once; print JSON lines."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=120.0, help="scenario seconds")
    p.add_argument("--speed", type=float, default=1.0, help="scenario seconds per wall second")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--scenario", type=Path, help=f"default: {DEFAULT_SCENARIO}")
    p.add_argument("--keep", type=Path, help="keep the run directory here (default: temp)")
    args = p.parse_args(argv)
    emit({"case": "machine", **machine()})
    with tempfile.TemporaryDirectory(prefix="orbitmesh-bench-scale-") as tmp:
        out = args.keep.resolve() if args.keep else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        scenario = args.scenario
        if scenario is None:
            scenario = DEFAULT_SCENARIO
            if not scenario.exists():
                scenario = out / "bench-shell1.yaml"
                scenario.write_text(fallback_scenario(duration_s=args.duration))
        emit(run_scale(scenario.resolve(), args.duration, args.workers, out, args.speed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
