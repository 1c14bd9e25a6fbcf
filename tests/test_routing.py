"""Routing against networkx on random graphs (with and without non-transit nodes), plus a
hand-built example with a known answer."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator

import networkx as nx
import numpy as np
import pytest

from orbitmesh.core import _sssp
from orbitmesh.core.routing import (
    STRATEGIES,
    LinkGraph,
    MinHop,
    Router,
    RouteTrees,
    RoutingPolicy,
    ShortestDelay,
    changed_entries,
    compute_routes,
    get_strategy,
    policy_mask,
    route_changes,
)
from orbitmesh.errors import RoutingError

one_nanosecond = 1e-9
one_picosecond = 1e-12

needs_numba = pytest.mark.skipif(not _sssp.HAVE_NUMBA, reason="numba is not installed")
BACKENDS = [pytest.param("numba", marks=needs_numba), "scipy"]


def random_graph(rng: np.random.Generator, n_nodes: int, connected: bool) -> LinkGraph:
    """A spanning tree plus random chords (connected), or sparse random links (often split)."""
    pairs: set[tuple[int, int]] = set()
    if connected:
        order = rng.permutation(n_nodes)
        for i in range(1, n_nodes):
            u, v = int(order[i]), int(order[rng.integers(0, i)])
            pairs.add((min(u, v), max(u, v)))
    target = len(pairs) + int(rng.integers(n_nodes // 2, 2 * n_nodes))
    while len(pairs) < target:
        u, v = (int(x) for x in rng.integers(0, n_nodes, 2))
        if u != v:
            pairs.add((min(u, v), max(u, v)))
        if not connected and len(pairs) >= n_nodes * 2 // 3:
            break  # fewer links than nodes: several components
    a, b = np.array(sorted(pairs)).T
    delay_s = rng.uniform(1e-4, 5e-2, a.size)  # 30 km .. 15,000 km of light time
    return LinkGraph(n_nodes, a, b, delay_s)


def to_networkx(graph: LinkGraph, keep: np.ndarray | None = None) -> nx.Graph:
    g = nx.Graph()
    nodes = range(graph.n_nodes) if keep is None else np.flatnonzero(keep).tolist()
    g.add_nodes_from(nodes)
    for u, v, w in zip(graph.a.tolist(), graph.b.tolist(), graph.delay_s.tolist(), strict=True):
        if keep is None or (keep[u] and keep[v]):
            g.add_edge(u, v, delay_s=w)
    return g


def path_delay_s(graph: nx.Graph, path: list[int]) -> float:
    return sum(graph.edges[u, v]["delay_s"] for u, v in itertools.pairwise(path))


def graphs(seed: int, count: int) -> Iterator[tuple[np.random.Generator, LinkGraph]]:
    rng = np.random.default_rng(seed)
    for i in range(count):
        yield rng, random_graph(rng, int(rng.integers(30, 201)), connected=i % 2 == 0)


def check_against_networkx(trees: RouteTrees, g: nx.Graph, n_nodes: int) -> None:
    """Every row of ``trees`` equals networkx's least-delay answer on ``g``."""
    for row, dst in enumerate(trees.destinations.tolist()):
        dist, paths = nx.single_source_dijkstra(g, dst, weight="delay_s") if dst in g else ({}, {})
        for u in range(n_nodes):
            if u not in dist:
                assert trees.next_hop[row, u] == -1
                assert math.isinf(trees.distance_s[row, u])
                assert trees.hops[row, u] == -1
                assert trees.path(u, dst) == []
                continue
            ours = trees.path(u, dst)
            assert ours[0] == u and ours[-1] == dst
            assert all(g.has_edge(x, y) for x, y in itertools.pairwise(ours))
            assert trees.distance_s[row, u] == pytest.approx(dist[u], abs=one_picosecond)
            assert path_delay_s(g, ours) == pytest.approx(dist[u], abs=one_picosecond)
            assert len(ours) == len(paths[u])  # continuous random delays: the path is unique
            assert trees.hops[row, u] == len(ours) - 1


