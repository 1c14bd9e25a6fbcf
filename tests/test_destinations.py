"""Route trees only toward the destinations a run can address (orbitmesh/core/destinations.py).

The set holds every ground node a scenario's frames can be addressed to; the tables the engine
grows toward it are the full computation's rows, bit for bit; the controller routes toward it by
default; and a frame to a ground node left out is dropped with its own reason, which makes the
run's result not ok, instead of passing for an ordinary ``no_route``.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from nodes.plane import PlaneRuntime
from nodes.runtime import NodeRuntime
from orbitmesh.core.destinations import UNROUTED_DESTINATION, addressable_destinations
from orbitmesh.core.endpoint_spec import Endpoints, IpEndpoint, UdpPipe
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.faults import scheduled_faults
from orbitmesh.core.scenario import Scenario, load_scenario
from orbitmesh.core.topology import Topology, build_topology
from orbitmesh.protocol.state import decode_state
from orbitmesh.protocol.transport import MemoryBroker, MemoryTransport
from orbitmesh.protocol.wire import DATA, Topics, new_frame
from orbitmesh.run.controller import Controller
from orbitmesh.run.launch.local_summary import RunResult
from tests.test_runtime import ALPHA, BRAVO, OPS, PATH, PATH_EDGES, SAT0, links, tiny_topology

SCENARIOS = Path(__file__).resolve().parent.parent / "scenarios"
ALL = ("demo.yaml", "starlink-shell1.yaml", "starlink-gen1.yaml", "sovereignty.yaml")


def _topology(name: str) -> Topology:
    return build_topology(load_scenario(SCENARIOS / name))


def _named(topology: Topology, scenario: Scenario) -> set[int]:
    """Every ground node the scenario names as a frame's end: flows, ops centres, endpoints."""
    index, ground = topology.index, topology.n_satellites
    names = {o.name for o in scenario.ops_centres}
    names |= {n for f in scenario.traffic for n in (f.source, f.destination)}
    names |= {e.node for e in scenario.endpoints.ip}
    names |= {n for p in scenario.endpoints.udp for n in (p.node, p.to)}
    return {index[n] for n in names if index[n] >= ground}


@pytest.mark.parametrize("name", ALL)
def test_the_set_holds_every_flow_end_ops_centre_and_endpoint(name: str) -> None:
    topology = _topology(name)
    chosen = addressable_destinations(topology.scenario, topology)
    assert set(chosen.tolist()) >= _named(topology, topology.scenario)
    assert set(chosen.tolist()) <= set(topology.ground_endpoints.tolist())
    assert np.all(np.diff(chosen) > 0)  # sorted, no repeats
    ops = {topology.index[o.name] for o in topology.scenario.ops_centres}
    assert ops and ops <= set(chosen.tolist())


def test_the_set_is_narrower_than_every_ground_node_on_shell_1() -> None:
    topology = _topology("starlink-shell1.yaml")
    chosen = addressable_destinations(topology.scenario, topology)
    assert chosen.size < topology.ground_endpoints.size


def test_endpoints_put_their_nodes_in_and_mqtt_endpoints_put_every_ground_node_in() -> None:
    topology = _topology("starlink-shell1.yaml")
    stations = [s.name for s in topology.scenario.stations]
    before = set(addressable_destinations(topology.scenario, topology).tolist())
    outside = [s for s in stations if topology.index[s] not in before]
    assert len(outside) >= 3
    ip_udp = topology.scenario.model_copy(update={"endpoints": Endpoints(
        ip=(IpEndpoint(node=outside[0]),),
        udp=(UdpPipe(node=outside[1], listen="127.0.0.1:40001", to=outside[2],
                     deliver="127.0.0.1:40002"),))})
    got = set(addressable_destinations(ip_udp, topology).tolist())
    assert {topology.index[s] for s in outside[:3]} <= got
    mqtt = topology.scenario.model_copy(update={"endpoints": Endpoints(mqtt=(outside[0],))})
    assert (addressable_destinations(mqtt, topology).tolist()
            == topology.ground_endpoints.tolist())


