"""`orbitmesh export-geometry`: satellite tracks, ground nodes and links over a span, for Cesium
(CZML), GIS tools (GeoJSON) and spreadsheets (CSV).

Positions come from the core geometry (SGP4 via :class:`~orbitmesh.core.geometry.Propagator`,
all satellites and all sample times in one call); links from the same link engine a run uses
(:class:`~orbitmesh.core.engine.TickEngine`, handover history warmed up), sampled every
``step_s``. A link live at samples ``i..j`` is reported available from ``t_i`` to ``t_{j+1}``
(the next sample, clipped to the end of the span): between samples the state is not known
better than that. Faults are not applied: this is what the geometry allows.

Arrays: satellite positions are ``(S, T)`` per coordinate (satellites first, then times), as in
orbitmesh/core/geometry.py. Longitudes are in [-180, 180), latitudes geodetic (WGS84).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from orbitmesh.core.geometry import WGS84_A_KM, WGS84_F, Propagator, offsets_to_jd
from orbitmesh.core.topology import KIND_NAMES, LINK_CLASSES, Topology
from orbitmesh.errors import ScenarioError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
FORMATS = ("czml", "geojson", "csv")
MAX_SAMPLES = 2_000_000
"""Most satellite-samples (S x T) one export computes; beyond it, ask for a coarser --step."""
_OPERATOR_RGBA = ((31, 119, 180, 255), (255, 127, 14, 255), (44, 160, 44, 255),
                  (214, 39, 40, 255), (148, 103, 189, 255), (140, 86, 75, 255))
_LINK_RGBA = {"isl": (0, 200, 255, 160), "gsl": (255, 200, 0, 200),
              "terrestrial": (180, 180, 180, 200)}


def ecef_to_geodetic(positions_ecef_km: FloatArray) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Earth-fixed ``(..., 3)`` km to WGS84 (lat_deg, lon_deg, alt_km) (Bowring, 2 iterations)."""
    x, y, z = (positions_ecef_km[..., i] for i in range(3))
    e2 = WGS84_F * (2.0 - WGS84_F)
    b = WGS84_A_KM * (1.0 - WGS84_F)
    ep2 = e2 / (1.0 - e2)
    p = np.hypot(x, y)
    lat = np.arctan2(z, p * (1.0 - e2))
    for _ in range(2):  # Bowring's iteration: sub-millimetre at LEO after two steps
        beta = np.arctan2((1.0 - WGS84_F) * np.sin(lat), np.cos(lat))
        lat = np.arctan2(z + ep2 * b * np.sin(beta) ** 3, p - e2 * WGS84_A_KM * np.cos(beta) ** 3)
    n = WGS84_A_KM / np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
    cos_lat = np.cos(lat)
    # Near the poles p/cos(lat) is ill-conditioned; use the z form there.
    alt = np.where(np.abs(cos_lat) > 1e-3, p / np.where(cos_lat == 0, 1, cos_lat) - n,
                   np.abs(z) / np.maximum(np.abs(np.sin(lat)), 1e-12) - n * (1.0 - e2))
    lon = (np.degrees(np.arctan2(y, x)) + 180.0) % 360.0 - 180.0
    return np.degrees(lat), lon, alt


