"""Routing: shortest-path trees toward destinations, strategies, sovereignty policies, route diffs.

Array conventions:

* nodes are indexed ``0..N-1``: satellites first, then ground stations, then operations centres
  (the order the link engine uses);
* a :class:`LinkGraph` lists each undirected link once: ``a (E,)``, ``b (E,)``, ``delay_s (E,)``,
  and may mark the nodes that relay traffic: ``transit (N,)`` (None: every node relays);
* route tables are ``(D, N)``: destinations first, nodes second. ``next_hop[i, u]`` is the node
  that ``u`` forwards to on its way to ``destinations[i]`` (``-1``: no route; the destination
  itself holds its own index); ``distance_s[i, u]`` is the one-way delay from ``u`` to that
  destination (``inf``: no route); ``hops[i, u]`` counts links (``-1``: no route).

One shortest-path tree per destination answers every node's question "where next toward d?":
links are undirected, so the predecessor of ``u`` in Dijkstra's tree rooted at ``d`` is ``u``'s next
hop toward ``d``. A node with ``transit`` False (a ground station or operations centre with
``transit: false``) may be a route's source or destination but never a hop in between: the tree
grown from ``d`` does not relax its links unless it is ``d``, so it is a leaf of every other tree,
and no node ever forwards through it. Trees are built for the destinations that traffic goes to
(ground endpoints); a tree toward any other node (a satellite, for telecommands) is computed on
demand with :meth:`Router.to`.

Cost (2 cores; ``bench/geometry.py``): the trees come from the bucket kernel in
:mod:`orbitmesh.core._sssp` (numba; scipy's Dijkstra when numba is missing), whose distances equal
scipy's bit for bit. 105 destinations on the 1,700-node / 3,600-link Starlink shell-1 graph take
~3.5 ms on two threads (~6 ms on one; scipy: ~18 ms), 50 destinations on 5,400 nodes / 12,500
links ~7 ms (scipy: ~32 ms); the sparse layout (~0.15 ms) and diffs (~0.3 ms) are small beside
it. Each policy adds one more run over its allowed destinations. ``RouteTrees.hops`` is derived
lazily (~5 ms at 105 x 1,700) because forwarding never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Protocol, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.sparse import csr_matrix

from orbitmesh.core._sssp import shortest_path_trees
from orbitmesh.errors import RoutingError

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
HopArray = NDArray[np.int32]
BoolArray = NDArray[np.bool_]

MIN_WEIGHT = 1e-12
"""Smallest link weight handed to scipy (s). A zero in a sparse matrix means "no link" as soon
as anything prunes explicit zeros (dense round trips, ``eliminate_zeros``), so a zero-delay
link (co-located nodes) is clamped to one picosecond and stays a link whatever happens to the
matrix."""

NO_ROUTE = -1
"""``next_hop`` and ``hops`` value of a node that cannot reach the destination."""


_ArrayT = TypeVar("_ArrayT", bound=np.ndarray)


def _readonly(array: _ArrayT) -> _ArrayT:
    """A read-only view: the holder cannot write through it, and the caller's array is untouched."""
    view = array.view()
    view.flags.writeable = False
    return view


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


def _hops_from_next_hop(next_hop: HopArray) -> HopArray:
    """Hop counts along each tree by pointer doubling: log2(depth) vectorised passes."""
    rows, n = next_hop.shape
    flat = np.arange(rows * n, dtype=np.int64)
    # Global (row * n + node) pointers; roots and unreachable nodes point at themselves.
    up = np.where(next_hop.reshape(-1) < 0, flat,
                  next_hop.reshape(-1) + np.repeat(np.arange(rows, dtype=np.int64) * n, n))
    hops = (up != flat).astype(np.int32)
    while True:
        up_up = up[up]
        if np.array_equal(up_up, up):
            break
        hops += hops[up]
        up = up_up
    hops[next_hop.reshape(-1) < 0] = NO_ROUTE
    return hops.reshape(rows, n)


