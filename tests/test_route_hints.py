"""Trees seeded from the previous tick's (``hints``) equal trees grown afresh: distances bit for bit
against scipy, parents on shortest paths — whatever the hint, even a wrong or cyclic one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orbitmesh.core import _sssp
from orbitmesh.core.engine import TickEngine
from orbitmesh.core.route_trees import _order_of
from orbitmesh.core.routing import LinkGraph, MinHop, ShortestDelay, compute_routes
from orbitmesh.core.scenario import parse_scenario
from orbitmesh.core.topology import build_topology
from tests.test_links import SHELL1
from tests.test_routing import KINDS, awkward_graph, check_trees

pytestmark = pytest.mark.skipif(not _sssp.HAVE_NUMBA, reason="numba is not installed")


def next_tick(rng: np.random.Generator, graph: LinkGraph) -> LinkGraph:
    """The graph a tick later: every delay moved a little, some links gone, some new."""
    keep = rng.random(graph.n_edges) > 0.05
    new = rng.integers(0, graph.n_nodes, (max(1, graph.n_edges // 20), 2))
    a = np.concatenate([graph.a[keep], new[:, 0]])
    b = np.concatenate([graph.b[keep], new[:, 1]])
    delay_s = np.concatenate([graph.delay_s[keep] * rng.uniform(0.98, 1.02, keep.sum()),
                              rng.uniform(1e-4, 5e-2, new.shape[0])])
    return LinkGraph(graph.n_nodes, a, b, delay_s)


def hinted(graph: LinkGraph, sources: np.ndarray, hints: np.ndarray,
           transit: np.ndarray | None = None, threads: int | None = None,
           repair_budget: int | None = None,
           order: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    return _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="numba",
                                     transit=transit, hints=hints, threads=threads,
                                     repair_budget=repair_budget, order=order)


@pytest.mark.parametrize("kind", KINDS)
def test_trees_from_the_last_ticks_equal_fresh_ones(kind: str) -> None:
    rng = np.random.default_rng(314 + len(kind))
    for _ in range(4):
        before = awkward_graph(rng, kind)
        sources = rng.choice(before.n_nodes, size=int(rng.integers(1, 25)), replace=False)
        old_pred, _ = _sssp.shortest_path_trees(*before._csr_arrays(), sources, backend="numba")
        after = next_tick(rng, before)
        _, want = _sssp.shortest_path_trees(*after._csr_arrays(), sources, backend="scipy")
        # repair budget 0: a repair gives up at its first heap scan and the tree is grown
        # afresh; threads: the rows are split differently
        for threads, repair in ((None, None), (3, None), (None, 0), (None, 2)):
            pred, dist = hinted(after, sources, old_pred, threads=threads, repair_budget=repair)
            np.testing.assert_array_equal(dist, want)
            check_trees(after, sources, pred, dist)
        pred, dist = hinted(before, sources, old_pred)  # an exact hint: nothing to repair
        np.testing.assert_array_equal(pred, old_pred)


@pytest.mark.parametrize("kind", ["continuous", "ties", "co-located"])
def test_wrong_hints_cost_time_never_the_answer(kind: str) -> None:
    rng = np.random.default_rng(27 + len(kind))
    graph = awkward_graph(rng, kind)
    n = graph.n_nodes
    sources = rng.choice(n, size=12, replace=False)
    _, want = _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="scipy")
    garbage = rng.integers(-3, n + 3, (sources.size, n)).astype(np.int32)
    garbage[np.arange(sources.size), sources] = sources  # rows that claim to be trees
    cycles = np.roll(np.arange(n, dtype=np.int32), 1)[None, :].repeat(sources.size, axis=0)
    cycles[np.arange(sources.size), sources] = sources
    not_trees = np.full((sources.size, n), -1, dtype=np.int32)  # every row grown afresh
    for hints in (garbage, cycles, not_trees):
        pred, dist = hinted(graph, sources, hints)
        np.testing.assert_array_equal(dist, want)
        check_trees(graph, sources, pred, dist)
    with pytest.raises(Exception, match="hints have shape"):
        hinted(graph, sources, garbage[:, :-1])


def test_hints_through_non_transit_nodes_are_not_followed() -> None:
    rng = np.random.default_rng(5)
    before = awkward_graph(rng, "continuous")
    sources = rng.choice(before.n_nodes, size=15, replace=False)
    old_pred, _ = _sssp.shortest_path_trees(*before._csr_arrays(), sources, backend="numba")
    transit = rng.random(before.n_nodes) > 0.3  # the old trees relay through these nodes
    after = next_tick(rng, before)
    _, want = _sssp.shortest_path_trees(*after._csr_arrays(), sources, backend="scipy",
                                        transit=transit)
    pred, dist = hinted(after, sources, old_pred, transit=transit)
    np.testing.assert_array_equal(dist, want)
    rows, nodes = np.nonzero((pred >= 0) & (pred != sources[:, None]))
    parents = pred[rows, nodes]
    assert np.all(transit[parents] | (parents == sources[rows]))


@pytest.mark.parametrize("strategy", [ShortestDelay(), MinHop()])
def test_a_shell1_run_routes_as_without_hints(strategy: ShortestDelay | MinHop) -> None:
    topology = build_topology(parse_scenario(SHELL1, Path("/tmp/shell1.yaml")))
    engine = TickEngine(topology)
    engine.strategy = strategy
    previous = None
    for t_s in (0.0, 1.0, 2.0, 30.0, 31.0):
        tick = engine.step(t_s)
        graph = engine.graph(tick.state)
        fresh = compute_routes(graph, engine.destinations, strategy)[None]
        warm = tick.routes[None]
        np.testing.assert_array_equal(warm.distance_s, fresh.distance_s)
        # Parents differ only where two give the same label; on real geometry there are none.
        np.testing.assert_array_equal(warm.next_hop, fresh.next_hop)
        if previous is not None:
            assert previous is not warm
        previous = warm


def parents_first(order_row: np.ndarray, parent: np.ndarray, source: int) -> np.ndarray:
    """The nodes an order row lists, after checking that each comes after its parent."""
    end = np.flatnonzero(order_row < 0)
    listed = order_row[:end[0] if end.size else order_row.size]
    assert listed[0] == source
    assert np.unique(listed).size == listed.size, "a node is listed twice"
    position = np.full(parent.size, -1)
    position[listed] = np.arange(listed.size)
    rest = listed[1:]
    assert np.all(position[parent[rest]] >= 0), "a listed node's parent is not listed"
    assert np.all(position[parent[rest]] < position[rest]), "a child comes before its parent"
    return listed


@pytest.mark.parametrize("kind", KINDS)
def test_the_labelling_order_changes_the_speed_never_the_answer(kind: str) -> None:
    rng = np.random.default_rng(41 + len(kind))
    graph = awkward_graph(rng, kind)
    sources = rng.choice(graph.n_nodes, size=int(rng.integers(2, 20)), replace=False)
    transit = rng.random(graph.n_nodes) > 0.2 if kind == "continuous" else None
    pred, _ = _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="numba",
                                        transit=transit)
    order = np.empty(pred.shape, dtype=np.int32)
    order[:, 0] = -1  # no order yet: the first repair walks and leaves one
    for _ in range(4):  # tick after tick, the order the last call left
        graph = next_tick(rng, graph)
        _, want = _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="scipy",
                                            transit=transit)
        hints = pred
        pred, dist = hinted(graph, sources, hints, transit=transit, order=order)
        np.testing.assert_array_equal(dist, want)
        if transit is None:
            check_trees(graph, sources, pred, dist)
        for row, s in enumerate(sources.tolist()):
            if order[row, 0] >= 0:  # a repaired row: its hinted tree, parents first
                parents_first(order[row], hints[row], s)
    n = graph.n_nodes
    garbage = rng.integers(-2, n + 2, (sources.size, n)).astype(np.int32)
    garbage[:, 0] = sources  # rows that claim to be orders: duplicates, strangers, the source
    shuffled = np.array([np.r_[s, rng.permutation(np.delete(np.arange(n), s))]
                         for s in sources.tolist()], dtype=np.int32)  # children before parents
    _, want = _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="scipy",
                                        transit=transit)
    for bad in (garbage, shuffled):
        _, dist = hinted(graph, sources, pred, transit=transit, order=bad)
        np.testing.assert_array_equal(dist, want)
    with pytest.raises(Exception, match="order has shape"):
        hinted(graph, sources, pred, order=np.zeros((sources.size, n), dtype=np.int64))


def test_routes_hand_their_labelling_order_to_the_next_tick() -> None:
    topology = build_topology(parse_scenario(SHELL1, Path("/tmp/shell1.yaml")))
    engine = TickEngine(topology)
    first = engine.step(0.0).routes[None]
    assert _order_of(first) is None  # grown afresh: no order to hand on
    second = engine.step(1.0).routes[None]
    order = _order_of(second)
    assert order is not None
    hints = first.next_hop
    for row, d in enumerate(second.destinations.tolist()):
        listed = parents_first(order[row], hints[row], d)
        assert listed.size == np.count_nonzero(hints[row] >= 0)  # one ISL-linked component
    third = engine.step(2.0).routes[None]
    fresh = compute_routes(engine.graph(engine.links.state_at(2.0)), engine.destinations,
                           engine.strategy)[None]
    np.testing.assert_array_equal(third.distance_s, fresh.distance_s)


@pytest.mark.parametrize("chunks", [1, 3, 7])
def test_slices_taken_in_turn_leave_no_tree_out(chunks: int,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(chunks)
    graph = awkward_graph(rng, "continuous")
    sources = rng.choice(graph.n_nodes, size=min(graph.n_nodes, 70), replace=False)
    _, want = _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="scipy")
    monkeypatch.setattr(_sssp, "CHUNKS_PER_THREAD", chunks)
    for threads in (1, 2, 3):
        pred, dist = _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="numba",
                                               threads=threads)
        np.testing.assert_array_equal(dist, want)
        _, dist = hinted(graph, sources, pred, threads=threads)
        np.testing.assert_array_equal(dist, want)
