"""The routing graph of one tick: live links as an undirected graph, laid out as CSR for search.

Array conventions: nodes ``0..N-1`` (satellites, then ground stations, then operations centres);
each undirected link once: ``a (E,)``, ``b (E,)``, ``delay_s (E,)``; ``transit (N,)`` marks the
nodes that relay (None: all). :mod:`orbitmesh.core.routing` grows route trees over it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.sparse import csr_matrix

from orbitmesh.core._sssp import HAVE_NUMBA
from orbitmesh.core.route_trees import _readonly
from orbitmesh.errors import RoutingError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
BoolArray = NDArray[np.bool_]

MIN_WEIGHT = 1e-12
"""Smallest link weight handed to scipy (s). A zero in a sparse matrix means "no link" as soon
as anything prunes explicit zeros (dense round trips, ``eliminate_zeros``), so a zero-delay
link (co-located nodes) is clamped to one picosecond and stays a link whatever happens to the
matrix."""


@dataclass(frozen=True, eq=False)
class _CsrLayout:
    """Where each edge's weight goes in the symmetric CSR matrix (both directions stored)."""

    indptr: NDArray[np.int32]
    indices: NDArray[np.int32]
    edge_of_arc: IntArray
    """(A,) edge index feeding each stored arc, in CSR order (before duplicate merging)."""
    group_starts: IntArray | None
    """Start of each run of parallel arcs to merge with ``min``; None when there are none."""


@dataclass(frozen=True, eq=False)
class LinkGraph:
    """The live links of one tick: an undirected graph over ``n_nodes`` nodes.

    ``transit`` (N,), if given, is False at nodes that only start or end routes (never relay);
    an all-True mask is stored as None, so routing without the option costs nothing extra.
    """

    n_nodes: int
    a: IntArray
    b: IntArray
    delay_s: FloatArray
    transit: BoolArray | None = None

    def __post_init__(self) -> None:
        # Copies (a few microseconds): a link engine may reuse its buffers for the next tick.
        a = np.array(self.a, dtype=np.int64).reshape(-1)
        b = np.array(self.b, dtype=np.int64).reshape(-1)
        delay_s = np.array(self.delay_s, dtype=np.float64).reshape(-1)
        if not a.shape == b.shape == delay_s.shape:
            raise RoutingError(
                f"link arrays disagree in length: a {a.shape}, b {b.shape}, delay_s "
                f"{delay_s.shape}; give one entry per undirected link in each")
        if self.n_nodes < 0:
            raise RoutingError(f"n_nodes is {self.n_nodes}; it must be >= 0")
        if a.size:
            lo = min(int(a.min()), int(b.min()))
            hi = max(int(a.max()), int(b.max()))
            if lo < 0 or hi >= self.n_nodes:
                raise RoutingError(
                    f"a link names node {lo if lo < 0 else hi}, outside 0..{self.n_nodes - 1}; "
                    "check that n_nodes counts satellites, stations and ops centres")
            if not np.all(np.isfinite(delay_s)) or float(delay_s.min()) < 0.0:
                raise RoutingError("a link delay is negative, inf or NaN; drop dead links "
                                   "instead of giving them an infinite delay")
        object.__setattr__(self, "a", _readonly(a))
        object.__setattr__(self, "b", _readonly(b))
        object.__setattr__(self, "delay_s", _readonly(delay_s))
        if self.transit is not None:
            transit = np.array(self.transit, dtype=bool)
            if transit.shape != (self.n_nodes,):
                raise RoutingError(f"transit mask has shape {transit.shape}; expected "
                                   f"({self.n_nodes},), one flag per node")
            object.__setattr__(self, "transit", None if transit.all() else _readonly(transit))

    @property
    def n_edges(self) -> int:
        """Number of undirected links (as given, parallel links counted)."""
        return int(self.a.size)

    @cached_property
    def _layout(self) -> _CsrLayout:
        if HAVE_NUMBA:  # the same layout by counting sorts: ~0.2 against ~1.5 ms on a Gen1 tick
            from orbitmesh.core._csr_kernel import csr_layout

            indptr, indices, edge_of_arc, fresh = csr_layout(self.a, self.b, self.n_nodes)
            starts = None if fresh.all() else np.flatnonzero(fresh)
            return _CsrLayout(indptr, indices, edge_of_arc, starts)
        return self._numpy_layout()

    def _numpy_layout(self) -> _CsrLayout:
        keep = np.flatnonzero(self.a != self.b)  # a self-loop never shortens a path
        rows = np.concatenate([self.a[keep], self.b[keep]])
        cols = np.concatenate([self.b[keep], self.a[keep]])
        edge = np.concatenate([keep, keep])
        order = np.argsort(rows * self.n_nodes + cols, kind="stable")
        rows, cols, edge = rows[order], cols[order], edge[order]
        fresh = np.ones(rows.size, dtype=bool)
        fresh[1:] = (rows[1:] != rows[:-1]) | (cols[1:] != cols[:-1])
        group_starts = None if fresh.all() else np.flatnonzero(fresh)
        if group_starts is not None:
            rows, cols = rows[group_starts], cols[group_starts]
        indptr = np.zeros(self.n_nodes + 1, dtype=np.int32)
        np.cumsum(np.bincount(rows, minlength=self.n_nodes), out=indptr[1:])
        return _CsrLayout(indptr, cols.astype(np.int32), edge, group_starts)

    @cached_property
    def _delay_csr(self) -> csr_matrix:
        return self._build_csr(self.delay_s)

    def csr(self, weights: ArrayLike | None = None) -> csr_matrix:
        """Symmetric ``(N, N)`` CSR matrix of link weights (delay_s by default; cached then)."""
        if weights is None:
            return self._delay_csr
        weights_arr = np.asarray(weights, dtype=np.float64)
        if weights_arr.shape != self.delay_s.shape:
            raise RoutingError(f"weights have shape {weights_arr.shape}; the graph has "
                               f"{self.n_edges} links, give one weight per link")
        return self._build_csr(weights_arr)

    def _csr_arrays(self, weights: FloatArray | None = None
                    ) -> tuple[NDArray[np.int32], NDArray[np.int32], FloatArray]:
        """(indptr, indices, data) of :meth:`csr`: weights clamped, parallel links merged."""
        layout = self._layout
        source = self.delay_s if weights is None else weights
        data = np.maximum(source, MIN_WEIGHT)[layout.edge_of_arc]
        if layout.group_starts is not None:
            data = np.minimum.reduceat(data, layout.group_starts)  # parallel links: fastest wins
        return layout.indptr, layout.indices, data

    def _build_csr(self, weights: FloatArray) -> csr_matrix:
        indptr, indices, data = self._csr_arrays(weights)
        return csr_matrix((data, indices, indptr), shape=(self.n_nodes, self.n_nodes))

    def with_mask(self, allowed: ArrayLike) -> LinkGraph:
        """The same nodes with every link that touches a disallowed node removed."""
        allowed_arr = np.asarray(allowed, dtype=bool)
        if allowed_arr.shape != (self.n_nodes,):
            raise RoutingError(f"node mask has shape {allowed_arr.shape}; expected "
                               f"({self.n_nodes},), one flag per node")
        keep = allowed_arr[self.a] & allowed_arr[self.b]
        return LinkGraph(self.n_nodes, self.a[keep], self.b[keep], self.delay_s[keep],
                         self.transit)
