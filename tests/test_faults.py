"""Fault plans and the fault overlay, without a broker.

The overlay is checked on small scenarios under tests/data/faults/: which links and nodes each
fault kind removes (against node ids, link classes and an independent great-circle distance),
that routes from :class:`~orbitmesh.engine.TickEngine` avoid failed elements and take the
alternative path when there is one, that random faults follow the seed and their MTBF/MTTR, and
that malformed control commands are refused with a reason (also by the controller, which answers
on the control/error topic), and that a worker's runtime drops each frame a failing node holds
exactly once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from nodes.runtime import NodeRuntime
from nodes.transport import MemoryBroker, MemoryTransport
from orbitmesh.controller import Controller
from orbitmesh.engine import TickEngine
from orbitmesh.errors import ScenarioError
from orbitmesh.faults import (
    NODE_RESTART_DEFAULT_S,
    CommandError,
    Fault,
    FaultOverlay,
    Overlay,
    active_at,
    down_mask,
    fault_from_command,
    parse_command,
    place_fault,
    random_faults,
    scheduled_faults,
)
from orbitmesh.links import LinkEngine, LinkState
from orbitmesh.scenario import FaultSpec, Scenario, load_scenario, parse_scenario
from orbitmesh.topology import GSL, ISL, TERRESTRIAL, Topology, build_topology
from orbitmesh.wire import DATA as DATA_FRAME
from orbitmesh.wire import Topics, new_frame

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "faults"
ONE_NANOSECOND_S = 1e-9
ONE_MICROSECOND_S = 1e-6
ONE_KILOMETRE = 1.0
MEAN_EARTH_RADIUS_KM = 6371.0


# --- helpers ------------------------------------------------------------------------------------

def topology_of(name: str) -> Topology:
    """Topology of ``tests/data/faults/<name>``."""
    return build_topology(load_scenario(DATA / name))


def fault(topology: Topology, fault_id: str = "x", **spec: Any) -> Fault:
    """A fault in force from t = 0 on."""
    return place_fault(FaultSpec(**spec), topology.scenario, fault_id, "scheduled")


def ids(topology: Topology, nodes: Any) -> set[str]:
    """Node ids of indices, or of a mask."""
    nodes = np.asarray(nodes)
    index = np.flatnonzero(nodes) if nodes.dtype == bool else nodes
    return {topology.node_ids[int(i)] for i in index}


def links(topology: Topology, state: LinkState, kind: int | None = None) -> set[tuple[str, str]]:
    """Links of a state as sorted pairs of node ids (optionally of one class)."""
    keep = np.ones(len(state), dtype=bool) if kind is None else state.kind == kind
    return {tuple(sorted((topology.node_ids[a], topology.node_ids[b])))
            for a, b in zip(state.a[keep].tolist(), state.b[keep].tolist(), strict=True)}


def cut_links(topology: Topology, overlay: Overlay) -> dict[tuple[str, str], str]:
    """What the overlay cut: sorted id pair -> fault id."""
    return {tuple(sorted((topology.node_ids[a], topology.node_ids[b]))): f  # type: ignore[misc]
            for a, b, f in overlay.cut}


def great_circle_km(lat1_deg: float, lon1_deg: float, lat2_deg: float, lon2_deg: float) -> float:
    """Central angle from the dot product of unit vectors (independent of the haversine)."""
    def unit(lat: float, lon: float) -> np.ndarray:
        la, lo = np.radians(lat), np.radians(lon)
        return np.array([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])
    cosine = float(np.clip(unit(lat1_deg, lon1_deg) @ unit(lat2_deg, lon2_deg), -1.0, 1.0))
    return MEAN_EARTH_RADIUS_KM * float(np.arccos(cosine))


@pytest.fixture(scope="module")
def mixed() -> Topology:
    """tests/data/faults/overlay.yaml: two esa planes, acme's ring, four stations, two centres."""
    return topology_of("overlay.yaml")


@pytest.fixture(scope="module")
def mixed_state(mixed: Topology) -> LinkState:
    """The live links of overlay.yaml at its epoch (every link class is present)."""
    state = LinkEngine(mixed).state_at(0.0)
    assert state.count(ISL) > 0 and state.count(GSL) > 0 and state.count(TERRESTRIAL) > 0
    return state


# --- link faults --------------------------------------------------------------------------------

def test_link_down_by_glob_and_class_cuts_exactly_those_links(mixed: Topology,
                                                              mixed_state: LinkState) -> None:
    overlay = FaultOverlay(mixed).apply(
        mixed_state, [fault(mixed, "isl-plane0", kind="link_down", a="eq-00-*", link_class="isl")])
    before = links(mixed, mixed_state)
    expected = {pair for pair in links(mixed, mixed_state, ISL)
                if any(n.startswith("eq-00-") for n in pair)}
    assert len(expected) == 12  # plane 0's ring of 12 in-plane lasers
    assert cut_links(mixed, overlay) == dict.fromkeys(expected, "isl-plane0")
    assert links(mixed, overlay.state) == before - expected
    assert overlay.down_nodes == {}
    assert overlay.degraded == []