@dataclass(frozen=True, eq=False)
class RouteTrees:
    """Next hop, delay and hop count from every node toward each of some destinations."""

    destinations: IntArray
    next_hop: HopArray
    distance_s: FloatArray

    def __post_init__(self) -> None:
        destinations = np.asarray(self.destinations, dtype=np.int64).reshape(-1)
        next_hop = np.asarray(self.next_hop, dtype=np.int32)
        distance_s = np.asarray(self.distance_s, dtype=np.float64)
        if next_hop.ndim != 2 or next_hop.shape[0] != destinations.size \
                or distance_s.shape != next_hop.shape:
            raise RoutingError(f"route tables disagree: {destinations.size} destinations, "
                               f"next_hop {next_hop.shape}, distance_s {distance_s.shape}; "
                               "both tables must be (D, N)")
        for name, value in (("destinations", destinations), ("next_hop", next_hop),
                            ("distance_s", distance_s)):
            object.__setattr__(self, name, _readonly(value))

    @classmethod
    def with_hops(cls, destinations: ArrayLike, next_hop: ArrayLike, distance_s: ArrayLike,
                  hops: ArrayLike) -> RouteTrees:
        """Trees whose hop counts are already known (saves deriving them from next hops)."""
        trees = cls(np.asarray(destinations, dtype=np.int64), np.asarray(next_hop, dtype=np.int32),
                    np.asarray(distance_s, dtype=np.float64))
        hops_arr = np.asarray(hops, dtype=np.int32)
        if hops_arr.shape != trees.next_hop.shape:
            raise RoutingError(f"hops has shape {hops_arr.shape}; expected "
                               f"{trees.next_hop.shape}")
        trees.__dict__["hops"] = _readonly(hops_arr)  # primes the cached_property below
        return trees

    @cached_property
    def hops(self) -> HopArray:
        """(D, N) links from each node to each destination (-1: no route); derived lazily."""
        return _readonly(_hops_from_next_hop(self.next_hop))

    @property
    def n_nodes(self) -> int:
        """Number of nodes in the graph the trees were built on."""
        return int(self.next_hop.shape[1])

    @cached_property
    def _row_of(self) -> dict[int, int]:
        return {int(d): i for i, d in reversed(list(enumerate(self.destinations)))}

    def row_of(self, dst: int) -> int:
        """Row of destination ``dst`` in the tables; RoutingError if it has no tree here."""
        row = self._row_of.get(int(dst))
        if row is None:
            raise RoutingError(f"node {dst} is not a destination of these route trees; build "
                               f"its tree with Router.to({dst}) or strategy.trees(graph, [{dst}])")
        return row

    def _check_node(self, u: int) -> int:
        if not 0 <= int(u) < self.n_nodes:
            raise RoutingError(f"node {u} is outside 0..{self.n_nodes - 1}")
        return int(u)

    def next_hop_of(self, u: int, dst: int) -> int:
        """Node that ``u`` forwards to toward ``dst`` (``dst`` at ``dst``, -1 if no route)."""
        return int(self.next_hop[self.row_of(dst), self._check_node(u)])

    def one_way_s(self, src: int, dst: int) -> float:
        """One-way delay from ``src`` to ``dst`` along the tree, inf if there is no route."""
        return float(self.distance_s[self.row_of(dst), self._check_node(src)])

    def path(self, src: int, dst: int) -> list[int]:
        """Nodes from ``src`` to ``dst`` inclusive, following next hops; [] if no route."""
        row, node = self.row_of(dst), self._check_node(src)
        step = self.next_hop[row]
        if step[node] < 0:
            return []
        path = [node]
        while node != dst:
            node = int(step[node])
            path.append(node)
            if len(path) > self.n_nodes:
                raise RoutingError(f"next hops toward {dst} loop through node {node}; the "
                                   "route table is corrupt, rebuild it from the graph")
        return path

    def path_from_root(self, root: int, target: int) -> list[int]:
        """Nodes from destination ``root`` out to any node ``target`` (for source routing)."""
        path = self.path(target, root)
        path.reverse()
        return path


class RoutingStrategy(Protocol):
    """How to turn one tick's link graph into route trees toward some destinations.

    A contact-graph strategy (CGR, for disrupted links) plugs in here: it is constructed with the
    contact plan and the tick's scenario time, and its ``trees`` returns the same
    :class:`RouteTrees` with ``distance_s`` meaning earliest-arrival delay, so forwarding,
    policies and route diffs need no change. A strategy must honour ``graph.transit``.
    """

    @property
    def name(self) -> str:
        """Key of the strategy in :data:`STRATEGIES` and in scenario files."""
        ...

    def trees(self, graph: LinkGraph, destinations: ArrayLike) -> RouteTrees:
        """Route trees toward ``destinations`` over ``graph``."""
        ...


def _check_destinations(graph: LinkGraph, destinations: ArrayLike) -> IntArray:
    dst = np.asarray(destinations, dtype=np.int64).reshape(-1)
    if dst.size and (int(dst.min()) < 0 or int(dst.max()) >= graph.n_nodes):
        bad = dst[(dst < 0) | (dst >= graph.n_nodes)][0]
        raise RoutingError(f"destination {bad} is outside 0..{graph.n_nodes - 1}")
    return dst


