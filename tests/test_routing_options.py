"""Routing options of the reference tools: non-transit ground nodes, GSL range limits, and
``antennas: all``.

Slant ranges and elevations are checked against skyfield, which propagates with the same SGP4
library but does its own frames (TEME -> ITRS with UT1) and topocentric geometry; the two agree to
about 30 m on Starlink shell 1, so a satellite closer than ``fifty_metres`` (or
``a_hundredth_of_a_degree``) to a limit is left out of the comparison.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from skyfield.api import EarthSatellite, load, wgs84

from orbitmesh.core.engine import TickEngine
from orbitmesh.core.geometry import C_KM_S
from orbitmesh.core.links import LinkEngine
from orbitmesh.core.routing import RouteTrees
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import GSL, Topology, build_topology
from orbitmesh.errors import ScenarioError

fifty_metres = 0.05
a_hundredth_of_a_degree = 0.01
TS = load.timescale(builtin=True)

SHELL = """\
name: options
epoch: 2026-01-01T00:00:00Z
duration_s: 600
constellations:
  - name: sl
    operator: op
    walker: {inclination_deg: 53, satellites: 1584, planes: 72, phasing: 1, altitude_km: 550}
    max_gsl: 8
"""

# Traffic from ops toward tokyo: fibre reaches both stations in 1 ms, and Munich is ~1,300 km
# nearer Tokyo than Madrid, so the short way up is through the relay station beside ops.
RELAY = SHELL + """\
stations:
  - {name: relay, operator: op, lat_deg: 48.10, lon_deg: 11.60, antennas: 2, transit: RELAY}
  - {name: madrid, operator: op, lat_deg: 40.40, lon_deg: -3.70, antennas: 2}
  - {name: tokyo, operator: op, lat_deg: 35.70, lon_deg: 139.70, antennas: 2}
ops_centres:
  - {name: ops, operator: op, lat_deg: 48.14, lon_deg: 11.58, stations: [relay, madrid],
     transit: OPS}
links:
  terrestrial: {delay_ms: 1}
"""


def relay_topology(relay: bool, ops: bool = True) -> Topology:
    text = RELAY.replace("RELAY", str(relay).lower()).replace("OPS", str(ops).lower())
    return build_topology(parse_scenario(text, Path("/tmp/relay.yaml")))


def routes_at(topology: Topology, t_s: float = 0.0) -> RouteTrees:
    return TickEngine(topology).step(t_s).routes[None]


def forwards_through(routes: RouteTrees, node: int) -> list[int]:
    """Destinations (other than ``node``) toward which some node forwards to ``node``."""
    return [int(d) for row, d in enumerate(routes.destinations)
            if d != node and np.any(routes.next_hop[row] == node)]


@pytest.mark.parametrize("t_s", [0.0, 300.0])
def test_a_non_transit_station_is_never_an_intermediate_hop(t_s: float) -> None:
    topo = relay_topology(relay=True)
    ops, relay, madrid, tokyo = (topo.node(n) for n in ("ops", "relay", "madrid", "tokyo"))
    through = routes_at(topo, t_s)
    assert through.path(ops, tokyo)[1] == relay  # the shortcut exists and is taken ...

    topo = relay_topology(relay=False)
    assert not topo.transit[relay] and topo.transit[madrid] and topo.transit[ops]
    around = routes_at(topo, t_s)
    assert around.path(ops, tokyo)[1] == madrid  # ... and avoided when relay does not relay
    assert around.one_way_s(ops, tokyo) > through.one_way_s(ops, tokyo)
    assert forwards_through(around, relay) == []
    assert forwards_through(through, relay)  # the check above can fail
    # relay still starts and ends routes, ground-ISL-ground: only satellites in between.
    for path in (around.path(relay, tokyo), around.path(tokyo, relay)):
        assert path and all(u < topo.n_satellites for u in path[1:-1])
    assert around.path(ops, relay) == [ops, relay]


def test_a_non_transit_ops_centre_carries_no_station_to_station_traffic() -> None:
    topo = relay_topology(relay=True)
    ops, relay, madrid = (topo.node(n) for n in ("ops", "relay", "madrid"))
    assert routes_at(topo).path(madrid, relay) == [madrid, ops, relay]  # 2 ms of fibre
    topo = relay_topology(relay=True, ops=False)
    routes = routes_at(topo)
    path = routes.path(madrid, relay)
    assert path and ops not in path and all(u < topo.n_satellites for u in path[1:-1])
    assert forwards_through(routes, ops) == []
    assert routes.path(ops, madrid) == [ops, madrid]  # still an endpoint


def test_non_transit_stations_hold_under_a_policy_and_min_hop() -> None:
    text = RELAY.replace("RELAY", "false").replace("OPS", "true") + """\
