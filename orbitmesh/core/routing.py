"""Routing: shortest-path trees toward destinations, strategies, sovereignty policies, route diffs.

Array conventions:

* nodes are indexed ``0..N-1``: satellites first, then ground stations, then operations centres
  (the order the link engine uses);
* a :class:`LinkGraph` lists each undirected link once: ``a (E,)``, ``b (E,)``, ``delay_s (E,)``,
  and may mark the nodes that relay traffic: ``transit (N,)`` (None: every node relays);
* route tables (:class:`RouteTrees` and their diffs, in :mod:`orbitmesh.core.route_trees`) are
  ``(D, N)``: destinations first, nodes second. ``next_hop[i, u]`` is the node that ``u`` forwards
  to on its way to ``destinations[i]`` (``-1``: no route; the destination itself holds its own
  index); ``distance_s[i, u]`` is the one-way delay from ``u`` to that destination (``inf``: no
  route); ``hops[i, u]`` counts links (``-1``: no route).

One shortest-path tree per destination answers every node's question "where next toward d?":
links are undirected, so the predecessor of ``u`` in Dijkstra's tree rooted at ``d`` is ``u``'s next
hop toward ``d``. A node with ``transit`` False (a ground station or operations centre with
``transit: false``) may be a route's source or destination but never a hop in between: the tree
grown from ``d`` does not relax its links unless it is ``d``, so it is a leaf of every other tree,
and no node ever forwards through it. Trees are built for the destinations that traffic goes to
(ground nodes: in a run, those its frames can be addressed to, :mod:`orbitmesh.core.destinations`;
else every ground node); a tree toward any other node is computed on demand with
:meth:`Router.to`, and frames to satellites are source-routed along their sender's tree.

Cost (2 cores; ``bench/geometry.py``): the trees come from the bucket kernel in
:mod:`orbitmesh.core._sssp` (numba; scipy's Dijkstra when numba is missing), whose distances equal
scipy's bit for bit. Given the previous tick's tables (``previous=``, as
:class:`~orbitmesh.core.engine.TickEngine` passes them), trees are repaired instead
(:mod:`orbitmesh.core._repair_kernel`): same answer, a fraction of the work. Measured 2026-12-02
on a shared machine (CPU time, least of 100 ticks): 105 destinations on the 1,700-node /
3,600-link Starlink shell-1 graph ~4 ms of CPU a tick, split over two threads (grown afresh:
~14 ms on one thread; scipy: ~18 ms); 50 destinations on Gen1 + 1,000 stations (5,400 nodes /
12,500 links) ~7 ms. Of a repair (shell 1), summing today's weights down yesterday's trees is
~40 %, the neighbour pass over all trees with its two transposes ~30 %, finding each hinted
parent's link ~15 % (now a look-up of the arc the last repair recorded, carried to today's CSR
by :func:`~orbitmesh.core._repair_kernel.arc_map`), the heap search from the improved nodes the
rest. The sparse layout
(~0.07 ms on shell 1, by counting sort) and the diffs (~0.3 ms) are small beside it. Each policy
adds one more run over its allowed destinations. ``RouteTrees.hops`` is derived lazily (~5 ms at
105 x 1,700) because forwarding never needs it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orbitmesh.core._sssp import shortest_path_trees
from orbitmesh.core.link_graph import MIN_WEIGHT, LinkGraph
from orbitmesh.core.route_trees import (
    NO_ROUTE,
    Csr,
    RouteTrees,
    _readonly,
    _take_hints,
    _with_order,
    changed_entries,
    route_changes,
)
from orbitmesh.errors import RoutingError

__all__ = [  # the route tables and their diffs live in route_trees; routing hands them out too
    "MIN_WEIGHT", "NO_ROUTE", "STRATEGIES", "LinkGraph", "MinHop", "RouteTrees", "Router",
    "RoutingPolicy", "RoutingStrategy", "ShortestDelay", "changed_entries", "compute_routes",
    "get_strategy", "policy_mask", "route_changes",
]

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
HopArray = NDArray[np.int32]
BoolArray = NDArray[np.bool_]

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

    def trees(self, graph: LinkGraph, destinations: ArrayLike,
              previous: RouteTrees | None = None) -> RouteTrees:
        """Route trees toward ``destinations`` over ``graph``.

        ``previous`` (the same strategy's trees of the tick before, or None) is only a hint for
        speed: the answer must not depend on it; a strategy may ignore it.
        """
        ...


def _check_destinations(graph: LinkGraph, destinations: ArrayLike) -> IntArray:
    dst = np.asarray(destinations, dtype=np.int64).reshape(-1)
    if dst.size and (int(dst.min()) < 0 or int(dst.max()) >= graph.n_nodes):
        bad = dst[(dst < 0) | (dst >= graph.n_nodes)][0]
        raise RoutingError(f"destination {bad} is outside 0..{graph.n_nodes - 1}")
    return dst


class _Seed(NamedTuple):
    """What the last tick's trees hand the repair: writable arrays, rows as ``destinations``."""

    hints: HopArray
    """(D, N) next hops (rows of NO_ROUTE where the last tick had no tree)."""
    order: HopArray
    """(D, N) the order each tree was labelled in (rows starting -1 where unknown)."""
    arcs: HopArray | None
    """(D, N) each node's arc to its parent in the graph ``csr`` (None: unknown)."""
    csr: Csr | None


def _writable(array: HopArray) -> HopArray:
    """``array``'s own writable base when it is a plain read-only view of it, else a copy: the
    kernel only reads the hints, and a read-only argument would compile a second signature."""
    base = array.base
    if (isinstance(base, np.ndarray) and base.dtype == np.int32 and base.shape == array.shape
            and base.flags.writeable and base.flags.c_contiguous
            and base.ctypes.data == array.ctypes.data and array.flags.c_contiguous):
        return base
    return np.array(array, dtype=np.int32)


def _hints(previous: RouteTrees | None, destinations: IntArray, n_nodes: int) -> _Seed | None:
    """The last tick's trees as hints for this tick's repair (None: nothing to repair from).

    The attached order and arcs are taken (detached, then rewritten by the repair)."""
    if previous is None or previous.n_nodes != n_nodes:
        return None
    known, carried = _take_hints(previous)
    if np.array_equal(previous.destinations, destinations):
        hints = _writable(previous.next_hop)
        if known is None:
            known = np.empty(hints.shape, dtype=np.int32)
            known[:, :1] = -1
        if carried is None:
            return _Seed(hints, known, None, None)
        return _Seed(hints, known, carried[0], carried[1])
    rows = [(i, previous._row_of[int(d)]) for i, d in enumerate(destinations)
            if int(d) in previous._row_of]
    if not rows:
        return None
    hints = np.full((destinations.size, n_nodes), NO_ROUTE, dtype=np.int32)
    order = np.empty((destinations.size, n_nodes), dtype=np.int32)
    order[:, :1] = -1
    cur_rows, prev_rows = np.array(rows).T
    hints[cur_rows] = previous.next_hop[prev_rows]
    if known is not None:
        order[cur_rows] = known[prev_rows]
    if carried is None:
        return _Seed(hints, order, None, None)
    arcs = np.full((destinations.size, n_nodes), -1, dtype=np.int32)
    arcs[cur_rows] = carried[0][prev_rows]
    return _Seed(hints, order, arcs, carried[1])


def _dijkstra_trees(graph: LinkGraph, destinations: IntArray, weights: FloatArray | None,
                    previous: RouteTrees | None = None
                    ) -> tuple[HopArray, FloatArray, HopArray | None, HopArray | None, Csr]:
    """(next_hop, weighted distance), both (D, N), from one many-source shortest-path call; the
    order the trees were labelled in and each node's arc to its parent (for the next tick's
    call; None if not repaired); and the CSR those arcs index.

    The trees of ``previous`` seed the search (far fewer nodes to settle when few routes
    changed); the answer is the same without them.
    """
    indptr, indices, data = graph._csr_arrays(weights)
    if destinations.size == 0 or graph.n_nodes == 0:
        return (np.full((destinations.size, graph.n_nodes), NO_ROUTE, dtype=np.int32),
                np.full((destinations.size, graph.n_nodes), np.inf), None, None,
                (indptr, indices))
    seed = _hints(previous, destinations, graph.n_nodes)
    if seed is None:
        next_hop, dist = shortest_path_trees(indptr, indices, data, destinations,
                                             transit=graph.transit)
        return next_hop, dist, None, None, (indptr, indices)
    arcs, old_arc = seed.arcs, None
    if arcs is not None and seed.csr is not None:
        from orbitmesh.core._repair_kernel import arc_map

        old_arc = arc_map(seed.csr[0], seed.csr[1], indptr, indices)
    else:
        arcs = np.empty(seed.hints.shape, dtype=np.int32)
    # Links are undirected, so a node's parent in the tree grown from d is its next hop toward d.
    next_hop, dist = shortest_path_trees(indptr, indices, data, destinations,
                                         transit=graph.transit, hints=seed.hints,
                                         order=seed.order, arcs=arcs, old_arc=old_arc)
    return next_hop, dist, seed.order, arcs, (indptr, indices)


@dataclass(frozen=True)
class ShortestDelay:
    """Least one-way delay: link weight = propagation delay."""

    name: str = "shortest_delay"

    def trees(self, graph: LinkGraph, destinations: ArrayLike,
              previous: RouteTrees | None = None) -> RouteTrees:
        """Least-delay trees toward ``destinations`` (``previous``: a hint, see the protocol)."""
        dst = _check_destinations(graph, destinations)
        next_hop, distance_s, order, arcs, csr = _dijkstra_trees(graph, dst, None, previous)
        return _with_order(RouteTrees(dst, next_hop, distance_s), order, arcs, csr)


@dataclass(frozen=True)
class MinHop:
    """Fewest links; among equal-hop routes, least delay.

    Link weight = ``1 + delay_s / scale_s`` with ``scale_s = 2 * n_nodes * max(delay_s)``: a simple
    path has fewer than ``n_nodes`` links, so the delay term of any path stays below 0.5 and can
    never outweigh one hop. Hop count is the rounded weight and ``distance_s`` is recovered from the
    remainder; its rounding error is ~1e-14 * scale_s per hop (below 1 ns at 10,000 nodes).
    """

    name: str = "min_hop"

    def trees(self, graph: LinkGraph, destinations: ArrayLike,
              previous: RouteTrees | None = None) -> RouteTrees:
        """Fewest-hop trees toward ``destinations``, ties broken by delay (``previous``: a hint)."""
        dst = _check_destinations(graph, destinations)
        max_delay_s = float(graph.delay_s.max()) if graph.n_edges else 0.0
        scale_s = 2.0 * max(graph.n_nodes, 1) * max(max_delay_s, MIN_WEIGHT)
        next_hop, weight, order, arcs, csr = _dijkstra_trees(
            graph, dst, 1.0 + graph.delay_s / scale_s, previous)
        hop_float = weight - 0.25
        np.rint(hop_float, out=hop_float)
        hop_float[np.isinf(hop_float)] = NO_ROUTE
        distance_s = weight - hop_float  # inf - NO_ROUTE stays inf where there is no route
        distance_s *= scale_s
        return _with_order(RouteTrees.with_hops(dst, next_hop, distance_s,
                                                hop_float.astype(np.int32)), order, arcs, csr)


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
    (~0.2 ms at Starlink size) the first time and a dict look-up after. ``previous`` (the route
    tables of the tick before, keyed as :meth:`all_trees` keys them) seeds the searches.
    """

    def __init__(self, graph: LinkGraph, strategy: RoutingStrategy,
                 operator: ArrayLike | None = None,
                 policies: Mapping[str, RoutingPolicy] | None = None,
                 previous: Mapping[str | None, RouteTrees] | None = None) -> None:
        self.graph = graph
        self.strategy = strategy
        self.previous: Mapping[str | None, RouteTrees] = previous or {}
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
        previous = self.previous.get(policy)
        if policy is None:
            return self._strategy_trees(self.graph, dst, previous)
        allowed = self.mask(policy)
        # A forbidden destination gets no tree at all; forbidden nodes are isolated in the
        # masked graph, so they have no route toward the others.
        rows = np.flatnonzero(allowed[dst])
        part = self._strategy_trees(self.graph_for(policy), dst[rows], previous)
        next_hop = np.full((dst.size, self.graph.n_nodes), NO_ROUTE, dtype=np.int32)
        distance_s = np.full(next_hop.shape, np.inf)
        next_hop[rows], distance_s[rows] = part.next_hop, part.distance_s
        order, carried = _take_hints(part)
        if order is not None:  # the labelling order goes with the rows, for the next tick
            order_rows = np.full(next_hop.shape, -1, dtype=np.int32)
            order_rows[rows] = order
            order = order_rows
        arcs, csr = None, None
        if carried is not None:  # and so do the parent arcs
            arcs = np.full(next_hop.shape, -1, dtype=np.int32)
            arcs[rows], csr = carried
        if "hops" not in part.__dict__:  # not derived yet: leave it lazy
            return _with_order(RouteTrees(dst, next_hop, distance_s), order, arcs, csr)
        hops = np.full(next_hop.shape, NO_ROUTE, dtype=np.int32)
        hops[rows] = part.hops
        return _with_order(RouteTrees.with_hops(dst, next_hop, distance_s, hops), order, arcs,
                           csr)

    def _strategy_trees(self, graph: LinkGraph, dst: IntArray,
                        previous: RouteTrees | None) -> RouteTrees:
        # A strategy written before hints existed takes two arguments; it is not asked for more.
        if previous is None:
            return self.strategy.trees(graph, dst)
        return self.strategy.trees(graph, dst, previous=previous)

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
                   operator: ArrayLike | None = None,
                   previous: Mapping[str | None, RouteTrees] | None = None,
                   ) -> dict[str | None, RouteTrees]:
    """Unrestricted route trees (key None) plus one set per sovereignty policy.

    ``previous``, the result of this call at the tick before, makes it faster, never different.
    """
    return Router(graph, strategy, operator, policies, previous).all_trees(destinations)
