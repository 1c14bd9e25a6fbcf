"""Benchmark one core tick: propagate + links + GSL assignment + routes + diff.

    python bench/geometry.py [--ticks N] [--case NAME]

Prints one JSON object per case with: case, satellites, stations, destinations, ticks,
median_ms, p95_ms, sgp4_ms (raw SatrecArray time of the same tick: the physics floor),
links_ms, routes_ms, cpu_ms (median CPU time of a tick, all threads: steadier than wall time on
a shared machine, and above it when the routing threads run in parallel), cpu_min_ms (the least
CPU time of a tick: what the tick costs when nothing else competes for caches and cores),
peak_rss_mb, and load_1m (the 1-minute load average before and after the case: the figures of a
loaded machine are not the quiet machine's). Stations are seeded pseudo-random sites between
60 S and 70 N.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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


def run_case(name: str, shells: list[tuple[int, int, float, float]], n_stations: int,
             n_centres: int, n_destinations: int | None, ticks: int) -> dict[str, object]:
    """Time ``ticks`` consecutive 1-s ticks and return the figures."""
    scenario = parse_scenario(scenario_text(shells, n_stations, n_centres),
                              Path("/tmp/bench.yaml"))
    topology = build_topology(scenario)
    dest = topology.ground_endpoints
    if n_destinations is not None:
        dest = dest[np.linspace(0, len(dest) - 1, n_destinations).astype(np.int64)]
    engine = TickEngine(topology, destinations=dest)
    link_engine = engine.links
    assert isinstance(link_engine, LinkEngine)  # geometry, not a recorded timeline
    load_before = os.getloadavg()[0]
    engine.step(0.0)  # warm caches
    total, sgp4_ms, links_ms, cpu_ms = [], [], [], []
    for k in range(1, ticks + 1):
        t = float(k)
        jd, fr = offsets_to_jd(scenario.epoch, [t])
        started = time.perf_counter()
        link_engine.propagator.teme_km(jd, fr)
        sgp4_ms.append((time.perf_counter() - started) * 1000.0)
        started, cpu_started = time.perf_counter(), time.process_time()
        engine.step(t)
        total.append((time.perf_counter() - started) * 1000.0)
        cpu_ms.append((time.process_time() - cpu_started) * 1000.0)
        started = time.perf_counter()
        engine.links.state_at(t + 0.5)
        links_ms.append((time.perf_counter() - started) * 1000.0)
    median = float(np.median(total))
    links = float(np.median(links_ms))
    return {"case": name, "satellites": topology.n_satellites, "stations": topology.n_stations,
            "ops_centres": n_centres, "destinations": len(dest), "ticks": ticks,
            "median_ms": round(median, 3), "p95_ms": round(float(np.percentile(total, 95)), 3),
            "sgp4_ms": round(float(np.median(sgp4_ms)), 3),
            "links_ms": round(links, 3), "routes_ms": round(max(0.0, median - links), 3),
            "cpu_ms": round(float(np.median(cpu_ms)), 3),
            "cpu_min_ms": round(float(np.min(cpu_ms)), 3),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "load_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)]}


CASES = {
    "starlink-shell1": lambda ticks: run_case("starlink-shell1", GEN1_SHELLS[:1], 100, 5, None,
                                              ticks),
    "starlink-gen1": lambda ticks: run_case("starlink-gen1", GEN1_SHELLS, 1000, 5, 50, ticks),
    "gen1-gen2-20k": lambda ticks: run_case("gen1-gen2-20k", GEN1_SHELLS + GEN2_LIKE_SHELLS, 1000,
                                            5, 50, ticks),
}


def main() -> None:
    """Run the cases and print JSON lines."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ticks", type=int, default=100)
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    args = parser.parse_args()
    for name in args.case or list(CASES):
        print(json.dumps(CASES[name](args.ticks)), flush=True)


if __name__ == "__main__":
    main()