routing:
  strategy: min_hop
  policies:
    home: {allowed_operators: [op]}
"""
    topo = build_topology(parse_scenario(text, Path("/tmp/relay.yaml")))
    routes = TickEngine(topo).step(0.0).routes
    assert set(routes) == {None, "home"}
    for trees in routes.values():
        assert forwards_through(trees, topo.node("relay")) == []
        assert trees.path(topo.node("ops"), topo.node("tokyo"))[1] == topo.node("madrid")


def skyfield_look(topology: Topology, station: int, t_s: float,
                  candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(elevation deg, slant range km) of satellites ``candidates`` from a station, by skyfield."""
    g = topology.scenario.stations[station]
    site = wgs84.latlon(g.lat_deg, g.lon_deg, g.alt_m)
    when = TS.from_datetime(topology.scenario.epoch + timedelta(seconds=t_s))
    elevation, range_km = [], []
    for s in candidates.tolist():
        alt, _az, distance = (EarthSatellite.from_satrec(topology.satrecs[s], TS) - site
                              ).at(when).altaz()
        elevation.append(alt.degrees)
        range_km.append(distance.km)
    return np.array(elevation), np.array(range_km)


def gsl_of(state_a: np.ndarray, state_b: np.ndarray, kind: np.ndarray, node: int) -> set[int]:
    return set(state_a[(state_b == node) & (kind == GSL)].tolist())


STATIONS = """\
stations:
  - {name: seattle, operator: op, lat_deg: 47.6, lon_deg: -122.3, min_elevation_deg: 25,
     antennas: all, max_range_km: RANGE}
  - {name: sydney, operator: op, lat_deg: -33.9, lon_deg: 151.2, min_elevation_deg: 10,
     antennas: all}
"""


@pytest.mark.parametrize("t_s", [0.0, 60.0, 450.0])
def test_gsl_range_limit_and_antennas_all_against_skyfield(t_s: float) -> None:
    limit_km = 900.0
    text = SHELL + STATIONS.replace("RANGE", f"{limit_km:g}")
    topo = build_topology(parse_scenario(text, Path("/tmp/range.yaml")))
    engine = LinkEngine(topo)
    state = engine.state_at(t_s)
    pos = engine.positions_ecef_km(t_s)
    cut_somewhere = False
    for gi, g in enumerate(topo.scenario.stations):
        node = topo.n_satellites + gi
        linked = gsl_of(state.a, state.b, state.kind, node)
        # Prefilter generously with our positions; skyfield decides.
        near = np.flatnonzero(np.linalg.norm(pos - topo.stations.positions_ecef_km[gi], axis=1)
                              < 3500.0)
        elevation, range_km = skyfield_look(topo, gi, t_s, near)
        limit = g.max_range_km or np.inf
        clearly_in = (elevation >= g.min_elevation_deg + a_hundredth_of_a_degree) \
            & (range_km <= limit - fifty_metres)
        clearly_out = (elevation < g.min_elevation_deg - a_hundredth_of_a_degree) \
            | (range_km > limit + fifty_metres)
        assert set(near[clearly_in].tolist()) <= linked  # antennas: all takes every one
        assert not linked & set(near[clearly_out].tolist())
        assert linked <= set(near.tolist())  # so every link is in, or within tolerance of it
        assert np.count_nonzero(clearly_in) > 1
        cut_somewhere |= bool(np.any((elevation >= g.min_elevation_deg) & (range_km > limit)))
        # Each GSL's delay is its slant range at light speed.
        on = np.isin(near, sorted(linked))
        for s, want_km in zip(near[on].tolist(), range_km[on].tolist(), strict=True):
            delay_s = state.delay_of(s, node)
            assert delay_s is not None
            assert delay_s * C_KM_S == pytest.approx(want_km, abs=fifty_metres)
    assert cut_somewhere  # the limit removed satellites that the mask alone would keep


