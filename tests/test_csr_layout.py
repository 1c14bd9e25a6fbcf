"""The routing graph's CSR arcs built from a sorted link state (two runs merged) equal the arcs
sorted from scratch, parallel links and all; other link lists take the sorting path."""

from __future__ import annotations

import numpy as np

from orbitmesh.core.routing import LinkGraph


def sorted_from_scratch(graph: LinkGraph) -> tuple[np.ndarray, ...]:
    keep = np.flatnonzero(graph.a != graph.b)
    rows = np.concatenate([graph.a[keep], graph.b[keep]])
    cols = np.concatenate([graph.b[keep], graph.a[keep]])
    edge = np.concatenate([keep, keep])
    order = np.argsort(rows * graph.n_nodes + cols, kind="stable")
    return rows[order], cols[order], edge[order]


def test_merged_arcs_equal_sorted_arcs() -> None:
    rng = np.random.default_rng(0)
    checked = 0
    for _ in range(500):
        n = int(rng.integers(2, 40))
        keys = rng.integers(0, n * n, int(rng.integers(1, 120)))
        a, b = keys // n, keys % n
        a, b = a[a < b], b[a < b]
        if not a.size:
            continue
        if rng.random() < 0.3:  # parallel links
            dup = rng.choice(a.size, size=max(1, a.size // 4))
            a, b = np.concatenate([a, a[dup]]), np.concatenate([b, b[dup]])
        order = np.argsort(a * n + b, kind="stable")
        graph = LinkGraph(n, a[order], b[order], rng.uniform(0.0, 1e-2, a.size))
        merged = graph._sorted_arcs()
        assert merged is not None
        for got, want in zip(merged, sorted_from_scratch(graph), strict=True):
            np.testing.assert_array_equal(got, want)
        checked += 1
    assert checked > 400


def test_unsorted_or_reversed_links_take_the_sorting_path() -> None:
    unsorted = LinkGraph(4, np.array([2, 0]), np.array([3, 1]), np.array([1e-3, 2e-3]))
    reversed_ = LinkGraph(4, np.array([1, 3]), np.array([0, 2]), np.array([1e-3, 2e-3]))
    loop = LinkGraph(3, np.array([0, 1]), np.array([1, 1]), np.array([1e-3, 2e-3]))
    for graph in (unsorted, reversed_, loop):
        assert graph._sorted_arcs() is None
        assert graph.csr()[0, 1] > 0.0 or graph.csr()[1, 0] > 0.0