def test_link_down_by_class_alone_cuts_every_link_of_that_class(mixed: Topology,
                                                                mixed_state: LinkState) -> None:
    overlay = FaultOverlay(mixed).apply(
        mixed_state, [fault(mixed, "no-gsl", kind="link_down", a="*", link_class="gsl")])
    assert set(cut_links(mixed, overlay)) == links(mixed, mixed_state, GSL)
    assert set(cut_links(mixed, overlay).values()) == {"no-gsl"}
    assert overlay.state.count(GSL) == 0
    assert overlay.state.count(ISL) == mixed_state.count(ISL)
    assert overlay.state.count(TERRESTRIAL) == mixed_state.count(TERRESTRIAL)


def test_link_down_between_two_named_nodes_cuts_one_link(mixed: Topology,
                                                         mixed_state: LinkState) -> None:
    overlay = FaultOverlay(mixed).apply(mixed_state,
                                        [fault(mixed, kind="link_down", a="ops", b="west")])
    assert cut_links(mixed, overlay) == {("ops", "west"): "x"}
    assert len(overlay.state) == len(mixed_state) - 1


def test_link_down_glob_with_character_class_and_wildcard(mixed: Topology,
                                                          mixed_state: LinkState) -> None:
    # eq-01-00 .. eq-01-09 to anything on a GSL: "?" is one character, [1] a class.
    overlay = FaultOverlay(mixed).apply(
        mixed_state, [fault(mixed, kind="link_down", a="eq-0[1]-0?", link_class="gsl")])
    wanted = {f"eq-01-0{k}" for k in range(10)}
    expected = {p for p in links(mixed, mixed_state, GSL) if wanted & set(p)}
    assert expected  # some of those satellites are over a station at the epoch
    assert set(cut_links(mixed, overlay)) == expected


def test_link_down_matching_nothing_cuts_nothing(mixed: Topology,
                                                 mixed_state: LinkState) -> None:
    nothing = fault(mixed, kind="link_down", a="north", link_class="isl")
    overlay = FaultOverlay(mixed).apply(mixed_state, [nothing])
    assert overlay.cut == []
    assert links(mixed, overlay.state) == links(mixed, mixed_state)


def test_link_degrade_adds_delay_and_lists_the_degradation(mixed: Topology,
                                                          mixed_state: LinkState) -> None:
    slow = fault(mixed, "slow", kind="link_degrade", a="west", extra_delay_ms=50.0,
                 extra_loss=0.25, rate_cap_bps=1e6)
    overlay = FaultOverlay(mixed).apply(mixed_state, [slow])
    west = mixed.node("west")
    touches = (mixed_state.a == west) | (mixed_state.b == west)
    assert touches.sum() >= 2  # its fibre to ops plus its GSLs
    assert overlay.cut == []
    np.testing.assert_allclose(overlay.state.delay_s[touches],
                               mixed_state.delay_s[touches] + 0.050, atol=ONE_NANOSECOND_S)
    np.testing.assert_array_equal(overlay.state.delay_s[~touches], mixed_state.delay_s[~touches])
    expected = {(int(a), int(b)) for a, b in zip(mixed_state.a[touches], mixed_state.b[touches],
                                                 strict=True)}
    assert {(d[0], d[1]) for d in overlay.degraded} == expected
    for _a, _b, extra_loss, extra_delay_s, cap_bps, fault_id in overlay.degraded:
        assert (extra_loss, cap_bps, fault_id) == (0.25, 1e6, "slow")
        assert extra_delay_s == pytest.approx(0.050, abs=ONE_NANOSECOND_S)


def test_a_link_both_cut_and_degraded_is_only_listed_as_cut(mixed: Topology,
                                                           mixed_state: LinkState) -> None:
    overlay = FaultOverlay(mixed).apply(mixed_state, [
        fault(mixed, "slow", kind="link_degrade", a="ops", extra_delay_ms=10.0),
        fault(mixed, "cut", kind="link_down", a="ops", b="west")])
    assert cut_links(mixed, overlay) == {("ops", "west"): "cut"}
    degraded = {tuple(sorted((mixed.node_ids[d[0]], mixed.node_ids[d[1]])))
                for d in overlay.degraded}
    assert ("ops", "west") not in degraded
    assert degraded == {("east", "ops"), ("north", "ops")}