def test_without_a_range_limit_the_same_station_links_farther() -> None:
    limited = build_topology(parse_scenario(SHELL + STATIONS.replace("RANGE", "900"),
                                            Path("/tmp/a.yaml")))
    free = build_topology(parse_scenario(SHELL + STATIONS.replace("RANGE", "null"),
                                         Path("/tmp/b.yaml")))
    node = limited.n_satellites
    far = []
    for topo in (limited, free):
        state = LinkEngine(topo).state_at(60.0)
        gsl = (state.b == node) & (state.kind == GSL)
        far.append(float(state.delay_s[gsl].max()) * C_KM_S)
    assert far[0] <= 900.0 < far[1]


def test_antennas_all_with_sticky_handover_tracks_every_visible_satellite() -> None:
    text = SHELL + STATIONS.replace("RANGE", "null")
    topo = build_topology(parse_scenario(text, Path("/tmp/all.yaml")))
    assert topo.station_antennas.tolist() == [1584, 1584]
    engine = LinkEngine(topo)
    mask_sin = np.sin(np.radians(topo.station_mask_deg))
    for t_s in (0.0, 30.0, 60.0, 90.0):
        state = engine.state_at(t_s)
        pos = engine.positions_ecef_km(t_s)
        for gi in range(topo.n_stations):
            rho = pos - topo.stations.positions_ecef_km[gi]
            sin_el = rho @ topo.stations.up[gi] / np.linalg.norm(rho, axis=1)
            visible = set(np.flatnonzero(sin_el >= mask_sin[gi]).tolist())
            assert gsl_of(state.a, state.b, state.kind, topo.n_satellites + gi) == visible
    one = build_topology(parse_scenario(text.replace("antennas: all", "antennas: 1"),
                                        Path("/tmp/one.yaml")))
    state = LinkEngine(one).state_at(0.0)
    assert state.count(GSL) == 2  # the same stations with one antenna each


@pytest.mark.parametrize(("value", "expected"), [
    ("many", "stations[0].antennas: expected a whole number of antennas"),
    ("-1", "stations[0].antennas: expected a whole number of antennas"),
    ("true", "stations[0].antennas: expected a whole number of antennas"),
])
def test_bad_antennas_name_the_line_and_the_choices(value: str, expected: str) -> None:
    text = SHELL + STATIONS.replace("RANGE", "null").replace("antennas: all", f"antennas: {value}",
                                                            1)
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, Path("/tmp/bad.yaml"))
    problems = info.value.problems
    assert any(p.startswith("/tmp/bad.yaml:11: ") and expected in p and "'all'" in p
               for p in problems), problems


@pytest.mark.parametrize(("key", "value"), [("max_range_km", "0"), ("max_range_km", "-5"),
                                            ("transit", "maybe")])
def test_bad_range_or_transit_is_reported_at_its_line(key: str, value: str) -> None:
    text = SHELL + STATIONS.replace("RANGE", "null").replace("max_range_km: null",
                                                            f"{key}: {value}")
    with pytest.raises(ScenarioError) as info:
        parse_scenario(text, Path("/tmp/bad.yaml"))
    assert any(p.startswith(f"/tmp/bad.yaml:11: stations[0].{key}: ")
               for p in info.value.problems), info.value.problems
