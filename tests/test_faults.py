"""Fault plans and the fault overlay, without a broker.

The overlay is checked on small scenarios under tests/data/faults/: which links and nodes each
fault kind removes (against node ids, link classes and an independent great-circle distance),
that routes from :class:`~orbitmesh.core.engine.TickEngine` avoid failed elements and take the
alternative path when there is one, that random faults follow the seed and their MTBF/MTTR, and
that malformed control commands are refused with a reason (also by the controller, which answers
on the control/error topic), and that a worker's runtime drops each frame a failing node holds
exactly once.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nodes.runtime import NodeRuntime
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.faults import (
    NODE_RESTART_DEFAULT_S,
    Fault,
    FaultOverlay,
    active_at,
    down_mask,
    place_fault,
    scheduled_faults,
)
from orbitmesh.core.links import LinkState
from orbitmesh.core.scenario import FaultSpec, load_scenario, parse_scenario
from orbitmesh.core.topology import GSL, ISL, TERRESTRIAL, Topology, build_topology
from orbitmesh.protocol.wire import DATA as DATA_FRAME
from orbitmesh.protocol.wire import new_frame
from tests.faults_support import (
    DATA,
    ONE_KILOMETRE,
    ONE_MICROSECOND_S,
    ONE_NANOSECOND_S,
    ROOT,
    cut_links,
    fault,
    great_circle_km,
    ids,
    links,
    topology_of,
)

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