def test_two_faults_on_one_link_blame_the_first(mixed: Topology,
                                                mixed_state: LinkState) -> None:
    overlay = FaultOverlay(mixed).apply(mixed_state, [
        fault(mixed, "first", kind="link_down", a="ops", b="west"),
        fault(mixed, "second", kind="link_down", a="west", link_class="terrestrial")])
    assert cut_links(mixed, overlay) == {("ops", "west"): "first"}


# --- node faults --------------------------------------------------------------------------------

def test_node_down_glob_takes_down_exactly_the_matching_nodes(mixed: Topology,
                                                             mixed_state: LinkState) -> None:
    down = fault(mixed, "plane1-nodes", kind="node_down", node="eq-01-*")
    overlay = FaultOverlay(mixed).apply(mixed_state, [down])
    expected = {f"eq-01-{k:02d}" for k in range(12)}
    assert ids(mixed, list(overlay.down_nodes)) == expected
    assert set(overlay.down_nodes.values()) == {"plane1-nodes"}
    assert ids(mixed, down_mask(overlay, mixed.n_nodes)) == expected
    # Every live link with a failed end is cut and blamed on the fault; no other link is.
    touching = {p for p in links(mixed, mixed_state) if expected & set(p)}
    assert cut_links(mixed, overlay) == dict.fromkeys(touching, "plane1-nodes")
    assert links(mixed, overlay.state) == links(mixed, mixed_state) - touching


def test_node_restart_is_a_node_down_for_five_seconds_by_default(mixed: Topology) -> None:
    restart = place_fault(FaultSpec(kind="node_restart", node="west", at_s=7.0), mixed.scenario,
                          "r", "live")
    assert (restart.start_s, restart.end_s) == (7.0, 7.0 + NODE_RESTART_DEFAULT_S)
    assert NODE_RESTART_DEFAULT_S == 5.0  # docs/scenarios.md: "node_restart: 5 s"
    assert ids(mixed, FaultOverlay(mixed).nodes_of(restart)) == {"west"}
    assert [f.id for f in active_at([restart], 6.99)] == []
    assert [f.id for f in active_at([restart], 7.0)] == ["r"]
    assert [f.id for f in active_at([restart], 11.99)] == ["r"]
    assert [f.id for f in active_at([restart], 12.0)] == []


def test_station_outage_takes_down_the_station_and_all_its_links(mixed: Topology,
                                                                 mixed_state: LinkState) -> None:
    overlay = FaultOverlay(mixed).apply(mixed_state,
                                        [fault(mixed, "gs", kind="station_outage", station="east")])
    assert ids(mixed, list(overlay.down_nodes)) == {"east"}
    assert set(cut_links(mixed, overlay)) == {p for p in links(mixed, mixed_state) if "east" in p}
    assert not any("east" in p for p in links(mixed, overlay.state))


@pytest.mark.parametrize(("lat_deg", "lon_deg", "radius_km"), [
    (0.0, 0.0, 100.0),      # west only
    (0.0, 12.5, 1500.0),    # west and acme-gs (~1,390 km either side), not east
    (20.0, 0.0, 2300.0),    # west and north (~2,224 km each)
    (0.0, 25.0, 2790.0),    # all three on the equator (2,780 km to west and east)
    (-60.0, 180.0, 500.0),  # nothing
])
def test_region_outage_takes_down_the_stations_within_the_radius(
        mixed: Topology, lat_deg: float, lon_deg: float, radius_km: float) -> None:
    region = fault(mixed, kind="region_outage", lat_deg=lat_deg, lon_deg=lon_deg,
                   radius_km=radius_km)
    expected = {g.name for g in mixed.scenario.stations
                if great_circle_km(lat_deg, lon_deg, g.lat_deg, g.lon_deg) <= radius_km}
    got = ids(mixed, FaultOverlay(mixed).nodes_of(region))
    assert got == expected
    # No station sits within a kilometre of the edge, so the two distance formulas agree.
    for g in mixed.scenario.stations:
        assert abs(great_circle_km(lat_deg, lon_deg, g.lat_deg, g.lon_deg) - radius_km) \
            > ONE_KILOMETRE


def test_region_outage_takes_stations_only_not_operations_centres(mixed: Topology) -> None:
    # ops sits 79 km from west: inside the region, but docs/scenarios.md says "every station".
    region = fault(mixed, kind="region_outage", lat_deg=0.0, lon_deg=0.0, radius_km=300.0)
    assert ids(mixed, FaultOverlay(mixed).nodes_of(region)) == {"west"}


@pytest.mark.parametrize(("constellation", "plane", "prefix", "count"), [
    ("eq", 0, "eq-00-", 12), ("eq", 1, "eq-01-", 12), ("rent", 0, "rent-00-", 24),
    ("eq", 2, "", 0),
])
def test_plane_outage_takes_down_the_satellites_of_that_plane(
        mixed: Topology, constellation: str, plane: int, prefix: str, count: int) -> None:
    outage = fault(mixed, kind="plane_outage", constellation=constellation, plane=plane)
    got = ids(mixed, FaultOverlay(mixed).nodes_of(outage))
    assert len(got) == count
    assert all(n.startswith(prefix) for n in got)


