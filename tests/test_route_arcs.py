"""Parent arcs carried from one tick's repair to the next: the map between two ticks' CSR arcs is
exact, carried (or stale, or garbage) arcs change the speed never the answer, and every arc handed
on joins a node to its parent in the graph it indexes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orbitmesh.core import _sssp
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.route_trees import _arcs_of
from orbitmesh.core.routing import LinkGraph, compute_routes
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import build_topology
from tests.test_links import SHELL1
from tests.test_route_hints import next_tick
from tests.test_routing import KINDS, awkward_graph, check_trees

pytestmark = pytest.mark.skipif(not _sssp.HAVE_NUMBA, reason="numba is not installed")


def arcs_join_parents(graph: LinkGraph, sources: np.ndarray, pred: np.ndarray,
                      arcs: np.ndarray) -> None:
    """Each node's arc is the arc node -> parent of ``graph``'s CSR; -1 at sources and unreached."""
    indptr, indices, _ = graph._csr_arrays()
    rows, nodes = np.nonzero(np.ones(pred.shape, bool))
    parent = pred[rows, nodes]
    root = nodes == sources[rows]
    assert np.all(arcs[rows[root | (parent < 0)], nodes[root | (parent < 0)]] == -1)
    has = ~root & (parent >= 0)
    arc = arcs[rows[has], nodes[has]]
    assert np.all((arc >= indptr[nodes[has]]) & (arc < indptr[nodes[has] + 1])), "arc not in row"
    assert np.array_equal(indices[arc], parent[has]), "arc leads elsewhere than the parent"


def test_arc_map_finds_each_old_arc_in_the_new_graph() -> None:
    from orbitmesh.core._repair_kernel import arc_map

    rng = np.random.default_rng(11)
    for kind in KINDS:
        before = awkward_graph(rng, kind)
        after = next_tick(rng, before)
        old_ptr, old_idx, _ = before._csr_arrays()
        new_ptr, new_idx, _ = after._csr_arrays()
        where = {(r, int(new_idx[j])): j for r in range(after.n_nodes)
                 for j in range(new_ptr[r], new_ptr[r + 1])}
        want = np.array([where.get((r, int(old_idx[i])), -1) for r in range(before.n_nodes)
                         for i in range(old_ptr[r], old_ptr[r + 1])], dtype=np.int32)
        got = arc_map(old_ptr, old_idx, new_ptr, new_idx)
        np.testing.assert_array_equal(got, want)
        assert (got < 0).any() and (got >= 0).any()  # some links went, some stayed


@pytest.mark.parametrize("kind", KINDS)
def test_carried_arcs_change_the_speed_never_the_answer(kind: str) -> None:
    from orbitmesh.core._repair_kernel import arc_map

    rng = np.random.default_rng(73 + len(kind))
    graph = awkward_graph(rng, kind)
    sources = rng.choice(graph.n_nodes, size=int(rng.integers(2, 20)), replace=False)
    pred, _ = _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="numba")
    arcs = np.empty(pred.shape, dtype=np.int32)
    old_arc = None  # the first repair searches for its arcs, later ones carry them
    for _ in range(4):
        after = next_tick(rng, graph)
        _, want = _sssp.shortest_path_trees(*after._csr_arrays(), sources, backend="scipy")
        if old_arc is not None:
            old_arc = arc_map(*graph._csr_arrays()[:2], *after._csr_arrays()[:2])
        pred, dist = _sssp.shortest_path_trees(*after._csr_arrays(), sources, backend="numba",
                                               hints=pred, arcs=arcs, old_arc=old_arc)
        np.testing.assert_array_equal(dist, want)
        check_trees(after, sources, pred, dist)
        arcs_join_parents(after, sources, pred, arcs)
        graph, old_arc = after, np.empty(0, np.int32)
    after = next_tick(rng, graph)
    _, want = _sssp.shortest_path_trees(*after._csr_arrays(), sources, backend="scipy")
    n_arcs = after._csr_arrays()[1].size
    garbage = rng.integers(-3, n_arcs + 3, pred.shape).astype(np.int32)
    identity = np.arange(n_arcs + 5, dtype=np.int32)  # maps garbage onto arcs of other nodes
    for stale, mapping in ((garbage, identity), (arcs.copy(), identity),
                           (garbage, np.zeros(n_arcs, np.int32))):
        got_pred, dist = _sssp.shortest_path_trees(*after._csr_arrays(), sources,
                                                   backend="numba", hints=pred, arcs=stale,
                                                   old_arc=mapping)
        np.testing.assert_array_equal(dist, want)
        arcs_join_parents(after, sources, got_pred, stale)
    with pytest.raises(Exception, match="arcs have shape"):
        _sssp.shortest_path_trees(*after._csr_arrays(), sources, backend="numba", hints=pred,
                                  arcs=arcs[:, :-1], old_arc=identity)


def test_routes_hand_their_arcs_to_the_next_tick_and_a_second_repair_is_exact() -> None:
    topology = build_topology(parse_scenario(SHELL1, Path("/tmp/shell1.yaml")))
    engine = TickEngine(topology)
    assert _arcs_of(engine.step(0.0).routes[None]) is None  # grown afresh: no arcs yet
    for t_s in (1.0, 2.0, 3.0):
        tick = engine.step(t_s)
        trees = tick.routes[None]
        graph = engine.graph(tick.state)
        carried = _arcs_of(trees)
        assert carried is not None
        arcs, (indptr, indices) = carried
        np.testing.assert_array_equal(indptr, graph._csr_arrays()[0])
        np.testing.assert_array_equal(indices, graph._csr_arrays()[1])
        arcs_join_parents(graph, trees.destinations, np.asarray(trees.next_hop), arcs)
    previous = engine._previous
    state = engine.links.state_at(4.0)
    fresh = compute_routes(engine.graph(state), engine.destinations, engine.strategy)[None]
    # Twice from the same previous tick (a faulted tick's fault-free twin does this): the first
    # repair takes the order and arcs, the second goes without; both are exact.
    for _ in range(2):
        again = compute_routes(engine.graph(state), engine.destinations, engine.strategy,
                               previous=previous)[None]
        np.testing.assert_array_equal(again.distance_s, fresh.distance_s)
        np.testing.assert_array_equal(again.next_hop, fresh.next_hop)


def test_route_changes_count_what_numpy_counts() -> None:
    from orbitmesh.core.route_trees import RouteTrees, route_changes

    rng = np.random.default_rng(3)
    dst = np.array([4, 9, 2])
    old = rng.integers(-1, 12, (3, 12)).astype(np.int32)
    new = old.copy()
    flip = rng.random(old.shape) < 0.3
    new[flip] = rng.integers(-1, 12, int(flip.sum()))
    prev, cur = RouteTrees(dst, old, np.zeros(old.shape)), RouteTrees(dst, new, np.zeros(new.shape))
    assert route_changes(prev, cur) == np.count_nonzero(old != new) > 0
    assert route_changes(prev, prev) == 0
    shuffled = RouteTrees(dst[::-1], new[::-1], np.zeros(new.shape))  # rows matched by id
    assert route_changes(prev, shuffled) == np.count_nonzero(old[::-1] != new[::-1])


def test_a_faulted_tick_and_its_fault_free_twin_route_as_without_hints() -> None:
    from orbitmesh.core.route_trees import _order_of, _spare_hints

    topology = build_topology(parse_scenario(SHELL1, Path("/tmp/shell1.yaml")))
    warm, cold = TickEngine(topology), TickEngine(topology)
    down = {int(topology.n_satellites // 2): "test", 3: "test"}  # two satellites fail
    for t_s in (0.0, 1.0, 2.0, 3.0, 4.0):
        cold._previous = {}  # every tick grown afresh
        extra = down if t_s >= 3.0 else None
        if t_s == 3.0:
            trees = warm._previous[None]
            spare = _spare_hints(trees)
            assert _order_of(spare) is not _order_of(trees)
            np.testing.assert_array_equal(_order_of(spare), _order_of(trees))
        got, want = warm.step(t_s, extra_down=extra), cold.step(t_s, extra_down=extra)
        np.testing.assert_array_equal(got.routes[None].next_hop, want.routes[None].next_hop)
        np.testing.assert_array_equal(got.routes[None].distance_s, want.routes[None].distance_s)
        assert got.blocked.keys() == want.blocked.keys()
        for key, value in want.blocked.items():
            np.testing.assert_array_equal(got.blocked[key], value)
        if extra:
            assert want.blocked[None].any()  # the failed satellites cut some routes