def test_shortest_delay_equals_networkx_on_random_graphs() -> None:
    for rng, graph in graphs(seed=11, count=50):
        dst = rng.choice(graph.n_nodes, size=int(rng.integers(1, 8)), replace=False)
        trees = ShortestDelay().trees(graph, dst)
        check_against_networkx(trees, to_networkx(graph), graph.n_nodes)


def test_min_hop_counts_equal_networkx_and_break_ties_by_delay() -> None:
    for rng, graph in graphs(seed=12, count=50):
        g = to_networkx(graph)
        dst = rng.choice(graph.n_nodes, size=3, replace=False)
        trees = MinHop().trees(graph, dst)
        for row, d in enumerate(dst.tolist()):
            hops = nx.single_source_shortest_path_length(g, d)
            for u in range(graph.n_nodes):
                path = trees.path(u, d)
                if u not in hops:
                    assert path == [] and trees.hops[row, u] == -1
                    assert math.isinf(trees.one_way_s(u, d))
                    continue
                assert trees.hops[row, u] == hops[u] == len(path) - 1
                assert trees.one_way_s(u, d) == pytest.approx(path_delay_s(g, path),
                                                              abs=one_nanosecond)
        if graph.n_nodes <= 80:  # enumerating all fewest-hop paths is cheap only on small graphs
            d = int(dst[0])
            for u in rng.choice(graph.n_nodes, size=5, replace=False).tolist():
                if u != d and nx.has_path(g, u, d):
                    best = min(path_delay_s(g, p) for p in nx.all_shortest_paths(g, u, d))
                    assert trees.one_way_s(u, d) == pytest.approx(best, abs=one_nanosecond)


def with_stubs(rng: np.random.Generator, graph: LinkGraph) -> tuple[LinkGraph, np.ndarray]:
    """The graph with about a third of its nodes made non-transit (route ends only)."""
    transit = rng.random(graph.n_nodes) > 0.35
    return LinkGraph(graph.n_nodes, graph.a, graph.b, graph.delay_s, transit), transit


def reference_path(g: nx.Graph, transit: np.ndarray, u: int, dst: int,
                   weight: str | None = "delay_s") -> list[int] | None:
    """networkx's best u -> dst path whose inner nodes all relay, or None: it searches the graph
    of the relaying nodes plus the two ends."""
    if u not in g or dst not in g:
        return None
    keep = set(np.flatnonzero(transit).tolist()) | {u, dst}
    try:
        path: list[int] = nx.shortest_path(g.subgraph(keep), u, dst, weight=weight)
    except nx.NetworkXNoPath:
        return None
    return path


def check_non_transit(trees: RouteTrees, g: nx.Graph, transit: np.ndarray, n_nodes: int) -> None:
    """Every row of ``trees`` equals networkx's least-delay answer through relaying nodes only."""
    for row, dst in enumerate(trees.destinations.tolist()):
        for u in range(n_nodes):
            want = reference_path(g, transit, u, dst)
            ours = trees.path(u, dst)
            if want is None:
                assert ours == [] and trees.next_hop[row, u] == -1
                assert math.isinf(trees.distance_s[row, u])
                continue
            assert ours[0] == u and ours[-1] == dst
            assert all(transit[x] for x in ours[1:-1])
            assert all(g.has_edge(x, y) for x, y in itertools.pairwise(ours))
            best_s = path_delay_s(g, want)
            assert trees.distance_s[row, u] == pytest.approx(best_s, abs=one_picosecond)
            assert path_delay_s(g, ours) == pytest.approx(best_s, abs=one_picosecond)
            assert len(ours) == len(want)  # continuous random delays: the path is unique
        # No node forwards to a non-transit node unless that node is the destination.
        hops_to = trees.next_hop[row]
        assert not np.any(~transit[hops_to[hops_to >= 0]] & (hops_to[hops_to >= 0] != dst))


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_transit_nodes_only_start_or_end_routes_like_networkx(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sssp, "BACKEND", backend)
    cut = 0
    for rng, plain in graphs(seed=21, count=12):
        graph, transit = with_stubs(rng, plain)
        # Destinations of both kinds: a non-transit destination's own links are relaxed.
        dst = np.concatenate([rng.choice(np.flatnonzero(transit), 2, replace=False),
                              rng.choice(np.flatnonzero(~transit), 2, replace=False)])
        trees = ShortestDelay().trees(graph, dst)
        g = to_networkx(graph)
        check_non_transit(trees, g, transit, graph.n_nodes)
        free = ShortestDelay().trees(plain, dst)
        cut += int(np.count_nonzero(free.distance_s < trees.distance_s))
    assert cut > 0  # the stubs did lengthen or cut some routes: the check can tell


