"""Human summaries of scenarios and topologies (what `orbitmesh validate` prints)."""

from __future__ import annotations

from collections import Counter

import numpy as np

from orbitmesh.core.grid import GridLayout
from orbitmesh.core.links import LinkEngine
from orbitmesh.core.topology import GSL, ISL, LINK_CLASSES, TERRESTRIAL, Shell, Topology


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
            seam = f"seam shift {c.seam_shift}"
        else:
            origin = f"{'TLE' if c.tle else 'OMM'} {c.tle or c.omm}"
            seam = f"{len(shell.grids)} shell(s), +Grid below"
        lines.append(f"    {c.name:<16} operator {c.operator:<10} {shell.count:>6} satellites in "
                     f"{shell.planes} planes  ({origin}; {seam}, "
                     f"max {c.max_gsl} GSL/satellite)")
        if c.walker is None:
            lines += [f"      {line}" for grid in shell.grids
                      for line in grid_lines(topology, shell, grid)]
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
        counted = [g.antennas for g in s.stations if g.antennas != "all"]
        notes = [f"{len(s.stations) - len(counted)} with antennas: all (a link per visible "
                 "satellite)",
                 f"{sum(g.max_range_km is not None for g in s.stations)} with a max_range_km",
                 f"{sum(not g.transit for g in s.stations)} non-transit"]
        lines.append(f"  stations: {len(s.stations)} (masks {masks} deg, "
                     f"{sum(counted)} antennas in all"
                     + "".join(f"; {n}" for n in notes if not n.startswith("0 ")) + ")")
    for o in s.ops_centres:
        n_links = int(np.count_nonzero(topology.terrestrial[1] == topology.index[o.name])
                      + np.count_nonzero(topology.terrestrial[0] == topology.index[o.name]))
        lines.append(f"    ops centre {o.name}: operates {', '.join(o.constellations) or '-'}; "
                     f"{n_links} terrestrial links{'' if o.transit else '; non-transit'}")
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


def grid_lines(topology: Topology, shell: Shell, grid: GridLayout) -> list[str]:
    """Where one shell's +Grid starts and where its seam is (plane 0, the seam, phasing)."""
    c = shell.constellation
    first, last = grid.planes[0], grid.planes[-1]
    in_first = np.flatnonzero(shell.plane == first)
    slot0 = topology.node_ids[shell.first + int(in_first[np.argmin(shell.slot[in_first])])]
    sizes = sorted({int(np.count_nonzero(shell.plane == p)) for p in grid.planes})
    size = f"{sizes[0]}" if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    span = f"plane {first}" if first == last else f"planes {first}-{last}"
    head = (f"shell at {grid.inclination_deg:.1f} deg: {span} ({len(grid.planes)} x {size} "
            f"satellites); plane {first} at RAAN {grid.raan_deg[0]:.1f} deg, its slot 0 is "
            f"{slot0}")
    lines = [head]
    if grid.phasing is not None:
        lines.append(f"  slot columns, Walker phasing F={grid.phasing} (inferred): slot j of each "
                     "plane links slot j of the next")
    gap = (f"plane {last} (RAAN {grid.raan_deg[-1]:.1f} deg) -> plane {first}, "
           f"{grid.seam_gap_deg:.1f} deg of RAAN")
    if grid.seam_linked:
        given = "isl_shift" if c.isl_shift is not None else "inferred"
        how = (f"slot j -> slot j{grid.seam_shift:+d} ({given})" if grid.per_plane is not None
               else f"nearest argument of latitude, moved on {grid.seam_shift} slot(s)")
        lines.append(f"  seam between {gap}: {how}")
    elif len(grid.planes) < 3:
        lines.append(f"  no seam links: fewer than 3 planes ({gap})")
    else:
        lines.append(f"  no seam links: {gap}, more than 180 deg (the planes fill less than "
                     "half the circle, so the first and last do not neighbour, as in Walker-star "
                     "shells)")
    if grid.note:
        lines.append(f"  note: {grid.note}")
    return lines