def test_operator_withdrawal_takes_down_everything_the_operator_runs(
        mixed: Topology, mixed_state: LinkState) -> None:
    withdrawal = fault(mixed, "acme-out", kind="operator_withdrawal", operator="acme")
    expected = {f"rent-00-{k:02d}" for k in range(24)} | {"acme-gs", "acme-ops"}
    assert ids(mixed, FaultOverlay(mixed).nodes_of(withdrawal)) == expected
    overlay = FaultOverlay(mixed).apply(mixed_state, [withdrawal])
    left = {n for p in links(mixed, overlay.state) for n in p}
    assert not left & expected
    assert left  # esa's network is still there


def test_process_faults_do_not_touch_the_graph(mixed: Topology, mixed_state: LinkState) -> None:
    process = [fault(mixed, "k", kind="worker_kill", worker=1),
               fault(mixed, "b", kind="broker_outage", for_s=3.0)]
    assert active_at(process, 1.0) == []
    overlay = FaultOverlay(mixed).apply(mixed_state, process)
    assert overlay.cut == [] and overlay.down_nodes == {}
    assert links(mixed, overlay.state) == links(mixed, mixed_state)


def test_extra_down_nodes_are_cut_and_blamed_like_faults(mixed: Topology,
                                                        mixed_state: LinkState) -> None:
    west = mixed.node("west")
    overlay = FaultOverlay(mixed).apply(mixed_state, [], extra_down={west: "kill"})
    assert overlay.down_nodes == {west: "kill"}
    assert set(cut_links(mixed, overlay)) == {p for p in links(mixed, mixed_state) if "west" in p}


# --- routes avoid failed elements (TickEngine) -------------------------------------------------

def route(topology: Topology, src: str, dst: str, t_s: float, faults: list[Fault],
          policy: str | None = None) -> tuple[list[str], float]:
    """Path and its summed link delay (s) from a fresh engine at ``t_s`` with ``faults``."""
    s, d = topology.node(src), topology.node(dst)
    engine = TickEngine(topology, destinations=[d], policies=[policy] if policy else [])
    engine.warm_up(t_s)
    tick = engine.step(t_s, active_at(faults, t_s))
    hops = tick.routes[policy].path(s, d)
    delay = sum(tick.state.delay_of(a, b) or np.nan for a, b in itertools.pairwise(hops))
    return [topology.node_ids[i] for i in hops], float(delay)


def test_link_down_reroutes_over_the_longer_fibre_path() -> None:
    topo = topology_of("detour.yaml")
    cut = scheduled_faults(topo.scenario)
    before, short_s = route(topo, "tokyo", "perth", 2.0, cut)
    during, long_s = route(topo, "tokyo", "perth", 5.0, cut)
    after, _ = route(topo, "tokyo", "perth", 11.0, cut)
    assert before == after == ["tokyo", "singapore", "perth"]
    assert during == ["tokyo", "darmstadt", "perth"]
    assert 0.040 < short_s < 0.055 and 0.100 < long_s < 0.130  # fibre: 1.5 x great circle / c


def test_link_down_on_the_only_path_leaves_no_route() -> None:
    topo = topology_of("chain.yaml")
    cut = scheduled_faults(topo.scenario)
    assert route(topo, "tokyo", "perth", 5.0, cut)[0] == []
    assert route(topo, "tokyo", "perth", 1.0, cut)[0] == ["tokyo", "darmstadt", "perth"]


def test_link_degrade_delay_counts_in_route_choice() -> None:
    topo = topology_of("detour.yaml")
    _, short_s = route(topo, "tokyo", "perth", 0.0, [])
    # +50 ms on the short path still beats the long one; +100 ms does not.
    for extra_ms, via in ((50.0, "singapore"), (100.0, "darmstadt")):
        slow = fault(topo, kind="link_degrade", a="tokyo", b="singapore", extra_delay_ms=extra_ms)
        path, delay_s = route(topo, "tokyo", "perth", 0.0, [slow])
        assert path[1] == via
        if via == "singapore":
            assert delay_s == pytest.approx(short_s + extra_ms / 1000.0, abs=ONE_MICROSECOND_S)


def test_node_down_of_the_relay_leaves_no_route() -> None:
    topo = topology_of("chain.yaml")
    down = fault(topo, kind="node_down", node="darmstadt")
    assert route(topo, "tokyo", "perth", 0.0, [down])[0] == []