@pytest.mark.parametrize("backend", BACKENDS)
def test_min_hop_with_non_transit_nodes_counts_hops_like_networkx(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sssp, "BACKEND", backend)
    for rng, plain in graphs(seed=22, count=12):
        graph, transit = with_stubs(rng, plain)
        g = to_networkx(graph)
        dst = rng.choice(graph.n_nodes, size=3, replace=False)
        trees = MinHop().trees(graph, dst)
        for row, d in enumerate(dst.tolist()):
            for u in range(graph.n_nodes):
                want = reference_path(g, transit, u, d, weight=None)
                path = trees.path(u, d)
                assert trees.hops[row, u] == (-1 if want is None else len(want) - 1)
                assert all(transit[x] for x in path[1:-1])


def test_policy_masks_keep_the_transit_flags() -> None:
    rng, plain = next(graphs(seed=23, count=1))
    graph, transit = with_stubs(rng, plain)
    operator = rng.integers(0, 2, graph.n_nodes)
    policy = RoutingPolicy("home", frozenset({1}))
    allowed = policy_mask(operator, policy)
    dst = rng.choice(np.flatnonzero(allowed), size=4, replace=False)
    trees = Router(graph, ShortestDelay(), operator, {"home": policy}).trees(dst, "home")
    check_non_transit(trees, to_networkx(graph, allowed), transit, graph.n_nodes)


def test_transit_mask_is_checked_and_all_true_means_none() -> None:
    graph = LinkGraph(3, np.array([0]), np.array([1]), np.array([1e-3]), np.ones(3, dtype=bool))
    assert graph.transit is None
    with pytest.raises(RoutingError, match=r"transit mask has shape \(2,\)"):
        LinkGraph(3, np.array([0]), np.array([1]), np.array([1e-3]), np.ones(2, dtype=bool))


def test_derived_hops_equal_min_hop_hops_when_they_coincide() -> None:
    _, graph = next(graphs(seed=13, count=1))
    unit = LinkGraph(graph.n_nodes, graph.a, graph.b, np.full(graph.n_edges, 1e-3))
    known = MinHop().trees(unit, [0, 5])
    derived = RouteTrees(known.destinations, known.next_hop, known.distance_s)
    np.testing.assert_array_equal(derived.hops, known.hops)


def test_policy_routes_never_transit_a_forbidden_operator() -> None:
    for rng, graph in graphs(seed=14, count=50):
        operator = rng.integers(0, 3, graph.n_nodes)
        policy = RoutingPolicy("sovereign", frozenset({0, 1}))
        allowed = policy_mask(operator, policy)
        dst = rng.choice(graph.n_nodes, size=5, replace=False)
        routes = compute_routes(graph, dst, ShortestDelay(), {policy.name: policy}, operator)
        assert set(routes) == {None, "sovereign"}
        check_against_networkx(routes[None], to_networkx(graph), graph.n_nodes)
        restricted = routes["sovereign"]
        check_against_networkx(restricted, to_networkx(graph, allowed), graph.n_nodes)
        for row, d in enumerate(dst.tolist()):
            for u in range(graph.n_nodes):
                path = restricted.path(u, d)
                assert all(allowed[x] for x in path)
                if not (allowed[u] and allowed[d]):
                    assert path == [] and restricted.next_hop[row, u] == -1


