"""Route tables: the shortest-path trees toward some destinations, and their diffs.

Array conventions: tables are ``(D, N)``, destinations first, nodes second. ``next_hop[i, u]``
is the node that ``u`` forwards to on its way to ``destinations[i]`` (``-1``: no route; the
destination itself holds its own index); ``distance_s[i, u]`` is the one-way delay from ``u`` to
that destination (``inf``: no route); ``hops[i, u]`` counts links (``-1``: no route).
:mod:`orbitmesh.core.routing` builds them from a tick's link graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from orbitmesh.errors import RoutingError

IntArray = NDArray[np.int64]
FloatArray = NDArray[np.float64]
HopArray = NDArray[np.int32]
BoolArray = NDArray[np.bool_]

NO_ROUTE = -1
"""``next_hop`` and ``hops`` value of a node that cannot reach the destination."""


_ArrayT = TypeVar("_ArrayT", bound=np.ndarray)


def _readonly(array: _ArrayT) -> _ArrayT:
    """A read-only view: the holder cannot write through it, and the caller's array is untouched."""
    view = array.view()
    view.flags.writeable = False
    return view


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


Csr = tuple[NDArray[np.int32], NDArray[np.int32]]
"""(indptr, indices) of the graph some trees were grown on: what their arcs index."""


def _with_order(trees: RouteTrees, order: HopArray | None, arcs: HopArray | None = None,
                csr: Csr | None = None) -> RouteTrees:
    """``trees`` carrying the order their rows were labelled in and each node's arc to its
    parent in the graph ``csr`` (hints for the next tick's repair)."""
    if order is not None:
        trees.__dict__["_order"] = order  # private: never part of the tables' value
    if arcs is not None and csr is not None:
        trees.__dict__["_arcs"] = (arcs, csr)
    return trees


def _order_of(trees: RouteTrees) -> HopArray | None:
    """The order :func:`_with_order` attached, or None."""
    order: HopArray | None = trees.__dict__.get("_order")
    return order


def _arcs_of(trees: RouteTrees) -> tuple[HopArray, Csr] | None:
    """The parent arcs and their graph's CSR that :func:`_with_order` attached, or None."""
    arcs: tuple[HopArray, Csr] | None = trees.__dict__.get("_arcs")
    return arcs


def _spare_hints(trees: RouteTrees) -> RouteTrees:
    """The same tables carrying copies of the attached order and arcs: for a second repair from
    one tick (a faulted tick's fault-free twin), which :func:`_take_hints` would leave bare."""
    spare = RouteTrees(trees.destinations, trees.next_hop, trees.distance_s)
    order, carried = _order_of(trees), _arcs_of(trees)
    return _with_order(spare, None if order is None else order.copy(),
                       None if carried is None else carried[0].copy(),
                       None if carried is None else carried[1])


def _take_hints(trees: RouteTrees) -> tuple[HopArray | None, tuple[HopArray, Csr] | None]:
    """The attached order and arcs, detached: the repair rewrites them in place, so a second
    repair from the same trees (a faulted tick's fault-free twin) starts without them instead of
    from arrays that already describe another graph."""
    order: HopArray | None = trees.__dict__.pop("_order", None)
    arcs: tuple[HopArray, Csr] | None = trees.__dict__.pop("_arcs", None)
    return order, arcs


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