def test_station_and_region_outages_reroute_over_other_relays() -> None:
    topo = topology_of("relays.yaml")
    planned = scheduled_faults(topo.scenario)
    assert route(topo, "paris", "warsaw", 1.0, planned)[0] == ["paris", "frankfurt", "warsaw"]
    assert route(topo, "paris", "warsaw", 4.0, planned)[0] == ["paris", "brussels", "warsaw"]
    assert route(topo, "paris", "warsaw", 10.0, planned)[0] == ["paris", "madrid", "warsaw"]
    assert route(topo, "paris", "warsaw", 14.0, planned)[0] == ["paris", "frankfurt", "warsaw"]


def test_plane_outage_reroutes_over_the_other_plane() -> None:
    topo = topology_of("planes.yaml")
    planned = scheduled_faults(topo.scenario)
    before, _ = route(topo, "west", "east", 2.0, planned)
    during, _ = route(topo, "west", "east", 6.0, planned)
    assert any(n.startswith("eq-01-") for n in before)  # the fault hits the path in use
    assert during and not any(n.startswith("eq-01-") for n in during)
    assert any(n.startswith("eq-00-") for n in during)


def test_operator_withdrawal_moves_open_traffic_onto_the_remaining_operator() -> None:
    topo = topology_of("withdrawal.yaml")
    planned = scheduled_faults(topo.scenario)
    before, before_s = route(topo, "west", "east", 2.0, planned)
    during, during_s = route(topo, "west", "east", 6.0, planned)
    sovereign, sovereign_s = route(topo, "west", "east", 6.0, planned, policy="sovereign")
    assert any(n.startswith("rent-") for n in before)  # acme's lower ring is shorter ...
    assert during and not any(n.startswith("rent-") for n in during)
    assert before_s < during_s  # ... and gone, so open traffic takes esa's ring
    assert (during, during_s) == (sovereign, sovereign_s)


def test_sovereignty_scenario_open_path_crosses_foreignco_until_it_withdraws() -> None:
    scenario = load_scenario(ROOT / "scenarios" / "sovereignty.yaml")
    topo = build_topology(scenario)
    planned = scheduled_faults(scenario)
    assert [(f.spec.kind, f.spec.operator, f.start_s) for f in planned] == [
        ("operator_withdrawal", "foreignco", 60.0)]

    def operators(path: list[str]) -> set[str]:
        return {topo.operators[int(topo.operator[topo.node(n)])] for n in path}

    open_before, open_before_s = route(topo, "tokyo", "brussels", 30.0, planned)
    sovereign_before, sovereign_s = route(topo, "tokyo", "brussels", 30.0, planned, "sovereign")
    open_after, _ = route(topo, "tokyo", "brussels", 90.0, planned)
    sovereign_after, _ = route(topo, "tokyo", "brussels", 90.0, planned, "sovereign")
    assert any(n.startswith("fc-") and n[3:5].isdigit() for n in open_before)  # its satellites
    assert "foreignco" in operators(open_before)
    assert operators(sovereign_before) == operators(sovereign_after) == {"jaxa", "esa"}
    assert open_before_s < sovereign_s  # the foreign shell is why the open flow uses it
    assert open_after and "foreignco" not in operators(open_after)


def test_a_station_repoints_its_antenna_when_its_satellite_fails() -> None:
    path = DATA / "withdrawal.yaml"
    text = path.read_text().replace("lon_deg: 0.0, min_elevation_deg: 10, antennas: 8",
                                    "lon_deg: 0.0, min_elevation_deg: 10, antennas: 1")
    topo = build_topology(parse_scenario(text, path))
    assert int(topo.station_antennas[0]) == 1
    before, _ = route(topo, "west", "east", 2.0, [])
    tracked = before[1]  # west's only antenna points at this satellite
    down = place_fault(FaultSpec(kind="node_down", node=tracked, at_s=3.0), topo.scenario, "d",
                       "scheduled")
    during, _ = route(topo, "west", "east", 4.0, [down])
    assert during and tracked not in during


# --- the worker runtime when a node fails -------------------------------------------------------

