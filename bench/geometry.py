"""Benchmark one core tick: propagate + links + GSL assignment + routes + diff.

    python bench/geometry.py [--ticks N] [--case NAME] [--destinations all|used]

Prints one JSON object per case with: case, satellites, stations, destination_set, destinations
(how many route trees a tick grows), ticks,
median_ms, p95_ms, sgp4_ms (raw SatrecArray time of the same tick: the physics floor),
links_ms, routes_ms, cpu_ms (median CPU time of a tick, all threads: steadier than wall time on
a shared machine, and above it when the routing threads run in parallel), cpu_min_ms (the least
CPU time of a tick: what the tick costs when nothing else competes for caches and cores),
peak_rss_mb, and load_1m (the 1-minute load average before and after the case: the figures of a
loaded machine are not the quiet machine's). Stations are seeded pseudo-random sites between
60 S and 70 N.

``--destinations used`` routes toward the scenario's set as the controller computes it
(:func:`orbitmesh.core.destinations.addressable_destinations`): these scenarios have no flows or
endpoints, so that is their ops centres, as in a live run of them; the default ``all`` routes
toward every ground node (shell 1) or 50 of them (the Gen1 cases), the figures recorded before.

``--stages`` adds ``stages_ms``: the median wall time of each stage inside ``engine.step`` (sgp4
with the frame rotation, isl, gsl, link_state = sorting the links, diff, routes and within it
sssp = the tree kernel on its threads, route_changes), so where a tick's time goes is read
beside its total.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from orbitmesh.core import engine as engine_module
from orbitmesh.core import links as links_module
from orbitmesh.core import routing as routing_module
from orbitmesh.core.destinations import addressable_destinations
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.geometry import offsets_to_jd
from orbitmesh.core.links import LinkEngine
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import build_topology

# Starlink Gen1 (FCC SAT-MOD-20190830-00087 / 20200417-00037): five shells, 4,408 satellites.
GEN1_SHELLS = [(72, 22, 550.0, 53.0), (72, 22, 540.0, 53.2), (36, 20, 570.0, 70.0),
               (6, 58, 560.0, 97.6), (4, 43, 560.0, 97.6)]
# Gen2-like shells (after FCC 22-91's 525/530/535 km shells and a 340 km one, planes resized so the
# set holds exactly 20,000 satellites with Gen1).
GEN2_LIKE_SHELLS = [(28, 120, 525.0, 53.0), (28, 120, 530.0, 43.0), (28, 120, 535.0, 33.0),
                    (52, 106, 340.0, 53.0)]


def scenario_text(shells: list[tuple[int, int, float, float]], n_stations: int,
                  n_centres: int) -> str:
    """A benchmark scenario: Walker shells, seeded stations, ops centres linked to all stations."""
    rng = np.random.default_rng(2026)
    lines = ["name: bench", "epoch: 2026-01-01T00:00:00Z", "duration_s: 3600",
             "constellations:"]
    for i, (planes, per_plane, alt, inc) in enumerate(shells):
        lines += [f"  - name: s{i}", "    operator: op", "    max_gsl: 4",
                  f"    walker: {{inclination_deg: {inc}, satellites: {planes * per_plane}, "
                  f"planes: {planes}, phasing: 1, altitude_km: {alt}}}"]
    lines.append("stations:")
    lats = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-60)), np.sin(np.radians(70)),
                                            n_stations)))
    lons = rng.uniform(-180, 180, n_stations)
    for g in range(n_stations):
        lines.append(f"  - {{name: gs{g}, operator: op, lat_deg: {lats[g]:.3f}, "
                     f"lon_deg: {lons[g]:.3f}, min_elevation_deg: 25, antennas: 4}}")
    lines.append("ops_centres:")
    for o in range(n_centres):
        lines.append(f"  - {{name: occ{o}, operator: op, lat_deg: {lats[o]:.3f}, "
                     f"lon_deg: {lons[o]:.3f}, stations: [gs{o}, gs{o + n_centres}]}}")
    return "\n".join(lines) + "\n"


@contextmanager
def stage_timers(engine: TickEngine, link_engine: LinkEngine) -> Iterator[dict[str, list[float]]]:
    """Wall ms of each call of the tick's stages, by stage name, while the block runs."""
    laps: dict[str, list[float]] = {}
    undo: list[tuple[object, str, object]] = []

    def wrap(owner: object, attr: str, stage: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                laps.setdefault(stage, []).append((time.perf_counter() - started) * 1000.0)

        undo.append((owner, attr, vars(owner).get(attr)))
        setattr(owner, attr, timed)

    stages: list[tuple[object, str, str]] = [
        (link_engine, "positions_ecef_km", "sgp4"), (link_engine, "isl", "isl"),
        (link_engine, "gsl", "gsl"), (links_module, "make_state", "link_state"),
        (engine.tracker, "update", "diff"), (engine_module, "compute_routes", "routes"),
        (routing_module, "shortest_path_trees", "sssp"),
        (engine_module, "route_changes", "route_changes")]
    for owner, attr, stage in stages:
        wrap(owner, attr, stage)
    try:
        yield laps
    finally:
        for owner, attr, before in reversed(undo):
            if before is None:  # an instance attribute shadowed a method: drop the shadow
                delattr(owner, attr)
            else:
                setattr(owner, attr, before)


def run_case(name: str, shells: list[tuple[int, int, float, float]], n_stations: int,
             n_centres: int, n_destinations: int | None, ticks: int,
             stages: bool = False, destination_set: str = "all") -> dict[str, object]:
    """Time ``ticks`` consecutive 1-s ticks and return the figures."""
    scenario = parse_scenario(scenario_text(shells, n_stations, n_centres),
                              Path("/tmp/bench.yaml"))
    topology = build_topology(scenario)
    dest = topology.ground_endpoints
    if destination_set == "used":
        dest = addressable_destinations(scenario, topology)
    elif n_destinations is not None:
        dest = dest[np.linspace(0, len(dest) - 1, n_destinations).astype(np.int64)]
    engine = TickEngine(topology, destinations=dest)
    link_engine = engine.links
    assert isinstance(link_engine, LinkEngine)  # geometry, not a recorded timeline
    load_before = os.getloadavg()[0]
    engine.step(0.0)  # warm caches
    total, sgp4_ms, links_ms, cpu_ms = [], [], [], []
    stage_ms: dict[str, list[float]] = {}
    for k in range(1, ticks + 1):
        t = float(k)
        jd, fr = offsets_to_jd(scenario.epoch, [t])
        started = time.perf_counter()
        link_engine.propagator.teme_km(jd, fr)
        sgp4_ms.append((time.perf_counter() - started) * 1000.0)
        started, cpu_started = time.perf_counter(), time.process_time()
        if stages:
            with stage_timers(engine, link_engine) as laps:
                engine.step(t)
            for stage, values in laps.items():
                stage_ms.setdefault(stage, []).append(sum(values))
        else:
            engine.step(t)
        total.append((time.perf_counter() - started) * 1000.0)
        cpu_ms.append((time.process_time() - cpu_started) * 1000.0)
        started = time.perf_counter()
        engine.links.state_at(t + 0.5)
        links_ms.append((time.perf_counter() - started) * 1000.0)
    median = float(np.median(total))
    links = float(np.median(links_ms))
    extra: dict[str, object] = {}
    if stages:
        extra["stages_ms"] = {k: round(float(np.median(v)), 3) for k, v in stage_ms.items()}
    return {"case": name, "satellites": topology.n_satellites, "stations": topology.n_stations,
            "ops_centres": n_centres, "destination_set": destination_set,
            "destinations": len(dest), "ticks": ticks,
            "median_ms": round(median, 3), "p95_ms": round(float(np.percentile(total, 95)), 3),
            "sgp4_ms": round(float(np.median(sgp4_ms)), 3),
            "links_ms": round(links, 3), "routes_ms": round(max(0.0, median - links), 3),
            "cpu_ms": round(float(np.median(cpu_ms)), 3),
            "cpu_min_ms": round(float(np.min(cpu_ms)), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)], **extra}


CASES: dict[str, Callable[[int, bool, str], dict[str, object]]] = {
    "starlink-shell1": lambda ticks, stages, which: run_case(
        "starlink-shell1", GEN1_SHELLS[:1], 100, 5, None, ticks, stages, which),
    "starlink-gen1": lambda ticks, stages, which: run_case(
        "starlink-gen1", GEN1_SHELLS, 1000, 5, 50, ticks, stages, which),
    "gen1-gen2-20k": lambda ticks, stages, which: run_case(
        "gen1-gen2-20k", GEN1_SHELLS + GEN2_LIKE_SHELLS, 1000, 5, 50, ticks, stages, which),
}


def main() -> None:
    """Run the cases and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--stages", action="store_true",
                        help="add stages_ms: the median wall time of each stage of a tick")
    parser.add_argument("--destinations", choices=("all", "used"), default="all",
                        help="route toward every ground node (all) or the scenario's "
                        "addressable set, as the controller does (used)")
    args = parser.parse_args()
    for name in args.case or list(CASES):
        print(json.dumps(CASES[name](args.ticks, args.stages, args.destinations)), flush=True)


if __name__ == "__main__":
    main()