def test_min_hop_policy_routes_count_hops_on_the_allowed_subgraph() -> None:
    for rng, graph in graphs(seed=18, count=20):
        operator = rng.integers(0, 2, graph.n_nodes)
        policy = RoutingPolicy("home", frozenset({1}))
        allowed = policy_mask(operator, policy)
        sub = to_networkx(graph, allowed)
        dst = rng.choice(graph.n_nodes, size=4, replace=False)
        trees = Router(graph, MinHop(), operator, {"home": policy}).trees(dst, "home")
        for row, d in enumerate(dst.tolist()):
            hops = nx.single_source_shortest_path_length(sub, d) if d in sub else {}
            for u in range(graph.n_nodes):
                path = trees.path(u, d)
                assert all(allowed[x] for x in path)
                assert trees.hops[row, u] == hops.get(u, -1) == len(path) - 1


def test_graph_without_links_has_only_trivial_routes() -> None:
    graph = LinkGraph(4, np.array([], dtype=int), np.array([], dtype=int), np.array([]))
    for strategy in STRATEGIES.values():
        trees = strategy.trees(graph, [1, 2])
        assert trees.next_hop.tolist() == [[-1, 1, -1, -1], [-1, -1, 2, -1]]
        assert trees.hops.tolist() == [[-1, 0, -1, -1], [-1, -1, 0, -1]]
        assert trees.path(1, 1) == [1] and trees.path(0, 1) == []


def test_hand_built_example() -> None:
    #   0 --1ms-- 1 --1ms-- 2 --1ms-- 3      4 (no links)
    #   \________3ms_______/
    graph = LinkGraph(5, np.array([0, 1, 0, 2]), np.array([1, 2, 2, 3]),
                      np.array([1e-3, 1e-3, 3e-3, 1e-3]))
    fast = ShortestDelay().trees(graph, [3])
    assert fast.path(0, 3) == [0, 1, 2, 3]
    assert fast.one_way_s(0, 3) == pytest.approx(3e-3, abs=one_picosecond)
    assert fast.next_hop.tolist() == [[1, 2, 3, 3, -1]]
    assert fast.hops.tolist() == [[3, 2, 1, 0, -1]]
    assert fast.path(4, 3) == [] and math.isinf(fast.one_way_s(4, 3))
    assert fast.path(3, 3) == [3] and fast.one_way_s(3, 3) == 0.0
    assert fast.path_from_root(3, 0) == [3, 2, 1, 0]
    few = MinHop().trees(graph, [3])
    assert few.path(0, 3) == [0, 2, 3]
    assert few.one_way_s(0, 3) == pytest.approx(4e-3, abs=one_nanosecond)
    assert few.hops.tolist() == [[2, 2, 1, 0, -1]]


def test_zero_delay_and_parallel_links() -> None:
    # A zero-delay link must stay a link (csgraph drops explicit zeros); of two parallel
    # links the faster one carries the route.
    graph = LinkGraph(3, np.array([0, 1, 2]), np.array([1, 2, 1]), np.array([0.0, 5e-3, 2e-3]))
    trees = ShortestDelay().trees(graph, [0])
    assert trees.path(2, 0) == [2, 1, 0]
    assert trees.one_way_s(1, 0) == pytest.approx(0.0, abs=one_nanosecond)
    assert trees.one_way_s(2, 0) == pytest.approx(2e-3, abs=one_nanosecond)


def test_path_from_root_reverses_the_path_toward_the_root() -> None:
    for rng, graph in graphs(seed=15, count=10):
        root = int(rng.integers(graph.n_nodes))
        trees = Router(graph, ShortestDelay()).to(root)
        for target in range(graph.n_nodes):
            out = trees.path_from_root(root, target)
            assert out == trees.path(target, root)[::-1]
            if out:
                assert out[0] == root and out[-1] == target


def test_router_to_matches_the_full_table_and_is_cached() -> None:
    rng, graph = next(graphs(seed=16, count=1))
    dst = rng.choice(graph.n_nodes, size=6, replace=False)
    router = Router(graph, ShortestDelay())
    table = router.trees(dst)
    single = router.to(int(dst[2]))
    assert router.to(int(dst[2])) is single
    np.testing.assert_array_equal(single.next_hop[0], table.next_hop[2])
    np.testing.assert_array_equal(single.distance_s[0], table.distance_s[2])