def test_frames_held_by_a_failing_node_are_dropped_once() -> None:
    topo = topology_of("detour.yaml")
    tokyo, singapore, perth = (topo.node(n) for n in ("tokyo", "singapore", "perth"))
    rt = NodeRuntime(topo, 0, np.zeros(topo.n_nodes, dtype=np.int64), send=lambda w, p: None,
                     speed=1.0, seed=0)
    engine = TickEngine(topo)

    def apply(t_s: float, faults: list[Fault], now: float) -> None:
        tick = engine.step(t_s, faults)
        routes = tick.routes[None]
        overlay = tick.overlay
        rt.apply_state(t_s, tick.state.a, tick.state.b, tick.state.kind, tick.state.delay_s,
                       routes.destinations, {None: routes.next_hop}, now=now,
                       down=overlay.down_nodes if overlay else {},
                       cut={(a, b): f for a, b, f in overlay.cut} if overlay else {})

    apply(0.0, [], now=0.0)
    # One frame on tokyo -> singapore (~27 ms), one on singapore -> perth (~20 ms).
    rt.originate(tokyo, new_frame(1, DATA_FRAME, 0, tokyo, perth, 1250, 0.0), 0.0)
    rt.originate(singapore, new_frame(2, DATA_FRAME, 0, singapore, perth, 1250, 0.0), 0.0)
    assert rt.stats.in_flight == 2
    down = fault(topo, "sg-down", kind="node_down", node="singapore")
    rt.call_at(0.010, lambda now: apply(1.0, [down], now))  # singapore fails at 10 ms
    rt.run_due(0.050)  # woken late: both frames were due before now
    rt.run_due(1.000)
    flow = rt.stats.flows[0]
    assert (flow.offered, flow.delivered, sum(flow.dropped.values())) == (2, 0, 2)
    assert dict(rt.stats.fault_drops["sg-down"]) == {0: 2}
    assert rt.stats.in_flight == 0


# --- scheduled and random fault timelines ------------------------------------------------------

def test_scheduled_faults_get_ids_and_times(mixed: Topology) -> None:
    text = (DATA / "overlay.yaml").read_text() + (
        "faults:\n"
        "  - {kind: link_down, a: west, at_s: 3, for_s: 2}\n"
        "  - {kind: node_down, node: east, id: east-down, at: 2026-01-01T00:00:10Z}\n"
        "  - {kind: station_outage, station: west}\n")
    scenario = parse_scenario(text, DATA / "overlay.yaml")
    planned = scheduled_faults(scenario)
    assert [(f.id, f.start_s, f.end_s, f.origin) for f in planned] == [
        ("f1", 3.0, 5.0, "scheduled"), ("east-down", 10.0, None, "scheduled"),
        ("f3", 0.0, None, "scheduled")]
    assert planned[0].describe() == {"id": "f1", "kind": "link_down", "target": {"a": "west"},
                                     "start_s": 3.0, "end_s": 5.0, "origin": "scheduled"}


@pytest.mark.parametrize(("entry", "complaint"), [
    ("{kind: station_outage, station: nowhere}", "unknown station 'nowhere'"),
    ("{kind: plane_outage, constellation: nope, plane: 0}", "unknown constellation 'nope'"),
    ("{kind: operator_withdrawal, operator: nobody}", "unknown operator 'nobody'"),
    ("{kind: link_down}", "a link_down fault needs a"),
    ("{kind: region_outage, lat_deg: 1, lon_deg: 2}", "needs radius_km"),
    ("{kind: node_down, node: west, at_s: 1, at: 2026-01-01T00:00:01Z}", "either at_s or at"),
    ("{kind: node_down, node: west, at: 2025-01-01T00:00:00Z}", "before the scenario epoch"),
    ("{kind: node_down, node: west, colour: red}", "unknown key"),
])
def test_bad_scheduled_faults_are_scenario_errors(entry: str, complaint: str) -> None:
    text = (DATA / "overlay.yaml").read_text() + f"faults:\n  - {entry}\n"
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, DATA / "overlay.yaml")
    assert complaint in str(err.value) + " ".join(err.value.problems)


def test_duplicate_fault_ids_are_refused() -> None:
    text = (DATA / "overlay.yaml").read_text() + (
        "faults:\n  - {kind: node_down, node: west, id: same}\n"
        "  - {kind: node_down, node: east, id: same}\n")
    with pytest.raises(ScenarioError) as err:
        parse_scenario(text, DATA / "overlay.yaml")
    assert "already used" in str(err.value) + " ".join(err.value.problems)


def with_random(topology: Topology, seed: int, **rates: dict[str, float]) -> Topology:
    """The topology with ``random_faults`` rates and a seed swapped into its scenario."""
    scenario = Scenario.model_validate({**topology.scenario.model_dump(), "seed": seed,
                                        "random_faults": rates})
    return dataclasses.replace(topology, scenario=scenario)


def timeline(faults: list[Fault]) -> list[tuple[str, str, str, float, float | None]]:
    """What a fault timeline is made of, comparable across runs."""
    return [(f.id, f.spec.kind, json.dumps(f.describe()["target"], sort_keys=True), f.start_s,
             f.end_s) for f in faults]


RATES: dict[str, dict[str, float]] = {
    "isl": {"mtbf_s": 600.0, "mttr_s": 60.0}, "gsl": {"mtbf_s": 900.0, "mttr_s": 30.0},
    "terrestrial": {"mtbf_s": 1200.0, "mttr_s": 120.0},
    "satellite": {"mtbf_s": 3000.0, "mttr_s": 300.0},
    "station": {"mtbf_s": 2000.0, "mttr_s": 100.0},
    "ops_centre": {"mtbf_s": 5000.0, "mttr_s": 500.0}}