def _dijkstra_trees(graph: LinkGraph, destinations: IntArray,
                    weights: FloatArray | None) -> tuple[HopArray, FloatArray]:
    """(next_hop, weighted distance), both (D, N), from one many-source shortest-path call."""
    if destinations.size == 0 or graph.n_nodes == 0:
        return (np.full((destinations.size, graph.n_nodes), NO_ROUTE, dtype=np.int32),
                np.full((destinations.size, graph.n_nodes), np.inf))
    # Links are undirected, so a node's parent in the tree grown from d is its next hop toward d.
    return shortest_path_trees(*graph._csr_arrays(weights), destinations,
                               transit=graph.transit)


@dataclass(frozen=True)
class ShortestDelay:
    """Least one-way delay: link weight = propagation delay."""

    name: str = "shortest_delay"

    def trees(self, graph: LinkGraph, destinations: ArrayLike) -> RouteTrees:
        """Least-delay trees toward ``destinations``."""
        dst = _check_destinations(graph, destinations)
        next_hop, distance_s = _dijkstra_trees(graph, dst, None)
        return RouteTrees(dst, next_hop, distance_s)


@dataclass(frozen=True)
class MinHop:
    """Fewest links; among equal-hop routes, least delay.

    Link weight = ``1 + delay_s / scale_s`` with ``scale_s = 2 * n_nodes * max(delay_s)``: a simple
    path has fewer than ``n_nodes`` links, so the delay term of any path stays below 0.5 and can
    never outweigh one hop. Hop count is the rounded weight and ``distance_s`` is recovered from the
    remainder; its rounding error is ~1e-14 * scale_s per hop (below 1 ns at 10,000 nodes).
    """

    name: str = "min_hop"

    def trees(self, graph: LinkGraph, destinations: ArrayLike) -> RouteTrees:
        """Fewest-hop trees toward ``destinations``, ties broken by delay."""
        dst = _check_destinations(graph, destinations)
        max_delay_s = float(graph.delay_s.max()) if graph.n_edges else 0.0
        scale_s = 2.0 * max(graph.n_nodes, 1) * max(max_delay_s, MIN_WEIGHT)
        next_hop, weight = _dijkstra_trees(graph, dst, 1.0 + graph.delay_s / scale_s)
        hop_float = weight - 0.25
        np.rint(hop_float, out=hop_float)
        hop_float[np.isinf(hop_float)] = NO_ROUTE
        distance_s = weight - hop_float  # inf - NO_ROUTE stays inf where there is no route
        distance_s *= scale_s
        return RouteTrees.with_hops(dst, next_hop, distance_s, hop_float.astype(np.int32))


STRATEGIES: Mapping[str, RoutingStrategy] = {
    "shortest_delay": ShortestDelay(),
    "min_hop": MinHop(),
}


def get_strategy(name: str) -> RoutingStrategy:
    """The routing strategy called ``name``; RoutingError lists the valid names."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise RoutingError(f"unknown routing strategy {name!r}; choose one of "
                           f"{', '.join(sorted(STRATEGIES))}") from None


@dataclass(frozen=True)
class RoutingPolicy:
    """A sovereignty rule: routes under it transit only nodes of the allowed operators."""

    name: str
    allowed_operators: frozenset[int]


def policy_mask(operator: ArrayLike, policy: RoutingPolicy) -> BoolArray:
    """(N,) True where a node's operator is allowed by ``policy``."""
    allowed = np.fromiter(policy.allowed_operators, dtype=np.int64,
                          count=len(policy.allowed_operators))
    return np.isin(np.asarray(operator), allowed)