@pytest.mark.parametrize("name", ["demo.yaml", "sovereignty.yaml", "starlink-shell1.yaml"])
def test_narrowed_tables_equal_the_full_tables_rows(name: str) -> None:
    topology = _topology(name)
    scenario = topology.scenario
    policies = sorted({f.policy for f in scenario.traffic if f.policy})
    chosen = addressable_destinations(scenario, topology)
    full = TickEngine(topology, policies=policies)
    narrow = TickEngine(topology, chosen, policies=policies)
    rows = np.searchsorted(full.destinations, chosen)
    assert np.array_equal(full.destinations[rows], chosen)
    faults = scheduled_faults(scenario)
    for k in range(4):  # tick 0 grows afresh, the later ones repair from the tick before
        t_s = k * scenario.tick_s
        active = [f for f in faults if f.active(t_s)]
        a, b = full.step(t_s, active), narrow.step(t_s, active)
        assert a.routes.keys() == b.routes.keys()
        for key, trees in b.routes.items():
            assert np.array_equal(trees.destinations, chosen)
            assert np.array_equal(trees.next_hop, a.routes[key].next_hop[rows])
            assert np.array_equal(trees.distance_s, a.routes[key].distance_s[rows])
        for key, mask in b.blocked.items():
            assert np.array_equal(mask, a.blocked[key][rows])


def test_the_controller_routes_toward_the_set_unless_told_all() -> None:
    topology = _topology("starlink-shell1.yaml")
    transport = MemoryTransport(MemoryBroker(), "c")
    used = Controller(topology, transport, Topics("x"), duration_s=1.0, speed=1.0, out_dir=None)
    chosen = addressable_destinations(topology.scenario, topology)
    assert np.array_equal(used.engine.destinations, chosen)
    state = decode_state(used._step_job(0.0, [], {}).state)
    assert np.array_equal(state.destinations, chosen)
    every = Controller(topology, transport, Topics("x"), duration_s=1.0, speed=1.0,
                       out_dir=None, destinations="all")
    assert np.array_equal(every.engine.destinations, topology.ground_endpoints)
    with pytest.raises(ValueError, match="ground nodes"):
        Controller(topology, transport, Topics("x"), duration_s=1.0, speed=1.0, out_dir=None,
                   destinations=[0])


# --- the workers: a frame to a left-out destination -----------------------------------------

def _narrowed(kind: type[NodeRuntime]) -> NodeRuntime:
    """A runtime of the tiny topology whose state routes toward bravo and ops only (alpha,
    a station, is left out), over the path alpha -> sat0 -> sat1 -> bravo."""
    topology = tiny_topology()
    rt = kind(topology, 0, np.zeros(topology.n_nodes, dtype=np.int64), send=lambda w, p: None,
              speed=1.0, seed=0)
    rt.t0_wall = 0.0
    a, b, kind_, delay_s = links(PATH_EDGES)
    destinations = np.array([BRAVO, OPS], dtype=np.int64)
    table = np.full((2, topology.n_nodes), -1, dtype=np.int32)
    for u, v in itertools.pairwise(PATH):
        table[0, u] = v
    table[0, BRAVO] = BRAVO
    table[1, OPS] = OPS  # ops is in the set but has no link: no route, a real one
    rt.apply_state(0.0, a, b, kind_, delay_s, destinations, {None: table})
    return rt


def _drain(rt: NodeRuntime, now: float) -> None:
    """Run everything due from ``now`` on; then fold the counts in as a worker writes them (the
    batched plane keeps its lanes' counts until then)."""
    rt.run_due(now)  # the batched plane starts the transmits it queued on its first pass
    while rt.next_due is not None:
        rt.run_due(rt.next_due)
    rt.stats.as_dict()


@pytest.mark.parametrize("kind", [NodeRuntime, PlaneRuntime])
def test_a_frame_to_a_left_out_station_is_dropped_by_its_own_reason(
        kind: type[NodeRuntime]) -> None:
    rt = _narrowed(kind)
    rt.originate(BRAVO, new_frame(1, DATA, 0, BRAVO, ALPHA, 100, 1.0), 1.0)  # alpha: left out
    rt.originate(SAT0, new_frame(2, DATA, 0, SAT0, OPS, 100, 1.0), 1.0)  # ops: in, no path
    rt.originate(ALPHA, new_frame(3, DATA, 0, ALPHA, BRAVO, 100, 1.0), 1.0)  # in, routed
    _drain(rt, 1.0)
    flow = rt.stats.flows[0]
    assert flow.offered == 3 and flow.delivered == 1
    assert dict(flow.dropped) == {UNROUTED_DESTINATION: 1, "no_route": 1}


def test_an_unrouted_destination_makes_the_result_not_ok(tmp_path: Path) -> None:
    good = {"conservation_ok": True, "fidelity": {"ok": True}, "unplanned": [],
            "internal_errors": 0, UNROUTED_DESTINATION: 0}
    assert RunResult(tmp_path, good).ok
    assert not RunResult(tmp_path, {**good, UNROUTED_DESTINATION: 1}).ok