def test_random_faults_same_seed_same_timeline(mixed: Topology) -> None:
    first = random_faults(with_random(mixed, 7, **RATES), 3600.0)
    again = random_faults(with_random(mixed, 7, **RATES), 3600.0)
    other = random_faults(with_random(mixed, 8, **RATES), 3600.0)
    assert len(first) > 50
    assert timeline(first) == timeline(again)
    assert timeline(first) != timeline(other)
    assert {f.origin for f in first} == {"random"}
    assert len({f.id for f in first}) == len(first)
    assert [f.start_s for f in first] == sorted(f.start_s for f in first)
    assert random_faults(mixed, 3600.0) == []  # none configured


def test_random_faults_target_every_element_class(mixed: Topology) -> None:
    faults = random_faults(with_random(mixed, 3, **RATES), 20_000.0)
    kinds = Counter((f.spec.kind, f.spec.link_class, mixed.kind[mixed.node(
        f.spec.node or f.spec.a or "")]) for f in faults)
    assert {k[:2] for k in kinds} == {("link_down", "isl"), ("link_down", "gsl"),
                                      ("link_down", "terrestrial"), ("node_down", None)}
    for f in faults:
        if f.spec.link_class == "gsl":  # all GSLs of one station
            assert f.spec.b is None and f.spec.a in {g.name for g in mixed.scenario.stations}
        elif f.spec.link_class in ("isl", "terrestrial"):
            assert f.spec.b is not None
        assert f.end_s is not None and f.spec.for_s == pytest.approx(f.end_s - f.start_s)
    down = {f.spec.node for f in faults if f.spec.kind == "node_down"}
    assert down == set(mixed.node_ids)  # over 20,000 s every node fails at least once


def test_random_faults_follow_mtbf_and_mttr(mixed: Topology) -> None:
    mtbf_s, mttr_s, duration_s = 200.0, 50.0, 100_000.0
    faults = random_faults(with_random(mixed, 11, isl={"mtbf_s": mtbf_s, "mttr_s": mttr_s}),
                           duration_s)
    per_link: dict[tuple[str | None, str | None], list[Fault]] = {}
    for f in faults:
        per_link.setdefault((f.spec.a, f.spec.b), []).append(f)
    assert len(per_link) == len(mixed.isl_pairs)  # every +Grid candidate, live or not
    ups, repairs = [], []
    for history in per_link.values():
        history.sort(key=lambda f: f.start_s)
        ups.append(history[0].start_s)
        for prev, nxt in itertools.pairwise(history):
            assert prev.end_s is not None and prev.end_s <= nxt.start_s  # one failure at a time
            ups.append(nxt.start_s - prev.end_s)
        repairs += [f.end_s - f.start_s for f in history if f.end_s is not None]
    # ~24,000 draws of each: the sample means are within 2% (1 sigma ~0.65%).
    assert len(repairs) > 20_000
    assert np.mean(ups) == pytest.approx(mtbf_s, rel=0.02)
    assert np.mean(repairs) == pytest.approx(mttr_s, rel=0.02)
    # Exponential: the standard deviation equals the mean.
    assert np.std(repairs) == pytest.approx(mttr_s, rel=0.05)
    expected_count = len(per_link) * duration_s / (mtbf_s + mttr_s)
    assert len(faults) == pytest.approx(expected_count, rel=0.03)


def test_random_isl_faults_do_not_depend_on_other_classes(mixed: Topology) -> None:
    isl_only = random_faults(with_random(mixed, 5, isl=RATES["isl"]), 3600.0)
    everything = random_faults(with_random(mixed, 5, **RATES), 3600.0)
    def isl(faults: list[Fault]) -> list[tuple[str, float, float | None]]:
        return [(json.dumps(f.describe()["target"]), f.start_s, f.end_s) for f in faults
                if f.spec.link_class == "isl"]
    assert isl(isl_only) == isl(everything)


# --- control commands ---------------------------------------------------------------------------

@pytest.mark.parametrize(("payload", "reason"), [
    (b"link_down tokyo", "not JSON"),
    (b"\xff\xfe{", "not JSON"),
    (b"[1, 2]", 'expected a JSON object with a "cmd" key'),
    (b'{"kind": "link_down"}', 'expected a JSON object with a "cmd" key'),
    (b'{"cmd": 3}', 'expected a JSON object with a "cmd" key'),
    (b'{"cmd": "faul"}', "unknown cmd 'faul'"),
])
def test_parse_command_refuses_with_a_reason(payload: bytes, reason: str) -> None:
    with pytest.raises(CommandError) as err:
        parse_command(payload)
    assert reason in str(err.value)


