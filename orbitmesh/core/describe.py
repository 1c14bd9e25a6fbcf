"""Human summaries of scenarios and topologies (what `orbitmesh validate` prints)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from orbitmesh.core.links import LinkEngine
from orbitmesh.core.topology import GSL, ISL, LINK_CLASSES, TERRESTRIAL, Topology


def describe(topology: Topology, *, sample_links: bool = True) -> str:
    """Multi-line description: counts per constellation and operator, stations, links."""
    s = topology.scenario
    lines = [f"scenario {s.name!r} ({s.source})",
             f"  epoch {s.epoch.isoformat().replace('+00:00', 'Z')}, duration {s.duration_s:g} s, "
             f"tick {s.tick_s:g} s, speed x{s.speed:g}, seed {s.seed}"]
    lines.append(f"  {topology.n_nodes} nodes: {topology.n_satellites} satellites, "
                 f"{topology.n_stations} ground stations, {len(s.ops_centres)} operations centres")
    lines.append("  constellations:")
    for shell in topology.shells:
        c = shell.constellation
        if c.walker is not None:
            w = c.walker
            origin = (f"Walker-{w.pattern} {w.inclination_deg:g}:{w.satellites}/{w.planes}/"
                      f"{w.phasing} at {w.altitude_km:g} km")
        else:
            origin = f"{'TLE' if c.tle else 'OMM'} {c.tle or c.omm}"
        lines.append(f"    {c.name:<16} operator {c.operator:<10} {shell.count:>6} satellites in "
                     f"{shell.planes} planes  ({origin}; seam shift {c.seam_shift}, "
                     f"max {c.max_gsl} GSL/satellite)")
    per_op: Counter[str] = Counter()
    for i in range(topology.n_satellites):
        per_op[f"{topology.operators[topology.operator[i]]} satellites"] += 1
    for g in s.stations:
        per_op[f"{g.operator} stations"] += 1
    for o in s.ops_centres:
        per_op[f"{o.operator} operations centres"] += 1
    lines.append("  per operator: " + ", ".join(f"{v} {k}" for k, v in sorted(per_op.items())))
    if s.stations:
        masks = ", ".join(sorted({f"{g.min_elevation_deg:g}" for g in s.stations}))
        lines.append(f"  stations: {len(s.stations)} (masks {masks} deg, "
                     f"{int(topology.station_antennas.sum())} antennas in all)")
    for o in s.ops_centres:
        n_links = int(np.count_nonzero(topology.terrestrial[1] == topology.index[o.name])
                      + np.count_nonzero(topology.terrestrial[0] == topology.index[o.name]))
        lines.append(f"    ops centre {o.name}: operates {', '.join(o.constellations) or '-'}; "
                     f"{n_links} terrestrial links")
    lines.append(f"  candidate links: {len(topology.isl_pairs)} ISL (+Grid), "
                 f"{len(topology.terrestrial[0])} terrestrial; GSL handover "
                 f"{s.links.gsl.handover}")
    if sample_links:
        state = LinkEngine(topology).state_at(0.0)
        counts = ", ".join(f"{state.count(k)} {LINK_CLASSES[k]}" for k in (ISL, GSL, TERRESTRIAL))
        lines.append(f"  live at epoch: {counts}")
    if s.traffic:
        lines.append("  traffic:")
        for f in s.traffic:
            lines.append(f"    {f.name}: {f.source} -> {f.destination}, {f.pattern} "
                         f"{f.rate_pps:g} frames/s" + (f", policy {f.policy}" if f.policy else ""))
    if s.routing.policies:
        lines.append("  routing policies: " + ", ".join(
            f"{n} (operators {', '.join(p.allowed_operators)})"
            for n, p in s.routing.policies.items()))
    lines += [f"  warning: {w}" for w in topology.warnings]
    return "\n".join(lines)
