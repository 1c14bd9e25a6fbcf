"""Trees seeded from the previous tick's (``hints``) equal trees grown afresh: distances bit for bit
against scipy, parents on shortest paths — whatever the hint, even a wrong or cyclic one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from orbitmesh.core import _sssp
from orbitmesh.core.engine import TickEngine
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
           repair_budget: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    return _sssp.shortest_path_trees(*graph._csr_arrays(), sources, backend="numba",
                                     transit=transit, hints=hints, threads=threads,
                                     repair_budget=repair_budget)


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