@pytest.mark.parametrize("cmd", ["fault", "clear", "list", "finish", "stop_traffic"])
def test_parse_command_accepts_the_documented_commands(cmd: str) -> None:
    assert parse_command(json.dumps({"cmd": cmd}).encode())["cmd"] == cmd


@pytest.mark.parametrize(("command", "reasons"), [
    ({"kind": "link_cut", "a": "west"}, ["kind: Input should be 'link_down'", "'plane_outage'"]),
    ({"kind": "link_down"}, ["a link_down fault needs a"]),
    ({"kind": "region_outage", "lat_deg": 1.0}, ["needs lon_deg, radius_km"]),
    ({"kind": "plane_outage", "constellation": "eq"}, ["needs plane"]),
    ({"kind": "node_down", "node": "west", "colour": "red"}, ["colour", "Extra inputs"]),
    ({"kind": "node_down", "node": "west", "for_s": -1}, ["for_s", "greater than 0"]),
    ({"kind": "link_degrade", "a": "west", "extra_loss": 2}, ["extra_loss"]),
    ({}, ["kind", "Field required"]),
])
def test_fault_from_command_refuses_with_a_reason(mixed: Topology, command: dict[str, Any],
                                                  reasons: list[str]) -> None:
    with pytest.raises(CommandError) as err:
        fault_from_command({"cmd": "fault", **command}, mixed.scenario, "live1", 0.0)
    message = str(err.value)
    assert message.startswith("invalid fault: ")
    for reason in reasons:
        assert reason in message


def test_fault_from_command_starts_now_or_at_at_s(mixed: Topology) -> None:
    now = fault_from_command({"cmd": "fault", "kind": "node_down", "node": "west", "for_s": 4},
                             mixed.scenario, "live1", 12.5)
    assert (now.id, now.start_s, now.end_s, now.origin) == ("live1", 12.5, 16.5, "live")
    later = fault_from_command({"cmd": "fault", "kind": "node_down", "node": "west",
                                "at_s": 20, "id": "mine"}, mixed.scenario, "live2", 12.5)
    assert (later.id, later.start_s, later.end_s) == ("mine", 20.0, None)


# --- the controller's control topic (in-memory transport) --------------------------------------

async def control_replies(topology: Topology, payloads: list[bytes]
                          ) -> tuple[Controller, list[dict[str, Any]]]:
    """Feed payloads to a controller's control handler; collect what it answers on control/error."""
    bus = MemoryBroker()
    topics = Topics("unit")
    async with MemoryTransport(bus, "controller") as transport, \
            MemoryTransport(bus, "client") as client:
        await client.subscribe(topics.control_error)
        controller = Controller(topology, transport, topics, duration_s=60.0, speed=1.0,
                                out_dir=None)
        for payload in payloads:
            controller.handle_control(payload)
        replies: list[dict[str, Any]] = []
        if controller.control_errors:
            async with asyncio.timeout(1.0):
                async for batch in client.batches():
                    replies += [json.loads(m.payload) for m in batch]
                    if len(replies) >= controller.control_errors:
                        break
    return controller, replies


async def test_controller_answers_and_counts_bad_commands(mixed: Topology) -> None:
    controller, replies = await control_replies(mixed, [
        b"nonsense",
        b'{"cmd": "fault", "kind": "link_down"}',
        b'{"cmd": "fault", "kind": "node_down", "node": "west", "id": "w"}',
        b'{"cmd": "fault", "kind": "node_down", "node": "east", "id": "w"}',
        b'{"cmd": "fault", "kind": "station_outage", "station": "atlantis"}',
        b'{"cmd": "fault", "kind": "link_down", "a": "west", "b": "mars"}',
        b'{"cmd": "fault", "kind": "plane_outage", "constellation": "eq", "plane": 9}',
        b'{"cmd": "clear", "id": "nope"}',
        b'{"cmd": "clear", "id": "w"}',
    ])
    assert controller.control_errors == 7
    assert [r["errors_so_far"] for r in replies] == list(range(1, 8))
    assert [r["error"].split(":")[0] for r in replies] == [
        "not JSON", "invalid fault", "fault id 'w' is already in use", "station_outage",
        "link_down", "plane_outage", "no active fault with id 'nope'; active"]
    assert "matches no node" in replies[3]["error"]
    assert replies[0]["command"] == "nonsense"
    # The good command went in (origin live) and was cleared at t = 0, its end now.
    assert [(f.id, f.origin, f.end_s) for f in controller.faults] == [("w", "live", 0.0)]


async def test_controller_answers_a_withdrawal_of_an_unknown_operator(mixed: Topology) -> None:
    controller, replies = await control_replies(
        mixed, [b'{"cmd": "fault", "kind": "operator_withdrawal", "operator": "nobody"}'])
    assert controller.control_errors == 1
    assert "nobody" in replies[0]["error"]
