"""The compiled CSR layout of a link graph (counting sorts) is the numpy one (a stable argsort),
array for array: parallel links, self-loops, unsorted and empty inputs included."""

from __future__ import annotations

import numpy as np
import pytest

from orbitmesh.core import _sssp
from orbitmesh.core.link_graph import LinkGraph

pytestmark = pytest.mark.skipif(not _sssp.HAVE_NUMBA, reason="numba is not installed")


def layouts_equal(graph: LinkGraph) -> None:
    got, want = graph._layout, graph._numpy_layout()
    for name in ("indptr", "indices", "edge_of_arc"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
        assert getattr(got, name).dtype == getattr(want, name).dtype, name
    if want.group_starts is None:
        assert got.group_starts is None
    else:
        assert got.group_starts is not None
        np.testing.assert_array_equal(got.group_starts, want.group_starts)


def test_compiled_layout_equals_the_numpy_layout_on_awkward_graphs() -> None:
    rng = np.random.default_rng(12)
    parallels = 0
    for trial in range(60):
        n = int(rng.integers(1, 80))
        e = int(rng.integers(0, 4 * n))
        a, b = rng.integers(0, n, e), rng.integers(0, n, e)  # any order, loops, repeats
        if trial % 3 == 0 and e:  # the same links again, reversed
            pick = rng.choice(e, size=e // 2 + 1)
            a, b = np.concatenate([a, b[pick]]), np.concatenate([b, a[pick]])
        graph = LinkGraph(n, a, b, rng.uniform(1e-4, 1e-2, a.size))
        layouts_equal(graph)
        parallels += graph._layout.group_starts is not None
        indptr, indices, data = graph._csr_arrays()
        assert indptr[-1] == indices.size == data.size
    assert parallels > 10  # the merging of parallel links was compared too


def test_compiled_layout_of_a_tick_and_of_an_empty_graph() -> None:
    from pathlib import Path

    from orbitmesh.core.links import LinkEngine
    from orbitmesh.core.scenario import parse_scenario
    from orbitmesh.core.topology import build_topology
    from tests.test_links import SHELL1

    topology = build_topology(parse_scenario(SHELL1, Path("/tmp/shell1.yaml")))
    state = LinkEngine(topology).state_at(30.0)
    layouts_equal(LinkGraph(topology.n_nodes, state.a, state.b, state.delay_s))
    empty = np.empty(0, dtype=np.int64)
    layouts_equal(LinkGraph(5, empty, empty, np.empty(0)))
    layouts_equal(LinkGraph(0, empty, empty, np.empty(0)))


def test_key_order_is_the_stable_argsort_of_the_keys() -> None:
    from orbitmesh.core._csr_kernel import key_order

    rng = np.random.default_rng(4)
    for _ in range(40):
        n = int(rng.integers(1, 200))
        lo = rng.integers(0, n, int(rng.integers(0, 500)))
        hi = rng.integers(0, n, lo.size)
        if rng.random() < 0.5:  # many repeated keys: ties keep their input order
            hi = hi % 3
        np.testing.assert_array_equal(key_order(lo, hi, n),
                                      np.argsort(lo * n + hi, kind="stable"))
