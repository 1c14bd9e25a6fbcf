"""Topology: the static description of a scenario's nodes and candidate links (no time in it).

Node indices are global and fixed for a run: satellites ``0..S-1`` (constellation by
constellation, plane-major), then ground stations ``S..S+G-1``, then operations centres.
Node ids are topic-safe strings: ``<constellation>-<plane>-<slot>`` for Walker satellites,
``<constellation>-<catalog number>`` for TLE/OMM satellites, and the given names for ground nodes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from sgp4.api import Satrec

from orbitmesh.core import elements
from orbitmesh.core import planes as planes_mod
from orbitmesh.core.geometry import (
    C_KM_S,
    FloatArray,
    Stations,
    walker_satrecs,
)
from orbitmesh.core.grid import GridLayout, plane_members, walker_grid
from orbitmesh.core.scenario import Constellation, Scenario
from orbitmesh.errors import ScenarioError

IntArray = NDArray[np.int64]

SATELLITE, STATION, OPS_CENTRE = 0, 1, 2
KIND_NAMES = ("satellite", "station", "ops_centre")
ISL, GSL, TERRESTRIAL = 0, 1, 2
LINK_CLASSES = ("isl", "gsl", "terrestrial")
MEAN_EARTH_RADIUS_KM = 6371.0


@dataclass(frozen=True)
class Shell:
    """Where one constellation sits in the satellite index range, with its plane layout."""

    constellation: Constellation
    first: int
    count: int
    plane: IntArray  # (count,) plane of each satellite
    slot: IntArray  # (count,) slot within its plane
    arg_latitude_deg: FloatArray  # (count,) at the scenario epoch; orders slots within planes
    planes: int
    grids: tuple[GridLayout, ...] = ()  # one +Grid per inclination group (plane numbers as above)


@dataclass(frozen=True)
class Topology:
    """Every node of a scenario and the candidate links between them."""

    scenario: Scenario
    node_ids: tuple[str, ...]
    kind: NDArray[np.int8]  # (N,)
    operator: IntArray  # (N,) index into ``operators``
    operators: tuple[str, ...]
    satrecs: tuple[Satrec, ...]
    shells: tuple[Shell, ...]
    sat_constellation: IntArray  # (S,) index into scenario.constellations
    sat_max_gsl: IntArray  # (S,)
    isl_pairs: IntArray  # (K, 2) global satellite indices, a < b
    stations: Stations
    station_mask_deg: FloatArray  # (G,)
    station_antennas: IntArray  # (G,)
    station_allows: NDArray[np.bool_]  # (G, C): may station g track constellation c?
    terrestrial: tuple[IntArray, IntArray, FloatArray]  # a, b, delay_s (fixed links)
    warnings: tuple[str, ...] = ()

    @property
    def n_nodes(self) -> int:
        """All nodes."""
        return len(self.node_ids)

    @property
    def n_satellites(self) -> int:
        """Satellites (they come first in the node order)."""
        return len(self.satrecs)

    @property
    def n_stations(self) -> int:
        """Ground stations (after the satellites)."""
        return len(self.stations)

    @cached_property
    def index(self) -> dict[str, int]:
        """Node id -> global index."""
        return {nid: i for i, nid in enumerate(self.node_ids)}

    def node(self, node_id: str) -> int:
        """Global index of ``node_id`` or a ScenarioError naming close matches."""
        try:
            return self.index[node_id]
        except KeyError:
            close = [n for n in self.node_ids if n.startswith(node_id[:3])][:5]
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ScenarioError(f"unknown node {node_id!r}{hint}") from None

    @cached_property
    def ground_endpoints(self) -> IntArray:
        """Indices of every station and operations centre."""
        return np.arange(self.n_satellites, self.n_nodes, dtype=np.int64)

    @cached_property
    def transit(self) -> NDArray[np.bool_]:
        """(N,) can the node relay? Satellites do; ground nodes unless ``transit: false``."""
        ground = [g.transit for g in self.scenario.stations]
        ground += [o.transit for o in self.scenario.ops_centres]
        return np.concatenate([np.ones(self.n_satellites, dtype=bool),
                               np.array(ground, dtype=bool)])


def build_topology(scenario: Scenario) -> Topology:
    """Generate satellites, stations and candidate links for ``scenario``."""
    satrecs: list[Satrec] = []
    sat_ids: list[str] = []
    shells: list[Shell] = []
    warnings: list[str] = []
    for c in scenario.constellations:
        shell_sats, ids, shell, notes = _constellation(c, scenario, first=len(satrecs))
        satrecs += shell_sats
        sat_ids += ids
        shells.append(shell)
        warnings += notes
    n_sats = len(satrecs)
    operators = scenario.operators
    op_index = {name: i for i, name in enumerate(operators)}
    c_index = {c.name: i for i, c in enumerate(scenario.constellations)}

    node_ids = tuple(sat_ids + [g.name for g in scenario.stations]
                     + [o.name for o in scenario.ops_centres])
    if len(set(node_ids)) != len(node_ids):
        dup = sorted({n for n in node_ids if node_ids.count(n) > 1})
        raise ScenarioError(f"{scenario.source}: node ids collide: {dup}; rename the station, "
                            "operations centre or constellation")
    known = set(node_ids)
    bad = [f"{scenario.source}: traffic[{i}].{key}: unknown node {getattr(f, key)!r}; expected "
           f"a station, an operations centre or a satellite id (see `orbitmesh validate`)"
           for i, f in enumerate(scenario.traffic) for key in ("source", "destination")
           if getattr(f, key) not in known]
    if bad:
        raise ScenarioError(f"{scenario.source}: {len(bad)} problem(s) in traffic", bad)
    kind = np.array([SATELLITE] * n_sats + [STATION] * len(scenario.stations)
                    + [OPS_CENTRE] * len(scenario.ops_centres), dtype=np.int8)
    operator = np.array(
        [op_index[s.constellation.operator] for s in shells for _ in range(s.count)]
        + [op_index[g.operator] for g in scenario.stations]
        + [op_index[o.operator] for o in scenario.ops_centres], dtype=np.int64)
    sat_constellation = np.repeat(np.arange(len(shells)), [s.count for s in shells])
    sat_max_gsl = np.repeat([s.constellation.max_gsl for s in shells], [s.count for s in shells])

    isl_pairs = np.concatenate(
        [plus_grid_pairs(s) for s in shells] or [np.empty((0, 2), dtype=np.int64)]
    ) if scenario.links.isl.topology == "plus_grid" else np.empty((0, 2), dtype=np.int64)

    st = scenario.stations
    stations = Stations.from_geodetic([g.lat_deg for g in st], [g.lon_deg for g in st],
                                      [g.alt_m / 1000.0 for g in st])
    allows = np.ones((len(st), len(shells)), dtype=bool)
    for gi, g in enumerate(st):
        if g.constellations is not None:
            allows[gi] = False
            allows[gi, [c_index[c] for c in g.constellations]] = True

    return Topology(
        scenario=scenario, node_ids=node_ids, kind=kind, operator=operator, operators=operators,
        satrecs=tuple(satrecs), shells=tuple(shells), sat_constellation=sat_constellation,
        sat_max_gsl=np.asarray(sat_max_gsl, dtype=np.int64), isl_pairs=isl_pairs,
        stations=stations,
        station_mask_deg=np.array([g.min_elevation_deg for g in st], dtype=np.float64),
        station_antennas=np.array([g.antenna_count(n_sats) for g in st], dtype=np.int64),
        station_allows=allows, terrestrial=_terrestrial(scenario, n_sats),
        warnings=tuple(warnings))


def _constellation(c: Constellation, scenario: Scenario, first: int
                   ) -> tuple[list[Satrec], list[str], Shell, list[str]]:
    if c.walker is not None:
        w = c.walker
        sats = walker_satrecs(epoch=scenario.epoch, total=w.satellites, planes=w.planes,
                              phasing=w.phasing, inclination_deg=w.inclination_deg,
                              altitude_km=w.altitude_km, pattern=w.pattern,
                              first_satnum=first + 1, raan_offset_deg=w.raan_offset_deg)
        per_plane = w.satellites // w.planes
        plane = np.repeat(np.arange(w.planes), per_plane)
        slot = np.tile(np.arange(per_plane), w.planes)
        u = (slot * 360.0 / per_plane + plane * w.phasing * 360.0 / w.satellites) % 360.0
        width = max(2, len(str(per_plane - 1)), len(str(w.planes - 1)))
        ids = [f"{c.name}-{k:0{width}d}-{j:0{width}d}" for k, j in zip(plane, slot, strict=True)]
        grid = walker_grid(planes=w.planes, per_plane=per_plane, phasing=w.phasing,
                           seam_shift=c.seam_shift, star=w.pattern == "star",
                           raan_offset_deg=w.raan_offset_deg, inclination_deg=w.inclination_deg)
        return sats, ids, Shell(c, first, len(sats), plane, slot, u, w.planes, (grid,)), []

    records = (elements.load_tle_file(c.tle) if c.tle is not None
               else elements.load_omm_file(c.omm))  # type: ignore[arg-type]
    notes = elements.stale_epochs(records, scenario.epoch)
    if c.plane_mapping is not None:
        mapping = planes_mod.load_plane_mapping(c.plane_mapping)
        missing = [r.catalog_number for r in records if r.catalog_number not in mapping]
        if missing:
            raise ScenarioError(f"{c.plane_mapping}: no plane/slot for catalogue numbers "
                                f"{missing[:10]}; every satellite of {c.name!r} needs a row")
        assignment = planes_mod.planes_from_mapping(records, scenario.epoch, mapping)
    else:
        assignment = planes_mod.infer_planes(records, scenario.epoch,
                                             raan_tolerance_deg=c.raan_tolerance_deg)
    grids = assignment.grids
    if c.isl_shift is not None:  # the scenario's seam shift wins over the inferred one
        grids = tuple(replace(g, seam_shift=c.isl_shift) for g in grids)
    order = np.lexsort((assignment.slot, assignment.plane))  # plane-major like Walker shells
    records = [records[i] for i in order]
    ids = [f"{c.name}-{r.catalog_number}" for r in records]
    shell = Shell(c, first, len(records), np.asarray(assignment.plane[order], dtype=np.int64),
                  np.asarray(assignment.slot[order], dtype=np.int64),
                  np.asarray(assignment.arg_latitude_deg[order], dtype=np.float64),
                  assignment.planes, grids)
    return [r.satrec for r in records], ids, shell, list(notes)


def plus_grid_pairs(shell: Shell) -> IntArray:
    """+Grid ISL candidates (global indices, ``a < b``): two in-plane and two cross-plane links.

    Each plane is a ring in slot order. Planes of a grid (:class:`~orbitmesh.core.grid.GridLayout`)
    standing in slot columns (Walker shells, and imported shells whose planes are equal and evenly
    spaced) link slot j of plane k to slot j of the next plane, and at the seam slot j of the last
    plane to slot j + seam shift of the first; a grid whose seam is open (Walker star, star-like
    imports, fewer than 3 planes) has no seam links. Planes without columns (unequal, uneven)
    link each satellite to the nearest argument of latitude in the next plane.
    """
    c = shell.constellation
    if not c.isl or shell.count < 2:
        return np.empty((0, 2), dtype=np.int64)
    first = shell.first
    members = plane_members(shell.plane, shell.slot, range(shell.planes))
    pairs: list[IntArray] = []
    for ring in members:
        if len(ring) >= 3:
            pairs.append(first + np.stack([ring, np.roll(ring, -1)], axis=1))
        elif len(ring) == 2:
            pairs.append(first + ring.reshape(1, 2))
    for grid in shell.grids:
        for i, k in enumerate(grid.planes):
            at_seam = i == len(grid.planes) - 1
            if at_seam and not grid.seam_linked:
                continue
            here, there = members[k], members[grid.planes[(i + 1) % len(grid.planes)]]
            if len(here) == 0 or len(there) == 0:
                continue
            shift = grid.seam_shift if at_seam else 0
            if grid.per_plane is not None:
                partner = there[(np.arange(len(here)) + shift) % len(there)]
            else:
                u = shell.arg_latitude_deg
                diff = (u[there][np.newaxis, :] - u[here][:, np.newaxis] + 180.0) % 360.0 - 180.0
                partner = there[(np.argmin(np.abs(diff), axis=1) + shift) % len(there)]
            pairs.append(first + np.stack([here, partner], axis=1))
    if not pairs:
        return np.empty((0, 2), dtype=np.int64)
    allp = np.sort(np.concatenate(pairs), axis=1)
    allp = allp[allp[:, 0] != allp[:, 1]]
    return np.unique(allp, axis=0).astype(np.int64)


def great_circle_km(lat1_deg: float, lon1_deg: float, lat2_deg: float, lon2_deg: float) -> float:
    """Great-circle distance on a mean-radius sphere (haversine)."""
    p1, p2 = np.radians(lat1_deg), np.radians(lat2_deg)
    dp, dl = p2 - p1, np.radians(lon2_deg - lon1_deg)
    h = np.sin(dp / 2) ** 2 + np.cos(p1) * np.cos(p2) * np.sin(dl / 2) ** 2
    return float(2 * MEAN_EARTH_RADIUS_KM * np.arcsin(min(1.0, np.sqrt(h))))


def _terrestrial(scenario: Scenario, n_sats: int) -> tuple[IntArray, IntArray, FloatArray]:
    rules = scenario.links.terrestrial
    st_index = {g.name: n_sats + i for i, g in enumerate(scenario.stations)}
    oc_first = n_sats + len(scenario.stations)
    oc_index = {o.name: oc_first + i for i, o in enumerate(scenario.ops_centres)}
    where = {g.name: (g.lat_deg, g.lon_deg) for g in scenario.stations}
    where |= {o.name: (o.lat_deg, o.lon_deg) for o in scenario.ops_centres}
    names = {i: n for n, i in (st_index | oc_index).items()}
    edges: set[tuple[int, int]] = set()
    for o in scenario.ops_centres:
        if o.stations == "all":
            linked = list(st_index)
        elif o.stations == "operator":
            linked = [g.name for g in scenario.stations if g.operator == o.operator]
        else:
            linked = list(o.stations)
        for name in linked:
            edges.add((st_index[name], oc_index[o.name]))
        for peer in o.peers:
            lo, hi = sorted((oc_index[o.name], oc_index[peer]))
            edges.add((lo, hi))
    ordered: list[tuple[int, int]] = sorted(edges)
    a = np.array([e[0] for e in ordered], dtype=np.int64)
    b = np.array([e[1] for e in ordered], dtype=np.int64)
    if rules.delay_ms is not None:
        delay = np.full(len(ordered), rules.delay_ms / 1000.0)
    else:
        delay = np.array([great_circle_km(*where[names[i]], *where[names[j]])
                          * rules.fibre_factor / C_KM_S for i, j in ordered], dtype=np.float64)
    return a, b, delay