def brute_force_changes(prev: RouteTrees, cur: RouteTrees) -> set[tuple[int, int, int]]:
    changed = set()
    for row, d in enumerate(cur.destinations.tolist()):
        for u in range(cur.n_nodes):
            old = prev.next_hop_of(u, d) if d in prev.destinations else -1
            if old != cur.next_hop_of(u, d):
                changed.add((row, u, cur.next_hop_of(u, d)))
    return changed


def test_route_changes_count_every_changed_next_hop() -> None:
    rng, graph = next(graphs(seed=17, count=1))
    dst = rng.choice(graph.n_nodes, size=8, replace=False)
    before = ShortestDelay().trees(graph, dst)
    moved = LinkGraph(graph.n_nodes, graph.a, graph.b,
                      graph.delay_s * rng.uniform(0.5, 1.5, graph.n_edges))
    after = ShortestDelay().trees(moved, dst)
    expected = brute_force_changes(before, after)
    assert expected  # the delays moved enough to change some routes
    assert route_changes(before, after) == len(expected)
    rows, nodes, hops = changed_entries(before, after)
    assert set(zip(rows.tolist(), nodes.tolist(), hops.tolist(), strict=True)) == expected
    assert route_changes(after, after) == 0
    assert route_changes(None, after) == int(np.count_nonzero(after.next_hop != -1))
    # A different destination set is matched by id: a new destination counts as all-new.
    other = ShortestDelay().trees(moved, dst[::-1][:5])
    assert route_changes(before, other) == len(brute_force_changes(before, other))


def test_bad_input_raises_routing_error() -> None:
    with pytest.raises(RoutingError, match="outside"):
        LinkGraph(3, np.array([0]), np.array([3]), np.array([1e-3]))
    with pytest.raises(RoutingError, match="negative, inf or NaN"):
        LinkGraph(3, np.array([0]), np.array([1]), np.array([np.nan]))
    with pytest.raises(RoutingError, match="disagree"):
        LinkGraph(3, np.array([0, 1]), np.array([1]), np.array([1e-3]))
    graph = LinkGraph(3, np.array([0]), np.array([1]), np.array([1e-3]))
    with pytest.raises(RoutingError, match="shortest_delay"):
        get_strategy("fastest")
    with pytest.raises(RoutingError, match="outside"):
        ShortestDelay().trees(graph, [7])
    with pytest.raises(RoutingError, match=r"Router\.to\(2\)"):
        ShortestDelay().trees(graph, [0]).path(1, 2)
    policy = RoutingPolicy("eu", frozenset({1}))
    with pytest.raises(RoutingError, match="operator"):
        Router(graph, ShortestDelay(), policies={"eu": policy})
    with pytest.raises(RoutingError, match="own name"):
        Router(graph, ShortestDelay(), operator=[1, 1, 1], policies={"us": policy})
    with pytest.raises(RoutingError, match="unknown routing policy"):
        Router(graph, ShortestDelay(), operator=[1, 1, 1]).trees([0], "eu")


def test_registry_names_match_strategies() -> None:
    assert {name: s.name for name, s in STRATEGIES.items()} == {
        "shortest_delay": "shortest_delay", "min_hop": "min_hop"}
    assert isinstance(get_strategy("min_hop"), MinHop)


# --- The many-source kernel (orbitmesh.core._sssp) against scipy and networkx ---------------------