class Router:
    """The routes of one tick: one graph, one strategy, and the sovereignty policies in force.

    Build one per tick; it caches the masked graph of each policy and every single-destination tree
    asked for through :meth:`to`, so an on-demand route toward a satellite costs one Dijkstra run
    (~0.2 ms at Starlink size) the first time and a dict look-up after.
    """

    def __init__(self, graph: LinkGraph, strategy: RoutingStrategy,
                 operator: ArrayLike | None = None,
                 policies: Mapping[str, RoutingPolicy] | None = None) -> None:
        self.graph = graph
        self.strategy = strategy
        self.policies: Mapping[str, RoutingPolicy] = dict(policies or {})
        for key, policy in self.policies.items():
            if key != policy.name:
                raise RoutingError(f"policy {policy.name!r} is filed under {key!r}; key each "
                                   "policy by its own name")
        self.operator: IntArray | None = None
        if operator is not None:
            self.operator = np.asarray(operator, dtype=np.int64)
            if self.operator.shape != (graph.n_nodes,):
                raise RoutingError(f"operator has shape {self.operator.shape}; expected "
                                   f"({graph.n_nodes},), one operator code per node")
        elif self.policies:
            raise RoutingError("routing policies need the operator code of every node; "
                               "pass operator=")
        self._masks: dict[str, BoolArray] = {}
        self._graphs: dict[str, LinkGraph] = {}
        self._single: dict[tuple[int, str | None], RouteTrees] = {}

    def mask(self, policy: str) -> BoolArray:
        """(N,) nodes that routes under ``policy`` may touch."""
        if policy not in self._masks:
            if policy not in self.policies or self.operator is None:
                raise RoutingError(f"unknown routing policy {policy!r}; known: "
                                   f"{', '.join(sorted(self.policies)) or 'none'}")
            self._masks[policy] = _readonly(policy_mask(self.operator, self.policies[policy]))
        return self._masks[policy]

    def graph_for(self, policy: str | None = None) -> LinkGraph:
        """The link graph routes under ``policy`` run on (None: the unrestricted graph)."""
        if policy is None:
            return self.graph
        if policy not in self._graphs:
            self._graphs[policy] = self.graph.with_mask(self.mask(policy))
        return self._graphs[policy]

    def trees(self, destinations: ArrayLike, policy: str | None = None) -> RouteTrees:
        """Route trees toward ``destinations``, unrestricted or under ``policy``."""
        dst = _check_destinations(self.graph, destinations)
        if policy is None:
            return self.strategy.trees(self.graph, dst)
        allowed = self.mask(policy)
        # A forbidden destination gets no tree at all; forbidden nodes are isolated in the
        # masked graph, so they have no route toward the others.
        rows = np.flatnonzero(allowed[dst])
        part = self.strategy.trees(self.graph_for(policy), dst[rows])
        next_hop = np.full((dst.size, self.graph.n_nodes), NO_ROUTE, dtype=np.int32)
        distance_s = np.full(next_hop.shape, np.inf)
        next_hop[rows], distance_s[rows] = part.next_hop, part.distance_s
        if "hops" not in part.__dict__:  # not derived yet: leave it lazy
            return RouteTrees(dst, next_hop, distance_s)
        hops = np.full(next_hop.shape, NO_ROUTE, dtype=np.int32)
        hops[rows] = part.hops
        return RouteTrees.with_hops(dst, next_hop, distance_s, hops)

    def all_trees(self, destinations: ArrayLike) -> dict[str | None, RouteTrees]:
        """Unrestricted trees (key None) plus one set per policy (key: policy name)."""
        routes: dict[str | None, RouteTrees] = {None: self.trees(destinations)}
        for name in self.policies:
            routes[name] = self.trees(destinations, name)
        return routes

    def to(self, dst: int, policy: str | None = None) -> RouteTrees:
        """Single-destination trees toward any node ``dst``, computed once per Router."""
        key = (int(dst), policy)
        if key not in self._single:
            self._single[key] = self.trees([dst], policy)
        return self._single[key]


def compute_routes(graph: LinkGraph, destinations: ArrayLike, strategy: RoutingStrategy,
                   policies: Mapping[str, RoutingPolicy] | None = None,
                   operator: ArrayLike | None = None) -> dict[str | None, RouteTrees]:
    """Unrestricted route trees (key None) plus one set per sovereignty policy."""
    return Router(graph, strategy, operator, policies).all_trees(destinations)


def _changed_mask(prev: RouteTrees | None, cur: RouteTrees) -> BoolArray:
    if prev is None:
        return np.asarray(cur.next_hop != NO_ROUTE)
    if prev.n_nodes != cur.n_nodes:
        raise RoutingError(f"cannot diff route trees over {prev.n_nodes} and {cur.n_nodes} "
                           "nodes; the node set of a run must not change")
    if np.array_equal(prev.destinations, cur.destinations):
        old = prev.next_hop
    else:
        old = np.full(cur.next_hop.shape, NO_ROUTE, dtype=np.int32)
        rows = [(i, prev._row_of[int(d)]) for i, d in enumerate(cur.destinations)
                if int(d) in prev._row_of]
        if rows:
            cur_rows, prev_rows = np.array(rows).T
            old[cur_rows] = prev.next_hop[prev_rows]
    return np.asarray(old != cur.next_hop)


def route_changes(prev: RouteTrees | None, cur: RouteTrees) -> int:
    """Number of (destination, node) entries whose next hop differs from ``prev``.

    Rows are matched by destination id; a destination new in ``cur`` (or ``prev`` None) counts
    each of its reachable entries, and a destination that only ``prev`` had is not counted.
    """
    return int(np.count_nonzero(_changed_mask(prev, cur)))


def changed_entries(prev: RouteTrees | None,
                    cur: RouteTrees) -> tuple[IntArray, IntArray, HopArray]:
    """``(row in cur, node, new next hop)`` of every entry that changed, for route diffs."""
    rows, nodes = np.nonzero(_changed_mask(prev, cur))
    return rows, nodes, cur.next_hop[rows, nodes]