def satellite_lon_lat_deg(topology: Topology, t_s: FloatArray
                          ) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Satellite (lon_deg, lat_deg, alt_km), each ``(S, T)``, at seconds ``t_s`` after the epoch."""
    jd, fr = offsets_to_jd(topology.scenario.epoch, t_s)
    lat, lon, alt = ecef_to_geodetic(Propagator(topology.satrecs).ecef_km(jd, fr))
    return lon, lat, alt


def ground_lon_lat_deg(topology: Topology) -> tuple[FloatArray, FloatArray]:
    """(lon_deg, lat_deg) of every ground node: stations, then operations centres (node order)."""
    scenario = topology.scenario
    lon = [g.lon_deg for g in scenario.stations] + [o.lon_deg for o in scenario.ops_centres]
    lat = [g.lat_deg for g in scenario.stations] + [o.lat_deg for o in scenario.ops_centres]
    return ((np.array(lon, dtype=np.float64) + 180.0) % 360.0 - 180.0,
            np.array(lat, dtype=np.float64))


def _ground_alt_km(topology: Topology) -> FloatArray:
    sites = [*topology.scenario.stations, *topology.scenario.ops_centres]
    return np.array([getattr(s, "alt_m", 0.0) / 1000.0 for s in sites], dtype=np.float64)


@dataclass(frozen=True)
class LinkIntervals:
    """Every link that was live during the span, one row per uninterrupted interval."""

    a: IntArray  # (L,) node index, a < b
    b: IntArray
    kind: IntArray  # index into LINK_CLASSES
    start_s: FloatArray  # seconds after the epoch
    end_s: FloatArray


@dataclass(frozen=True)
class Geometry:
    """Sampled positions and link intervals of a scenario over ``[start, end]``."""

    topology: Topology
    start: datetime
    t_s: FloatArray  # (T,) seconds after the epoch
    lon_deg: FloatArray  # (S, T)
    lat_deg: FloatArray
    alt_km: FloatArray
    links: LinkIntervals

    def when(self, t_s: float) -> datetime:
        """The UTC time of ``t_s`` seconds after the scenario epoch."""
        return self.topology.scenario.epoch + timedelta(seconds=float(t_s))


def sample_geometry(topology: Topology, start: datetime | None = None,
                    end: datetime | None = None, step_s: float = 60.0,
                    on_sample: Callable[[int, int], None] | None = None) -> Geometry:
    """Positions and link intervals between ``start`` and ``end`` (default: the scenario span)."""
    from orbitmesh.core.engine import TickEngine

    scenario = topology.scenario
    start = start or scenario.epoch
    end = end or start + timedelta(seconds=scenario.duration_s)
    if not step_s > 0:
        raise ScenarioError(f"--step {step_s}: expected a positive number of seconds")
    if end <= start:
        raise ScenarioError("--end must be after --start")
    if start < scenario.epoch:
        raise ScenarioError(f"--start must not precede the scenario epoch {scenario.epoch}")
    t0 = (start - scenario.epoch).total_seconds()
    span = (end - start).total_seconds()
    t_s = t0 + np.arange(0.0, span + 1e-9, step_s)
    if topology.n_satellites * len(t_s) > MAX_SAMPLES:
        raise ScenarioError(f"{topology.n_satellites} satellites x {len(t_s)} samples is more "
                            f"than {MAX_SAMPLES:,}; use a larger --step or a shorter span")
    if topology.n_satellites:
        lon, lat, alt = satellite_lon_lat_deg(topology, t_s)
    else:
        lon = lat = alt = np.empty((0, len(t_s)))
    engine = TickEngine(topology, destinations=[], policies=[])
    engine.warm_up(float(t_s[0]))
    keys, kinds, steps = [], [], []
    n = topology.n_nodes
    for i, t in enumerate(t_s):
        state = engine.links.state_at(float(t))
        keys.append(state.key)
        kinds.append(state.kind.astype(np.int64))
        steps.append(np.full(len(state), i, dtype=np.int64))
        if on_sample is not None:
            on_sample(i + 1, len(t_s))
    links = _intervals(np.concatenate(keys), np.concatenate(kinds), np.concatenate(steps),
                       t_s, t0 + span, n)
    return Geometry(topology, start, t_s, lon, lat, alt, links)


def _intervals(key: IntArray, kind: IntArray, step: IntArray, t_s: FloatArray, end_s: float,
               n_nodes: int) -> LinkIntervals:
    """Runs of consecutive samples per link key, as [start, end) intervals (vectorised)."""
    order = np.lexsort((step, key))
    key, kind, step = key[order], kind[order], step[order]
    new = np.ones(len(key), dtype=bool)
    new[1:] = (key[1:] != key[:-1]) | (step[1:] != step[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, len(key) - 1) if len(first) else first
    nxt = np.append(t_s, end_s)
    end = np.minimum(nxt[np.minimum(step[last] + 1, len(t_s))], end_s)
    return LinkIntervals(key[first] // n_nodes, key[first] % n_nodes, kind[first],
                         t_s[step[first]], end)


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def to_czml(geo: Geometry) -> list[dict[str, Any]]:
    """A CZML document: clock packet, one packet per satellite, ground node and link interval."""
    topo = geo.topology
    first, last = geo.when(geo.t_s[0]), geo.when(geo.links.end_s.max(initial=geo.t_s[-1]))
    last = max(last, geo.when(geo.t_s[-1]))
    span = f"{_iso(first)}/{_iso(last)}"
    packets: list[dict[str, Any]] = [{
        "id": "document", "name": topo.scenario.name, "version": "1.0",
        "clock": {"interval": span, "currentTime": _iso(first), "multiplier": 60,
                  "range": "LOOP_STOP", "step": "SYSTEM_CLOCK_MULTIPLIER"}}]
    rel = geo.t_s - geo.t_s[0]
    for s in range(topo.n_satellites):
        samples = np.stack([rel, geo.lon_deg[s], geo.lat_deg[s], geo.alt_km[s] * 1000.0], axis=1)
        samples = samples[~np.isnan(samples).any(axis=1)]  # SGP4 failures: no sample, not 0,0
        colour = _OPERATOR_RGBA[int(topo.operator[s]) % len(_OPERATOR_RGBA)]
        packets.append({
            "id": topo.node_ids[s], "name": topo.node_ids[s], "availability": span,
            "properties": {"kind": "satellite", "operator": topo.operators[topo.operator[s]]},
            "position": {"epoch": _iso(first), "interpolationAlgorithm": "LAGRANGE",
                         "interpolationDegree": 5,
                         "cartographicDegrees": [round(float(v), 6) for v in samples.ravel()]},
            "point": {"pixelSize": 4, "color": {"rgba": list(colour)}}})
    g_lon, g_lat = ground_lon_lat_deg(topo)
    g_alt = _ground_alt_km(topo)
    for g in range(len(g_lon)):
        node = topo.n_satellites + g
        packets.append({
            "id": topo.node_ids[node], "name": topo.node_ids[node],
            "properties": {"kind": KIND_NAMES[topo.kind[node]],
                           "operator": topo.operators[topo.operator[node]]},
            "position": {"cartographicDegrees": [float(g_lon[g]), float(g_lat[g]),
                                                 float(g_alt[g] * 1000.0)]},
            "point": {"pixelSize": 8, "color": {"rgba": [255, 60, 60, 255]}},
            "label": {"text": topo.node_ids[node], "font": "11px sans-serif",
                      "pixelOffset": {"cartesian2": [0, -14]}}})
    lk = geo.links
    for i in range(len(lk.a)):
        a, b = topo.node_ids[lk.a[i]], topo.node_ids[lk.b[i]]
        cls = LINK_CLASSES[lk.kind[i]]
        packets.append({
            "id": f"link/{a}/{b}/{i}", "name": f"{cls} {a} - {b}",
            "availability": f"{_iso(geo.when(lk.start_s[i]))}/{_iso(geo.when(lk.end_s[i]))}",
            "properties": {"kind": "link", "class": cls},
            "polyline": {"positions": {"references": [f"{a}#position", f"{b}#position"]},
                         "width": 1, "arcType": "NONE",
                         "material": {"solidColor": {"color": {"rgba": list(_LINK_RGBA[cls])}}}}})
    return packets


def _split_antimeridian(lon: FloatArray, lat: FloatArray) -> list[list[list[float]]]:
    """A track as lines that never jump across the +-180 meridian (GIS tools draw those wrong)."""
    ok = ~(np.isnan(lon) | np.isnan(lat))
    lon, lat = lon[ok], lat[ok]
    cuts = np.flatnonzero(np.abs(np.diff(lon)) > 180.0) + 1
    parts = []
    for x, y in zip(np.split(lon, cuts), np.split(lat, cuts), strict=True):
        if len(x) >= 2:
            parts.append([[round(float(u), 6), round(float(v), 6)] for u, v in zip(x, y,
                                                                                   strict=True)])
    return parts


def to_geojson(geo: Geometry) -> dict[str, Any]:
    """A GeoJSON FeatureCollection: tracks (MultiLineString), ground nodes (Point), links."""
    topo = geo.topology
    times = [_iso(geo.when(t)) for t in geo.t_s]
    features: list[dict[str, Any]] = []
    for s in range(topo.n_satellites):
        features.append({"type": "Feature", "id": topo.node_ids[s],
                         "geometry": {"type": "MultiLineString",
                                      "coordinates": _split_antimeridian(geo.lon_deg[s],
                                                                         geo.lat_deg[s])},
                         "properties": {"kind": "satellite", "node": topo.node_ids[s],
                                        "operator": topo.operators[topo.operator[s]],
                                        "start": times[0], "end": times[-1],
                                        "step_s": float(geo.t_s[1] - geo.t_s[0])
                                        if len(geo.t_s) > 1 else None}})
    g_lon, g_lat = ground_lon_lat_deg(topo)
    for g in range(len(g_lon)):
        node = topo.n_satellites + g
        features.append({"type": "Feature", "id": topo.node_ids[node],
                         "geometry": {"type": "Point",
                                      "coordinates": [float(g_lon[g]), float(g_lat[g])]},
                         "properties": {"kind": KIND_NAMES[topo.kind[node]],
                                        "node": topo.node_ids[node],
                                        "operator": topo.operators[topo.operator[node]]}})
    lon, lat = _node_lon_lat_at(geo, geo.links.start_s)
    lk = geo.links
    for i in range(len(lk.a)):
        a, b = int(lk.a[i]), int(lk.b[i])
        # Where both ends are at the interval's start (links move; GIS wants a snapshot).
        features.append({"type": "Feature", "id": f"link/{topo.node_ids[a]}/{topo.node_ids[b]}/{i}",
                         "geometry": {"type": "LineString",
                                      "coordinates": [[float(lon[a, i]), float(lat[a, i])],
                                                      [float(lon[b, i]), float(lat[b, i])]]},
                         "properties": {"kind": "link", "class": LINK_CLASSES[lk.kind[i]],
                                        "a": topo.node_ids[a], "b": topo.node_ids[b],
                                        "start": _iso(geo.when(lk.start_s[i])),
                                        "end": _iso(geo.when(lk.end_s[i]))}})
    return {"type": "FeatureCollection", "features": features}


def _node_lon_lat_at(geo: Geometry, t_s: FloatArray) -> tuple[FloatArray, FloatArray]:
    """(N, L) lon/lat of every node at each time of ``t_s`` (which are sample times)."""
    idx = np.clip(np.searchsorted(geo.t_s, t_s - 1e-9), 0, len(geo.t_s) - 1)
    g_lon, g_lat = ground_lon_lat_deg(geo.topology)
    lon = np.concatenate([geo.lon_deg[:, idx], np.repeat(g_lon[:, None], len(idx), axis=1)])
    lat = np.concatenate([geo.lat_deg[:, idx], np.repeat(g_lat[:, None], len(idx), axis=1)])
    return lon, lat


def write_csv(geo: Geometry, out: IO[str]) -> int:
    """Rows ``time,t_s,node,kind,lat_deg,lon_deg,alt_km``: satellites per sample, ground once."""
    topo = geo.topology
    w = csv.writer(out, lineterminator="\n")
    w.writerow(("time", "t_s", "node", "kind", "lat_deg", "lon_deg", "alt_km"))
    rows = 0
    g_lon, g_lat = ground_lon_lat_deg(topo)
    g_alt = _ground_alt_km(topo)
    when0 = _iso(geo.when(geo.t_s[0]))
    for g in range(len(g_lon)):
        node = topo.n_satellites + g
        w.writerow((when0, f"{geo.t_s[0]:g}", topo.node_ids[node], KIND_NAMES[topo.kind[node]],
                    f"{g_lat[g]:.6f}", f"{g_lon[g]:.6f}", f"{g_alt[g]:.3f}"))
        rows += 1
    for j, t in enumerate(geo.t_s):
        when = _iso(geo.when(t))
        for s in range(topo.n_satellites):
            w.writerow((when, f"{t:g}", topo.node_ids[s], "satellite", f"{geo.lat_deg[s, j]:.6f}",
                        f"{geo.lon_deg[s, j]:.6f}", f"{geo.alt_km[s, j]:.3f}"))
            rows += 1
    return rows


def write_geometry(geo: Geometry, fmt: str, out: IO[str]) -> None:
    """Write ``geo`` in one of :data:`FORMATS`."""
    if fmt == "czml":
        json.dump(to_czml(geo), out, separators=(",", ":"))
        out.write("\n")
    elif fmt == "geojson":
        json.dump(to_geojson(geo), out, separators=(",", ":"))
        out.write("\n")
    elif fmt == "csv":
        write_csv(geo, out)
    else:
        raise ScenarioError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