def awkward_graph(rng: np.random.Generator, kind: str) -> LinkGraph:
    """Random graphs that stress exactness: ties, near-zero links, parallels, loops, components."""
    graph = random_graph(rng, int(rng.integers(30, 161)), connected=kind != "split")
    n = graph.n_edges
    delay_s: np.ndarray
    if kind == "ties":  # whole milliseconds: many equal-delay paths
        delay_s = rng.integers(1, 4, n) * 1e-3
    elif kind in ("co-located", "mostly-zero"):  # zero-delay links beside long ones
        delay_s = rng.uniform(1e-3, 8e-2, n)
        delay_s[rng.random(n) < (0.1 if kind == "co-located" else 0.9)] = 0.0
    else:
        delay_s = graph.delay_s
    a, b = graph.a, graph.b
    if kind == "parallel":  # the same links again, some slower, some faster, plus self-loops
        extra = rng.choice(n, size=n // 4, replace=False)
        loops = rng.choice(graph.n_nodes, size=5, replace=False)
        a = np.concatenate([graph.a, graph.b[extra], loops])
        b = np.concatenate([graph.b, graph.a[extra], loops])
        delay_s = np.concatenate([delay_s, delay_s[extra] * rng.uniform(0.5, 1.5, extra.size),
                                  np.full(loops.size, 1e-3)])
    return LinkGraph(graph.n_nodes, a, b, np.asarray(delay_s, dtype=np.float64))


KINDS = ["continuous", "split", "ties", "co-located", "mostly-zero", "parallel"]


def check_trees(graph: LinkGraph, sources: np.ndarray, pred: np.ndarray, dist: np.ndarray) -> None:
    """``dist`` equals networkx's to a picosecond; each parent is a shortest-path parent."""
    indptr, indices, weight = graph._csr_arrays()
    g = nx.Graph()
    g.add_nodes_from(range(graph.n_nodes))
    for u in range(graph.n_nodes):
        for arc in range(indptr[u], indptr[u + 1]):
            g.add_edge(u, int(indices[arc]), w=float(weight[arc]))
    arc_weight = {(u, int(indices[arc])): float(weight[arc])
                  for u in range(graph.n_nodes) for arc in range(indptr[u], indptr[u + 1])}
    for row, s in enumerate(sources.tolist()):
        want = nx.single_source_dijkstra_path_length(g, s, weight="w")
        assert pred[row, s] == s and dist[row, s] == 0.0
        for u in range(graph.n_nodes):
            if u not in want:
                assert pred[row, u] == -1 and math.isinf(dist[row, u])
                continue
            assert dist[row, u] == pytest.approx(want[u], abs=one_picosecond)
            if u != s:
                parent = int(pred[row, u])
                # The label is the parent's plus the link, exactly as summed; links weigh > 0,
                # so labels fall strictly along parents and every chain ends at the source.
                assert dist[row, u] == dist[row, parent] + arc_weight[(parent, u)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_is_exact_on_awkward_graphs(backend: str, kind: str) -> None:
    rng = np.random.default_rng(sum(map(ord, kind)))
    for _ in range(6):
        graph = awkward_graph(rng, kind)
        sources = rng.choice(graph.n_nodes, size=int(rng.integers(1, 20)), replace=False)
        indptr, indices, weight = graph._csr_arrays()
        pred, dist = _sssp.shortest_path_trees(indptr, indices, weight, sources, backend=backend)
        check_trees(graph, sources, pred, dist)
        _, scipy_dist = _sssp.shortest_path_trees(indptr, indices, weight, sources,
                                                  backend="scipy")
        np.testing.assert_array_equal(dist, scipy_dist)  # bit for bit, not just close


@needs_numba
@pytest.mark.parametrize("kind", KINDS)
def test_kernel_answer_does_not_depend_on_its_tuning(kind: str) -> None:
    # Tiny buckets (mostly empty), one huge bucket (a node is re-scanned whenever its label
    # drops), trees handed to the heap fallback (pool or scan budget exhausted) at once or
    # half-way, and one vs three threads: the same answer.
    rng = np.random.default_rng(99 + len(kind))
    graph = awkward_graph(rng, kind)
    indptr, indices, weight = graph._csr_arrays()
    sources = rng.choice(graph.n_nodes, size=30, replace=False)
    _, dist = _sssp.shortest_path_trees(indptr, indices, weight, sources, backend="scipy")
    for tuning in ({"width": float(weight.max()) / 1000}, {"width": 1e3}, {"capacity": 1},
                   {"capacity": graph.n_nodes // 2}, {"budget": 0}, {"budget": graph.n_nodes // 2},
                   {"threads": 1}, {"threads": 3}):
        got_pred, got_dist = _sssp.shortest_path_trees(indptr, indices, weight, sources,
                                                       backend="numba", **tuning)
        np.testing.assert_array_equal(got_dist, dist)
        check_trees(graph, sources, got_pred, got_dist)


@pytest.mark.parametrize("kind", KINDS)
def test_kernel_with_non_transit_nodes_equals_scipy_bit_for_bit(kind: str) -> None:
    # The numba kernel skips non-transit nodes itself; scipy runs on a graph with twins. Both,
    # under every tuning that hands trees to the heap fallback, must agree exactly.
    rng = np.random.default_rng(7 + len(kind))
    for _ in range(4):
        graph = awkward_graph(rng, kind)
        transit = rng.random(graph.n_nodes) > 0.3
        indptr, indices, weight = graph._csr_arrays()
        sources = rng.choice(graph.n_nodes, size=int(rng.integers(2, 25)), replace=False)
        pred, dist = _sssp.shortest_path_trees(indptr, indices, weight, sources,
                                               backend="scipy", transit=transit)
        arc_weight = {(u, int(indices[arc])): float(weight[arc])
                      for u in range(graph.n_nodes) for arc in range(indptr[u], indptr[u + 1])}
        for row, s in enumerate(sources.tolist()):
            assert pred[row, s] == s and dist[row, s] == 0.0
            reached = np.flatnonzero((pred[row] >= 0) & (np.arange(graph.n_nodes) != s))
            for u in reached.tolist():
                parent = int(pred[row, u])
                assert parent == s or transit[parent]  # only relaying nodes are parents
                assert dist[row, u] == dist[row, parent] + arc_weight[(parent, u)]
        if not _sssp.HAVE_NUMBA:
            continue
        for tuning in ({}, {"budget": 0}, {"capacity": 1}, {"width": 1e3}, {"threads": 3}):
            got_pred, got_dist = _sssp.shortest_path_trees(indptr, indices, weight, sources,
                                                           backend="numba", transit=transit,
                                                           **tuning)
            np.testing.assert_array_equal(got_dist, dist)
            np.testing.assert_array_equal(got_pred >= 0, pred >= 0)


@needs_numba
def test_kernel_equals_scipy_on_a_real_shell1_tick() -> None:
    from pathlib import Path

    from orbitmesh.core.links import LinkEngine
    from orbitmesh.core.scenario import parse_scenario
    from orbitmesh.core.topology import build_topology
    from tests.test_links import SHELL1

    topology = build_topology(parse_scenario(SHELL1, Path("/tmp/shell1.yaml")))
    state = LinkEngine(topology).state_at(30.0)
    graph = LinkGraph(topology.n_nodes, state.a, state.b, state.delay_s)
    sources = np.concatenate([topology.ground_endpoints, np.arange(0, 1584, 97)])
    indptr, indices, weight = graph._csr_arrays()
    pred, dist = _sssp.shortest_path_trees(indptr, indices, weight, sources, backend="numba")
    _, scipy_dist = _sssp.shortest_path_trees(indptr, indices, weight, sources, backend="scipy")
    np.testing.assert_array_equal(dist, scipy_dist)
    rows, nodes = np.nonzero(np.isfinite(dist) & (pred != sources[:, None]))
    parents = pred[rows, nodes]
    link_s = np.asarray(graph.csr()[parents, nodes]).ravel()
    assert np.all(link_s > 0.0)  # every parent is a neighbour, on a shortest path:
    np.testing.assert_array_equal(dist[rows, parents] + link_s, dist[rows, nodes])
    assert not np.isinf(dist).any()  # the whole constellation is one component


@pytest.mark.parametrize("backend", BACKENDS)
def test_strategies_equal_networkx_on_either_backend(
        backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_sssp, "BACKEND", backend)
    test_shortest_delay_equals_networkx_on_random_graphs()
    test_min_hop_counts_equal_networkx_and_break_ties_by_delay()


def test_unknown_backend_raises_routing_error() -> None:
    graph = LinkGraph(2, np.array([0]), np.array([1]), np.array([1e-3]))
    with pytest.raises(RoutingError, match="backend 'gpu'"):
        _sssp.shortest_path_trees(*graph._csr_arrays(), np.array([0]), backend="gpu")
